"""Self-configuration: from a dataset card to an editable plan, one reason per value."""

from medlens.planning.classification import plan_classification

__all__ = ["plan_classification"]
