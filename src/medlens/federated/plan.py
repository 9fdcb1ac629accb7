"""One plan for every site: the task's plan on the sites' merged summaries, and the federation's settings.

The task plans (:meth:`medlens.tasks.Task.plan`) from one card merged out of the site summaries
(:mod:`medlens.federated.summaries`): counts summed, intensity and size statistics pooled as estimates of the
pooled data's (a mixture of the sites' quantile curves, weighted by cases), so normalisation, input size and
batch are the same at every site. :class:`FederationPlan` holds what is federated: the strategy, chosen by
how different the sites are, rounds x local epochs from the time budget (re-planned after round 1 at the pace it
measured, :func:`replan_after_first_round`), differential privacy, each with its reason; it is written as
``federation.yaml`` beside the task's ``plan.yaml``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import yaml

from medlens._files import write_text_atomic
from medlens.config import Config
from medlens.errors import ConfigError
from medlens.federated.summaries import check_summaries, train_count

Strategy = Literal["fedavg", "fedprox", "fedbn"]
STRATEGIES = ("fedavg", "fedprox", "fedbn")
JSD_THRESHOLD = 0.05  # largest pairwise Jensen-Shannon divergence (bits) of label balance above which: FedProx
SHIFT_THRESHOLD = 0.25  # sites' median intensities apart by this share of the typical 1-99% range: FedBN
SCALE_THRESHOLD = 1.5  # ... or one site's 1-99% intensity range this many times another's: FedBN
PROXIMAL_MU = 0.01
DEFAULT_ROUNDS, MAX_SITE_EPOCHS, MIN_BATCH = 10, 100, 4
EXCHANGE_SHARE = 0.25  # re-planned after round 1: at most this share of the budget goes to the rounds' exchanges


@dataclass(frozen=True)
class FederationPlan:
    """What the federation does, beside the task's plan (``federation.yaml``).

    Attributes:
        strategy: ``fedavg`` (weights averaged by training cases), ``fedprox`` (the same, sites' local training
            pulled toward the global weights by ``proximal_mu / 2 * ||w - w_global||^2``), ``fedbn`` (batch-norm
            weights and statistics stay at each site; the rest is averaged).
        rounds, local_epochs: rounds of the federation; epochs each site trains per round.
        min_sites: a round goes on when at least this many sites answer.
        dp_epsilon: DP-SGD target epsilon per site over the whole run (``None``: no differential privacy).
        dp_delta: DP delta per site (``None``: ``1 / (10 * n_train)`` at each site).
        dp_max_grad_norm: DP-SGD's per-example gradient clipping norm.
        reasons: ``{field: why}``.
    """

    strategy: Strategy
    rounds: int
    local_epochs: int
    proximal_mu: float = 0.0
    min_sites: int = 2
    dp_epsilon: float | None = None
    dp_delta: float | None = None
    dp_max_grad_norm: float = 1.0
    reasons: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"federation strategy {self.strategy!r}: choose one of {', '.join(STRATEGIES)}")
        for name in ("rounds", "local_epochs", "min_sites"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"federation {name}={value!r}: give a whole number >= 1")
        if self.proximal_mu < 0 or (self.dp_epsilon is not None and self.dp_epsilon <= 0):
            raise ConfigError(f"federation proximal_mu={self.proximal_mu}, dp_epsilon={self.dp_epsilon}: give "
                              "proximal_mu >= 0 and dp_epsilon > 0 (or leave it out for no differential privacy)")


def write_federation(path: str | Path, plan: FederationPlan) -> Path:
    """``federation.yaml``: every value, then the reason for each (written atomically)."""
    values = {k: v for k, v in dataclasses.asdict(plan).items() if k != "reasons"}
    text = ("# medlens federation plan: edit a value to change it; `reasons` says why each was chosen\n"
            + yaml.safe_dump(values, sort_keys=False) + yaml.safe_dump({"reasons": plan.reasons}, sort_keys=False,
                                                                       width=120))
    return write_text_atomic(path, text)


def read_federation(path: str | Path) -> FederationPlan:
    """Read ``federation.yaml``; unknown keys are refused with the nearest known one.

    Raises:
        ConfigError: unreadable file, unknown key, invalid value.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not a readable federation plan ({exc})") from None
    known = [f.name for f in dataclasses.fields(FederationPlan)]
    for key in raw:
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            raise ConfigError(f"{path}: unknown key `{key}`" + (f"; did you mean `{near[0]}`?" if near else
                                                                f" (known: {', '.join(known)})"))
    try:
        return FederationPlan(**raw)
    except TypeError as exc:
        raise ConfigError(f"{path}: {exc}; it needs strategy, rounds and local_epochs") from None


def plan_federation(summaries: dict[str, dict], *, rounds: int | None = None, time_budget_s: float | None = None,
                    dp_epsilon: float | None = None, min_sites: int | None = None, device: str | None = None,
                    probe: bool = True, task_reasons: dict[str, str] | None = None, strategy: str | None = None,
                    shared_machine: bool = False, local_epochs: int | None = None) -> tuple[Config, FederationPlan]:
    """The task plan every site trains with, and the federation plan.

    Args:
        summaries: ``{site: summary}`` from :func:`~medlens.federated.summaries.site_summary`.
        rounds: rounds of the federation (default: from the time budget, at most 10).
        time_budget_s: training time to plan for (the task's default when ``None``).
        dp_epsilon: DP-SGD target epsilon per site (``None``: off).
        min_sites: sites a round needs (default 2, or 1 with one site).
        device: ``cpu`` / ``gpu`` the sites train on (default: this machine's).
        probe: time the network on this machine to plan epochs (off in unit tests).
        task_reasons: filled with the task plan's ``{"section.key": reason}`` when given (for ``plan.yaml``).
        strategy: ``fedavg`` / ``fedprox`` / ``fedbn`` instead of the one the sites' differences suggest.
        shared_machine: every site trains on this machine (``medlens federate``), so their rounds share its CPUs.
        local_epochs: epochs each site trains per round (default: the budget's epochs shared over the rounds).

    Raises:
        ConfigError: the sites disagree, or one cannot hold a batch (see :func:`check_summaries`).
    """
    from medlens.tasks import task_for

    check_summaries(summaries)
    card = merged_card(summaries)
    device = device or _this_device()
    config, reasons = task_for(card["dataset"]["task"]).plan(card, time_budget_s=time_budget_s, device=device,
                                                             processes=1, probe=probe)
    config = _fit_batch(config, reasons, summaries)
    config = _series_rules(config, reasons, summaries)
    check_summaries(summaries, batch_size=config.train.batch_size)
    fed: dict[str, str] = {}
    strategy, mu = choose_strategy(summaries, config, dp_epsilon, fed, asked=strategy)
    config = skew_norm(config, summaries, strategy, dp_epsilon, reasons)  # before the timing: the network it times
    rounds, planned_local = _schedule(config, reasons, summaries, rounds, fed, shared_machine)
    if local_epochs is not None:
        if local_epochs < 1:
            raise ConfigError(f"--local-epochs {local_epochs}: give 1 or more")
        fed["local_epochs"] = f"{local_epochs}: asked for (the budget suggested {planned_local})"
    local_epochs = local_epochs or planned_local
    sites = len(summaries)
    min_sites = min_sites or min(2, sites)
    fed["min_sites"] = (f"a round goes on when {min_sites} of the {sites} site(s) answer"
                        if min_sites < sites else f"every one of the {sites} site(s) must answer each round")
    config = _federated_train(config, reasons, rounds, local_epochs, dp_epsilon, fed)
    plan = FederationPlan(strategy=strategy, rounds=rounds, local_epochs=local_epochs, proximal_mu=mu,
                          min_sites=min_sites, dp_epsilon=dp_epsilon, reasons=fed)
    if task_reasons is not None:
        task_reasons.update(reasons)
    return config, plan


def _series_rules(config: Config, reasons: dict, summaries: dict[str, dict]) -> Config:
    """Sites of DICOM studies: their ``--series-rule`` texts kept in the plan when every site picks its series with
    the same ones (so that ``predict RUN STUDY`` reads a new study alike); none kept, with the reason, when they
    differ (each site names the same views its own way)."""
    rules = {name: tuple(summary.get("series_rules") or ()) for name, summary in summaries.items()}
    if not any(rules.values()):
        return config
    if len(set(rules.values())) > 1:
        reasons["dataset.series_rules"] = (
            "none kept: the sites pick their series with different rules (" + "; ".join(
                f"{name}: {', '.join(r) or 'none'}" for name, r in rules.items()) + "); each reads its own studies "
            "with its own, and a new case is predicted from its series given as views (--input NAME=SERIES_FOLDER)")
        return config
    reasons["dataset.series_rules"] = ("every site reads its DICOM studies with these rules (--series-rule): kept, so "
                                       "that `medlens predict RUN STUDY_FOLDER` reads a new study alike")
    return replace(config, dataset=replace(config.dataset, series_rules=next(iter(rules.values()))))


def _this_device() -> str:
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


# ---- the merged card ----------------------------------------------------------------------------------


def merged_card(summaries: dict[str, dict]) -> dict:
    """One dataset card out of the site summaries: what :meth:`Task.plan` reads of a card (dataset, counts, images,
    masks, views, clinical columns), counts summed, statistics pooled (:func:`pooled_quantiles`), weighted by each
    site's readable cases."""
    names, items = list(summaries), list(summaries.values())
    first = items[0]["dataset"]
    weights = [max(float(s["dataset"].get("num_readable") or 0), 1.0) for s in items]
    modalities = Counter(s["dataset"].get("modality") for s in items if s["dataset"].get("modality"))
    card = {
        "medlens_card_version": 1,
        "dataset": {**first, "source": f"federation of {len(names)} sites ({', '.join(names)})",
                    "num_cases": sum(int(s["dataset"].get("num_cases") or 0) for s in items),
                    "num_readable": sum(int(s["dataset"].get("num_readable") or 0) for s in items),
                    "modality": modalities.most_common(1)[0][0] if modalities else None, "meta": {}},
        "counts": _merged_counts(items),
        "images": _merged_images([s["images"] for s in items], weights),
        "unreadable": [], "duplicates": [], "findings": [], "fingerprint": "",
    }
    masks = [s.get("masks") for s in items]
    if all(masks):
        card["masks"] = _merged_masks(masks, weights)
    if items[0].get("views"):  # check_summaries: every site names the same views
        card["views"] = _merged_views([s["views"] for s in items])
    if any(s.get("clinical") for s in items):
        card["clinical"] = _merged_clinical({name: s.get("clinical") or {} for name, s in summaries.items()})
    return card


def _merged_views(views: list[dict]) -> dict:
    """The views of every site: co-registered only where they are at every site; cases with / without each summed."""
    names = views[0]["names"]
    per_view = {}
    for name in names:
        entries = [v.get("per_view", {}).get(name) or {} for v in views]
        channels = Counter(e["channels"] for e in entries if e.get("channels"))
        per_view[name] = {"cases": sum(int(e.get("cases") or 0) for e in entries),
                          "missing": sum(int(e.get("missing") or 0) for e in entries),
                          **({"channels": channels.most_common(1)[0][0]} if channels else {})}
    together = all(v.get("co_registered") for v in views)
    return {"names": names, "co_registered": together, "per_view": per_view,
            "grid_note": "" if together else "the views share one grid at some sites only"}


def _merged_clinical(blocks: dict[str, dict]) -> dict:
    """The clinical columns of every site as one card entry each (what :func:`plan_clinical` reads).

    Counts and categories are summed; the separation AUC is the sites' mean weighted by their cases with a value (a
    column that defines the label does so at every site); two scales are joined where the sites' groups do not
    overlap. A column that some site lacks, or that is numeric at one site and not at another, is described as
    such, and the plan leaves it out with that reason.
    """
    from medlens.tasks.classification.plan_inputs import LEAKAGE_AUC

    names = list(blocks)
    columns = list(dict.fromkeys(c for block in blocks.values() for c in block))
    merged = {}
    for column in columns:
        lacking = [n for n in names if column not in blocks[n]]
        entries = [blocks[n][column] for n in names if column in blocks[n]]
        present = sum(int(e.get("present") or 0) for e in entries)
        if lacking:
            merged[column] = {"kind": "absent", "present": present, "why": f"not in the manifest at site(s) "
                              f"{', '.join(lacking)}; every site must have the column"}
            continue
        kinds = {n: blocks[n][column].get("kind") for n in names if blocks[n][column].get("kind") != "empty"}
        if len(set(kinds.values())) > 1:
            merged[column] = {"kind": "inconsistent", "present": present, "why": "read as " + ", ".join(
                f"{k} at {n}" for n, k in kinds.items()) + "; make its values the same kind at every site"}
            continue
        entry = {"kind": next(iter(kinds.values()), "empty"), "present": present,
                 "missing": sum(int(e.get("missing") or 0) for e in entries)}
        scored = [(float(e["auc"]), int(e.get("present") or 0)) for e in entries if e.get("auc") is not None]
        if scored and sum(w for _, w in scored) > 0:
            entry["auc"] = round(sum(a * w for a, w in scored) / sum(w for _, w in scored), 4)
        entry["leakage"] = entry.get("auc") is not None and entry["auc"] > LEAKAGE_AUC
        if entry["kind"] == "categorical":
            if all("categories" in e for e in entries):
                entry["categories"] = dict(sum((Counter(e["categories"]) for e in entries), Counter()))
            entry["distinct"] = max([len(entry.get("categories") or {})] + [int(e.get("distinct") or 0)
                                                                             for e in entries])
        if scales := _merged_scales([e.get("scales") for e in entries]):
            entry["scales"] = scales
        merged[column] = entry
    return merged


def _merged_scales(parts: list[dict | None]) -> dict | None:
    """The sites' two value scales joined: each group's min / max / count, when the groups do not overlap."""
    parts = [p for p in parts if p]
    if not parts:
        return None
    low = [min(p["low"][0] for p in parts), max(p["low"][1] for p in parts), sum(p["low"][2] for p in parts)]
    high = [min(p["high"][0] for p in parts), max(p["high"][1] for p in parts), sum(p["high"][2] for p in parts)]
    return {"low": low, "high": high} if low[1] < high[0] else None


def _merged_counts(items: list[dict]) -> dict:
    by_split: dict[str, Counter] = {}
    for summary in items:
        for split, counts in summary["counts"]["by_split"].items():
            by_split.setdefault(split, Counter()).update(counts)
    total = sum((Counter(s["counts"]["total"]) for s in items), Counter())
    patients = sum((Counter(s["counts"].get("patients_by_split") or {}) for s in items), Counter())
    return {"by_split": {k: dict(v) for k, v in by_split.items()}, "total": dict(total),
            "patients_by_split": dict(patients)}


def _merged_images(images: list[dict], weights: list[float]) -> dict:
    first = images[0]
    merged = {"distinct_shapes": sum(int(i.get("distinct_shapes") or 0) for i in images),
              "channels": dict(sum((Counter(i.get("channels") or {}) for i in images), Counter())),
              "dtypes": dict(sum((Counter(i.get("dtypes") or {}) for i in images), Counter())),
              "spacing_known": all(i.get("spacing_known") for i in images)}
    merged["shape"] = _merged_axes([i["shape"] for i in images], weights, first["shape"])
    spacing = [i.get("spacing_mm") for i in images]
    if all(spacing):
        merged["spacing_mm"] = _merged_axes(spacing, weights, first["spacing_mm"])
    merged["intensity"] = _merged_intensity([i["intensity"] for i in images], weights)
    return merged


AXIS_KNOTS = {"min": 0.0, "p10": 10.0, "median": 50.0, "max": 100.0}


def _merged_axes(summaries: list[dict], weights: list[float], first: dict) -> dict:
    """Per axis ``{min, p10, median, max}`` of the pooled data (min / max exact, the others estimated)."""
    merged = {}
    for axis in first:
        curves = [{AXIS_KNOTS[k]: float(s[axis][k]) for k in AXIS_KNOTS} for s in summaries]
        p10, median = pooled_quantiles(curves, weights, (10.0, 50.0))
        merged[axis] = {"min": min(c[0.0] for c in curves), "p10": p10, "median": median,
                        "max": max(c[100.0] for c in curves)}
    return merged


def _merged_intensity(intensities: list[dict], weights: list[float]) -> dict:
    """Pooled intensity statistics: min / max exact, percentiles estimated from the sites' quantile curves, mean
    and std (the card's per-image averages) weighted by cases."""
    curves = [{0.0: float(i["min"]), **{float(q): float(v) for q, v in i["percentiles"].items()},
               100.0: float(i["max"])} for i in intensities]
    keys = list(intensities[0]["percentiles"])
    values = pooled_quantiles(curves, weights, [float(q) for q in keys])
    w = np.asarray(weights) / sum(weights)
    return {"min": min(float(i["min"]) for i in intensities), "max": max(float(i["max"]) for i in intensities),
            "mean": float(sum(wk * i["mean"] for wk, i in zip(w, intensities))),
            "std": float(sum(wk * i["std"] for wk, i in zip(w, intensities))),
            "percentiles": dict(zip(keys, values))}


def _merged_masks(masks: list[dict], weights: list[float]) -> dict:
    merged = {"declared_labels": masks[0].get("declared_labels") or {},
              "cases_with_label": dict(sum((Counter(m.get("cases_with_label") or {}) for m in masks), Counter())),
              "label_voxels": dict(sum((Counter(m.get("label_voxels") or {}) for m in masks), Counter())),
              "all_background": []}
    fractions = [(m["foreground_fraction"], w) for m, w in zip(masks, weights)
                 if m.get("foreground_fraction") is not None]
    merged["foreground_fraction"] = (sum(f * w for f, w in fractions) / sum(w for _, w in fractions)
                                     if fractions else None)
    merged["foreground_intensity"] = _merged_foreground([m.get("foreground_intensity") for m in masks])
    return merged


def _merged_foreground(parts: list[dict | None]) -> dict | None:
    """Foreground intensities pooled: percentiles estimated, mean and std exact (the pooled samples' moments)."""
    parts = [p for p in parts if p]
    if not parts:
        return None
    n = np.asarray([float(p["voxels_sampled"]) for p in parts])
    means, stds = np.asarray([p["mean"] for p in parts]), np.asarray([p["std"] for p in parts])
    mean = float((n * means).sum() / n.sum())
    std = float(math.sqrt((n * (stds ** 2 + (means - mean) ** 2)).sum() / n.sum()))
    keys = list(parts[0]["percentiles"])
    curves = [{float(q): float(v) for q, v in p["percentiles"].items()} for p in parts]
    return {"percentiles": dict(zip(keys, pooled_quantiles(curves, list(n), [float(q) for q in keys]))),
            "mean": mean, "std": std, "voxels_sampled": int(n.sum())}


def pooled_quantiles(curves: list[dict[float, float]], weights, qs) -> list[float]:
    """Quantiles (percent) of a mixture of distributions known by a few quantiles each.

    Each site's cumulative distribution is taken as piecewise linear through its ``{percent: value}`` points
    (0 below the lowest); the mixture's is their ``weights``-weighted mean, evaluated at every site's points,
    and inverted by linear interpolation. Exact for identical sites; an estimate otherwise.

    Returns:
        ``len(qs)`` values.
    """
    grid = np.unique(np.concatenate([np.asarray(list(c.values()), dtype=np.float64) for c in curves]))
    w = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    cdf = sum(wk * _site_cdf(c, grid) for wk, c in zip(w, curves))
    cdf = np.maximum.accumulate(cdf)
    return [float(np.interp(q, cdf, grid)) for q in qs]


def _site_cdf(curve: dict[float, float], grid: np.ndarray) -> np.ndarray:
    """A site's percent-below at ``grid``; where several points share a value, the highest percent holds."""
    top: dict[float, float] = {}
    for q, v in curve.items():
        top[v] = max(top.get(v, 0.0), q)
    values = np.asarray(sorted(top))
    return np.interp(grid, values, [top[v] for v in values], left=0.0, right=100.0)


# ---- the federation's choices -------------------------------------------------------------------------


def label_divergence(summaries: dict[str, dict]) -> tuple[float, tuple[str, str] | None]:
    """The largest Jensen-Shannon divergence (base 2: 0 = same balance, 1 = no label in common) between two
    sites' training label distributions (classes of class labels; voxels per label for masks), and the pair."""
    dists = {name: _label_distribution(s) for name, s in summaries.items()}
    dists = {k: v for k, v in dists.items() if v is not None}
    best, pair = 0.0, None
    names = list(dists)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            value = jensen_shannon(dists[a], dists[b])
            if value > best:
                best, pair = value, (a, b)
    return best, pair


def _label_distribution(summary: dict) -> np.ndarray | None:
    classes = summary["dataset"]["class_names"]
    if summary.get("masks"):
        voxels = summary["masks"].get("label_voxels") or {}
        counts = np.asarray([float(v) for _, v in sorted(voxels.items(), key=lambda kv: int(kv[0]))])
    else:
        train = summary["counts"]["by_split"].get("train") or {}
        counts = np.asarray([float(train.get(c, 0)) for c in classes])
    return counts / counts.sum() if counts.size and counts.sum() > 0 else None


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits: ``H((p + q) / 2) - (H(p) + H(q)) / 2`` (Lin, IEEE Trans. Inf. Theory
    1991); symmetric, in [0, 1]."""
    size = max(len(p), len(q))
    p, q = np.pad(p, (0, size - len(p))), np.pad(q, (0, size - len(q)))
    entropy = lambda x: float(-(x[x > 0] * np.log2(x[x > 0])).sum())  # noqa: E731
    return max(entropy((p + q) / 2) - (entropy(p) + entropy(q)) / 2, 0.0)


def intensity_shift(summaries: dict[str, dict]) -> tuple[float, float]:
    """How far apart the sites' raw intensities are: ``(shift, scale)``, the largest gap between two sites'
    median intensities over the median 1-99% range, and the largest ratio of two sites' 1-99% ranges."""
    medians, spreads = [], []
    for summary in summaries.values():
        pct = summary["images"]["intensity"]["percentiles"]
        medians.append(float(pct["50"]))
        spreads.append(max(float(pct["99"]) - float(pct["1"]), 1e-12))
    shift = (max(medians) - min(medians)) / float(np.median(spreads))
    return shift, max(spreads) / min(spreads)


def choose_strategy(summaries: dict[str, dict], config: Config, dp_epsilon: float | None,
                    reasons: dict[str, str], *, asked: str | None = None) -> tuple[str, float]:
    """``(strategy, proximal_mu)`` by how different the sites are (or as ``asked``), with the reasons.

    FedBN (Li et al., ICLR 2021) when the intensities differ strongly (feature shift: each site keeps its batch-norm
    statistics), if the network has batch norm; FedProx (Li et al., MLSys 2020, mu 0.01) when the label balance
    differs strongly (label skew pulls local models apart); else FedAvg (McMahan et al., AISTATS 2017).

    Raises:
        ConfigError: ``asked`` is not a strategy, or FedBN for a network without batch norm (or under DP).
    """
    if asked is not None:
        return _asked_strategy(summaries, config, dp_epsilon, reasons, asked)
    jsd, pair = label_divergence(summaries)
    shift, scale = intensity_shift(summaries)
    skew = (f"label balance: largest Jensen-Shannon divergence {jsd:.3f} bits"
            + (f" (sites {pair[0]} and {pair[1]})" if pair else "") + f", threshold {JSD_THRESHOLD}")
    spread = (f"intensities: median gap {shift:.2f} of the 1-99% range (threshold {SHIFT_THRESHOLD}), range ratio "
              f"{scale:.2f} (threshold {SCALE_THRESHOLD})")
    shifted = shift > SHIFT_THRESHOLD or scale > SCALE_THRESHOLD
    batch_norm = dp_epsilon is None and has_batch_norm(config)
    if shifted and batch_norm:
        reasons["strategy"] = (f"FedBN: the sites' {spread} differ strongly, so each keeps its own batch-norm "
                               f"weights and statistics and the rest is averaged (Li et al., ICLR 2021); {skew}")
        return "fedbn", 0.0
    why_not_bn = ("" if not shifted else "; FedBN would suit the intensity shift, but the network has no batch norm"
                  + (" under differential privacy (group norm)" if dp_epsilon is not None else ""))
    if jsd > JSD_THRESHOLD:
        reasons["strategy"] = (f"FedProx: {skew}: label skew pulls the sites' local models apart, so local training "
                               f"is held near the global weights (Li et al., MLSys 2020); {spread}{why_not_bn}")
        reasons["proximal_mu"] = (f"{PROXIMAL_MU}: the proximal term mu/2 * ||w - w_global||^2 at a weight FedProx's "
                                  "authors found robust across their benchmarks")
        return "fedprox", PROXIMAL_MU
    reasons["strategy"] = (f"FedAvg: the sites are alike ({skew}; {spread}){why_not_bn}; weights averaged by "
                           "training cases (McMahan et al., AISTATS 2017)")
    reasons["proximal_mu"] = "0: no proximal term under FedAvg"
    return "fedavg", 0.0


def skew_norm(config: Config, summaries: dict[str, dict], strategy: str, dp_epsilon: float | None,
              reasons: dict[str, str]) -> Config:
    """``model.norm: group`` when the sites' label balance differs strongly (the reason in ``reasons``).

    Under label skew, batch norm's running statistics are each site's own class mixture, and their average matches
    no site nor the pooled data; group norm normalises each example by itself, which recovers most of what label
    skew costs batch-normalised networks (Hsieh et al., ICML 2020, "The non-IID data quagmire of decentralized
    machine learning"). PneumoniaMNIST in 4 Dirichlet(0.5) sites: pooled validation AUC 0.978 -> 0.991 at the
    same budget (benchmarks/federated.py). Kept as planned under FedBN (which keeps each site's batch norm), under DP
    (already group norm, :func:`private_network`), and for networks without batch norm or that do not take
    ``model.norm`` (detection's).
    """
    jsd, _ = label_divergence(summaries)
    if jsd <= JSD_THRESHOLD or strategy == "fedbn" or dp_epsilon is not None or not has_batch_norm(config):
        return config
    grouped = replace(config, model=replace(config.model, norm="group"))
    if has_batch_norm(grouped):  # a task whose networks do not take model.norm (detection)
        return config
    reasons["model.norm"] = (f"group: the sites' label balance differs (largest Jensen-Shannon divergence {jsd:.3f} "
                             f"bits, threshold {JSD_THRESHOLD}), and batch norm's statistics, each site's own class "
                             "mix, average to no site's; group norm normalises each example by itself (Hsieh et al., "
                             "ICML 2020)")
    return grouped


def _asked_strategy(summaries: dict[str, dict], config: Config, dp_epsilon: float | None, reasons: dict[str, str],
                    asked: str) -> tuple[str, float]:
    if asked not in STRATEGIES:
        raise ConfigError(f"--strategy {asked}: choose one of {', '.join(STRATEGIES)}")
    if asked == "fedbn" and (dp_epsilon is not None or not has_batch_norm(config)):
        why = "differential privacy replaces batch norm by group norm" if dp_epsilon is not None else (
            f"{config.model.name} has no batch norm")
        raise ConfigError(f"--strategy fedbn keeps each site's batch-norm layers, but {why}: choose fedavg or fedprox")
    suggested, _ = choose_strategy(summaries, config, dp_epsilon, {})
    reasons["strategy"] = f"{asked}: asked for (--strategy); the sites' differences suggest {suggested}"
    mu = PROXIMAL_MU if asked == "fedprox" else 0.0
    reasons["proximal_mu"] = f"{mu}" + (": FedProx's robust default (Li et al., MLSys 2020)" if mu else ": none")
    return asked, mu


def has_batch_norm(config: Config) -> bool:
    """Whether the plan's network normalises with batch norm (built once on the CPU to look)."""
    import torch

    from medlens.tasks import task_for

    model = task_for(config).build_model(config)
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _fit_batch(config: Config, reasons: dict, summaries: dict[str, dict]) -> Config:
    """The planned batch, lowered (by halves, not below :data:`MIN_BATCH`) until the smallest site holds one."""
    smallest = min(summaries, key=lambda n: train_count(summaries[n]))
    n, batch = train_count(summaries[smallest]), config.train.batch_size
    if n >= batch:
        return config
    lowered = batch
    while lowered > MIN_BATCH and lowered > n:
        lowered //= 2  # below MIN_BATCH the site is refused (check_summaries), naming it
    reasons["train.batch_size"] = (f"{lowered}: the planned {batch} lowered so site {smallest}'s {n} training cases "
                                   "hold at least one batch")
    return replace(config, train=replace(config.train, batch_size=lowered))


def _schedule(config: Config, reasons: dict, summaries: dict[str, dict], rounds: int | None,
              fed: dict[str, str], shared_machine: bool = False) -> tuple[int, int]:
    """Rounds x local epochs: the epochs the task's timing fits in the budget, at each site's pace."""
    planned = config.train.max_epochs
    timed = not reasons.get("train.max_epochs", "").startswith("default")
    counts = [train_count(s) for s in summaries.values()]
    if timed and shared_machine:  # every site's epoch on this machine's CPUs: the timed epoch of all cases
        epochs = int(np.clip(planned, 1, MAX_SITE_EPOCHS))
        why = (f"the task's timing fits {planned} epoch(s) of all {sum(counts)} training cases in the budget on this "
               "machine, and every site trains here (federate), sharing it")
    elif timed:  # the task timed an epoch over every site's cases; the sites train in parallel, each on its own
        epochs = int(np.clip(int(planned * sum(counts) / max(counts)), 1, MAX_SITE_EPOCHS))
        why = (f"the task's timing fits {planned} epoch(s) of all {sum(counts)} training cases in the budget on this "
               f"machine; the sites train side by side, each on its own machine, the largest on {max(counts)}, so "
               f"about {epochs} fit")
    else:
        epochs, why = planned, f"{planned} epoch(s): the task's default (the network was not timed)"
    if rounds is not None:
        if rounds < 1:
            raise ConfigError(f"--rounds {rounds}: give 1 or more")
        fed["rounds"] = f"{rounds}: asked for"
    else:
        rounds = min(epochs, DEFAULT_ROUNDS)
        fed["rounds"] = f"{rounds}: {why}; at most {DEFAULT_ROUNDS} rounds, so each has a few local epochs"
    local = max(1, epochs // rounds)
    fed["local_epochs"] = (f"{local}: {epochs} epoch(s) shared over {rounds} round(s) (FedAvg's local epochs, McMahan "
                           "et al. 2017: more local work per round, fewer exchanges)")
    return rounds, local


def replan_after_first_round(plan: FederationPlan, record: dict, budget_s: float) -> FederationPlan | None:
    """Rounds x local epochs for the rest of the budget, at the pace round 1 measured (``record``, its history entry).

    The planner's timing counts the sites' epochs only. A round also costs an exchange: Flower starts a new process
    per message at each site, which hands the work to the site's warm worker (:mod:`medlens.federated.worker`);
    the site opens its data and scores the global model, then the weights travel and are averaged. Round 1
    measures both: the slowest site's seconds per local epoch, and the rest of the round as the exchange's fixed
    cost. The remaining rounds are as many as keep all exchanges within
    :data:`EXCHANGE_SHARE` of the budget (at most :data:`DEFAULT_ROUNDS` in all), each with the local epochs that
    then fit (at most :data:`MAX_SITE_EPOCHS` in all).

    Returns:
        The plan for rounds 2..R, its reasons saying why; ``None`` when round 1 measured no fit, or the budget has
        no room for a second round (the budget stop then ends the run).
    """
    fits = [float(s["seconds"]) for s in record.get("sites", {}).values() if s.get("seconds")]
    took = float(record.get("seconds") or 0.0)
    if not fits or not budget_s or budget_s - took < took:
        return None
    epoch_s = max(max(fits) / plan.local_epochs, 1e-3)
    exchange_s = max(took - max(fits), 0.0)
    left = budget_s - took
    most = int(EXCHANGE_SHARE * budget_s // max(exchange_s, 1e-3)) - 1  # rounds after round 1
    rounds_left = int(np.clip(most, 1, DEFAULT_ROUNDS - 1))
    while rounds_left > 1 and (left / rounds_left - exchange_s) < epoch_s:  # each round holds an epoch
        rounds_left -= 1
    most_local = max((MAX_SITE_EPOCHS - plan.local_epochs) // rounds_left, 1)  # at most 100 epochs in all, as planned
    local = int(np.clip((left / rounds_left - exchange_s) // epoch_s, 1, most_local))
    why = (f"re-planned after round 1, which took {took:.0f} s: {epoch_s:.1f} s per local epoch at the slowest site "
           f"and {exchange_s:.0f} s of exchange (processes started, data opened, the global model scored, weights "
           f"sent); {left:.0f} s of the {budget_s:.0f} s budget left")
    reasons = {**plan.reasons,
               "rounds": f"{1 + rounds_left}: {why}; as many rounds as keep the exchanges within "
                         f"{EXCHANGE_SHARE:.0%} of the budget (at most {DEFAULT_ROUNDS})",
               "local_epochs": f"{local} from round 2 ({plan.local_epochs} in round 1): what fits each of the "
                               f"{rounds_left} remaining round(s) beside its exchange"}
    return replace(plan, rounds=1 + rounds_left, local_epochs=local, reasons=reasons)


def _federated_train(config: Config, reasons: dict, rounds: int, local_epochs: int, dp_epsilon: float | None,
                     fed: dict[str, str]) -> Config:
    """The task plan as the sites train it: epochs = rounds x local epochs, no race, no weight average."""
    train = replace(config.train, max_epochs=rounds * local_epochs, race=(), race_share=0.0, ema_fraction=0.0)
    reasons["train.max_epochs"] = f"{rounds} round(s) x {local_epochs} local epoch(s) (federation.yaml)"
    reasons["train.race"] = "no race: every site trains the one planned network"
    reasons["train.ema_fraction"] = "off: the global model is the average of the sites' weights each round"
    if dp_epsilon is not None:
        fed["dp_epsilon"] = (f"{dp_epsilon}: DP-SGD through Opacus at each site, this epsilon spent at most over the "
                             "whole run; the network is made DP-compatible at every site and at the server by "
                             "medlens.federated.privacy.dp_compatible (batch norm -> group norm, Opacus "
                             "ModuleValidator.fix), since batch norm mixes examples and breaks per-example privacy")
        fed["dp_delta"] = "1 / (10 x training cases) at each site: well below one over the number of patients"
        config = private_network(config, reasons)
        fed["dp_max_grad_norm"] = "1.0: per-example gradients clipped to norm 1 (Abadi et al., CCS 2016)"
    else:
        fed["dp_epsilon"] = "off: no differential privacy (--dp-epsilon E turns DP-SGD on at every site)"
        if config.clinical.fusion == "residual":
            reasons["clinical.fusion"] = (reasons.get("clinical.fusion", "residual") + ". In a federation, each site "
                                          "fits the regression on its own training split in round 1; from round 2 "
                                          "on every site keeps their average (weighted by training cases), fixed")
    return replace(config, train=train)


def private_network(config: Config, reasons: dict[str, str]) -> Config:
    """The plan's network as DP-SGD trains it: ``model.norm: group``, and clinical values concatenated rather than
    added through a regression fitted outside DP-SGD (reasons in ``reasons``)."""
    reasons["model.norm"] = ("group: group norm in place of batch norm, since batch norm mixes a batch's examples and "
                             "DP-SGD needs each example's own gradient (the saved weights are this network's)")
    if config.clinical.fusion == "residual":
        reasons["clinical.fusion"] = ("concatenated beside the image features: residual fusion starts from a logistic "
                                      "regression fitted on each site's clinical values, which DP-SGD's privacy "
                                      "accounting does not cover")
        config = replace(config, clinical=replace(config.clinical, fusion="concat"))
    return replace(config, model=replace(config.model, norm="group"))
