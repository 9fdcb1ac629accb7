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
    for path in expand_inputs(inputs):
        try:
            image = read_image(path, spatial_dims=config.dataset.spatial_dims)
            explained = task.explain(model, config, calibration, image, method=method, class_name=class_name,
                                     where=str(path))
        except (MedlensError, OSError, ValueError) as exc:
            rows.append({"path": str(path), "error": str(exc)})
            log(f"{path}: error: {exc}")
            continue
        rows.append({"path": str(path), **explained.row, **_write_maps(image, explained.cam, path, out_dir)})
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
