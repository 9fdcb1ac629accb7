"""Post-training calibration on the validation split: temperature and decision threshold."""

from __future__ import annotations

import numpy as np

from medlens.config import Config
from medlens.data.prepared import SplitData
from medlens.models.inference import predict_logits, to_probs


def calibrate(model, config: Config, val: SplitData) -> dict:
    """Fit a temperature (NLL on validation) and, for binary tasks, the Youden threshold.

    Returns ``{"temperature", "threshold", "threshold_rule", "fitted_on"}``; the threshold applies
    to the calibrated probability of class 1.
    """
    from medlens.evaluation import fit_temperature, youden_threshold

    multilabel = config.dataset.task == "multilabel"
    logits = predict_logits(model, val.images, tta_flip_axes=_tta_axes(config), clinical=val.clinical)
    temperature = float(fit_temperature(logits, val.labels, multilabel=multilabel))
    result = {"temperature": temperature, "threshold": 0.5, "threshold_rule": "0.5",
              "fitted_on": f"val ({len(val.cases)} cases)"}
    if not multilabel:
        result.update(without_sharpening(temperature, int((logits.argmax(1) != val.labels).sum())))
    if config.dataset.task == "binary" and len(np.unique(val.labels)) == 2:
        probs = to_probs(logits, multilabel=False, temperature=result["temperature"])
        result["threshold"] = float(youden_threshold(val.labels, probs[:, 1]))
        result["threshold_rule"] = "Youden J on validation"
    return result


def without_sharpening(temperature: float, errors: int) -> dict:
    """``{"temperature": temperature}``, or temperature 1 with a note when it sharpens (< 1) and validation holds
    no error: without a single error the NLL always falls by sharpening further, so it is no evidence for it."""
    if temperature < 1.0 and errors == 0:
        return {"temperature": 1.0, "note": f"validation has no errors; fitted temperature {temperature:.3f} "
                "(sharpening) not applied"}
    return {"temperature": temperature}


def _tta_axes(config: Config) -> tuple[int, ...]:
    return tuple(config.augment.flip_axes) if config.evaluate.tta else ()


HEADLINE = ("accuracy", "balanced_accuracy", "auc")


def validation_metrics(model, config: Config, val: SplitData, calibration: dict) -> dict:
    """Headline metrics with bootstrap 95% CIs on the validation split, for the model card.

    The probabilities are calibrated with the temperature fitted on this same split (which does not
    move AUC); the test split's figures come from ``medlens evaluate``.
    """
    from medlens.tasks.classification.metrics import classification_metrics

    multilabel = config.dataset.task == "multilabel"
    logits = predict_logits(model, val.images, tta_flip_axes=_tta_axes(config), clinical=val.clinical)
    probs = to_probs(logits, multilabel=multilabel, temperature=calibration["temperature"])
    metrics = classification_metrics(val.labels, probs, config.dataset.task, list(config.dataset.class_names),
                                     groups=val.groups, n_boot=config.evaluate.n_bootstrap, seed=config.train.seed)
    return {"split": "val", "n_cases": len(val.cases), "note": "temperature fitted on this split",
            **{k: metrics[k] for k in HEADLINE}}
