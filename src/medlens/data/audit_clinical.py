"""The audit of a manifest's clinical columns: what each holds, and whether it gives the label away.

``card["clinical"]`` describes every candidate column (a manifest column that is not image, label, mask,
patient or split): its kind (``numeric`` when every value parses as a number, ``categorical``, ``identifier``
when it holds a different non-numeric value for every case, ``empty`` when no case has a value), how many
cases lack a value, a numeric summary or category counts, and, when the cases have class labels, the AUC
with which the column ALONE separates the classes.

That AUC is the leakage check: a column that predicts the label by itself too well (AUC above
:data:`LEAKAGE_AUC`) is usually a score that defines the diagnosis (MMSE for dementia, a tumour grade for
malignancy), not a feature measured before it, and a model fed with it learns nothing from the images. It
is a ``clinical.leakage`` warning, and the column is not usable as an input (``usable: false``).

A numeric column whose values fall on two scales with nothing between (OASIS-1's nWBV holds 0.78 in some rows
and 780 in others) is a ``clinical.scale`` warning: a decimal point or a unit was lost on the way, and z-scores
of such a column mix the two.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from medlens.data.clinical import as_number, is_missing
from medlens.data.dataset import Dataset, Finding

LEAKAGE_AUC = 0.85  # a column separating the classes better than this on its own is a label proxy
MAX_CATEGORIES = 50  # category counts kept per column in the card (the most frequent; "distinct" counts all)
SCALE_GAP = 100.0  # positive numbers with no value within a factor this wide between two groups: two scales
POWER_TOLERANCE = 0.15  # two scales whose typical values are within this of a power of ten (log10) are rescaled
MIN_IDENTIFIER_CASES = 5  # fewer cases with distinct values say nothing about a column being an identifier


def audit_clinical(dataset: Dataset, card: dict) -> list[Finding]:
    """Describe the dataset's clinical columns in ``card["clinical"]`` and return their findings.

    Nothing is written when the dataset has no candidate clinical columns (``meta["clinical_columns"]``).

    Returns:
        ``clinical.leakage`` warnings, one per column whose AUC alone exceeds :data:`LEAKAGE_AUC`, and
        ``clinical.scale`` warnings, one per numeric column on two scales.
    """
    columns = dataset.meta.get("clinical_columns") or []
    if not columns:
        return []
    labels = _class_labels(dataset)
    card["clinical"] = {column: describe_column([case.clinical.get(column, "") for case in dataset.cases], labels)
                        for column in columns}
    findings = [_leakage_finding(column, entry) for column, entry in card["clinical"].items() if entry["leakage"]]
    return findings + [_scale_finding(column, entry["scales"]) for column, entry in card["clinical"].items()
                       if entry.get("scales")]


def describe_column(cells: list[str], labels: np.ndarray | None) -> dict:
    """One column's card entry from its cells ``(N,)`` and the cases' class indices ``(N,)`` (-1: no label).

    Returns:
        ``{"kind", "present", "missing", "numeric" | ("categories", "distinct"), "auc", "leakage", "usable"}``
        (JSON-ready): ``numeric`` = min / median / max / mean / std; ``categories`` = count per category (the
        :data:`MAX_CATEGORIES` most frequent), ``distinct`` = how many there are; ``auc`` = :func:`separation_auc`
        (``None`` without class labels); ``usable`` = numeric or categorical, more than one value, no leakage.
    """
    present = [i for i, cell in enumerate(cells) if not is_missing(cell)]
    values = [cells[i].strip() for i in present]
    entry: dict = {"kind": _kind(values, len(cells)), "present": len(present), "missing": len(cells) - len(present)}
    if entry["kind"] == "numeric":
        numbers = np.array([as_number(v) for v in values], dtype=np.float64)
        entry["numeric"] = _numeric_summary(numbers)
        if scales := two_scales(numbers):
            entry["scales"] = scales
        scores = numbers
    else:
        counts = Counter(values)
        entry["categories"] = dict(counts.most_common(MAX_CATEGORIES))
        entry["distinct"] = len(counts)
        scores = np.array(values, dtype=object)
    auc = None
    if labels is not None and entry["kind"] in ("numeric", "categorical"):
        auc = separation_auc(scores, labels[present], numeric=entry["kind"] == "numeric")
    entry["auc"] = None if auc is None else round(auc, 4)
    entry["leakage"] = auc is not None and auc > LEAKAGE_AUC
    entry["usable"] = entry["kind"] in ("numeric", "categorical") and len(set(values)) > 1 and not entry["leakage"]
    return entry


def separation_auc(values: np.ndarray, labels: np.ndarray, *, numeric: bool) -> float | None:
    """How well ``values (N,)`` alone separate the classes ``labels (N,)`` (class index, -1 = unlabelled).

    Numeric values: the rank AUC (Mann-Whitney U / (n_pos * n_neg), ties counting half), folded to
    ``max(auc, 1 - auc)`` since a column may separate either way. Categories: each case is scored by the
    positive rate of its category (in-sample, so it is an optimistic figure), then the same AUC. With more
    than two classes, the mean over classes of one-vs-rest AUCs (macro). ``None`` when fewer than two classes
    have a case with a value.
    """
    keep = labels >= 0
    values, labels = values[keep], labels[keep]
    classes = np.unique(labels)
    if len(classes) < 2:
        return None
    targets = classes[1:] if len(classes) == 2 else classes
    aucs = []
    for k in targets:
        positive = labels == k
        scores = values.astype(np.float64) if numeric else _category_rates(values, positive)
        auc = rank_auc(scores, positive)
        aucs.append(max(auc, 1.0 - auc))
    return float(np.mean(aucs))


def rank_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """The ROC AUC of ``scores (N,)`` for the boolean ``positive (N,)``, from average ranks (ties count half)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def two_scales(numbers: np.ndarray) -> dict | None:
    """The two groups of positive ``numbers (N,)`` separated by a gap wider than a factor :data:`SCALE_GAP`.

    Returns:
        ``{"low": [min, max, count], "high": [min, max, count]}`` around the widest such gap, or ``None``.
    """
    positive = np.sort(numbers[numbers > 0])
    if positive.size < 2:
        return None
    ratios = positive[1:] / positive[:-1]
    cut = int(np.argmax(ratios))
    if ratios[cut] <= SCALE_GAP:
        return None
    low, high = positive[:cut + 1], positive[cut + 1:]
    return {"low": [float(low[0]), float(low[-1]), int(low.size)],
            "high": [float(high[0]), float(high[-1]), int(high.size)]}


def _category_rates(values: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """``(N,)`` the share of positives among the cases of each case's category."""
    rate = {v: positive[values == v].mean() for v in set(values.tolist())}
    return np.array([rate[v] for v in values.tolist()], dtype=np.float64)


def _kind(values: list[str], num_cases: int) -> str:
    if not values:
        return "empty"
    if all(as_number(v) is not None for v in values):
        return "numeric"
    if len(values) == num_cases >= MIN_IDENTIFIER_CASES and len(set(values)) == len(values):
        return "identifier"
    return "categorical"


def _numeric_summary(numbers: np.ndarray) -> dict:
    return {"min": float(numbers.min()), "median": float(np.median(numbers)), "max": float(numbers.max()),
            "mean": round(float(numbers.mean()), 4), "std": round(float(numbers.std()), 4)}


def _class_labels(dataset: Dataset) -> np.ndarray | None:
    """``(N,)`` class index per case (-1 for an unlabelled one), or ``None`` when the task has no class labels."""
    if dataset.task.label_form != "class":
        return None
    labels = np.array([-1 if case.label is None else int(case.label) for case in dataset.cases], dtype=np.int64)
    return labels if (labels >= 0).any() else None


def _leakage_finding(column: str, entry: dict) -> Finding:
    return Finding("warning", "clinical.leakage", f"clinical column {column!r} alone separates the classes with AUC "
                   f"{entry['auc']:.2f} (above {LEAKAGE_AUC}); a score that defines the diagnosis (e.g. MMSE for "
                   "dementia) is leakage, not a feature, and a model given it learns little from the images. The plan "
                   f"leaves {column!r} out of the clinical inputs; add it to clinical.numeric or clinical.categorical "
                   "yourself only if it is measured before, and independently of, the diagnosis")


def scale_rule(column: str, scales: dict) -> str | None:
    """The ``clinical.rescale`` entry that brings the fewer values of a column on two scales onto the other's, when
    the scales are a power of ten (>= 100) apart; ``None`` otherwise (a factor no lost decimal point explains).

    >>> scale_rule("nWBV", {"low": [0.7, 0.84, 17], "high": [700, 840, 173]})
    'nWBV<24.2*1000'
    """
    (low_min, low_max, n_low), (high_min, high_max, n_high) = scales["low"], scales["high"]
    ratio = math.log10(math.sqrt(high_min * high_max) / math.sqrt(low_min * low_max))
    power = round(ratio)
    if power < 2 or abs(ratio - power) > POWER_TOLERANCE:
        return None
    limit = float(f"{math.sqrt(low_max * high_min):.3g}")  # in the gap between the two scales
    return f"{column}<{limit:g}*{10 ** power:g}" if n_low < n_high else f"{column}>{limit:g}*{10.0 ** -power:g}"


def _scale_finding(column: str, scales: dict) -> Finding:
    (low_min, low_max, n_low), (high_min, high_max, n_high) = scales["low"], scales["high"]
    rule = scale_rule(column, scales)
    fix = (f"The plan brings the {min(n_low, n_high)} values on the rarer scale onto the other (clinical.rescale "
           f"{rule!r}, a power of ten apart); check that this is what happened, or fix the values in the manifest"
           if rule else "Fix the values in the manifest: as an input, their z-scores would mix the two scales")
    return Finding("warning", "clinical.scale", f"clinical column {column!r} holds numbers on two scales: {n_low} from "
                   f"{low_min:g} to {low_max:g} and {n_high} from {high_min:g} to {high_max:g}, nothing between; a "
                   "decimal point or a unit was probably lost in some rows (0.78 written 780, grams for kilograms). "
                   + fix)
