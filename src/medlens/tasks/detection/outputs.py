"""What a detection prediction returns: through ``Predictor``, the HTTP service and ``medlens predict``."""

from __future__ import annotations

import base64
from pathlib import Path

from medlens.data.inputs import expand_inputs, output_name
from medlens.errors import MedlensError
from medlens.tasks.base import print_rows
from medlens.tasks.detection.files import box_rows, overlay_png, write_boxes, write_slicer_markups
from medlens.tasks.detection.infer import detect_image


def predict(predictor, image, *, where: str) -> dict:
    """``task``, ``boxes`` (records: ``label``, ``score``, ``box`` voxel corners on the input's grid, and for an
    image with geometry ``center_mm`` / ``size_mm``), ``shown`` (how many reach the display threshold),
    ``display_threshold``, ``image`` (the input, for overlays) and ``model_version``."""
    config = predictor.config
    found = detect_image(predictor.model, image, config, where=where)
    threshold = float(predictor.postprocess.get("display_threshold", config.detect.score_threshold))
    rows = box_rows(found.boxes, found.scores, found.labels, config.dataset.class_names, image)
    return {"task": config.dataset.task, "boxes": rows, "display_threshold": threshold,
            "shown": sum(r["score"] >= threshold for r in rows), "image": image,
            "class_names": list(config.dataset.class_names),
            "model_version": predictor.card.get("model_version")}


def to_json(result: dict, options: dict[str, bool], folder: Path) -> dict:
    """The boxes, the display threshold and the model version; a PNG overlay as base64 when asked for."""
    body = {key: result[key] for key in ("task", "boxes", "display_threshold", "shown", "model_version")}
    if options.get("overlay"):
        shown = [r for r in result["boxes"] if r["score"] >= result["display_threshold"]]
        path = overlay_png(result["image"], shown, folder / "overlay.png", result["class_names"])
        body["overlay_png"] = base64.b64encode(path.read_bytes()).decode()
    return body


def write_outputs(predictor, inputs: list[Path], out: Path | None, *, log) -> int:
    """Per input: ``<name>_boxes.csv`` / ``.json`` (every box with its score), ``<name>_boxes.png`` (the boxes
    above the display threshold) and, for 3D, ``<name>_boxes.mrk.json`` (3D Slicer ROIs); one line each."""
    out_dir = out or Path("predictions")
    names = list(predictor.config.dataset.class_names)
    rows = []
    for path in expand_inputs(inputs):
        try:
            result = predictor.predict(path)
        except (MedlensError, OSError, ValueError) as exc:
            rows.append({"path": str(path), "error": str(exc)})
            continue
        image, boxes = result["image"], result["boxes"]
        shown = [r for r in boxes if r["score"] >= result["display_threshold"]]
        csv_path, _ = write_boxes(boxes, out_dir / output_name(path, "_boxes", ".csv"),
                                  out_dir / output_name(path, "_boxes", ".json"), image_name=path.name,
                                  spatial_dims=image.spatial_dims)
        overlay_png(image, shown, out_dir / output_name(path, "_boxes", ".png"), names)
        if image.spatial_dims == 3:
            write_slicer_markups(shown, image, names, out_dir / output_name(path, "_boxes", ".mrk.json"))
        counts = {n: sum(r["label"] == n for r in shown) for n in names}
        rows.append({"path": str(path), "csv": str(csv_path), "counts": counts, "all": len(boxes)})
    return print_rows(rows, lambda row: f"{row['path']} -> {row['csv']}  shown: "
                      + "  ".join(f"{n}={c}" for n, c in row["counts"].items()) + f"  (all boxes: {row['all']})", log)
