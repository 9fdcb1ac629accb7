"""Preprocessed cases as one array: in memory when small, a memory-mapped file on disk when not.

Each case is read and preprocessed once. The result is an ``(N, C, *input_size)`` float32 array;
when it would take more than :data:`MEMORY_LIMIT_BYTES` (or ``data.cache: disk``) it is written
to a ``.npy`` file under the cache folder and memory-mapped, so a dataset larger than RAM
streams from disk page by page. The cache file's name hashes the case list and the preprocessing
settings, so a later run (or a resumed one) reuses it and a changed plan never reads stale data.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

from medlens.config import DataSection
from medlens.data.dataset import Dataset, describe_read_failure
from medlens.data.views import input_channels, prepare_views, read_channels
from medlens.errors import DatasetError
from medlens.transforms import Preprocessor
from medlens.types import Case

MEMORY_LIMIT_BYTES = 2 << 30


def cache_dir() -> Path:
    """``$MEDLENS_CACHE_DIR``, else ``~/.cache/medlens``."""
    return Path(os.environ.get("MEDLENS_CACHE_DIR") or Path.home() / ".cache" / "medlens")


def preprocess_cases(dataset: Dataset, cases: list[Case], data: DataSection, *, progress=None) -> np.ndarray:
    """Read and preprocess ``cases`` into an array ``(N, C, *input_size)`` (float32).

    With named views (``data.views``) and ``data.fusion == "views"`` the array is ``(N, V * C, *input_size)``,
    each view preprocessed on its own (:func:`medlens.data.views.prepare_views`, a missing view all NaN); with
    ``fusion: channels`` each case's views are stacked in ``data.views`` order onto the first view's grid.

    Raises:
        DatasetError: a case cannot be read or does not fit the plan (the message names it).
    """
    shape = (len(cases), input_channels(data), *data.input_size)
    nbytes = int(np.prod(shape)) * 4
    on_disk = data.cache == "disk" or (data.cache == "auto" and nbytes > MEMORY_LIMIT_BYTES)
    if not on_disk:
        out = np.empty(shape, dtype=np.float32)
        _fill(out, dataset, cases, data, progress)
        return out
    path = cache_dir() / "preprocessed" / f"{_cache_key(dataset, cases, data)}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        out = open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        _fill(out, dataset, cases, data, progress)
        out.flush()
        del out
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return np.load(path, mmap_mode="r")


def _fill(out: np.ndarray, dataset: Dataset, cases: list[Case], data: DataSection, progress) -> None:
    prepare = Preprocessor(data)
    for i, case in enumerate(cases):
        try:
            out[i] = _prepare_case(dataset, case, data, prepare)
        except Exception as exc:  # noqa: BLE001 - whatever a bad file raises, training stops with its name
            raise DatasetError(f"case {case.case_id}: {describe_read_failure(case.image, exc)}. Run `medlens "
                               "inspect` to list every unreadable case, then fix or remove it") from None
        if progress:
            progress(i + 1, len(cases))


def _prepare_case(dataset: Dataset, case: Case, data: DataSection, prepare: Preprocessor) -> np.ndarray:
    """One case ``(input_channels(data), *input_size)``: views apart, views stacked in plan order, or the image."""
    if data.views and data.fusion == "views":
        return prepare_views(dataset, case, data, prepare=prepare)
    image = read_channels(dataset, case, data.views) if data.views else dataset.load_image(case)
    return prepare(image, where=f"case {case.case_id} ({case.image})")


def _cache_key(dataset: Dataset, cases: list[Case], data: DataSection) -> str:
    digest = hashlib.sha256()
    digest.update(str(Path(dataset.root).resolve()).encode())
    digest.update(json.dumps({k: v for k, v in data.__dict__.items() if k not in ("cache", "num_workers")},
                             sort_keys=True, default=list).encode())
    for case in cases:
        stamps = [f"{p}:{p.stat().st_mtime_ns}:{p.stat().st_size}" for p in case.images if p.exists()]
        digest.update(f"{case.case_id}|{case.index}|{'|'.join(stamps)}|{','.join(case.views)}\n".encode())
    return digest.hexdigest()[:24]


def label_array(dataset: Dataset, cases: list[Case]) -> np.ndarray:
    """Labels as an array: ``(N,)`` int64 class indices, or ``(N, L)`` float32 0/1 for multi-label.

    Raises:
        DatasetError: a case has no label, or a label of the wrong kind for the task.
    """
    missing = [c.case_id for c in cases if c.label is None]
    if missing:
        raise DatasetError(f"{len(missing)} case(s) have no label (e.g. {missing[0]}); label them or leave them out")
    if dataset.task.label_form == "flags":
        bad = [c.case_id for c in cases if not isinstance(c.label, tuple) or len(c.label) != dataset.num_classes]
        if bad:
            raise DatasetError(f"case {bad[0]}: a multi-label task needs {dataset.num_classes} 0/1 flags per case "
                               f"({', '.join(dataset.class_names)}), found {_case_label(cases, bad[0])!r}")
        return np.asarray([c.label for c in cases], dtype=np.float32)
    bad = [c.case_id for c in cases if not isinstance(c.label, (int, np.integer))
           or not 0 <= c.label < dataset.num_classes]
    if bad:
        raise DatasetError(f"case {bad[0]}: label {_case_label(cases, bad[0])!r} is not a class index in "
                           f"0..{dataset.num_classes - 1} ({', '.join(dataset.class_names)})")
    return np.asarray([c.label for c in cases], dtype=np.int64)


def _case_label(cases: list[Case], case_id: str):
    return next(c.label for c in cases if c.case_id == case_id)
