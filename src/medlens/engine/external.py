"""``evaluate RUN --data OTHER``: a trained model scored on data it never saw (another hospital's, a later year's).

External validation is the question a hospital asks first: does the model hold up on *our* images? Every case of
``OTHER`` is scored, with the same metrics, CIs, calibration and report as the run's own test split. The data are
read and preprocessed exactly as the plan says (its intensity window, spacing, patch, views and clinical columns),
and the classes must be the run's, by name (for an anomaly run: its normal class, every other class counting as
abnormal, so a model fitted on normal images alone is scored on data that has abnormal ones).

The result is an evaluation folder (default ``RUN/external/<name>``), laid out like a run so that ``evaluate``,
``report`` and ``predict`` read it as one:

    plan.yaml        the run's plan with ``dataset.source`` set to OTHER
    card.json        the audit of OTHER
    splits.json      every case of OTHER in the test split (no training or validation cases)
    weights.pt ...   the run's model files, linked (hard links where the file system allows, else copies)
    metrics.json     the external figures, with run.json's ``external``
    report.html      the report on OTHER
    run.json         ``external``: the run, the data, what the run was trained on, the images they share

What needs the run's own training data is left out: the k-nearest-neighbours baseline (fitted on training
images), and for a model fusing several inputs the clinical-values-only model and the input importances (fitted
on, or measured on, the run's training and validation splits); its images-only comparison stays.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

from medlens._files import read_json, write_json_atomic
from medlens.errors import ConfigError
from medlens.runs import CLINICAL, OOD_GUARD, RunFolder, open_run

# what a run folder holds that an evaluation needs besides the plan, the card and the splits
MODEL_FILES = ("weights.pt", "calibration.json", "validation.json", "postprocess.json", CLINICAL, OOD_GUARD,
               "metrics.csv")


def evaluate_external(path, data, *, out=None, image_root=None, allow_outside_root: bool | None = None,
                      tta: bool | None = None, n_bootstrap: int | None = None, log=print) -> dict:
    """Score every case of ``data`` with the run at ``path``; returns the metrics document.

    Args:
        data: a dataset as ``medlens train`` takes it (CSV, folders, .npz, Decathlon...), with the run's classes
            (an anomaly run: its normal class and any others, all abnormal; the task's ``for_other_data``).
        out: the evaluation folder (default ``RUN/external/<data's name>``); an earlier evaluation there is
            replaced.
        image_root, allow_outside_root: as for ``medlens train``, for ``data``.

    Raises:
        ConfigError: the run's task cannot score other data (an encoder), or ``out`` is the run folder itself.
        DatasetError: ``data`` has other classes than the run, or findings that block its use (nothing is left
            behind when the evaluation fails).
    """
    from medlens.data import open_dataset
    from medlens.data.audit import inspect_dataset
    from medlens.data.prepared import check_plan_fits, reopen_options
    from medlens.engine.evaluate import evaluate_run
    from medlens.engine.train import check_card
    from medlens.tasks import task_for

    run = open_run(path)
    config, reasons = _read_plan(run)
    source = Path(data)
    section = replace(config.dataset, source=str(source), image_root=str(image_root or ""), splits="", fold=0,
                      allow_outside_root=bool(allow_outside_root))
    external = replace(config, dataset=section)
    dataset = open_dataset(source, **reopen_options(external))
    external = task_for(config).for_other_data(external, tuple(dataset.class_names), str(dataset.root))
    check_plan_fits(external, dataset)
    card = inspect_dataset(dataset)
    check_card(card, log)
    overlap = shared_images(run, card, config.dataset.fold)
    if overlap["said"] and overlap["checked"]:
        log(f"warning: {overlap['said']}")
    folder = _folder(run, source, out)
    created = not folder.exists()
    log(f"evaluating {run.root} on {source}: {len(dataset.cases)} case(s), every one in the test split; results in "
        f"{folder}")
    try:
        _lay_out(folder, run, external, reasons, card, dataset, {
            "run": str(run.root.resolve()), "data": str(source), "trained_on": config.dataset.source,
            "overlap": overlap})
        return evaluate_run(folder, tta=tta, n_bootstrap=n_bootstrap, baseline=False, log=log)
    except BaseException:
        if created:  # nothing half-made is left behind
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _lay_out(folder: Path, run: RunFolder, external, reasons: dict, card: dict, dataset, about: dict) -> None:
    """Write the evaluation folder's plan, card, splits (every readable case in test), the run's model files, and
    ``run.json`` saying what the folder is (``external``: ``about``, the run, the data, what the run was trained on
    and the images they share; ``evaluate`` copies it into metrics.json, the report opens with it)."""
    from medlens.engine.train import write_plan

    folder.mkdir(parents=True, exist_ok=True)
    for stale in ("metrics.json", "report.html"):
        (folder / stale).unlink(missing_ok=True)
    source = Path(external.dataset.source)
    write_plan(folder / "plan.yaml", external, reasons, source)
    write_json_atomic(folder / "card.json", card)
    skipped = [entry["case"] for entry in card.get("skipped", [])]
    cases = [c.case_id for c in dataset.cases if c.case_id not in set(skipped)]
    write_json_atomic(folder / "splits.json", {"medlens_splits_version": 1, "dataset": source.name, "seed": 0,
                                               "sources": {"test": "external"}, "skipped": skipped,
                                               "test": cases, "folds": [{"train": [], "val": []}]})
    for name in MODEL_FILES:
        if (run.root / name).exists():
            _link(run.root / name, folder / name)
    write_json_atomic(folder / "run.json", {**run.read_info(), "external": about})


def shared_images(run: RunFolder, card: dict, fold: int = 0) -> dict:
    """Which cases of the other data (their ``card``) are pixel for pixel images of the run's own splits.

    An image the model trained on (or chose its checkpoint and calibration on) makes an external figure
    optimistic; one of the run's test split makes it no longer independent of the run's own test figure.

    Args:
        fold: the run's fold (``dataset.fold``): its training and validation cases are the model's.

    Returns:
        ``{"checked": bool, "training": n, "test": n, "examples": [[case, run's case, its split]...],
        "said": what to tell ("" when nothing is shared)}``; not checked when the run's card has no case hashes
        (trained before they were kept).
    """
    ours, theirs = run.read_card().get("case_hashes"), card.get("case_hashes") or {}
    if not ours:
        return {"checked": False, "training": 0, "test": 0, "examples": [],
                "said": f"not checked for images shared with {run.root}: its card keeps no image hashes (trained "
                        "with an earlier medlens)"}
    splits = read_json(run.splits, {}) or {}
    chosen = (splits.get("folds") or [{}])[fold]
    where = {case: "test" for case in splits.get("test", [])}
    where.update({case: "training" for key in ("train", "val") for case in chosen.get(key, [])})
    by_hash: dict[str, str] = {}
    for case, digest in ours.items():  # an image in training and test counts as training
        if case in where and (digest not in by_hash or where[case] == "training"):
            by_hash[digest] = case
    shared = [[case, by_hash[digest], where[by_hash[digest]]] for case, digest in theirs.items() if digest in by_hash]
    training = sum(1 for *_, split in shared if split == "training")
    parts = []
    if training:
        parts.append(f"{training} are images {run.root} trained or validated on (its figures there are optimistic)")
    if len(shared) > training:
        parts.append(f"{len(shared) - training} are images of the run's own test split (not independent of its "
                     "test figures)")
    examples = ", ".join(f"{a} = {b}" for a, b, _ in shared[:3])
    said = f"of the other data's cases, {' and '.join(parts)}, e.g. {examples}; remove them from the other data"
    return {"checked": True, "training": training, "test": len(shared) - training, "examples": shared[:20],
            "said": said if shared else ""}


def _read_plan(run: RunFolder):
    from medlens.config import read_plan

    return read_plan(run.plan)


def _folder(run: RunFolder, source: Path, out) -> Path:
    folder = Path(out) if out else run.root / "external" / (source.stem if source.is_file() else source.name)
    if folder.resolve() == run.root.resolve():
        raise ConfigError(f"--out {folder} is the run folder itself; an external evaluation goes beside it (default "
                          f"{run.root / 'external' / source.stem})")
    earlier = (read_json(folder / "run.json", {}) or {}).get("external") if folder.is_dir() else None
    if folder.exists() and not earlier and (not folder.is_dir() or any(folder.iterdir())):
        raise ConfigError(f"--out {folder} exists and is not an earlier external evaluation (a run, or other files, "
                          "that would be overwritten); choose an empty or new folder")
    return folder


def _link(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (no second copy of the weights), else a copy."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)

