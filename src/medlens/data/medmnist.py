"""MedMNIST v2 / MedMNIST+ archives: official splits, task and class names from package data.

The metadata (tasks, class names, split sizes, official URLs and MD5s of every file and size) is
``medmnist_info.json`` beside this module. Files are looked up, never downloaded implicitly;
:func:`fetch_medmnist` downloads one on request and checks its MD5.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from medlens._download import Checksum, download_verified
from medlens.budget import check_voxels
from medlens.data.dataset import Dataset
from medlens.errors import DataMissingError, DatasetError
from medlens.io.image import Image, identity_direction
from medlens.types import Case, Split, Task

SIZES = (28, 64, 128, 224)
_FILE_RE = re.compile(r"^(?P<name>[a-z0-9]+mnist(?:3d)?)(?:_(?P<size>\d+))?$")


@lru_cache(maxsize=1)
def medmnist_info() -> dict:
    """All 18 MedMNIST datasets: task, classes, channels, split sizes, files per size."""
    with open(Path(__file__).with_name("medmnist_info.json"), encoding="utf-8") as f:
        return json.load(f)["datasets"]


def parse_name(text: str) -> tuple[str, int]:
    """``'pneumoniamnist_64'`` -> ``('pneumoniamnist', 64)``.

    Raises:
        DatasetError: not a MedMNIST dataset name, or a size that dataset does not come in.
    """
    match = _FILE_RE.match(Path(text).name.lower().removesuffix(".npz"))
    info = medmnist_info()
    if not match or match["name"] not in info:
        raise DatasetError(f"{text!r} is not a MedMNIST dataset; known: {', '.join(sorted(info))}")
    name, size = match["name"], int(match["size"] or 28)
    if str(size) not in info[name]["files"]:
        raise DatasetError(f"{name} comes in sizes {', '.join(info[name]['files'])}, not {size}")
    return name, size


def file_name(name: str, size: int) -> str:
    return medmnist_info()[name]["files"][str(size)]["file"]


def search_dirs() -> list[Path]:
    """Where MedMNIST files are looked for, in order."""
    dirs = []
    if os.environ.get("MEDLENS_DATA_DIR"):
        base = Path(os.environ["MEDLENS_DATA_DIR"]).expanduser()
        dirs += [base, base / "medmnist"]
    dirs += [Path.cwd(), Path("~/.medmnist").expanduser()]
    return dirs


def locate(name: str, size: int = 28) -> Path:
    """Find a MedMNIST file by name in :func:`search_dirs`.

    Raises:
        DataMissingError: not found; the message lists where it looked and how to get it.
    """
    fname = file_name(name, size)
    for folder in search_dirs():
        if (folder / fname).is_file():
            return folder / fname
    entry = medmnist_info()[name]["files"][str(size)]
    looked = ", ".join(str(d) for d in search_dirs())
    raise DataMissingError(
        f"{fname} not found (looked in: {looked}). Get it with `medlens fetch medmnist {name} --size {size}` "
        f"(downloads from the official source and checks MD5 {entry['md5']}), or download {entry['url']} "
        f"yourself and set MEDLENS_DATA_DIR to its folder")


def open_medmnist(path: Path) -> Dataset:
    """List the cases of a MedMNIST ``.npz`` with its official splits.

    Raises:
        DatasetError: unknown file name, missing keys, or split sizes differing from the official ones.
    """
    name, size = parse_name(path.name)
    info = medmnist_info()[name]
    arrays = _load_arrays(path)
    task = Task(info["task"])
    cases = []
    for split in Split:
        labels = arrays[f"{split.value}_labels"]
        expected = info["n_samples"][split.value]
        if len(labels) != expected:
            raise DatasetError(f"{path}: {split.value} split has {len(labels)} images; the official {name} has "
                               f"{expected}. The file is not the official one: re-fetch it")
        for i, row in enumerate(labels):
            label = tuple(int(v) for v in row) if task.label_form == "flags" else int(row[0])
            cases.append(Case(case_id=f"{split.value}/{i:06d}", images=(path,), label=label, split=split, index=i))
    meta = {"medmnist": name, "size": size, "modality": info["modality"], "n_channels": info["n_channels"],
            "official_n_samples": info["n_samples"], "md5": info["files"][str(size)]["md5"]}
    return Dataset(path, "medmnist", task, tuple(info["class_names"]), cases, spatial_dims=info["spatial_dims"],
                   meta=meta, loader=_ArrayLoader(arrays, info["spatial_dims"], path))


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        _check_declared_sizes(path)
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.keys()}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{path}: not a readable .npz archive ({exc}); re-fetch it") from None
    needed = [f"{s.value}_{kind}" for s in Split for kind in ("images", "labels")]
    missing = [k for k in needed if k not in arrays]
    if missing:
        raise DatasetError(f"{path}: missing arrays {', '.join(missing)} (found {', '.join(arrays)}); "
                           "a MedMNIST file holds {train,val,test}_{images,labels}")
    return arrays


def _check_declared_sizes(path: Path) -> None:
    """Each array's shape, from its ``.npy`` header, against the work budget before any array is read.

    Raises:
        BudgetError: an array declares more elements than the budget allows (a damaged or hostile file).
    """
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            with archive.open(member) as f:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape = read_header(f)[0]
            check_voxels(shape, f"reading {member} of {path.name}")


class _ArrayLoader:
    """Serves a case's image out of the archive's arrays (held in memory; MedMNIST is small)."""

    def __init__(self, arrays: dict[str, np.ndarray], spatial_dims: int, path: Path):
        self.arrays, self.dims, self.path = arrays, spatial_dims, path

    def __call__(self, case: Case) -> Image:
        pixels = self.arrays[f"{case.split.value}_images"][case.index]
        if self.dims == 2:
            chw = pixels.T[None] if pixels.ndim == 2 else pixels.transpose(2, 1, 0)  # (H, W[, C]) -> (C, X, Y)
        else:
            chw = pixels.T[None]  # (D, H, W) -> (1, X, Y, Z)
        return Image(chw, (1.0,) * self.dims, (0.0,) * self.dims, identity_direction(self.dims),
                     spacing_known=False, path=self.path, meta={"case": case.case_id})


def fetch_medmnist(name: str, size: int = 28, root: Path | None = None, *, url: str | None = None,
                   progress=None) -> Path:
    """Download one official MedMNIST file and check its MD5 (atomic: no partial file is left).

    Args:
        name: dataset name, e.g. ``pneumoniamnist``.
        size: 28, 64, 128 or 224 (3D datasets: 28 or 64).
        root: destination folder (default: ``$MEDLENS_DATA_DIR`` or ``~/.medmnist``).
        url: override the official address (a mirror, or a ``file://`` URL offline).

    Returns:
        Path of the verified file.

    Raises:
        DatasetError: unknown name/size, download failure, or MD5 mismatch.
    """
    name, size = parse_name(f"{name}_{size}")
    entry = medmnist_info()[name]["files"][str(size)]
    root = Path(root or os.environ.get("MEDLENS_DATA_DIR") or "~/.medmnist").expanduser()
    return download_verified(url or entry["url"], root / entry["file"], Checksum("md5", entry["md5"]),
                             error=DatasetError)
