"""Explaining an anomaly decision: the anomaly map itself is the explanation (where the image departs from
the normal images the model learnt); there is no gradient map and no randomisation test."""

from __future__ import annotations

from medlens.config import Config
from medlens.tasks.base import Explained

NO_SANITY = ("the anomaly map is the model's output, not a gradient attribution of it, so the "
             "parameter-randomisation test does not apply")


def explain_image(model, config: Config, calibration: dict, image, *, where: str) -> Explained:
    """The anomaly map on the network's grid, scaled to [0, 1] with the threshold at 0.5, and the decision."""
    import numpy as np

    from medlens.models.inference import predict_logits
    from medlens.tasks.anomaly.outputs import display_map, score_image

    _, anomaly_map = score_image(lambda x: predict_logits(model, x), image, config, where)
    threshold = float(calibration["threshold"])
    score = float(np.max(anomaly_map))
    decision = "anomalous" if score > threshold else "normal"
    row = {"predicted": decision, "explained_class": "anomaly (the anomaly map)", "anomaly_score": round(score, 6),
           "threshold": threshold}
    return Explained(row, display_map(anomaly_map, threshold))
