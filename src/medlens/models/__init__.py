"""Models behind one interface: ``build_classifier(name, ...)`` -> :class:`Classifier`.

``Ensemble(members)`` averages several classifiers' logits. ``CLASSIFIERS.names()`` lists the
registered 2D and 3D classifiers (``resnet18_2d``,
``densenet121_3d``, ``seedcnn_2d``...); ``build_segmenter(name, ...)`` the segmentation networks
(``dynunet_3d``, ``unet_2d``, ``vnet_3d``...); ``build_fusion_classifier(name, views=V, ...)`` a
classifier over several views of a case and its clinical values (:mod:`medlens.models.fusion`).
"""

from __future__ import annotations

from medlens.models import networks3d, transformers  # noqa: F401  (register their networks)
from medlens.models.classifiers import CLASSIFIERS, Backbone, Classifier, build_classifier
from medlens.models.ensemble import Ensemble
from medlens.models.fusion import FusionClassifier, build_fusion_classifier
from medlens.models.segmenters import SEGMENTERS, build_segmenter, patch_multiple

__all__ = ["CLASSIFIERS", "SEGMENTERS", "Backbone", "Classifier", "Ensemble", "FusionClassifier", "build_classifier",
           "build_fusion_classifier", "build_segmenter", "patch_multiple"]
