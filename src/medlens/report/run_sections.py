"""Report sections every run has: the dataset card, the plan with its reasons, the training curves."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

from medlens._files import read_json
from medlens.data.audit_reads import skipped_rows
from medlens.report.document import Figure, Section, Table
from medlens.report.plots import curves_png, loss_columns, validation_columns
from medlens.runs import RunFolder

SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
MAX_MESSAGE = 400


def read_epoch_rows(path: Path) -> list[dict]:
    """The rows of metrics.csv (``[]`` before the first epoch)."""
    if not Path(path).exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def dataset_section(run: RunFolder, config, card: dict) -> Section:
    """What the data are: task, sizes, counts per class and split, and the audit's findings."""
    facts = card.get("dataset", {})
    section = Section("Dataset", key="dataset")
    section.text(f"**{facts.get('source', config.dataset.source)}**: {facts.get('task_label', config.dataset.task)}"
                 f", {facts.get('num_cases', '?')} cases ({facts.get('num_readable', '?')} readable)"
                 + (f", modality {facts['modality']}" if facts.get("modality") else "")
                 + f"; classes {', '.join(config.dataset.class_names)}.")
    section.table(split_table(run, config, card))
    if card.get("skipped"):
        section.table(Table(["file", "reason"], skipped_rows(card), key="skipped",
                            caption="unreadable files left out of training (--skip-unreadable)"))
    if card.get("findings"):
        return section.table(findings_table(card))
    return section.text("The audit found nothing to report: no leakage (no patient or identical image in two "
                        "splits), no unreadable file, no label conflict.")


def split_table(run: RunFolder, config, card: dict) -> Table:
    """Cases per split (and per class, where cases carry class labels), for the splits this run used."""
    counts = split_counts(run, config)
    if counts is None:  # the data moved: the card's own counts (made before the splits)
        by_split = card.get("counts", {}).get("by_split", {})
        columns = sorted({k for c in by_split.values() for k in c}, key=lambda k: (k != "cases", k))
        rows = [[s, *[str(c.get(k, 0)) for k in columns]] for s, c in by_split.items()]
        return Table(["split", *columns], rows, key="split-counts", caption="cases per split (from the audit)")
    total = sum(counts.values(), Counter())
    columns = ["cases", *[n for n in config.dataset.class_names if n in total]]
    rows = [[split, *[str(c.get(k, 0)) for k in columns]] for split, c in counts.items()]
    rows.append(["total", *[str(total.get(k, 0)) for k in columns]])
    caption = f"cases per split{' and class' if len(columns) > 1 else ''} (fold {config.dataset.fold} of splits.json)"
    if "_multilabel" in total:
        caption += "; a label column counts the cases where that label is present"
    return Table(["split", *columns], rows, key="split-counts", caption=caption)


def split_counts(run: RunFolder, config) -> dict[str, Counter] | None:
    """``{split: Counter(cases=n, class=n, ...)}``; ``None`` when the dataset can no longer be opened.

    A case with one class label counts for that class; a multi-label case for each label it carries; a
    case without a class label (a mask) only as a case."""
    from medlens.data import open_dataset
    from medlens.data.prepared import reopen_options
    from medlens.errors import MedlensError

    splits = read_json(run.splits, {})
    if not splits:
        return None
    fold = splits["folds"][config.dataset.fold]
    ids = {"train": fold["train"], "val": fold["val"], "test": splits["test"]}
    try:
        dataset = open_dataset(config.dataset.source, **reopen_options(config))
    except (MedlensError, OSError, ValueError):
        return None
    labels = {c.case_id: c.label for c in dataset.cases}
    names = list(config.dataset.class_names)
    counts = {}
    for split, members in ids.items():
        counter = Counter(cases=len(members))
        for case_id in members:
            label = labels.get(case_id)
            if isinstance(label, tuple):
                counter.update({n: int(f) for n, f in zip(names, label)})
                counter["_multilabel"] = 1
            elif label is not None:
                counter[names[int(label)]] += 1
        counts[split] = counter
    return counts


def findings_table(card: dict) -> Table:
    """The audit's findings, leakage first, then by severity."""
    findings = sorted(card["findings"], key=lambda f: (not f["code"].startswith("leakage"),
                                                       SEVERITY_ORDER.get(f["severity"], 3)))
    rows = []
    for f in findings:
        message = f["message"] if len(f["message"]) <= MAX_MESSAGE else f["message"][:MAX_MESSAGE] + " …"
        rows.append([f["severity"], f["code"], message, str(len(f.get("cases", [])))])
    leaks = sum(f["code"].startswith("leakage") for f in findings)
    caption = (f"audit findings: {leaks} leakage finding(s)" if leaks else "audit findings (no leakage found)")
    return Table(["severity", "code", "finding", "cases"], rows, key="findings", caption=caption)


def plan_section(config, reasons: dict[str, str], omit: frozenset[str] = frozenset()) -> Section:
    """The resolved plan: every value chosen for a reason, with the reason; the defaults in one line.

    Args:
        omit: plan keys (``section.key``) or whole sections the run's task does not use; not listed.
    """
    section = Section("Plan", key="plan")
    rows, defaults = [], []
    for name, values in config.as_dict().items():
        for key, value in values.items():
            if name in omit or f"{name}.{key}" in omit:
                continue
            reason = reasons.get(f"{name}.{key}")
            text = json.dumps(value) if not isinstance(value, str) else value
            if reason:
                rows.append([f"{name}.{key}", text, reason])
            elif value not in ("", [], None) and name != "dataset":
                defaults.append(f"{name}.{key}={text}")
    section.table(Table(["setting", "value", "why"], rows, key="plan", caption="values chosen from the data"))
    if defaults:
        section.text("At their defaults: " + ", ".join(defaults) + ".")
    return section


def training_section(run: RunFolder) -> Section:
    """Status and timings from ``run.json``; loss and validation metric per epoch from ``metrics.csv``."""
    info, rows = read_json(run.info, {}), run.read_epoch_rows()
    section = Section("Training", key="training")
    best = info.get("best_score")
    section.text(f"status **{info.get('status', 'unknown')}** after {info.get('epochs_run', len(rows))} epoch(s), "
                 f"stopped by {info.get('stopped_by', 'n/a')}; best {info.get('monitor', 'score')} "
                 f"{'n/a' if best is None else f'{best:.4f}'}; {info.get('train_seconds', 'n/a')} s of training.")
    if line := budget_line(info):
        section.text(line)
    if info.get("race"):
        section.table(race_table(info))
    figures = [Figure(name, png, caption) for name, png, caption in (
        ("loss", curves_png([("run", rows)], loss_columns(rows), title="loss", ylabel="loss"), "loss per epoch"),
        ("validation", curves_png([("run", rows)], validation_columns(rows), title="validation",
                                  ylabel="metric"), "validation metrics per epoch"))
        if png is not None]
    if figures:
        section.figures(*figures)
    else:
        section.text("metrics.csv holds no epoch yet.")
    return section


def race_table(info: dict) -> Table:
    """The race before training (``run.json``'s ``race``): each contestant's overrides, score, epochs and time."""
    rows = [[r["overrides"] or "the plan as written", "dropped: " + r["error"] if "error" in r else
             f"{r['score']:.4f}" if r.get("score") is not None else "n/a", str(r.get("epochs", "")),
             f"{r.get('seconds', 0):.0f}", "winner" if r["overrides"] == info.get("winner") else ""]
            for r in info["race"]]
    return Table(["contestant", "validation score", "epochs", "seconds", ""], rows, key="race",
                 caption=info.get("race_reason", "the race on validation before training"))


def budget_line(info: dict) -> str:
    """One sentence when the time budget stopped training (``run.json``'s ``budget``), ``""`` otherwise."""
    budget = info.get("budget") or {}
    if not budget.get("stopped"):
        return ""
    where = "mid-epoch, after" if budget.get("mid_epoch") else "after"
    return (f"The {budget['budget_s']:g} s time budget stopped training {where} {budget['epochs_completed']} whole "
            f"epoch(s) ({budget['used_s']:g} s used, preparation included); the weights are the best validated "
            "so far.")
