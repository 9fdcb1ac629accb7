"""``explain``: heat maps of what a trained run looks at, for new images, with a sanity check.

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
import torch

from medlens._files import write_bytes_atomic, write_text_atomic
from medlens.config import Config
from medlens.engine.evaluate import json_safe, load_model
from medlens.engine.inference import predict_logits
from medlens.engine.predict import classify_image, expand_inputs
from medlens.engine.runs import open_run
from medlens.engine.segment_io import output_name
from medlens.errors import ConfigError, MedlensError
from medlens.io import Image, read_image, write_image
from medlens.transforms.volume import resample


def initial_model(config: Config) -> torch.nn.Module:
    """The run's network with the random weights training starts from (seeded as ``train`` seeds it)."""
    from medlens.engine.lightning import build_model

    state = torch.random.get_rng_state()
    torch.manual_seed(config.train.seed)
    try:
        return build_model(config).eval()
    finally:
        torch.random.set_rng_state(state)


def explain_paths(run_path, inputs: list[Path], out_dir: Path, *, method: str = "gradcam",
                  class_name: str | None = None, sanity: bool = True, log=print) -> dict:
    """Explain every input; write overlays, 3D heat maps and ``explanations.json`` into ``out_dir``.

    Returns:
        ``{"run", "method", "explained", "inputs": [row per input], "sanity": {...} | None}``; a row holds
        ``path``, ``predicted``, ``probabilities``, ``explained_class``, ``overlay``, ``heatmap`` (3D),
        ``hottest_index`` / ``hottest_mm``, or ``error``.
    """
    from medlens.explain import METHODS

    run = open_run(run_path)
    config = run.read_config()
    if method not in METHODS:
        raise ConfigError(f"--method {method}: choose one of {', '.join(METHODS)}")
    names = list(config.dataset.class_names)
    if class_name is not None and class_name not in names:
        raise ConfigError(f"--class {class_name}: the run's classes are {', '.join(names)}")
    explainer = _explain_region if config.dataset.task == "segmentation" else _explain_image
    model, calibration, rows, batch = load_model(run, config), run.read_calibration(), [], []
    for path in expand_inputs(inputs):
        try:
            image = read_image(path, spatial_dims=config.dataset.spatial_dims)
            row, prepared = explainer(calibration, config, model, image, path, out_dir, method, class_name)
        except (MedlensError, OSError, ValueError) as exc:
            rows.append({"path": str(path), "error": str(exc)})
            log(f"{path}: error: {exc}")
            continue
        rows.append(row)
        batch.append(prepared)
        log(_describe(row))
    doc = {"run": str(run.root), "method": method, "explained": class_name or "the predicted class", "inputs": rows,
           "sanity": _sanity(config, model, batch, method, log) if sanity and batch else None}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "explanations.json", json.dumps(json_safe(doc), indent=2) + "\n")
    log(f"explanations written to {out_dir}")
    return doc


def _explain_image(calibration: dict, config: Config, model, image: Image, path: Path, out_dir: Path,
                   method: str, class_name: str | None):
    """One classification input: prediction, map on the input grid, overlay (and NIfTI in 3D)."""
    from medlens.explain import compute_cams

    names = list(config.dataset.class_names)
    result = classify_image(lambda x: predict_logits(model, x), image, config, calibration, where=str(path))
    target = names.index(class_name) if class_name else result.target
    cam = compute_cams(model, result.array[None], class_indices=[target], method=method)[0]
    row = {"path": str(path), "predicted": result.predicted,
           "probabilities": {n: round(float(p), 6) for n, p in zip(names, result.probs)},
           "explained_class": names[target]}
    row.update(_write_maps(image, cam, path, out_dir))
    return row, (result.array, target)


def _explain_region(calibration: dict, config: Config, model, image: Image, path: Path, out_dir: Path,
                    method: str, class_name: str | None):
    """One segmentation input: the map of the predicted region of ``class_name`` (default: the largest class)."""
    from medlens.engine.sliding import sliding_probs
    from medlens.explain.regions import region_cam
    from medlens.transforms.volume import prepare_image

    array = prepare_image(image, config.data, str(path))
    probs = sliding_probs(model, torch.from_numpy(array)[None], config)[0]
    labels = probs.argmax(0).cpu().numpy()
    names = list(config.dataset.class_names)
    counts = np.bincount(labels.ravel(), minlength=len(names))
    target = names.index(class_name) if class_name else int(np.argmax(counts[1:]) + 1) if len(names) > 1 else 0
    if not counts[target]:
        raise MedlensError(f"{path}: no voxel is predicted as {names[target]}, so there is no region to explain; "
                           "choose another --class")
    with torch.enable_grad():
        cam = region_cam(model, array, labels == target, target, tuple(config.data.input_size), method)
    row = {"path": str(path), "explained_class": names[target],
           "predicted_voxels": {n: int(c) for n, c in zip(names[1:], counts[1:])}}
    row.update(_write_maps(image, cam, path, out_dir))
    return row, None


def map_on_grid(image: Image, cam: np.ndarray) -> np.ndarray:
    """A map of the network's grid ``(*input_size)`` resampled onto the image's own grid, in [0, 1]."""
    return np.clip(resample(cam[None].astype(np.float32), image.spatial_shape)[0], 0, 1)


def overlay_png(image: Image, cam_on_grid: np.ndarray) -> bytes:
    """The PNG overlay of a map on the image as it was read (three slices in 3D)."""
    from medlens.explain import overlay_rgb, png_bytes

    return png_bytes(overlay_rgb(image.array, cam_on_grid, spacing_mm=image.spacing_mm))


def _write_maps(image: Image, cam: np.ndarray, path: Path, out_dir: Path) -> dict:
    """The map back on the input's grid; the overlay PNG, and in 3D the NIfTI heat map."""
    from medlens.explain import hottest_point

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


def _sanity(config: Config, model, batch: list, method: str, log) -> dict | None:
    """The randomisation test over every explained image (classification runs)."""
    from medlens.explain import randomisation_check

    if config.dataset.task == "segmentation":
        return None
    images = np.stack([a for a, _ in batch])
    result = randomisation_check(model, initial_model(config), images, class_indices=[t for _, t in batch],
                                 method=method)
    log(result["message"])
    return result


def _describe(row: dict) -> str:
    head = f"{row['path']}: " + (f"{row['predicted'] or '(none)'}; " if "predicted" in row else "")
    return head + f"map of {row['explained_class']} -> {row['overlay']}" + (
        f" and {row['heatmap']}" if "heatmap" in row else "")
