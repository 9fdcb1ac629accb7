""":func:`open_dataset`: recognise a dataset's layout and list its cases."""

from __future__ import annotations

import os
from pathlib import Path

from medlens.data.dataset import (
    Dataset,
    allow_outside_root_in_force,
    boxes_from_masks_in_force,
    one_class_in_force,
    series_rules_in_force,
    unlabelled_in_force,
)
from medlens.errors import ConfigError, DatasetError
from medlens.io.formats import is_clutter, suffix_of


def open_dataset(source: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                 strict: bool = True, allow_outside_root: bool | None = None,
                 boxes_from_masks: bool | None = None, unlabelled: bool | None = None,
                 series_rules=None, one_class: bool | None = None) -> Dataset:
    """Open a dataset in any layout medlens knows.

    Args:
        source: a class-folder root, a CSV manifest, a MedMNIST ``.npz`` (or just its name,
            e.g. ``pneumoniamnist_64``, looked up in ``$MEDLENS_DATA_DIR`` and ``~/.medmnist``),
            an ``images/`` + ``labels/`` folder, or a Decathlon folder with ``dataset.json``; for detection a
            Pascal VOC folder, a COCO or MONAI detection JSON, or a CSV of boxes (:mod:`medlens.data.box_sources`).
        image_root: for a CSV (or a detection JSON), the folder its image paths are relative to.
        allow_outside_root: follow a CSV's (or ``dataset.json``'s) paths that leave the dataset's
            folder or ``image_root``; ``None`` = what :func:`~medlens.data.dataset.outside_root_allowed`
            put in force (refused by default, as a ``path.outside_root`` finding).
        strict: raise on listing errors (missing files or labels); ``False`` keeps them as
            findings for the audit.
        boxes_from_masks: open a segmentation dataset as a detection one, one box per connected component
            of each mask label.
        unlabelled: open a folder of images without class folders, or a CSV without a label column, as
            images without labels (``medlens pretrain``); ``None`` = what
            :func:`~medlens.data.dataset.unlabelled_allowed` put in force (refused by default).
        series_rules: ``"NAME=REGEX"`` texts picking the series of each DICOM study that a CSV's ``study`` column
            names (:mod:`medlens.data.series`); ``None`` = what :func:`~medlens.data.dataset.series_rules_given`
            put in force.
        one_class: class folders or a label column holding one class open as a one-class dataset (anomaly
            detection from normal images alone); ``None`` = what :func:`~medlens.data.dataset.one_class_allowed`
            put in force (otherwise listed with a blocking ``class.single`` finding).

    Raises:
        FileNotFoundError / DataMissingError: nothing at ``source``.
        DatasetError: a layout medlens does not recognise, or an invalid dataset.
    """
    path = Path(source).expanduser()
    allow, bare = allow_outside_root_in_force(allow_outside_root), unlabelled_in_force(unlabelled)
    single = one_class_in_force(one_class)
    rules = series_rules_in_force(series_rules)
    if rules and not (path.is_file() and suffix_of(path) in (".csv", ".tsv")):
        raise ConfigError(f"series rules ({', '.join(rules)}) pick the series of DICOM studies listed in a CSV's "
                          f"study column, and {source} is not a CSV; write a CSV with a study column (one study "
                          "folder per row) and a label column, or drop the rules")
    if not path.exists():
        dataset = _open_by_name(str(source))
    elif path.is_file():
        dataset = _open_file(path, image_root, allow, bare, rules, single)
    else:
        dataset = _open_folder(path, allow, bare, single)
    if boxes_from_masks_in_force(boxes_from_masks):
        from medlens.data.box_sources import detection_from_masks

        dataset = detection_from_masks(dataset)
    if strict:
        dataset.raise_on_errors()
    return dataset


def _open_by_name(text: str) -> Dataset:
    from medlens.data.medmnist import locate, medmnist_info, open_medmnist, parse_name

    base = text.lower().removesuffix(".npz").rsplit("_", 1)[0]
    if "/" in text or os.sep in text or base not in medmnist_info():
        raise FileNotFoundError(f"no such file or folder: {text}")
    name, size = parse_name(text)  # a known name with a size it does not come in is a DatasetError
    return open_medmnist(locate(name, size))


def _open_file(path: Path, image_root, allow_outside_root: bool, unlabelled: bool, series_rules=(),
               one_class: bool = False) -> Dataset:
    suffix = suffix_of(path)
    if suffix in (".csv", ".tsv"):
        from medlens.data.box_manifest import is_box_csv, open_box_manifest
        from medlens.data.manifest import open_manifest

        if is_box_csv(path):
            return open_box_manifest(path, Path(image_root) if image_root else None,
                                     allow_outside_root=allow_outside_root)

        return open_manifest(path, Path(image_root) if image_root else None, allow_outside_root=allow_outside_root,
                             unlabelled=unlabelled, series_rules=series_rules, one_class=one_class)
    if suffix == ".npz":
        from medlens.data.medmnist import open_medmnist

        return open_medmnist(path)
    if path.name == "dataset.json":
        return _open_folder(path.parent, allow_outside_root, unlabelled, one_class)
    if suffix == ".json":
        from medlens.data.box_sources import open_box_json_file

        dataset = open_box_json_file(path, Path(image_root) if image_root else None,
                                     allow_outside_root=allow_outside_root)
        if dataset is not None:
            return dataset
        raise DatasetError(f"{path}: a JSON medlens reads is a Decathlon dataset.json, a COCO file (images, "
                           "annotations, categories) or a detection data list (box_unit, training: [{image, box, "
                           "label}])")
    if suffix in (".xlsx", ".xls", ".xlsm", ".ods", ".numbers"):
        raise DatasetError(f"{path} is a spreadsheet workbook; medlens reads its table as CSV: save the sheet as CSV "
                           "(Excel: File > Save As > CSV UTF-8), then pass the .csv")
    raise DatasetError(f"{path} is a single file; a dataset is a folder, a CSV manifest or a MedMNIST .npz. "
                       "To look at one image use `medlens info FILE`")


def _open_folder(root: Path, allow_outside_root: bool, unlabelled: bool, one_class: bool = False) -> Dataset:
    from medlens.data import box_sources, dicom_studies, folders, segmentation

    entries = [p for p in root.iterdir() if not is_clutter(p.name)]
    if not entries:
        raise DatasetError(f"{root} is empty; expected class folders, images/ + labels/, or a dataset.json")
    if (root / "dataset.json").is_file():
        return segmentation.open_decathlon(root, allow_outside_root=allow_outside_root)
    if box_sources.find_voc_root(root):
        return box_sources.open_voc(root, allow_outside_root=allow_outside_root)
    if segmentation.find_pair_dirs(root):
        return segmentation.open_pairs(root)
    if dicom_studies.looks_like_dicom_studies(root):  # before flat pairs: a study may hold liver_seg.nrrd beside
        return dicom_studies.open_dicom_studies(root)
    if segmentation.looks_like_flat_pairs(root):
        return segmentation.open_flat_pairs(root)
    if folders.looks_like_class_folders(root):
        return folders.open_class_folders(root, one_class)
    if all(p.is_file() for p in entries):
        if unlabelled:
            return folders.open_image_folder(root)
        raise DatasetError(f"{root} holds {len(entries)} files but no class folders or image/mask pairs; put images "
                           "in root/<class_name>/, or images/ + labels/ for segmentation, or write a CSV manifest "
                           "(a folder of DICOM slices is one image: `medlens info FOLDER`); to learn an encoder from "
                           "images without labels use `medlens pretrain FOLDER`; to learn what normal looks like from "
                           "normal images alone, move them into root/normal/ and train --task anomaly --normal "
                           "normal")
    raise DatasetError(f"{root}: layout not recognised; expected root/<class>/<images>, root/<split>/<class>/<images>, "
                       "images/ + labels/, or a dataset.json")
