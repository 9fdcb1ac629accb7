"""Segmentation datasets: image/mask pairs and Medical Segmentation Decathlon folders.

Layouts:
- ``root/images/`` + ``root/labels/`` (or ``masks/``) with matching file names; nnU-Net style
  channel files ``case_0000.nii.gz``, ``case_0001.nii.gz`` are stacked as channels.
- ``root/dataset.json`` in Decathlon layout (``training`` list, ``labels``, ``modality``).
- a flat folder of ``X_image.ext`` + ``X_label.ext`` (or ``X.ext`` + ``X_mask.ext`` / ``X-label.ext``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from medlens.data.dataset import Dataset, Finding, class_name_problem, lies_outside
from medlens.data.folders import is_image_file
from medlens.errors import DatasetError
from medlens.io.formats import suffix_of
from medlens.types import Case, Task

IMAGE_DIRS = ("images", "imagesTr", "image", "imgs")
MASK_DIRS = ("labels", "labelsTr", "masks", "mask", "label", "segmentations")
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_MASK_TOKEN = re.compile(r"^(?P<case>.+?)[_-](label|labels|mask|seg|segmentation)$", re.IGNORECASE)
_IMAGE_TOKEN = re.compile(r"^(?P<case>.+?)[_-](image|img)$", re.IGNORECASE)


def stem(path: Path) -> str:
    return path.name[: len(path.name) - len(suffix_of(path))]


def find_pair_dirs(root: Path) -> tuple[Path, Path] | None:
    images = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), None)
    masks = next((root / d for d in MASK_DIRS if (root / d).is_dir()), None)
    return (images, masks) if images and masks else None


def open_pairs(root: Path) -> Dataset:
    """Pair ``images/`` with ``labels/`` (or ``masks/``) by file name.

    A mask is named like its image, or like it with a ``_mask`` / ``_segmentation`` / ``_seg`` / ``_label``
    ending (ISIC's ``ISIC_0000000_segmentation.png`` for ``ISIC_0000000.jpg``).

    Raises:
        DatasetError: no images, or no image has a mask.
    """
    image_dir, mask_dir = find_pair_dirs(root)
    channels: dict[str, list[Path]] = {}
    mask_files = [p for p in sorted(mask_dir.iterdir()) if is_image_file(p)]
    named = {stem(p) for p in mask_files} | {m["case"] for p in mask_files if (m := _MASK_TOKEN.match(stem(p)))}
    for path in sorted(p for p in image_dir.iterdir() if is_image_file(p)):
        match = _CHANNEL.match(stem(path))
        # `scan_0001` with a mask `scan_0001` is numbering; `case_0000` with a mask `case` is a channel
        case_id = match["case"] if match and stem(path) not in named else stem(path)
        channels.setdefault(case_id, []).append(path)
    masks = _masks_by_case(mask_files, channels)
    cases = [Case(case_id=cid, images=tuple(paths), mask=masks[cid]) for cid, paths in channels.items() if cid in masks]
    findings = _unpaired(root, set(channels) - set(masks), set(masks) - set(channels))
    if not cases:
        raise DatasetError(f"{root}: no image in {image_dir.name}/ has a mask of the same name in {mask_dir.name}/ "
                           f"(e.g. {next(iter(channels), 'none')}); name each mask like its image")
    return Dataset(root, "segmentation_pairs", Task.SEGMENTATION, (), cases, findings=findings)


def _masks_by_case(mask_files: list[Path], cases) -> dict[str, Path]:
    """Each mask under the case it belongs to: its own name when a case has it, else that name less its
    ``_mask``-like ending; a mask of neither stays under its own name (reported as having no image)."""
    masks: dict[str, Path] = {}
    for path in mask_files:
        match = _MASK_TOKEN.match(stem(path))
        key = match["case"] if stem(path) not in cases and match and match["case"] in cases else stem(path)
        masks[stem(path) if key in masks else key] = path  # a second mask of one case: reported, not paired
    return masks


def looks_like_flat_pairs(root: Path) -> bool:
    return any(_MASK_TOKEN.match(stem(p)) for p in root.iterdir() if is_image_file(p))


def open_flat_pairs(root: Path) -> Dataset:
    """Pair ``X_image.ext`` / ``X.ext`` with ``X_label.ext`` / ``X-label.ext`` / ``X_mask.ext`` in one folder."""
    files = [p for p in sorted(root.iterdir()) if is_image_file(p)]
    masks, images = {}, {}
    for path in files:
        mask_match = _MASK_TOKEN.match(stem(path))
        if mask_match:
            masks[mask_match["case"]] = path
        else:
            image_match = _IMAGE_TOKEN.match(stem(path))
            images[image_match["case"] if image_match else stem(path)] = path
    cases = [Case(case_id=cid, images=(path,), mask=masks[cid]) for cid, path in images.items() if cid in masks]
    if not cases:
        raise DatasetError(f"{root}: found mask files but no image named like them; name pairs X_image + X_label")
    findings = _unpaired(root, set(images) - set(masks), set(masks) - set(images))
    return Dataset(root, "segmentation_pairs", Task.SEGMENTATION, (), cases, findings=findings)


def _unpaired(root: Path, images_only: set[str], masks_only: set[str]) -> list[Finding]:
    findings = []
    if images_only:
        findings.append(Finding("warning", "mask.missing", f"{root}: {len(images_only)} image(s) have no mask and are "
                                f"left out (e.g. {sorted(images_only)[0]})", sorted(images_only)))
    if masks_only:
        findings.append(Finding("warning", "image.missing", f"{root}: {len(masks_only)} mask(s) have no image "
                                f"(e.g. {sorted(masks_only)[0]})", sorted(masks_only)))
    return findings


def open_decathlon(root: Path, *, allow_outside_root: bool = False) -> Dataset:
    """List the training cases of a Decathlon-style folder from its ``dataset.json``.

    Args:
        allow_outside_root: follow listed paths that leave ``root`` (``../..``, absolute paths
            elsewhere, links pointing out); refused by default, as a ``path.outside_root`` finding.

    Raises:
        DatasetError: unreadable ``dataset.json``, no ``training`` list, or listed files missing.
    """
    spec = _read_spec(root / "dataset.json")
    values, class_names = _labels(spec.get("labels") or {}, root / "dataset.json")
    cases, missing, outside = [], [], []
    for entry in spec["training"]:
        image, mask = root / entry["image"], root / entry["label"]
        if not allow_outside_root and (lies_outside(image, root) or lies_outside(mask, root)):
            outside.append(f"{entry['image']}, {entry['label']}")
            continue
        for path in (image, mask):
            if not path.exists():
                missing.append(str(path.relative_to(root)) if path.is_relative_to(root) else str(path))
        if image.exists() and mask.exists():
            cases.append(Case(case_id=stem(image), images=(image,), mask=mask))
    findings = []
    if outside:
        findings.append(Finding.blocking("path.outside_root", f"{root / 'dataset.json'} lists {len(outside)} case(s) "
                                         f"outside {root} (first: {'; '.join(outside[:3])}); medlens reads only files "
                                         "under the dataset's folder: move them under it, or pass "
                                         "--allow-outside-root if these paths are meant", outside))
    if missing:
        findings.append(Finding.blocking("file.missing", f"{root / 'dataset.json'} lists {len(missing)} file(s) that "
                                f"do not exist (first: {', '.join(missing[:3])}); copy them or fix the list", missing))
    modality = spec.get("modality") or spec.get("channel_names") or {}
    dims = 3 if str(spec.get("tensorImageSize", "3D")).upper().startswith("3") else 2
    meta = {"label_values": values, "name": spec.get("name"),
            "modality": _channel_names(modality), "num_training": spec.get("numTraining")}
    return Dataset(root, "decathlon", Task.SEGMENTATION, class_names, cases, spatial_dims=dims, meta=meta,
                   findings=findings)


def _labels(labels, path: Path) -> tuple[list[int], tuple[str, ...]]:
    """Mask values and class names from ``labels``: ``{"0": "background", ...}`` (Decathlon), ``{"background":
    0, ...}`` (nnU-Net v2) or a list of names (value = position).

    Raises:
        DatasetError: anything else, naming the expected forms.
    """
    if isinstance(labels, list) and all(isinstance(name, str) for name in labels):
        by_value = dict(enumerate(labels))
    elif isinstance(labels, dict) and all(str(k).strip().isdigit() for k in labels):
        by_value = {int(k): str(name) for k, name in labels.items()}
    elif isinstance(labels, dict) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                          for v in labels.values()):
        by_value = {v: str(name) for name, v in labels.items()}
    else:
        raise DatasetError(f"{path}: 'labels' must map mask values to names ({{\"0\": \"background\", \"1\": "
                           f"\"tumour\"}}), names to values ({{\"background\": 0, \"tumour\": 1}}) or list the names "
                           "in value order")
    problems = [f"label {value}: {problem}" for value, name in by_value.items()
                if (problem := class_name_problem(name.strip()))]
    if problems:
        raise DatasetError(f"{path}: {len(problems)} label name(s) cannot be class names ({'; '.join(problems[:3])}); "
                           "name each label after the structure it marks")
    values = sorted(by_value)
    return values, tuple(by_value[v] for v in values)


def _channel_names(modality) -> list[str]:
    """``{"0": "CT", "1": "PET"}`` (or a list) as names in channel order; keys that are not numbers keep their order."""
    if isinstance(modality, dict):
        keys = sorted(modality, key=int) if all(str(k).strip().isdigit() for k in modality) else list(modality)
        return [str(modality[k]) for k in keys]
    return [str(m) for m in modality] if isinstance(modality, list) else [str(modality)]


def _read_spec(path: Path) -> dict:
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("training"), list) or not spec["training"]:
        raise DatasetError(f"{path}: expected a 'training' list of {{'image': ..., 'label': ...}} entries")
    bad = [i for i, e in enumerate(spec["training"]) if not isinstance(e, dict)
           or not all(isinstance(e.get(key), str) and e[key].strip() for key in ("image", "label"))]
    if bad:
        raise DatasetError(f"{path}: {len(bad)} training entries lack an 'image' or 'label' path (first: entry "
                           f"{bad[0]}); each entry is {{'image': 'imagesTr/x.nii.gz', 'label': 'labelsTr/x.nii.gz'}}")
    return spec
