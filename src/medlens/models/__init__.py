"""Models behind one interface: ``build_classifier(name, ...)`` -> :class:`Classifier`.

``CLASSIFIERS.names()`` lists the registered 2D and 3D classifiers (``resnet18_2d``,
``densenet121_3d``, ``seedcnn_2d``...).
"""

from __future__ import annotations

from medlens.models.classifiers import CLASSIFIERS, Backbone, Classifier, build_classifier

__all__ = ["CLASSIFIERS", "Backbone", "Classifier", "build_classifier"]
