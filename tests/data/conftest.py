"""Factories for tiny synthetic datasets written through ``tmp_path`` (no committed binaries).

``make`` writes images (PNG, NIfTI, NRRD, MHA, DICOM series), class folders, CSV manifests and
fake MedMNIST archives; ``medmnist_sizes`` patches the official MedMNIST metadata so a tiny
archive passes the split-size check; ``demo_dir`` is one demo dataset shared by a session.
"""

from __future__ import annotations

import copy
import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from medlens.data import medmnist
from medlens.io import Image, identity_direction, write_image


def pixels(seed: int, shape=(8, 8)) -> np.ndarray:
    """Distinct uint8 pixels ``(H, W)`` for each seed (rows, columns)."""
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write_png(path: Path, rows_cols: np.ndarray) -> Path:
    """Write a grey PNG from ``(H, W)`` uint8 pixels."""
    array = np.asarray(rows_cols)
    return write_image(Image(array.T[None], (1.0, 1.0), (0.0, 0.0), identity_direction(2)), path)


def write_volume(path: Path, xyz: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> Path:
    """Write a 3D ``(X, Y, Z)`` (or 2D ``(X, Y)``) array as NIfTI / NRRD / MHA with its geometry."""
    array = np.asarray(xyz)
    dims = array.ndim
    return write_image(Image(array[None], spacing[:dims], origin[:dims], identity_direction(dims)), path)


def write_class_folders(root: Path, counts: dict[str, int], *, split: str | None = None, seed: int = 0) -> Path:
    """``root/[split/]<class>/img_<i>.png`` with distinct pixels; returns ``root``."""
    base = root / split if split else root
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            write_png(base / name / f"img_{i}.png", pixels(seed * 10_000 + c * 1000 + i))
    return root


def write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_dicom(folder: Path, *, patient_id: str, seed: int, shape=(4, 5, 3)) -> Path:
    """A tiny CT series ``(X, Y, Z)`` with the given raw PatientID; returns the folder."""
    from medlens.io.dicom_write import write_dicom_series

    volume = np.random.default_rng(seed).integers(-100, 100, shape).astype(np.float64)
    write_dicom_series(volume, folder, spacing_mm=(0.5, 0.5, 2.0), patient_id=patient_id,
                       uid_seed=f"test-{patient_id}-{seed}")
    return folder


def write_npz(path: Path, n: dict[str, int], image_shape=(5, 7), *, labels_per_case: int = 1,
              num_classes: int = 2, seed: int = 0) -> Path:
    """A MedMNIST-like archive with ``n[split]`` images of ``image_shape`` (uint8) per split."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n[split], *image_shape), dtype=np.uint8)
        high = 2 if labels_per_case > 1 else num_classes
        arrays[f"{split}_labels"] = rng.integers(0, high, (n[split], labels_per_case), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


@pytest.fixture
def make() -> SimpleNamespace:
    """The file factories above, as ``make.png(...)``, ``make.volume(...)`` ..."""
    return SimpleNamespace(pixels=pixels, png=write_png, volume=write_volume, class_folders=write_class_folders,
                           csv=write_csv, dicom=write_dicom, npz=write_npz)


@pytest.fixture
def medmnist_sizes(monkeypatch):
    """``patch(name, n_samples, md5=None)``: pretend the official ``name`` has these split sizes (and MD5)."""
    def patch(name: str, n_samples: dict[str, int] | None = None, md5: str | None = None) -> dict:
        info = copy.deepcopy(medmnist.medmnist_info())
        if n_samples is not None:
            info[name]["n_samples"] = dict(n_samples)
        if md5 is not None:
            for entry in info[name]["files"].values():
                entry["md5"] = md5
        monkeypatch.setattr(medmnist, "medmnist_info", lambda: info)
        return info

    return patch


@pytest.fixture
def isolated_medmnist_search(tmp_path, monkeypatch) -> Path:
    """An empty MEDLENS_DATA_DIR, working directory and home, so no real MedMNIST file is found."""
    data = tmp_path / "medlens-data"
    data.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.setenv("MEDLENS_DATA_DIR", str(data))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    return data


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The demo dataset (seed 0), written once; tests must not modify it."""
    from medlens.data.synthetic import write_demo_data

    return write_demo_data(tmp_path_factory.mktemp("demo") / "demo")
