"""``explain``: heat maps of what a trained run looks at, for new images, with a sanity check.

The run's task computes each map (:meth:`medlens.tasks.Task.explain`); this module reads the inputs,
puts every map back on its input's grid and writes the files.

For each input: the prediction (calibrated, as ``predict`` gives it) and a class activation map
on the input's own grid. 2D: ``<name>_cam.png``, the overlay. 3D: ``<name>_cam.nii.gz``, the map
with the input's spacing, origin and direction, plus ``<name>_cam.png``, the axial, coronal and
sagittal slices through the hottest voxel. Segmentation runs explain the predicted region of a
class. ``explanations.json`` lists every input and the model-parameter randomisation test: the
same images explained by the network re-initialised with the run's seed (the random weights
training starts from); when the maps barely change, a warning says they do not show what the
model learnt.

A run whose cases have several inputs (views encoded apart, clinical values) is explained from a CSV
given as input, its columns those of the training manifest (``image:NAME`` per view, the clinical
columns; paths relative to the CSV): one map per view a case has, ``<case>_<view>_cam.png``, with the
case's clinical values given. A plain image suits a run of one image and clinical values (explained
with every clinical value missing).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medlens._files import write_bytes_atomic, write_text_atomic
from medlens.data.inputs import expand_inputs, output_name
from medlens.errors import ConfigError, MedlensError
from medlens.io import Image, read_image, write_image
from medlens.runs import json_safe, open_run
from medlens.tasks import load_model, task_for


def explain_paths(run_path, inputs: list[Path], out_dir: Path, *, method: str = "gradcam",
                  class_name: str | None = None, sanity: bool = True, log=print) -> dict:
    """Explain every input; write overlays, 3D heat maps and ``explanations.json`` into ``out_dir``.

    Returns:
        ``{"run", "method", "explained", "inputs": [row per input], "sanity": {...} | None}``; a row holds
        ``path``, what the task says of the input (the prediction, ``explained_class``...), ``overlay``,
        ``heatmap`` (3D), ``hottest_index`` / ``hottest_mm``, or ``error``.
    """
    from medlens.explain import METHODS

    run = open_run(run_path)
    config = run.read_config()
    if method not in METHODS:
        raise ConfigError(f"--method {method}: choose one of {', '.join(METHODS)}")
    names = list(config.dataset.class_names)
    if class_name is not None and class_name not in names:
        raise ConfigError(f"--class {class_name}: the run's classes are {', '.join(names)}")
    task = task_for(config)
    model, calibration, rows, items = load_model(run, config), run.read_calibration(), [], []
    fused = _fused_inputs(config)
    for path in expand_inputs(inputs):
        if fused is not None and (path.suffix.lower() == ".csv" or fused):
            more_rows, more_items = _explain_fused(run, config, model, calibration, path, out_dir, fused,
                                                   method=method, class_name=class_name, log=log)
            rows, items = rows + more_rows, items + more_items
            continue
        try:
            image = read_image(path, spatial_dims=config.dataset.spatial_dims)
            explained = task.explain(model, config, calibration, image, method=method, class_name=class_name,
                                     where=str(path))
        except (MedlensError, OSError, ValueError) as exc:
            rows.append({"path": str(path), "error": str(exc)})
            log(f"{path}: error: {exc}")
            continue
        rows.append({"path": str(path), **explained.row, **_write_maps(image, explained.cam, path, out_dir)})
        if fused is not None:  # one image and clinical values: none were given
            rows[-1]["missing_clinical"] = _clinical_columns(config)
        if explained.sanity_item is not None:
            items.append(explained.sanity_item)
        log(_describe(rows[-1]))
    check = task.sanity(model, config, items, method) if sanity and items else None
    if check is not None:
        log(check["message"])
    doc = {"run": str(run.root), "method": method, "explained": class_name or "the predicted class", "inputs": rows,
           "sanity": check}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "explanations.json", json.dumps(json_safe(doc), indent=2) + "\n")
    log(f"explanations written to {out_dir}")
    return doc


def _fused_inputs(config) -> tuple[str, ...] | None:
    """The view names of a run of several inputs (empty: one image and clinical values); ``None`` for any other."""
    from medlens.tasks.classification.inputs import is_fused, view_count

    if not is_fused(config):
        return None
    return tuple(config.data.views) if view_count(config.data) > 1 else ()


def _explain_fused(run, config, model, calibration, path: Path, out_dir: Path, views: tuple[str, ...], *, method,
                   class_name, log) -> tuple[list, list]:
    """``(rows, sanity items)`` for the cases of a CSV; an error row for an image given to a run of several views."""
    from medlens.data.manifest import open_manifest

    try:
        if path.suffix.lower() != ".csv":
            raise ConfigError(_one_image_refused(config, views))
        dataset = open_manifest(path, unlabelled=True)
    except (MedlensError, OSError, ValueError) as exc:
        log(f"{path}: error: {exc}")
        return [{"path": str(path), "error": str(exc)}], []
    rows, items = [], []
    for case in dataset.cases:
        where = f"{path} case {case.case_id}"
        try:
            explained, written = _explain_case(run, config, model, calibration, dataset, case, out_dir, views,
                                               method=method, class_name=class_name)
        except (MedlensError, OSError, ValueError) as exc:
            rows.append({"path": where, "error": str(exc)})
            log(f"{where}: error: {exc}")
            continue
        rows.append({"path": where, "case": case.case_id, **explained.row, "views": written})
        items.append(explained.sanity_item)
        log(_describe_case(rows[-1]))
    return rows, items


def _clinical_columns(config) -> list[str]:
    return [*config.clinical.numeric, *(entry.partition("=")[0].strip() for entry in config.clinical.categorical)]


def _one_image_refused(config, views: tuple[str, ...]) -> str:
    clinical = _clinical_columns(config)
    columns = [f"image:{v}" for v in views] + clinical
    return (f"this run takes {len(views)} views ({', '.join(views)}){' and clinical values' if clinical else ''} per "
            f"case, not one image: give a CSV with a row per case and columns {', '.join(columns)} (paths relative "
            "to the CSV; an empty cell is a missing view or value)")


def _explain_case(run, config, model, calibration, dataset, case, out_dir: Path, views: tuple[str, ...], *,
                  method, class_name):
    """One case's prediction and maps, the overlays written per view (``{view: {"overlay"...}}``; a view the case
    lacks ``{"missing": true}``). Views stacked as channels (or one image) show the map on the first view."""
    import re

    from medlens.data.tensors import preprocess_cases
    from medlens.data.views import read_view
    from medlens.io.formats import suffix_of
    from medlens.tasks.classification.explain import explain_case
    from medlens.tasks.classification.inputs import read_clinical

    encoder = read_clinical(run.clinical)
    clinical = encoder.encode([case])[0] if encoder is not None else None
    array = preprocess_cases(dataset, [case], config.data)[0]
    explained = explain_case(model, config, calibration, array, clinical, method=method, class_name=class_name)
    explained.row["missing_clinical"] = encoder.missing(case.clinical) if encoder is not None else []
    own = suffix_of(Path(case.case_id))  # a case named by its first view's path: front/case1.png -> front_case1
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", case.case_id[: len(case.case_id) - len(own)]).strip("_") or "case"
    shown = views or (config.data.views[:1] if config.data.views else ("image",))
    written = {}
    for name, cam in zip(shown, explained.cam):
        image = read_view(dataset, case, name) if config.data.views else dataset.load_image(case)
        if image is None or np.isnan(cam).all():
            written[name] = {"missing": True}
        else:
            written[name] = _write_maps(image, cam, Path(f"{stem}_{name}"), out_dir)
    return explained, written


def _describe_case(row: dict) -> str:
    shown = [f"{name}: " + ("missing, no map" if entry.get("missing") else entry["overlay"])
             for name, entry in row["views"].items()]
    unknown = f" (without {', '.join(row['missing_clinical'])})" if row.get("missing_clinical") else ""
    return (f"{row['path']}: {row['predicted'] or '(none)'}{unknown}; map of {row['explained_class']} -> "
            + "; ".join(shown))


def _write_maps(image: Image, cam: np.ndarray, path: Path, out_dir: Path) -> dict:
    """The map back on the input's grid; the overlay PNG, and in 3D the NIfTI heat map."""
    from medlens.explain import hottest_point, map_on_grid, overlay_png

    cam = map_on_grid(image, cam)
    overlay = out_dir / output_name(path, "_cam", ".png")
    write_bytes_atomic(overlay, overlay_png(image, cam))
    point = hottest_point(cam)
    row = {"overlay": str(overlay), "hottest_index": list(point), "hottest_mm": _world(image, point)}
    if image.spatial_dims == 3:
        heatmap = out_dir / output_name(path, "_cam", ".nii.gz")
        write_image(Image(cam[None], image.spacing_mm, image.origin_mm, image.direction,
                          spacing_known=image.spacing_known, meta={}), heatmap)
        row["heatmap"] = str(heatmap)
    return row


def _world(image: Image, index) -> list[float]:
    """Physical position (mm) of a voxel index: origin + direction @ (index * spacing)."""
    dims = image.spatial_dims
    direction = np.asarray(image.direction, dtype=np.float64).reshape(dims, dims)
    offset = direction @ (np.asarray(index, dtype=np.float64) * np.asarray(image.spacing_mm))
    return [round(float(v), 3) for v in np.asarray(image.origin_mm) + offset]


def _describe(row: dict) -> str:
    head = f"{row['path']}: " + (f"{row['predicted'] or '(none)'}; " if "predicted" in row else "")
    return head + f"map of {row['explained_class']} -> {row['overlay']}" + (
        f" and {row['heatmap']}" if "heatmap" in row else "")
