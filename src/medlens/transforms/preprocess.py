"""Deterministic preprocessing: what every image becomes before the network sees it.

The same :class:`Preprocessor`, built from the run's ``data`` section, serves training,
evaluation and prediction, so a model never sees differently prepared images at deployment.
"""

from __future__ import annotations

import numpy as np

from medlens.budget import check_voxels
from medlens.config import DataSection
from medlens.errors import ConfigError, DatasetError
from medlens.io import Image


class Preprocessor:
    """``Image`` -> float32 array ``(channels, *input_size)``.

    Steps, in order: channel adaptation (grey repeated to 3 channels, RGB averaged to grey),
    intensity normalisation (``scale01``/``ct_window``: clip ``intensity_range`` to [0, 1];
    ``zscore``: per image and channel), NaN set to 0, resize to ``input_size`` (MONAI ``Resize``:
    area interpolation when shrinking, (tri)linear when enlarging). The source image, as float32
    with the plan's channels, is checked against the work budget (:mod:`medlens.budget`) before it
    is converted: a PNG declaring 30000 x 30000 must be refused, not resized.
    """

    def __init__(self, data: DataSection):
        self.data = data
        self.spatial_dims = len(data.input_size)
        if data.normalization in ("scale01", "ct_window") and len(data.intensity_range) != 2:
            raise ConfigError(f"data.intensity_range must be [low, high] for normalization={data.normalization}, "
                              f"found {list(data.intensity_range)}; e.g. --set data.intensity_range=[0,255]")

    def __call__(self, image: Image | np.ndarray, where: str = "image") -> np.ndarray:
        """``(C, *spatial)`` of any dtype -> float32 ``(channels, *input_size)``.

        Raises:
            DatasetError: the image's dimensions or channels do not fit the plan.
            BudgetError: the image, converted to float with the plan's channels, is past the work budget.
        """
        array = image.array if isinstance(image, Image) else np.asarray(image)
        if array.ndim != self.spatial_dims + 1:
            raise DatasetError(f"{where}: a {array.ndim - 1}D image (shape {array.shape[1:]}) but the model takes "
                               f"{self.spatial_dims}D input {tuple(self.data.input_size)}; use a "
                               f"{array.ndim - 1}D dataset or model")
        check_voxels((max(array.shape[0], self.data.channels), *array.shape[1:]),
                     f"converting the image to float for resizing to {tuple(self.data.input_size)}")
        array = self._channels(array.astype(np.float32, copy=False), where)
        array = np.nan_to_num(self._normalize(array), nan=0.0, posinf=0.0, neginf=0.0)
        return self._resize(array)

    def _channels(self, array: np.ndarray, where: str) -> np.ndarray:
        have, want = array.shape[0], self.data.channels
        if have == want:
            return array
        if have == 1:
            return np.repeat(array, want, axis=0)
        if want == 1 and have in (3, 4):
            return array[:3].mean(axis=0, keepdims=True)
        raise DatasetError(f"{where}: {have} channels but the plan expects {want}; every case needs the same "
                           "channels (modalities), or set data.channels in the plan")

    def _normalize(self, array: np.ndarray) -> np.ndarray:
        kind = self.data.normalization
        if kind in ("scale01", "ct_window"):
            low, high = self.data.intensity_range
            return np.clip((array - low) / max(high - low, 1e-8), 0.0, 1.0)
        if kind == "zscore":
            array = np.where(np.isfinite(array), array, np.nan)  # one inf voxel must not blank the image
            axes = tuple(range(1, array.ndim))
            mean = np.nanmean(array, axis=axes, keepdims=True)
            std = np.nanstd(array, axis=axes, keepdims=True)
            return (array - mean) / np.maximum(std, 1e-8)
        return array

    def _resize(self, array: np.ndarray) -> np.ndarray:
        size = tuple(self.data.input_size)
        if array.shape[1:] == size:
            return np.ascontiguousarray(array, dtype=np.float32)
        from monai.transforms import Resize

        shrinking = all(s <= a for s, a in zip(size, array.shape[1:]))
        mode = "area" if shrinking else ("bilinear" if self.spatial_dims == 2 else "trilinear")
        resized = Resize(size, mode=mode, **({} if mode == "area" else {"align_corners": False}))(array)
        return np.ascontiguousarray(np.asarray(resized), dtype=np.float32)
