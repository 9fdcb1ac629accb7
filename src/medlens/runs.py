"""The run folder: everything a training run leaves behind, in one place a person can browse.

    runs/NAME/
      plan.yaml            the resolved configuration, with the reason for each value
      run.json             status (running / finished), dataset facts, timings, versions
      card.json            the dataset card from the audit
      splits.json          the case ids of each split
      checkpoints/         last.ckpt (resume) and best.ckpt, written atomically
      weights.pt           the best model's state_dict (what evaluate / predict / export load)
      calibration.json     temperature and decision threshold fitted on validation (classification)
      validation.json      headline validation metrics with 95% CIs (classification; for the model card)
      ood_guard.safetensors  the out-of-distribution guard: training features' density, threshold (classification)
      clinical.json        clinical inputs' training statistics and categories (classification with clinical values)
      postprocess.json     per class, keep the largest connected component or not (segmentation)
      metrics.csv          one row per epoch: losses, validation metrics, learning rate, time
      tensorboard/         TensorBoard event files
      metrics.json         written by ``medlens evaluate`` (the test split; ``--split val``: metrics_val.json)
      report.html          the run's report (and report.md), rewritten after training and each test evaluation

Every layer reads and writes a run through :class:`RunFolder`, which sits below the engine, the
tasks and the report: none of them needs another to find a file.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from medlens._files import read_json, write_json_atomic
from medlens.config import Config, read_plan
from medlens.errors import ConfigError

RUN_VERSION = 1  # run.json's medlens_run_version: the layout of this folder


NO_CALIBRATION = {"temperature": 1.0, "threshold": 0.5}  # a run (or bundle) without calibration.json
NO_POSTPROCESS = {"keep_largest": {}}  # ... without postprocess.json
OOD_GUARD = "ood_guard.safetensors"  # the name of the guard's file in a run and in a bundle
CLINICAL = "clinical.json"  # the clinical encoder fitted on the training split, in a run and in a bundle


@dataclass(frozen=True)
class RunFolder:
    root: Path

    plan = property(lambda self: self.root / "plan.yaml")
    info = property(lambda self: self.root / "run.json")
    card = property(lambda self: self.root / "card.json")
    splits = property(lambda self: self.root / "splits.json")
    checkpoints = property(lambda self: self.root / "checkpoints")
    last_checkpoint = property(lambda self: self.root / "checkpoints" / "last.ckpt")
    best_checkpoint = property(lambda self: self.root / "checkpoints" / "best.ckpt")
    weights = property(lambda self: self.root / "weights.pt")
    calibration = property(lambda self: self.root / "calibration.json")
    validation = property(lambda self: self.root / "validation.json")
    ood_guard = property(lambda self: self.root / OOD_GUARD)
    clinical = property(lambda self: self.root / CLINICAL)
    postprocess = property(lambda self: self.root / "postprocess.json")
    metrics_csv = property(lambda self: self.root / "metrics.csv")
    metrics_json = property(lambda self: self.root / "metrics.json")

    def read_info(self) -> dict:
        try:
            info = json.loads(self.info.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise ConfigError(f"{self.root} is not a medlens run folder (no readable run.json); "
                              "pass the folder `medlens train` created (see its --out)") from None
        version = info.get("medlens_run_version", 1)
        if not isinstance(version, int) or version > RUN_VERSION:
            raise ConfigError(f"{self.root}: run folder version {version!r} is newer than this medlens reads "
                              f"(version {RUN_VERSION}); upgrade medlens to use it")
        return info

    def update_info(self, **fields) -> dict:
        info = self.read_info() if self.info.exists() else {}
        info.update(fields)
        write_json_atomic(self.info, info)
        return info

    def read_config(self) -> Config:
        if not self.plan.exists():
            raise ConfigError(f"{self.root}: no plan.yaml; this is not a complete medlens run folder")
        return read_plan(self.plan)[0]

    def read_card(self) -> dict:
        """The dataset card from the audit (``{}`` when the run has none)."""
        return read_json(self.card, {})

    def read_postprocess(self) -> dict:
        return read_json(self.postprocess, dict(NO_POSTPROCESS))

    def read_calibration(self) -> dict:
        return read_json(self.calibration, dict(NO_CALIBRATION))

    def read_epoch_rows(self) -> list[dict]:
        """The rows of metrics.csv (``[]`` before the first epoch)."""
        return read_epoch_rows(self.metrics_csv)


def open_run(path: str | os.PathLike, *, finished: bool = True) -> RunFolder:
    """An existing run folder; ``finished`` requires trained weights."""
    run = RunFolder(Path(path))
    if not run.root.is_dir():
        raise ConfigError(f"{run.root}: no such run folder; train one with `medlens train DATA --out {run.root}`")
    info = run.read_info()
    if finished and not run.weights.exists():
        raise ConfigError(f"{run.root}: training did not finish (status {info.get('status', 'unknown')}); "
                          f"continue it with `medlens train --resume {run.root}`")
    return run


def new_run(out: str | os.PathLike | None, name_hint: str, runs_root: Path = Path("runs")) -> RunFolder:
    """Create a fresh run folder. An existing non-empty folder is never reused (use ``--resume``)."""
    if out is None:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", name_hint).strip("-") or "run"
        out = runs_root / stem
        k = 2
        while out.exists() and any(out.iterdir()):
            out, k = runs_root / f"{stem}-{k}", k + 1
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise ConfigError(f"{root} already holds a run; choose another --out, or continue it with "
                          f"`medlens train --resume {root}`")
    root.mkdir(parents=True, exist_ok=True)
    run = RunFolder(root)
    run.update_info(medlens_run_version=RUN_VERSION, status="created", created=now())
    return run


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_epoch_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of a metrics.csv file as dicts of text (``[]`` when there is no file yet)."""
    if not Path(path).exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def json_safe(value):
    """NaN / infinity -> ``None`` so the file is strict JSON (browsers and ``jq`` reject ``NaN``)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
