"""Calibration from aggregates of validation splits held elsewhere (a federation's sites, ``medlens fl server``).

Each holder of a validation split scores it and sends aggregates only (:func:`site_statistics`):

- ``nll``: the summed negative log-likelihood of ``softmax(logits / T)`` at each temperature of
  :data:`TEMPERATURES` (geometric, 0.05 to 20: the bounds of :func:`medlens.evaluation.fit_temperature`), with its
  number of cases and of errors (argmax != label);
- binary tasks, ``margin``: per class, a histogram of the logit margin ``z1 - z0`` over :data:`MARGIN_EDGES`
  (0.05 wide from -20 to 20, values beyond counted in the end bins). The calibrated probability of class 1 is
  ``sigmoid(margin / T)``, so a threshold on it is a threshold on the margin, whatever ``T``.

The same aggregates of each round's global model choose the round a federation keeps (:func:`selection_score`).

Whoever calibrates sums them (:func:`combine`): the temperature of least summed NLL (1 when no site's validation split
holds an error, as :func:`medlens.tasks.classification.calibrate.calibrate` does), and for binary tasks the Youden
threshold of the pooled margin histograms, as a probability at that temperature. Scores of single cases, labels of
single cases and case ids never leave a site. One label per case only (binary, multi-class, ordinal):
:data:`AGGREGATES` is what :class:`~medlens.tasks.classification.task.ClassificationTask` offers.

>>> z = np.array([[2.0, -1.0], [0.5, 1.5], [-1.0, 2.0], [1.0, 0.2]]); y = np.array([0, 1, 1, 1])
>>> result = combine([site_statistics(z, y, "binary")], "binary")
>>> result["threshold_rule"].startswith("Youden J"), 0.0 < result["threshold"] < 1.0
(True, True)
"""

from __future__ import annotations

import numpy as np

from medlens.evaluation.calibration import T_MAX, T_MIN, mean_nll
from medlens.tasks.classification.calibrate import _tta_axes, without_sharpening

TEMPERATURES = np.geomspace(T_MIN, T_MAX, 121)
MARGIN_EDGES = np.linspace(-20.0, 20.0, 801)
SINGLE_LABEL = ("binary", "multiclass", "ordinal")  # one label per case, softmax over the classes


def site_statistics(logits: np.ndarray, labels: np.ndarray, task: str) -> dict:
    """One site's aggregates (see module docstring) of ``(N, K)`` validation logits and ``(N,)`` class indices."""
    z, y = np.asarray(logits, np.float64), np.asarray(labels).astype(int)
    nll = [mean_nll(z, y, False, t) * len(y) if len(y) else 0.0 for t in TEMPERATURES]
    stats = {"n": len(y), "errors": int((z.argmax(1) != y).sum()), "nll": nll}
    if task == "binary":
        margin = np.clip(z[:, 1] - z[:, 0], MARGIN_EDGES[0], MARGIN_EDGES[-1])
        stats["margin"] = [np.histogram(margin[y == c], bins=MARGIN_EDGES)[0].tolist() for c in (0, 1)]
    return stats


def combine(stats: list[dict], task: str) -> dict:
    """``calibration.json`` from the sites' aggregates: ``{"temperature", "threshold", "threshold_rule",
    "fitted_on"}`` (and ``note``), the threshold applying to the calibrated probability of class 1."""
    n, errors = sum(s["n"] for s in stats), sum(s["errors"] for s in stats)
    temperature = float(TEMPERATURES[int(np.argmin(np.sum([s["nll"] for s in stats], axis=0)))])
    result = {"temperature": temperature, "threshold": 0.5, "threshold_rule": "0.5",
              "fitted_on": f"the validation splits of {len(stats)} site(s) ({n} cases), from aggregates they sent",
              **without_sharpening(temperature, errors)}
    if task == "binary":
        negative, positive = (np.sum([s["margin"][c] for s in stats], axis=0) for c in (0, 1))
        if negative.sum() and positive.sum():
            margin = youden_margin(negative, positive)
            result["threshold"] = float(1.0 / (1.0 + np.exp(-margin / result["temperature"])))
            result["threshold_rule"] = "Youden J on the sites' validation splits (margin histograms, 0.05 wide)"
    return result


def selection_score(stats: list[dict], task: str) -> tuple[float, str]:
    """How good a model is on the sites' validation splits together, from their aggregates (higher is better):
    binary tasks, the AUC of the pooled margin histograms (cases in one 0.05 bin count as ties); otherwise the mean
    NLL at the best common temperature, negated (a model's ranking, not its calibration, which is fitted after).

    Returns:
        ``(score, what it is)``.
    """
    if task == "binary":
        negative, positive = (np.sum([s["margin"][c] for s in stats], axis=0) for c in (0, 1))
        if negative.sum() and positive.sum():
            return histogram_auc(negative, positive), "validation AUC"
    n = sum(s["n"] for s in stats)
    return -float(np.min(np.sum([s["nll"] for s in stats], axis=0))) / max(n, 1), "validation NLL (negated)"


def histogram_auc(negative: np.ndarray, positive: np.ndarray) -> float:
    """scikit-learn's AUC of per-bin counts: each bin one score, its count the weight (a shared bin is a tie)."""
    from sklearn.metrics import roc_auc_score

    bins = np.arange(len(negative), dtype=np.float64)
    return float(roc_auc_score(np.r_[np.zeros(len(bins)), np.ones(len(bins))], np.r_[bins, bins],
                               sample_weight=np.r_[np.asarray(negative, np.float64), np.asarray(positive, np.float64)]))


def youden_margin(negative: np.ndarray, positive: np.ndarray) -> float:
    """The bin edge ``m`` maximising sensitivity + specificity - 1 when ``margin >= m`` is called positive (ties:
    the higher edge), from per-bin counts of negative and positive cases."""
    # calling bin i and above positive: sensitivity = positives from i on / all, 1 - specificity alike
    tpr = np.cumsum(positive[::-1])[::-1] / positive.sum()
    fpr = np.cumsum(negative[::-1])[::-1] / negative.sum()
    j = tpr - fpr
    best = int(np.flatnonzero(j == j.max())[-1])
    return float(MARGIN_EDGES[best])


class Aggregates:
    """The task's side of aggregate calibration (``Task.aggregate_calibration``)."""

    def applies(self, config) -> bool:
        """One label per case (several labels would need a threshold per label)."""
        return config.dataset.task in SINGLE_LABEL

    def statistics(self, model, config, fit) -> dict:
        """``model``'s aggregates on ``fit``'s validation split."""
        from medlens.models.inference import predict_logits

        val = fit.validation.val
        logits = predict_logits(model, val.images, tta_flip_axes=_tta_axes(config), clinical=val.clinical)
        return site_statistics(logits, val.labels, config.dataset.task)

    def combine(self, stats: list[dict], config) -> dict:
        return combine(stats, config.dataset.task)

    def score(self, stats: list[dict], config) -> tuple[float, str]:
        return selection_score(stats, config.dataset.task)


AGGREGATES = Aggregates()
