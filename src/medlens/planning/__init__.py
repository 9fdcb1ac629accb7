"""Self-configuration: from a dataset card to an editable plan, one reason per value."""

from medlens.planning.classification import plan_classification
from medlens.planning.segmentation import plan_segmentation

__all__ = ["plan_classification", "plan_segmentation"]
