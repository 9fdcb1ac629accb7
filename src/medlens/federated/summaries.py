"""What a site tells the federation about its data: aggregate statistics of medlens' own audit, nothing else.

A site's summary is built from :func:`medlens.data.audit.inspect_dataset` on the site's data and the split medlens
makes of it (:func:`medlens.data.prepared.resolve_splits`: patient-grouped, stratified, seeded), so every site
counts the cases it will train on. Only whitelisted aggregates are copied out of the card (counts, label balance,
class names, dimensionality, size / spacing / channel / intensity statistics, modality, the audit's finding codes,
the names of the image inputs, the clinical columns' kinds, value counts and separation AUCs and a categorical
column's categories): never the data's location, file names, case or patient ids, or image bytes. The server checks
the summaries (:func:`check_summaries`) and plans from them (:mod:`medlens.federated.plan`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

from medlens.config import Config
from medlens.data import open_dataset
from medlens.data.audit import inspect_dataset
from medlens.data.prepared import resolve_splits
from medlens.errors import ConfigError, DatasetError

SUMMARY_VERSION = 1
TASKS = ("binary", "multiclass", "multilabel", "ordinal", "segmentation")  # what a site can train (AUC or Dice)
MASK_KEYS = ("declared_labels", "cases_with_label", "label_voxels", "foreground_fraction", "foreground_intensity")


def site_summary(data: str | Path, *, name: str, seed: int = 0) -> dict:
    """The JSON-ready summary of the site data at ``data``, labelled ``name``.

    Args:
        data: anything :func:`medlens.data.open_dataset` opens (class folders, a CSV manifest, Decathlon, ...).
        name: the site's name in the federation (what errors and reports call it).
        seed: the split's seed (the plan's ``train.seed``; :class:`~medlens.federated.local.SiteTrainer` splits
            with the same one).

    Returns:
        ``{"site", "summary_version", "dataset": {task, class_names, spatial_dims, modality, layout, num_cases,
        num_readable}, "counts": {"by_split": {split: {class: n}}, "total", "patients_by_split"}, "images": {shape,
        channels, dtypes, spacing, intensity}, "masks": {...} (segmentation), "findings": [{code, severity}]}``.

    Raises:
        DatasetError: the audit found the data unusable (the findings are listed; this message stays at the site).
    """
    return summary_and_split(data, name=name, seed=seed)[0]


def summary_and_split(data: str | Path, *, name: str, seed: int = 0) -> tuple[dict, dict]:
    """:func:`site_summary`, and the split it counted as :func:`split_record` keeps it (for the site alone)."""
    dataset = open_dataset(data)
    card = inspect_dataset(dataset)
    _refuse_blocking(card, name)
    splits = site_splits(dataset, card, seed=seed)
    return summary_from_card(card, dataset, splits, name=name), split_record(dataset, splits, seed=seed)


def site_splits(dataset, card: dict, *, seed: int = 0) -> dict:
    """medlens' split of a site's data (the dataset's own splits kept, the rest made patient-grouped)."""
    config = Config()
    config = replace(config, train=replace(config.train, seed=seed))
    return resolve_splits(dataset, config, card)


# ---- the split a site keeps between messages ----------------------------------------------------------------


def split_key(dataset, *, seed: int) -> str:
    """A SHA-256 of what a site's split rests on besides the audit's reading of the images: the seed and, per case,
    its id, label, patient, the split the data fixes, and its files' sizes and modification times."""
    stats: dict[Path, tuple] = {}

    def stat(path: Path) -> tuple:
        if path not in stats:
            try:
                info = path.stat()
                stats[path] = (info.st_size, info.st_mtime_ns)
            except OSError:
                stats[path] = ()
        return stats[path]

    rows = [[c.case_id, c.label, c.patient_id, c.split.value if c.split else None,
             [[str(p), *stat(Path(p))] for p in (*c.images, *((c.mask,) if c.mask else ()))]] for c in dataset.cases]
    return hashlib.sha256(json.dumps([seed, rows], default=str).encode()).hexdigest()


def split_record(dataset, splits: dict, *, seed: int, key: str | None = None) -> dict:
    """``{"key", "seed", "splits"}``: what a site keeps of its split between the messages of a run (in its SuperNode's
    context state; never sent), so that only its first message audits every image (``key``: :func:`split_key`, when
    already made)."""
    return {"key": key or split_key(dataset, seed=seed), "seed": seed, "splits": splits}


def split_for(dataset, *, seed: int, kept: dict | None = None) -> tuple[dict, bool]:
    """The site's :func:`split_record`, and whether it is ``kept``: the kept one while :func:`split_key` is unchanged,
    else one made again from a fresh audit (a case added, removed, relabelled or rewritten since)."""
    key = split_key(dataset, seed=seed)
    if kept and kept.get("key") == key:
        return kept, True
    return split_record(dataset, site_splits(dataset, inspect_dataset(dataset), seed=seed), seed=seed, key=key), False


def summary_from_card(card: dict, dataset, splits: dict, *, name: str) -> dict:
    """The whitelisted aggregates of ``card``, with counts taken from ``splits`` (see :func:`site_summary`)."""
    described = card["dataset"]
    summary = {
        "site": name,
        "summary_version": SUMMARY_VERSION,
        "dataset": {k: described.get(k) for k in ("task", "class_names", "spatial_dims", "modality", "layout",
                                                  "num_cases", "num_readable")},
        "counts": split_counts(dataset, splits),
        "images": _images(card.get("images") or {}),
        "findings": [{"code": f["code"], "severity": f["severity"]} for f in card.get("findings", [])],
    }
    if card.get("masks"):
        summary["masks"] = {k: card["masks"].get(k) for k in MASK_KEYS}
    if card.get("views"):
        summary["views"] = _views(card["views"])
    from medlens.data.dataset import series_rules_in_force

    if rules := series_rules_in_force():  # a site of DICOM studies: how it picks each study's series
        summary["series_rules"] = list(rules)
    if card.get("clinical"):
        summary["clinical"] = {column: _clinical_column(entry) for column, entry in card["clinical"].items()}
    return summary


def _views(views: dict) -> dict:
    """The views' names, whether they share a grid, and per view its channels and how many cases have or lack it
    (not which cases: the card's examples and grid note name them)."""
    per_view = {name: {k: entry[k] for k in ("cases", "missing", "channels") if k in entry}
                for name, entry in (views.get("per_view") or {}).items()}
    return {"names": list(views.get("names") or ()), "co_registered": bool(views.get("co_registered")),
            "per_view": per_view}


def _clinical_column(entry: dict) -> dict:
    """What the plan needs of a clinical column: its kind, how many cases have a value, how well it alone separates
    the classes, its two scales (a lost decimal point), and a categorical column's categories with their counts, only
    when there are no more than the plan takes (:data:`~medlens.tasks.classification.plan_inputs.MAX_CATEGORIES`): a
    column of many distinct words, or an identifier, may hold names, so its values stay at the site."""
    from medlens.tasks.classification.plan_inputs import MAX_CATEGORIES

    out = {k: entry[k] for k in ("kind", "present", "missing", "distinct", "auc", "leakage", "scales", "decimal_comma")
           if k in entry}
    if entry.get("kind") == "categorical" and int(entry.get("distinct") or 0) <= MAX_CATEGORIES:
        out["categories"] = dict(entry.get("categories") or {})
    return out


def split_counts(dataset, splits: dict) -> dict:
    """Cases per split and class (``cases`` for masks), and patients per split, from a splits document."""
    by_id = {c.case_id: c for c in dataset.cases}
    fold = splits["folds"][0]
    by_split, patients = {}, {}
    for split, ids in (("train", fold["train"]), ("val", fold["val"]), ("test", splits["test"])):
        cases = [by_id[i] for i in ids]
        by_split[split] = _class_counts(dataset, cases)
        patients[split] = len({c.patient_id or c.case_id for c in cases})
    total = sum((Counter(c) for c in by_split.values()), Counter())
    order = ["cases", *dataset.class_names]
    return {"by_split": by_split, "total": {k: total[k] for k in order if k in total},
            "patients_by_split": patients}


def _class_counts(dataset, cases) -> dict:
    form = dataset.task.label_form
    if form == "class":
        counts = Counter(dataset.class_names[c.label] for c in cases if c.label is not None)
        return {n: counts.get(n, 0) for n in dataset.class_names}
    if form == "flags":
        return {"cases": len(cases), **{n: sum(int(c.label[k]) for c in cases if c.label is not None)
                                        for k, n in enumerate(dataset.class_names)}}
    return {"cases": len(cases)}


def _images(images: dict) -> dict:
    keep = ("shape", "distinct_shapes", "channels", "dtypes", "spacing_known", "spacing_mm", "intensity")
    return {k: images[k] for k in keep if k in images}


def _refuse_blocking(card: dict, name: str) -> None:
    blocking = [f for f in card["findings"] if f.get("blocks_training")]
    if blocking:
        raise DatasetError(f"site {name}: the data cannot be trained on:\n"
                           + "\n".join(f"  [{f['code']}] {f['message']}" for f in blocking)
                           + "\nfix them (`medlens inspect DATA` lists every finding) before joining the federation")


def train_count(summary: dict) -> int:
    """Training cases of a site's summary."""
    train = summary["counts"]["by_split"].get("train") or {}
    return int(train.get("cases") or sum(train.values()))


def check_summaries(summaries: dict[str, dict], *, batch_size: int | None = None) -> None:
    """Refuse sites that cannot train one model together, naming the site and the fix.

    Checks: at least one site; a task federated training covers; the same task, classes, spatial dimensions, image
    inputs (views) and channels at every site (compared with the first site); training cases of every class (class
    labels) at every site, and at least ``batch_size`` training cases when given.

    Raises:
        ConfigError: the first disagreement found.
    """
    if not summaries:
        raise ConfigError("no site summaries: start at least one site (`medlens fl site --server HOST:PORT --data "
                          "SITE_DATA`)")
    names = list(summaries)
    first, reference = names[0], summaries[names[0]]
    for name in names:
        _check_one(name, summaries[name], first, reference, batch_size)


def _check_one(name: str, summary: dict, first: str, reference: dict, batch_size: int | None) -> None:
    described, expected = summary["dataset"], reference["dataset"]
    if described["task"] not in TASKS:
        raise ConfigError(f"site {name} holds {described['task']} data; federated training covers "
                          f"{', '.join(TASKS)} data")
    for key, what in (("task", "task"), ("class_names", "classes"), ("spatial_dims", "image dimensions")):
        if described[key] != expected[key]:
            raise ConfigError(f"site {name}: its {what} {described[key]!r} disagree with site {first}'s "
                              f"{expected[key]!r}; every site must label the same classes in the same order on "
                              f"images of the same dimensionality: relabel the data at {name} (or leave it out)")
    views, expected_views = (summary.get("views") or {}).get("names"), (reference.get("views") or {}).get("names")
    if views != expected_views:
        raise ConfigError(f"site {name}: its cases have the image inputs {views or 'one image'}, site {first}'s have "
                          f"{expected_views or 'one image'}; every site must name the same image columns (image:NAME) "
                          f"in its manifest: rename them at {name}")
    channels, expected_channels = _main_channels(summary), _main_channels(reference)
    if channels != expected_channels:
        raise ConfigError(f"site {name}: its images have {channels} channel(s), site {first}'s have "
                          f"{expected_channels}; convert the images at {name} to {expected_channels} channel(s)")
    _check_classes_trained(name, summary)
    n = train_count(summary)
    if n == 0 or (batch_size and n < batch_size):
        need = f"at least one batch of {batch_size}" if batch_size else "at least one"
        raise ConfigError(f"site {name} has {n} training case(s) (medlens' split of its data), {need} needed; "
                          "add cases at that site, or leave it out of the federation")


def _check_classes_trained(name: str, summary: dict) -> None:
    """Class-label tasks train on every class at every site (the task refuses a class without training cases);
    only their summaries count cases by class alone (masks, boxes and label flags also count ``cases``)."""
    train = summary["counts"]["by_split"].get("train") or {}
    if "cases" in train or not any(c in train for c in summary["dataset"]["class_names"]):
        return
    missing = [c for c in summary["dataset"]["class_names"] if not train.get(c)]
    if missing:
        raise ConfigError(f"site {name} has no training case of class(es) {', '.join(missing)} (its training "
                          f"split: {train}); medlens trains every class at every site: add cases of "
                          f"{', '.join(missing)} there, or leave the site out")


def _main_channels(summary: dict) -> int | None:
    channels = summary["images"].get("channels") or {}
    return int(max(channels, key=channels.get)) if channels else None
