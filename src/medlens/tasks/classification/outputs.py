"""What a classification prediction returns: through ``Predictor``, the HTTP service and ``medlens predict``."""

from __future__ import annotations

import base64
from pathlib import Path

from medlens.data.inputs import expand_inputs
from medlens.errors import ConfigError, MedlensError
from medlens.tasks.base import print_rows
from medlens.tasks.classification.ood import guard_for, ood_fields
from medlens.tasks.classification.predict import CaseInputs, CaseSource, classify_image, write_predictions

JSON_KEYS = ("task", "label", "probabilities", "confidence", "ood_score", "in_distribution", "model_version",
             "explained_class")
CASE_KEYS = ("missing", "inputs")  # a model of several inputs: what the prediction was made without / with


def predict(predictor, image, *, heatmap: bool, tta: bool | None, where: str) -> dict:
    """``task, label, probabilities {class: p}, confidence, ood_score, in_distribution, model_version,
    explained_class, heatmap_png``, and with ``heatmap`` ``heatmap_map`` (the map on the image's grid ``(*S)`` in
    [0, 1]: the 3D viewer's overlay).

    ``label`` is decided at the card's threshold (binary), by argmax (multi-class) or every label >= 0.5
    (multi-label); ``confidence`` is the probability of the decided class (the lowest of several labels).
    ``ood_score`` is the image's distance from the training data in the network's features and
    ``in_distribution`` whether it is within the guard's threshold (see :mod:`.ood`); both ``None`` for a
    model without a guard. The features always come from the PyTorch network, whatever runs the logits.
    ``image`` is a :class:`~.predict.CaseInputs` for a model of several inputs; the answer then also has
    ``missing`` and ``inputs`` (see :class:`~.predict.CaseInputs`).
    """
    config = predictor.config
    tta = config.evaluate.tta if tta is None else tta
    result = classify_image(predictor.logits_of, image, config, predictor.calibration, tta=tta, where=where)
    ood = ood_fields(guard_for(predictor), predictor.model, result.array)
    names = list(config.dataset.class_names)
    chosen = [n for n in result.predicted.split(";") if n] or [names[result.target]]
    case = {"missing": image.missing, "inputs": image.used} if isinstance(image, CaseInputs) else {}
    png, on_grid = _heatmap(predictor.model, image, result.array, result.target) if heatmap else (None, None)
    return {"task": config.dataset.task, "label": result.predicted,
            "probabilities": {n: round(float(p), 6) for n, p in zip(names, result.probs)},
            "confidence": round(float(min(result.probs[names.index(n)] for n in chosen)), 6), **ood,
            "model_version": predictor.card.get("model_version"),
            "explained_class": names[result.target] if heatmap else None, **case,
            "heatmap_png": png, "heatmap_map": on_grid}


def _heatmap(model, image, array, target: int) -> tuple:
    """The Grad-CAM overlay (PNG bytes) and the map on the image's grid; for a case of several inputs, the
    classification path as it is, over its first view (per-view maps are :mod:`medlens.explain`'s), refused with
    the reason when that path cannot map the network."""
    from medlens.explain import compute_cams, map_on_grid, overlay_png

    if not isinstance(image, CaseInputs):
        cam = compute_cams(model, array[None], class_indices=[target])[0]
        on_grid = map_on_grid(image, cam)
        return overlay_png(image, on_grid), on_grid
    try:
        cam = compute_cams(model, array[None], class_indices=[target])[0]
        first = image.first_image
        on_grid = map_on_grid(first, cam)
        return overlay_png(first, on_grid), on_grid
    except (MedlensError, RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise MedlensError(f"no heat map for this model of several inputs ({type(exc).__name__}: "
                           f"{str(exc)[:200]}); predict without heatmap, or use `medlens explain`") from None


def to_json(result: dict, options: dict[str, bool], folder: Path) -> dict:
    """The label, probabilities, confidence, OOD score and decision (``null`` without a guard) and model version;
    for a model of several inputs ``missing`` and ``inputs``; the heat map as base64 PNG when asked for."""
    body = {key: result.get(key) for key in JSON_KEYS}
    body.update({key: result[key] for key in CASE_KEYS if key in result})
    if result.get("heatmap_png"):
        body["heatmap_png"] = base64.b64encode(result["heatmap_png"]).decode()
    return body


def write_outputs(predictor, inputs: list, out: Path | None, *, tta: bool | None, log) -> int:
    """Print one line per input (the class and probabilities, what a case was missing, a warning when it is out of
    distribution, or its error); ``out``: also a CSV or JSON file (with ``ood_score`` and ``in_distribution``, and
    ``missing_views`` / ``missing_clinical`` for a model of several inputs).

    Args:
        inputs: paths (files, folders, and CSV case lists: see :func:`read_case_list`) and
            :class:`~.predict.CaseSource` cases (``medlens predict --input NAME=FILE --clinical JSON``).
    """
    rows = []
    for item in _cases(predictor, inputs):
        name = item.name if isinstance(item, CaseSource) else str(item)
        try:
            result = (predictor.predict(item.views(predictor.config), clinical=item.clinical or None, tta=tta)
                      if isinstance(item, CaseSource) else predictor.predict(item, tta=tta))
        except (MedlensError, OSError, ValueError) as exc:
            rows.append({"path": name, "error": str(exc)})
            continue
        rows.append({"path": name, "predicted": result["label"], "probabilities": result["probabilities"],
                     "ood_score": result["ood_score"], "in_distribution": result["in_distribution"],
                     **{key: result[key] for key in CASE_KEYS if key in result}})
    failed = print_rows(rows, _describe, log)
    if out:
        names = list(predictor.config.dataset.class_names)
        log(f"predictions written to {write_predictions(rows, out, names, fused=predictor.fused)}")
    return failed


def _cases(predictor, inputs: list) -> list:
    """Paths expanded (folders into their images), CSV case lists into one :class:`CaseSource` per row."""
    items, paths = [], []
    for item in inputs:
        if isinstance(item, CaseSource):
            items.append(item)
        elif is_case_list(Path(item)):
            items += read_case_list(Path(item), predictor)
        else:
            paths.append(Path(item))
    return items + (expand_inputs(paths) if paths else [])


def is_case_list(path: Path) -> bool:
    """A ``.csv`` file whose header names an ``image``, ``image:NAME`` or ``study`` column (anything else is an
    input file, refused by the reader like any file that is not an image)."""
    from medlens.data.table import read_header

    if path.suffix.lower() != ".csv" or not path.is_file():
        return False
    return any(_image_column(c) or c.strip().lower().startswith("image:") or _is_study(c) for c in read_header(path))


def _image_column(column: str) -> bool:
    """The one-image column, spelled as the training manifest may spell it."""
    from medlens.data.manifest import COLUMNS
    from medlens.data.table import normal_name

    return normal_name(column) in COLUMNS["image"]


def _is_study(column: str) -> bool:
    """A study column, named as the training manifest may name it (``study``, ``study_folder``...)."""
    from medlens.data.manifest import COLUMNS
    from medlens.data.table import normal_name

    return normal_name(column) in COLUMNS["study"]


def read_case_list(path: Path, predictor) -> list[CaseSource]:
    """One case per row of a CSV whose columns are the training manifest's: ``image:NAME`` per view (or
    ``image``, or ``study``: a DICOM study folder read by the model's series rules) and the clinical columns;
    paths relative to the CSV's folder, other columns (label, ids) ignored. Read as the training manifest is
    (:func:`~medlens.data.table.read_table`: semicolons, decimal commas, blank rows, Windows paths).

    Raises:
        ConfigError: the CSV has no image column this model takes.
        DatasetError: not a readable CSV.
    """
    from medlens.data.manifest import joined
    from medlens.data.table import read_table

    header, rows = read_table(path)[:2]
    views = {c.strip()[len("image:"):].strip(): c for c in header if c and c.strip().lower().startswith("image:")}
    image = next((c for c in header if c and _image_column(c)), None)
    study = next((c for c in header if c and _is_study(c)), None)
    if not views and image is None and study is None:
        raise ConfigError(f"{path}: no image column (found {', '.join(header) or 'no columns'}); a CSV of cases has "
                          "an image:NAME column per view (or one image column, or a study column of DICOM study "
                          "folders) and the clinical columns, as the training manifest")
    columns = predictor.clinical.columns if predictor.clinical is not None else []
    named = {c.strip(): c for c in header if c}

    def located(cell):
        return str(joined(path.parent, cell.strip())) if cell and cell.strip() else None

    cases = []
    for line, row in rows:
        clinical = {c: row[named[c]] for c in columns if c in named}
        where = f"{path.name} line {line}"
        if not views and image is None:
            cases.append(CaseSource(None, clinical, where, study=located(row.get(study))))
            continue
        source = {v: located(row.get(h)) for v, h in views.items()} if views else located(row.get(image))
        cases.append(CaseSource(source, clinical, where))
    return cases


def _describe(row: dict) -> str:
    line = f"{row['path']}: {row['predicted'] or '(none)'}  " + "  ".join(
        f"{n}={p:.3f}" for n, p in row["probabilities"].items())
    if "missing" in row:
        gone = [*(f"view {v}" for v in row["missing"]["views"]), *(f"{c}" for c in row["missing"]["clinical"])]
        line += f"  missing: {', '.join(gone)}" if gone else "  missing: nothing"
    if row["in_distribution"] is False:
        line += (f"  WARNING: out of distribution (ood_score {row['ood_score']:.3g} above the guard's threshold): "
                 "unlike the training images, so the prediction is not reliable")
    return line
