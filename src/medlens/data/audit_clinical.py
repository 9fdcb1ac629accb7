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

Categories that differ only in case or spacing (``F``, ``f``, `` F``) are one category, written as most cases
write it (a ``clinical.spelling`` note; the encoder reads the other spellings as that one at prediction too). A
column of numbers written with decimal commas (``"0,715"`` quoted in a comma-separated file, where ``1,234`` could
be a thousands separator) is a ``clinical.decimal_comma`` warning, and the plan leaves it out.

A numeric column whose values fall on two scales with nothing between (OASIS-1's nWBV holds 0.78 in some rows
and 780 in others) is a ``clinical.scale`` warning: a decimal point or a unit was lost on the way, and z-scores
of such a column mix the two.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from medlens.data.clinical import as_number, category_key, is_missing
from medlens.data.dataset import Dataset, Finding
from medlens.data.table import DECIMAL_COMMA

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
    ids = [case.case_id for case in dataset.cases]
    card["clinical"] = {column: describe_column([case.clinical.get(column, "") for case in dataset.cases], labels,
                                                ids) for column in columns}
    entries = card["clinical"].items()
    findings = [_leakage_finding(column, entry) for column, entry in entries if entry["leakage"]]
    findings += [_decimal_comma_finding(column, entry) for column, entry in entries if entry.get("decimal_comma")]
    findings += [_spelling_finding(column, entry["spellings"]) for column, entry in entries if entry.get("spellings")]
    findings += [_not_number_finding(column, entry) for column, entry in entries if entry.get("not_numbers")]
    return findings + [_scale_finding(column, entry["scales"]) for column, entry in entries if entry.get("scales")]


def describe_column(cells: list[str], labels: np.ndarray | None, ids: list[str] | None = None) -> dict:
    """One column's card entry from its cells ``(N,)`` and the cases' class indices ``(N,)`` (-1: no label);
    ``ids`` name the cases in what the entry says about single cells.

    Returns:
        ``{"kind", "present", "missing", "numeric" | ("categories", "distinct"), "auc", "leakage", "usable"}``
        (JSON-ready): ``numeric`` = min / median / max / mean / std; ``categories`` = count per category (the
        :data:`MAX_CATEGORIES` most frequent), ``distinct`` = how many there are; ``auc`` = :func:`separation_auc`
        (``None`` without class labels); ``usable`` = numeric or categorical, more than one value, no leakage,
        no decimal comma. Also ``spellings`` (``{category: [other spellings]}``, categories that differ only in
        case or spacing, counted as one), ``decimal_comma`` (numbers written ``0,715``) and ``not_numbers``
        (``[[case, cell]]``: the few cells that keep a column of numbers from being numeric, ``<5`` or ``n.d.``)
        when they occur.
    """
    present = [i for i, cell in enumerate(cells) if not is_missing(cell)]
    values = [cells[i].strip() for i in present]
    entry: dict = {"kind": _kind(values, len(cells)), "present": len(present), "missing": len(cells) - len(present)}
    if entry["kind"] == "categorical":
        values, spellings = _one_spelling(values)
        if spellings:
            entry["spellings"] = spellings
        if all(DECIMAL_COMMA.fullmatch(v) or as_number(v) is not None for v in values):
            entry["decimal_comma"] = True
        elif odd := _not_numbers(values, [ids[i] if ids else str(i) for i in present]):
            entry["not_numbers"] = odd
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
    entry["usable"] = (entry["kind"] in ("numeric", "categorical") and len(set(values)) > 1 and not entry["leakage"]
                       and not entry.get("decimal_comma"))
    return entry


def _not_numbers(values: list[str], ids: list[str]) -> list[list[str]]:
    """``[[case, cell]]`` of the cells that are not numbers, when they are few (at most 10% of the values, and at
    least 5 values are numbers): a numeric column with a stray word. ``[]`` otherwise."""
    odd = [[case, value] for case, value in zip(ids, values) if as_number(value) is None]
    numbers = len(values) - len(odd)
    return odd if odd and numbers >= MIN_IDENTIFIER_CASES and len(odd) <= 0.1 * len(values) else []


def _one_spelling(values: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """``values`` with the categories that differ only in case or spacing written one way (the most frequent
    spelling), and ``{that spelling: [the others]}`` where there were several."""
    counts = Counter(values)
    groups: dict[str, list[str]] = {}
    for value, _ in counts.most_common():
        groups.setdefault(category_key(value), []).append(value)
    one = {value: group[0] for group in groups.values() for value in group}
    return [one[v] for v in values], {group[0]: group[1:] for group in groups.values() if len(group) > 1}


def separation_auc(values: np.ndarray, labels: np.ndarray, *, numeric: bool) -> float | None:
    """How well ``values (N,)`` alone separate the classes ``labels (N,)`` (class index, -1 = unlabelled).

    Numeric values: the rank AUC (Mann-Whitney U / (n_pos * n_neg), ties counting half), folded to
    ``max(auc, 1 - auc)`` since a column may separate either way. Categories: each case is scored by the
    positive rate among the *other* cases of its category (leave-one-out, so a column of many small categories,
    which would fit any labels in-sample, scores about 0.5), then the same AUC, taken at least 0.5 rather than
    folded (the rates already point the right way). With more than two classes, the mean over classes of
    one-vs-rest AUCs (macro). ``None`` when fewer than two classes have a case with a value.
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
        if numeric:
            auc = rank_auc(values.astype(np.float64), positive)
            aucs.append(max(auc, 1.0 - auc))
        else:
            aucs.append(max(rank_auc(_category_rates(values, positive), positive), 0.5))
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
    """``(N,)`` the share of positives among the other cases of each case's category (leave-one-out); a case
    alone in its category gets the share among all other cases."""
    own = positive.astype(np.float64)
    totals = {v: (float(positive[values == v].sum()), int((values == v).sum())) for v in set(values.tolist())}
    everyone = (float(own.sum()), own.size)
    rates = []
    for value, mine in zip(values.tolist(), own):
        hits, n = totals[value] if totals[value][1] > 1 else everyone
        rates.append((hits - mine) / (n - 1) if n > 1 else 0.5)
    return np.array(rates, dtype=np.float64)


def _kind(values: list[str], num_cases: int) -> str:
    if not values:
        return "empty"
    plain = sum(as_number(v) is not None for v in values)
    if plain == len(values):
        return "numeric"
    numbers = plain + sum(bool(DECIMAL_COMMA.fullmatch(v)) for v in values)  # 0,715 is a number written otherwise
    # a different value in every case is an identifier, unless they are (mostly) numbers: a measurement
    unique = len(values) == num_cases >= MIN_IDENTIFIER_CASES and len(set(values)) == len(values)
    if unique and numbers < len(values) / 2:
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


def _decimal_comma_finding(column: str, entry: dict) -> Finding:
    example = next(iter(entry.get("categories") or {}), "")
    return Finding("warning", "clinical.decimal_comma", f"clinical column {column!r} holds numbers written with a "
                   f"decimal comma ({example!r}) in a comma-separated file, where a comma may also separate "
                   "thousands, so medlens reads them as text and the plan leaves the column out. Write decimals "
                   "with a point, or save the sheet with semicolons between columns (where a decimal comma is "
                   "read as a point)")


def _not_number_finding(column: str, entry: dict) -> Finding:
    odd = entry["not_numbers"]
    shown = "; ".join(f"case {case}: {cell!r}" for case, cell in odd[:5])
    return Finding("warning", "clinical.not_number", f"clinical column {column!r} holds numbers in "
                   f"{entry['present'] - len(odd)} case(s) and {len(odd)} cell(s) that are not ({shown}"
                   f"{' ...' if len(odd) > 5 else ''}), so it reads as {entry.get('distinct')} categories and the plan "
                   "does not use it as a number. Write each as a plain number (for '<5', a value below a detection "
                   "limit, the limit itself), or leave the cell empty when the value is not known", [c for c, _ in odd])


def _spelling_finding(column: str, spellings: dict[str, list[str]]) -> Finding:
    said = "; ".join(f"{kept} (also written {', '.join(map(repr, others))})" for kept, others in spellings.items())
    return Finding("info", "clinical.spelling", f"clinical column {column!r}: categories that differ only in case or "
                   f"spacing are one: {said}; a prediction may write any of them")


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
