"""Detection datasets: box annotations in the formats people have, as :class:`Case` records with :class:`Boxes`.

Layouts (``Dataset.layout``):
- ``voc``: a Pascal VOC folder, ``Annotations/*.xml`` + ``JPEGImages/`` (or one subfolder holding them);
  ``ImageSets/Main/{train,val,test}.txt`` fix the splits (``trainval.txt`` only when there is no train /
  val list: its cases stay free for medlens to split, the test list is kept). VOC pixels are 1-based and
  inclusive, so ``(xmin, ymin, xmax, ymax)`` becomes corners ``(xmin - 1, ymin - 1, xmax, ymax)``. An
  optional ``classes.txt`` (one name a line) declares the classes and their order; names outside it are
  errors. XML with a DOCTYPE or ENTITY declaration is refused unread (entity expansion attacks).
- ``coco``: a COCO JSON (``images``, ``annotations``, ``categories``); ``bbox = [x, y, w, h]`` becomes
  ``(x, y, x + w, y + h)``; classes in category-id order. ``iscrowd`` regions are not objects: they are
  left out (counted in ``meta["crowd_boxes_dropped"]``), as COCO's own evaluation ignores them.
- ``box_manifest``: a CSV with one row per box (:mod:`medlens.data.box_manifest`).
- ``box_json``: MONAI's detection data list, ``{"box_unit", "box_mode", "training": [...], ...}``.
Images without a box are negatives (empty :class:`Boxes`). Paths are relative to the annotation file's
folder (or ``image_root``) and must stay under it unless ``allow_outside_root``.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from xml.etree import ElementTree

import numpy as np

from medlens.data.dataset import Dataset, Finding, class_name_problem, lies_outside
from medlens.data.folders import is_image_file
from medlens.errors import DatasetError
from medlens.io.formats import is_clutter
from medlens.types import Boxes, Case, Split, Task

VOC_SPLITS = ("train", "val", "test")
_UNSAFE_XML = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


def check_files(where: Path, root: Path, cases: list[Case], allow_outside_root: bool
                ) -> tuple[list[Case], list[Finding]]:
    """The cases whose image exists under ``root``; ``path.outside_root`` / ``file.missing`` for the others.

    A path leaving ``root`` is refused before anything looks at it (not even whether it exists).
    """
    kept, outside, missing = [], [], []
    for case in cases:
        if not allow_outside_root and lies_outside(case.image, root):
            outside.append(case.case_id)
        elif not case.image.is_file():
            missing.append(case.case_id)
        else:
            kept.append(case)
    findings = []
    if outside:
        findings.append(Finding.blocking("path.outside_root", f"{where}: {len(outside)} image(s) lie outside {root} "
                                         f"(first: {', '.join(outside[:3])}); medlens reads only files under the "
                                         "annotations' folder: move them under it, or pass --allow-outside-root if "
                                         "these paths are meant", outside))
    if missing:
        findings.append(Finding.blocking("file.missing", f"{where}: {len(missing)} annotated image(s) do not exist "
                                         f"under {root} (first: {', '.join(missing[:3])}); copy them there or fix "
                                         "the paths", missing))
    return kept, findings


def _label_finding(where: Path, unknown: dict[str, list[str]], declared: str) -> list[Finding]:
    """``boxes.label`` (blocking) for labels outside the declared classes: ``unknown`` maps label -> cases."""
    if not unknown:
        return []
    cases = sorted({c for ids in unknown.values() for c in ids})
    shown = ", ".join(f"{label!r} ({len(ids)} box(es), e.g. {ids[0]})" for label, ids in list(unknown.items())[:3])
    return [Finding.blocking("boxes.label", f"{where}: {len(cases)} image(s) have boxes labelled outside the "
                             f"declared classes ({declared}): {shown}; fix the labels or declare the classes", cases)]


# --- Pascal VOC -----------------------------------------------------------------------------------------------

def find_voc_root(root: Path) -> Path | None:
    """``root`` when it holds ``Annotations/`` + ``JPEGImages/``, or its only subfolder when that does."""
    def is_voc(folder: Path) -> bool:
        return (folder / "Annotations").is_dir() and (folder / "JPEGImages").is_dir()

    if is_voc(root):
        return root
    subdirs = [p for p in root.iterdir() if p.is_dir() and not is_clutter(p.name)]
    return subdirs[0] if len(subdirs) == 1 and is_voc(subdirs[0]) else None


def open_voc(root: Path, *, allow_outside_root: bool = False) -> Dataset:
    """List a Pascal VOC folder: one case per ``Annotations/*.xml``, boxes in 0-based voxel corners.

    Raises:
        DatasetError: no XML files, or an XML that is unsafe or not VOC.
    """
    voc = find_voc_root(root)
    xmls = sorted((voc / "Annotations").glob("*.xml"))
    if not xmls:
        raise DatasetError(f"{voc / 'Annotations'}: no .xml annotation files; a VOC folder holds one XML per image")
    declared = _declared_classes(voc / "classes.txt")
    parsed = [_read_voc_xml(path) for path in xmls]
    names = declared or sorted({name for _, objects, _ in parsed for name, _ in objects})
    problems = [f"{n!r}: {p}" for n in names if (p := class_name_problem(n))]
    if problems:
        raise DatasetError(f"{voc / 'Annotations'}: object name(s) cannot be class names ({'; '.join(problems[:3])}); "
                           "name each object after what it is")
    splits, split_meta = _voc_splits(voc / "ImageSets" / "Main")
    cases, unknown = [], {}
    for path, (filename, objects, size) in zip(xmls, parsed):
        values = [box for name, box in objects if name in names]
        for name, _ in objects:
            if name not in names:
                unknown.setdefault(name, []).append(path.stem)
        labels = [names.index(name) for name, _ in objects if name in names]
        image = _voc_image(voc / "JPEGImages", filename, path.stem)
        cases.append(Case(case_id=path.stem, images=(image,), boxes=Boxes(tuple(values), tuple(labels)),
                          split=splits.get(path.stem), extra={"annotation": str(path), "declared_size": size}))
    cases, findings = check_files(voc / "Annotations", voc, cases, allow_outside_root)
    findings += _label_finding(voc / "Annotations", unknown, "classes.txt" if declared else "")
    meta = {"annotations": str(voc / "Annotations"), "official_splits": split_meta,
            "classes_declared": bool(declared)}
    return Dataset(root, "voc", Task.DETECTION, tuple(names), cases, spatial_dims=2, meta=meta, findings=findings)


def _declared_classes(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return list(dict.fromkeys(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()))


def _read_voc_xml(path: Path) -> tuple[str | None, list[tuple[str, tuple[float, ...]]], tuple[int, ...] | None]:
    """``(filename, [(name, corners)], (width, height) or None)`` of one VOC XML.

    Raises:
        DatasetError: a DOCTYPE / ENTITY declaration, malformed XML, or a box without four numbers.
    """
    data = path.read_bytes()
    if _UNSAFE_XML.search(data):
        raise DatasetError(f"{path}: the XML declares a DOCTYPE or ENTITY, which VOC annotations never need and "
                           "which can make a parser expand entities without bound; remove the declaration")
    try:
        tree = ElementTree.fromstring(data)
    except ElementTree.ParseError as exc:
        raise DatasetError(f"{path}: not well-formed XML ({exc}); export the annotation again") from None
    objects = []
    for k, obj in enumerate(tree.iter("object")):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        try:
            xmin, ymin, xmax, ymax = (float(box.findtext(tag)) for tag in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            raise DatasetError(f"{path}: object {k + 1} ({name or 'no name'}) lacks a <bndbox> with numeric xmin, "
                               "ymin, xmax, ymax; fix or delete it") from None
        objects.append((name, (xmin - 1, ymin - 1, xmax, ymax)))  # 1-based inclusive pixels -> [start, stop)
    size = tree.find("size")
    try:
        declared = (int(size.findtext("width")), int(size.findtext("height"))) if size is not None else None
    except (TypeError, ValueError):
        declared = None
    return (tree.findtext("filename") or "").strip() or None, objects, declared


def _voc_image(image_dir: Path, filename: str | None, stem: str) -> Path:
    """The XML's ``<filename>`` in ``JPEGImages/`` (its folder part ignored), else any image named like the XML."""
    if filename:
        candidate = image_dir / Path(filename.replace("\\", "/")).name
        if candidate.is_file():
            return candidate
    matches = sorted(p for p in image_dir.glob(f"{stem}.*") if is_image_file(p))
    return matches[0] if matches else image_dir / (Path(filename).name if filename else f"{stem}.jpg")


def _voc_splits(folder: Path) -> tuple[dict[str, Split], dict[str, int]]:
    """Image id -> split from ``train/val/test.txt`` (``trainval.txt`` only without train / val lists)."""
    lists = {name: _ids(folder / f"{name}.txt") for name in (*VOC_SPLITS, "trainval")}
    splits: dict[str, Split] = {}
    for name in VOC_SPLITS:
        for image_id in lists[name] or ():
            splits.setdefault(image_id, Split(name))
    used = [name for name in (*VOC_SPLITS, "trainval") if lists[name] is not None]
    if lists["train"] is None and lists["val"] is None and lists["trainval"] is not None:
        used = [name for name in used if name != "val"]  # trainval cases stay free (split None)
    return splits, {name: len(lists[name]) for name in used}


def _ids(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    return [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- COCO JSON ------------------------------------------------------------------------------------------------

def is_coco(spec) -> bool:
    return isinstance(spec, dict) and all(isinstance(spec.get(key), list) for key in ("images", "categories")) \
        and "annotations" in spec


def open_coco(path: Path, spec: dict, image_root: Path | None = None, *, allow_outside_root: bool = False) -> Dataset:
    """List a COCO JSON's images with their (non-crowd) boxes; images without annotations are negatives.

    Raises:
        DatasetError: entries without the fields COCO requires, or class names that cannot be names.
    """
    root = Path(image_root) if image_root else path.parent
    categories = sorted(_require(path, spec["categories"], ("id", "name"), "categories"), key=lambda c: c["id"])
    names = [str(c["name"]).strip() for c in categories]
    problems = [f"{n!r}: {p}" for n in names if (p := class_name_problem(n))]
    if problems or len(set(names)) != len(names):
        raise DatasetError(f"{path}: category names must be distinct class names ({'; '.join(problems[:3])}); "
                           "fix 'categories'")
    index_of = {c["id"]: k for k, c in enumerate(categories)}
    images = _require(path, spec["images"], ("id", "file_name"), "images")
    boxes: dict = {image["id"]: ([], []) for image in images}
    unknown, crowd = _coco_boxes(path, spec.get("annotations") or [], index_of, boxes)
    file_of = {image["id"]: image["file_name"] for image in images}
    for category, image_ids in unknown.items():
        unknown[category] = [file_of.get(i, str(i)) for i in image_ids]
    cases = [Case(case_id=image["file_name"], images=(root / image["file_name"],),
                  boxes=Boxes(tuple(boxes[image["id"]][0]), tuple(boxes[image["id"]][1])),
                  extra={"annotation": str(path), "declared_size": _coco_size(image)}) for image in images]
    cases, findings = check_files(path, root, cases, allow_outside_root)
    findings += _label_finding(path, {f"category_id {k}": v for k, v in unknown.items()}, "'categories'")
    meta = {"image_root": str(root), "crowd_boxes_dropped": crowd}
    return Dataset(path, "coco", Task.DETECTION, tuple(names), cases, spatial_dims=2, meta=meta, findings=findings)


def _coco_boxes(path: Path, annotations, index_of: dict, boxes: dict) -> tuple[dict, int]:
    """Fill ``boxes`` (image id -> (corners, labels)); return unknown category id -> image ids, and crowd count."""
    unknown: dict = {}
    crowd = 0
    for k, ann in enumerate(_require(path, annotations, ("image_id", "category_id", "bbox"), "annotations")):
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise DatasetError(f"{path}: annotation {k} has bbox {bbox!r}; COCO boxes are [x, y, width, height]")
        if ann["image_id"] not in boxes:
            raise DatasetError(f"{path}: annotation {k} refers to image_id {ann['image_id']!r}, which 'images' does "
                               "not list; add the image or delete the annotation")
        if ann.get("iscrowd"):
            crowd += 1
        elif ann["category_id"] not in index_of:
            unknown.setdefault(ann["category_id"], []).append(ann["image_id"])
        else:
            x, y, w, h = (float(v) for v in bbox)
            boxes[ann["image_id"]][0].append((x, y, x + w, y + h))
            boxes[ann["image_id"]][1].append(index_of[ann["category_id"]])
    return unknown, crowd


def _coco_size(image: dict) -> tuple[int, int] | None:
    width, height = image.get("width"), image.get("height")
    return (int(width), int(height)) if _is_number(width) and _is_number(height) else None


def _require(path: Path, entries, keys: tuple[str, ...], section: str) -> list[dict]:
    bad = [i for i, e in enumerate(entries) if not isinstance(e, dict) or any(e.get(key) is None for key in keys)]
    if bad:
        raise DatasetError(f"{path}: {len(bad)} entries of '{section}' lack {', '.join(keys)} (first: entry "
                           f"{bad[0]}); every entry needs them")
    return entries


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


# --- MONAI detection JSON -------------------------------------------------------------------------------------

BOX_MODES = {"cccwhd": (3, "center_size"), "xyzxyz": (3, "corners"), "ccwh": (2, "center_size"),
             "xyxy": (2, "corners")}
JSON_SECTIONS = {"training": None, "validation": Split.VAL, "test": Split.TEST}


def is_box_json(spec) -> bool:
    return isinstance(spec, dict) and any(isinstance(spec.get(s), list) and spec[s] and isinstance(spec[s][0], dict)
                                          and "box" in spec[s][0] for s in JSON_SECTIONS)


def open_box_json(path: Path, spec: dict, image_root: Path | None = None, *,
                  allow_outside_root: bool = False) -> Dataset:
    """List a MONAI-style detection data list; each section fixes its cases' split.

    ``training`` cases stay free for medlens to split unless a ``validation`` section exists, in which case
    they are ``train``.

    Raises:
        DatasetError: no ``box_unit``, an unknown ``box_mode``, or entries without image / box / label.
    """
    unit = spec.get("box_unit")
    if unit not in ("mm", "voxel"):
        raise DatasetError(f"{path}: 'box_unit' is {unit!r}; add \"box_unit\": \"mm\" when the boxes are in world "
                           "millimetres (placed on the image by its origin, spacing and direction, as MONAI's LUNA16 "
                           "lists are) or \"voxel\" when they are in voxel coordinates of the image array")
    mode = spec.get("box_mode", "cccwhd")
    if mode not in BOX_MODES:
        raise DatasetError(f"{path}: unknown box_mode {mode!r}; use one of {', '.join(BOX_MODES)}")
    dims, form = BOX_MODES[mode]
    root = Path(image_root) if image_root else path.parent
    training_split = Split.TRAIN if spec.get("validation") else None
    cases = []
    for section, split in JSON_SECTIONS.items():
        for k, entry in enumerate(spec.get(section) or []):
            cases.append(_json_case(path, f"{section}[{k}]", entry, root, dims, form, unit,
                                    split if section != "training" else training_split))
    names = _json_names(path, spec.get("labels"), [label for c in cases for label in c.boxes.labels])
    cases, findings = check_files(path, root, cases, allow_outside_root)
    return Dataset(path, "box_json", Task.DETECTION, names, cases, spatial_dims=dims,
                   meta={"image_root": str(root), "box_unit": unit, "box_mode": mode}, findings=findings)


def _json_case(path: Path, where: str, entry, root: Path, dims: int, form: str, unit: str, split) -> Case:
    image = entry.get("image") if isinstance(entry, dict) else None
    if isinstance(image, list) and len(image) == 1:
        image = image[0]
    boxes, labels = (entry.get("box", []), entry.get("label", [])) if isinstance(entry, dict) else ([], [])
    ok = (isinstance(image, str) and image.strip() and isinstance(boxes, list) and isinstance(labels, list)
          and len(boxes) == len(labels) and all(isinstance(b, list) and len(b) == 2 * dims
                                                and all(_is_number(v) for v in b) for b in boxes)
          and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in labels))
    if not ok:
        raise DatasetError(f"{path}: {where} must be {{\"image\": \"path\", \"box\": [[{2 * dims} numbers], ...], "
                           "\"label\": [class index >= 0 per box]}} with as many labels as boxes; fix that entry")
    return Case(case_id=image, images=(root / image,), split=split,
                boxes=Boxes(tuple(tuple(float(v) for v in b) for b in boxes), tuple(labels), form=form, unit=unit))


def _json_names(path: Path, declared, labels: list[int]) -> tuple[str, ...]:
    """Names from ``labels`` (a list in index order, or ``{"0": "nodule"}``), else the indices as names."""
    if isinstance(declared, list):
        names = [str(n) for n in declared]
    elif isinstance(declared, dict) and all(str(k).isdigit() for k in declared):
        names = [str(declared.get(str(i), declared.get(i, i))) for i in range(max(map(int, declared)) + 1)]
    else:
        names = [str(i) for i in range(max(labels, default=0) + 1)]
    outside = sorted({v for v in labels if v >= len(names)})
    if outside:
        raise DatasetError(f"{path}: box label(s) {outside} are outside the {len(names)} declared class(es) "
                           f"({', '.join(names)}); fix the labels or the 'labels' list")
    return tuple(names)


def open_box_json_file(path: Path, image_root=None, *, allow_outside_root: bool = False) -> Dataset | None:
    """A COCO or MONAI detection JSON at ``path`` as a dataset; ``None`` when it is neither."""
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None
    if is_coco(spec):
        return open_coco(path, spec, image_root, allow_outside_root=allow_outside_root)
    if is_box_json(spec):
        return open_box_json(path, spec, image_root, allow_outside_root=allow_outside_root)
    return None


# --- boxes from masks -----------------------------------------------------------------------------------------

def detection_from_masks(dataset: Dataset) -> Dataset:
    """The same cases as a detection dataset whose boxes are the connected components of each mask label.

    Class ``k`` is the ``k``-th foreground label value (``meta["box_label_values"]``); its name is the
    label's name, or the value itself when the layout declares none (the masks are then read once to
    find their values).

    Raises:
        DatasetError: ``dataset`` is not a segmentation dataset, or its masks hold no foreground label.
    """
    if dataset.task.label_form != "mask":
        raise DatasetError(f"{dataset.root}: boxes from masks need a segmentation dataset (image + mask pairs); "
                           f"this one is {dataset.task.value} ({dataset.layout})")
    values = dataset.meta.get("label_values")
    if values and len(values) == len(dataset.class_names):
        pairs = [(v, name) for v, name in zip(values, dataset.class_names) if v != 0]
    else:
        pairs = [(v, str(v)) for v in _mask_values(dataset) if v != 0]
    if not pairs:
        raise DatasetError(f"{dataset.root}: the masks hold no foreground label (only 0), so there are no objects "
                           "to box; check the mask files")
    meta = {**dataset.meta, "boxes_from_masks": True, "box_label_values": [int(v) for v, _ in pairs]}
    return replace(dataset, task=Task.DETECTION, class_names=tuple(name for _, name in pairs), meta=meta,
                   findings=list(dataset.findings))


def _mask_values(dataset: Dataset) -> list[int]:
    values: set[int] = set()
    for case in dataset.cases:
        mask = dataset.load_mask(case)
        found = np.unique(mask.array)
        values.update(int(v) for v in found if float(v).is_integer())
    return sorted(values)
