"""Deployment: the bundle (weights + model card + checksums), exported networks, the predictor, the service.

>>> export_bundle("runs/pneumonia", Path("model.bundle"))      # medlens export
>>> Predictor.from_bundle("model.bundle").predict("chest.png", heatmap=True)
"""

from __future__ import annotations

from medlens.deploy.bundle import BundleError, export_bundle, open_bundle
from medlens.deploy.predictor import Predictor

__all__ = ["BundleError", "Predictor", "export_bundle", "open_bundle"]
