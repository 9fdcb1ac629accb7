"""``predict``: new images through a trained run, with the run's own preprocessing and calibration.

Nothing comes from code defaults: input size, channels, normalisation, temperature and threshold
are read from the run folder. One file that cannot be read gives an error row, not a crash.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from medlens._files import write_text_atomic
from medlens.engine.evaluate import load_model
from medlens.engine.inference import predict_logits, to_probs
from medlens.engine.runs import open_run
from medlens.errors import ConfigError, MedlensError
from medlens.io import read_image
from medlens.io.formats import suffix_of
from medlens.transforms import Preprocessor


def expand_inputs(paths: list[Path]) -> list[Path]:
    """Files as given; a folder is one DICOM series when it holds DICOM slices, else every image under it."""
    from medlens.data.folders import is_image_file

    expanded = []
    for path in map(Path, paths):
        if not path.exists():
            raise ConfigError(f"{path}: no such file or folder")
        if path.is_file() or _is_series(path):
            expanded.append(path)
            continue
        for item in sorted(path.rglob("*")):
            if is_image_file(item) and not _is_series(item.parent):
                expanded.append(item)
            elif item.is_dir() and _is_series(item):
                expanded.append(item)
    if not expanded:
        raise ConfigError(f"no image found in {', '.join(map(str, paths))}")
    return expanded


def _is_series(folder: Path) -> bool:
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")] if folder.is_dir() else []
    return bool(files) and all(suffix_of(p) in (".dcm", ".dicom", ".ima", "") for p in files[:20])


def predict_paths(run_path, inputs: list[Path], *, tta: bool | None = None) -> list[dict]:
    """One dict per input: ``path``, ``predicted`` (class name, or names joined by ``;``), ``probabilities``
    (calibrated, per class), or ``error``."""
    run = open_run(run_path)
    config = run.read_config()
    calibration = run.read_calibration()
    prepare, model = Preprocessor(config.data), load_model(run, config)
    names, task = list(config.dataset.class_names), config.dataset.task
    tta = config.evaluate.tta if tta is None else tta
    rows = []
    for path in expand_inputs(inputs):
        try:
            array = prepare(read_image(path, spatial_dims=config.dataset.spatial_dims), where=str(path))
        except (MedlensError, OSError, ValueError) as exc:
            rows.append({"path": str(path), "error": str(exc)})
            continue
        logits = predict_logits(model, array[None], tta_flip_axes=tuple(config.augment.flip_axes) if tta else ())
        probs = to_probs(logits, multilabel=task == "multilabel", temperature=calibration["temperature"])[0]
        rows.append({"path": str(path), "predicted": decide(probs, task, names, calibration["threshold"]),
                     "probabilities": {n: round(float(p), 6) for n, p in zip(names, probs)}})
    return rows


def decide(probs: np.ndarray, task: str, names: list[str], threshold: float) -> str:
    """The predicted class: binary at the run's threshold, multi-class argmax, multi-label every label >= 0.5."""
    if task == "binary":
        return names[int(probs[1] >= threshold)]
    if task == "multilabel":
        return ";".join(n for n, p in zip(names, probs) if p >= 0.5)
    return names[int(np.argmax(probs))]


def write_predictions(rows: list[dict], out: Path, names: list[str]) -> Path:
    """CSV (``path, predicted, p_<class>..., error``) or JSON when ``out`` ends in ``.json``."""
    if out.suffix.lower() == ".json":
        return write_text_atomic(out, json.dumps(rows, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "predicted", *[f"p_{n}" for n in names], "error"])
    for row in rows:
        probs = row.get("probabilities", {})
        writer.writerow([row["path"], row.get("predicted", ""), *[probs.get(n, "") for n in names],
                         row.get("error", "")])
    return write_text_atomic(out, buffer.getvalue())
