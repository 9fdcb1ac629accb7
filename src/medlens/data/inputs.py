"""What the user asked to predict (files, DICOM series folders, folders of images) and what outputs are called."""

from __future__ import annotations

from pathlib import Path

from medlens.errors import ConfigError
from medlens.io.formats import is_clutter, suffix_of


def expand_inputs(paths: list[Path]) -> list[Path]:
    """Files as given; a folder is one DICOM series when it holds DICOM slices, else every image under it."""
    from medlens.data.folders import is_image_file

    expanded = []
    for path in map(Path, paths):
        if not path.exists():
            raise ConfigError(f"{path}: no such file or folder")
        if path.is_file() or is_series_folder(path):
            expanded.append(path)
            continue
        for item in sorted(path.rglob("*")):
            if is_image_file(item) and not is_series_folder(item.parent):
                expanded.append(item)
            elif item.is_dir() and is_series_folder(item):
                expanded.append(item)
    if not expanded:
        raise ConfigError(f"no image found in {', '.join(map(str, paths))}")
    return expanded


def is_series_folder(folder: Path) -> bool:
    """Whether ``folder`` holds DICOM slices (files named .dcm, .dicom, .ima or without a suffix)."""
    files = [p for p in folder.iterdir() if p.is_file() and not is_clutter(p.name)] if folder.is_dir() else []
    return bool(files) and all(suffix_of(p) in (".dcm", ".dicom", ".ima", "") for p in files[:20])


MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png")


def output_name(path: Path, tag: str, suffix: str | None = None) -> str:
    """The file name of an output for ``path``: ``scan.nrrd -> scan_seg.nrrd``; DICOM and formats medlens does
    not write become NIfTI (``.nii.gz``) unless ``suffix`` says otherwise."""
    own = suffix_of(path) if path.is_file() else ""
    stem = path.name[: len(path.name) - len(own)] if own else path.name
    chosen = suffix or (own if own in MASK_SUFFIXES else ".nii.gz")
    return f"{stem}{tag}{chosen}"
