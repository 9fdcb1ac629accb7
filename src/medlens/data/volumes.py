"""Segmentation cases preprocessed once, and the training patches drawn from them.

:func:`prepare_volumes` reads every case of a split, resamples it to the plan's spacing,
normalises it and keeps it (in memory, or as ``.npy`` files under the cache folder that are
memory-mapped when the split is larger than :data:`MEMORY_LIMIT_BYTES`), together with up to
:data:`FOREGROUND_SAMPLES` foreground voxel positions per class for foreground oversampling.

:class:`PatchDataset` draws the training patches. Item *i* of epoch *e* is drawn from its own
generator seeded by ``(seed, e, i)``: a run resumed at epoch *e* sees the same patches as an
uninterrupted one. A share ``foreground_fraction`` of the items is centred on a random voxel of a
random foreground class present in the case (nnU-Net's oversampling); the rest anywhere.
Patches reaching past the image are padded with zeros (image) and background (mask).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medlens.config import Config
from medlens.data.dataset import Dataset, describe_read_failure
from medlens.data.tensors import MEMORY_LIMIT_BYTES, cache_dir
from medlens.errors import DatasetError, MedlensError
from medlens.transforms.volume import prepare_image, prepare_mask, target_shape
from medlens.types import Case

FOREGROUND_SAMPLES = 10_000


@dataclass
class Volume:
    """One preprocessed case: ``image (C, *S)`` float32, ``mask (*S)`` uint8 class indices, and per
    foreground class ``k`` (1..K-1) an array ``(n_k, D)`` of voxel positions (may be empty)."""

    case: Case
    image: np.ndarray
    mask: np.ndarray
    foreground: list[np.ndarray]


def prepare_volumes(dataset: Dataset, cases: list[Case], config: Config, *, progress=None) -> list[Volume]:
    """Preprocess ``cases`` for segmentation (see the module docstring).

    Raises:
        DatasetError: an unreadable case, a mask off the image grid, or undeclared mask values.
    """
    if not cases:
        raise DatasetError("a split with no case; make splits with `medlens split` or add data")
    folder = _cache_folder(dataset, cases, config) if _on_disk(dataset, cases, config) else None
    volumes = []
    for i, case in enumerate(cases):
        volumes.append(_cached(folder, i, dataset, case, config) if folder else _prepare(dataset, case, config))
        if progress:
            progress(i + 1, len(cases))
    return volumes


def _prepare(dataset: Dataset, case: Case, config: Config) -> Volume:
    where = f"case {case.case_id} ({case.image})"
    try:
        image = dataset.load_image(case)
        array = prepare_image(image, config.data, where)
        if case.mask is None:
            raise DatasetError(f"{where}: no mask; segmentation training needs one per case")
        mask = prepare_mask(dataset.load_mask(case), image, config.data, list(config.dataset.label_values), where)
    except Exception as exc:  # noqa: BLE001 - whatever a bad file raises, training stops with its name
        raise _case_problem(case, exc) from None
    return Volume(case, array, mask, foreground_positions(mask, len(config.dataset.class_names), case.case_id))


def _case_problem(case: Case, exc: Exception) -> DatasetError:
    """``exc``, raised while reading or preparing ``case``, as a message naming the case and what to do."""
    where = f"case {case.case_id} ({case.image})"
    said = str(exc) if isinstance(exc, MedlensError) else f"{where}: {describe_read_failure(case.image, exc)}"
    return DatasetError(f"{said}. Run `medlens inspect` to list every problem case, then fix or remove it")


def foreground_positions(mask: np.ndarray, num_classes: int, seed_text: str) -> list[np.ndarray]:
    """Up to :data:`FOREGROUND_SAMPLES` positions ``(n, D)`` per class 1..K-1, drawn deterministically."""
    rng = np.random.default_rng(int(hashlib.sha1(seed_text.encode()).hexdigest()[:8], 16))
    positions = []
    for k in range(1, num_classes):
        where = np.argwhere(mask == k)
        if len(where) > FOREGROUND_SAMPLES:
            where = where[rng.choice(len(where), FOREGROUND_SAMPLES, replace=False)]
        positions.append(where.astype(np.int32))
    return positions


def _on_disk(dataset: Dataset, cases: list[Case], config: Config) -> bool:
    if config.data.cache != "auto":
        return config.data.cache == "disk"
    try:
        first = dataset.load_image(cases[0])
    except Exception as exc:  # noqa: BLE001 - a resumed run has no audit before this read
        raise _case_problem(cases[0], exc) from None
    per_case = int(np.prod(target_shape(first, config.data))) * (4 * config.data.channels + 1)
    return per_case * len(cases) > MEMORY_LIMIT_BYTES


def _cache_folder(dataset: Dataset, cases: list[Case], config: Config) -> Path:
    digest = hashlib.sha256(str(Path(dataset.root).resolve()).encode())
    settings = {k: v for k, v in config.data.__dict__.items() if k not in ("cache", "num_workers", "input_size")}
    digest.update(json.dumps([settings, config.dataset.label_values], sort_keys=True, default=list).encode())
    folder = cache_dir() / "volumes" / digest.hexdigest()[:24]
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _cached(folder: Path, index: int, dataset: Dataset, case: Case, config: Config) -> Volume:
    """A case from the disk cache (memory-mapped), written first if missing or stale."""
    stamp = "|".join(f"{p}:{p.stat().st_mtime_ns}" for p in (*case.images, case.mask) if p and p.exists())
    key = hashlib.sha1(f"{case.case_id}|{stamp}".encode()).hexdigest()[:20]
    image_path, mask_path = folder / f"{key}_image.npy", folder / f"{key}_mask.npy"
    if not (image_path.exists() and mask_path.exists()):
        volume = _prepare(dataset, case, config)
        for path, array in ((image_path, volume.image), (mask_path, volume.mask)):
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as handle:
                np.save(handle, array)
            os.replace(tmp, path)
        return volume
    mask = np.load(mask_path)
    return Volume(case, np.load(image_path, mmap_mode="r"), mask,
                  foreground_positions(mask, len(config.dataset.class_names), case.case_id))


class PatchDataset(torch.utils.data.Dataset):
    """``iterations * batch_size`` random patches per epoch: ``(image (C, *P) float32, mask (*P) int64)``.

    Set :attr:`epoch` at the start of each epoch (the training module does).
    """

    def __init__(self, volumes: list[Volume], patch_size: tuple[int, ...], *, length: int,
                 foreground_fraction: float, seed: int):
        self.volumes, self.patch = volumes, tuple(patch_size)
        self.length, self.fraction, self.seed, self.epoch = length, foreground_fraction, seed, 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        volume = self.volumes[int(rng.integers(len(self.volumes)))]
        centre = self._centre(volume, rng)
        image, mask = crop(volume.image, volume.mask, centre, self.patch)
        return torch.from_numpy(image), torch.from_numpy(mask.astype(np.int64))

    def _centre(self, volume: Volume, rng: np.random.Generator) -> np.ndarray:
        present = [p for p in volume.foreground if len(p)]
        if present and rng.random() < self.fraction:
            positions = present[int(rng.integers(len(present)))]
            return positions[int(rng.integers(len(positions)))]
        shape = np.asarray(volume.mask.shape)
        half = np.asarray(self.patch) // 2
        low, high = np.minimum(half, shape - 1), np.maximum(shape - half, half + 1)  # keep most patches inside
        return np.asarray([rng.integers(lo, max(hi, lo + 1)) for lo, hi in zip(low, high)])


def crop(image: np.ndarray, mask: np.ndarray, centre, patch: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The ``patch``-sized window around ``centre`` of ``image (C, *S)`` and ``mask (*S)``, zero-padded."""
    start = [int(c) - p // 2 for c, p in zip(centre, patch)]
    out_image = np.zeros((image.shape[0], *patch), dtype=np.float32)
    out_mask = np.zeros(patch, dtype=mask.dtype)
    source, target = [], []
    for s, p, n in zip(start, patch, mask.shape):
        lo, hi = max(s, 0), min(s + p, n)
        source.append(slice(lo, max(hi, lo)))
        target.append(slice(lo - s, lo - s + max(hi - lo, 0)))
    out_image[(slice(None), *target)] = image[(slice(None), *source)]
    out_mask[tuple(target)] = mask[tuple(source)]
    return out_image, out_mask


class VolumeDataset(torch.utils.data.Dataset):
    """Whole preprocessed cases for validation: ``(image (C, *S), mask (*S) int64)``, batch size 1."""

    def __init__(self, volumes: list[Volume]):
        self.volumes = volumes

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, index: int):
        volume = self.volumes[index]
        return torch.from_numpy(np.ascontiguousarray(volume.image)), torch.from_numpy(volume.mask.astype(np.int64))
