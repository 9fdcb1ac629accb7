"""Masks as people save them, made label maps: grey stored as RGB, and binary masks saved as JPEG.

Public sets ship masks that a viewer shows as black and white but that are no label map: a grey mask
written through an RGB API (three equal channels), or a binary mask saved as JPEG (Kvasir-SEG does),
whose compression leaves every value from 0 to 255 along the edges, so that each value would become a
class. :func:`as_label_map` mends the two cases that are unambiguous and leaves every other mask as it
was read, for the audit to judge (``mask.channels``, ``mask.values``).
"""

from __future__ import annotations

import numpy as np

from medlens.errors import ReadError
from medlens.io import Image

GREY_TOLERANCE = 8  # the most two channels of a JPEG-compressed grey pixel differ by (observed: 2-5 at quality 75)
BINARY_SHARE = 0.95  # a lossy mask is binary when this share of its pixels lies near 0 or near its maximum


def as_label_map(mask: Image) -> Image:
    """``mask`` with one channel and, when it was lossy-compressed black and white, two values.

    - Three channels that agree (exactly, or within :data:`GREY_TOLERANCE` for a JPEG) become one
      (``mask.grey_rgb`` note).
    - A JPEG mask whose pixels lie near 0 or near its maximum (at least :data:`BINARY_SHARE` of them) is
      thresholded at half its maximum, to 0 and 255 as its PNG twin holds (``mask.lossy`` note).

    Returns:
        the same ``Image`` object, changed in place, with notes in ``meta["read_warnings"]``.

    Raises:
        ReadError: a JPEG mask that is not black and white: compression has changed its class values.
    """
    lossy = mask.meta.get("format") == "jpeg"
    if mask.channels == 3 and _channels_agree(mask.array, GREY_TOLERANCE if lossy else 0):
        mask.array = mask.array[:1]
        _note(mask, "mask.grey_rgb", "RGB read as grey")
    if lossy and mask.channels == 1 and mask.array.dtype == np.uint8:
        top = int(mask.array.max())
        near_ends = (mask.array <= top // 8) | (mask.array >= top - top // 8)
        values = int(np.unique(mask.array).size)
        if values > 2 and float(near_ends.mean()) < BINARY_SHARE:
            raise ReadError(f"{mask.path}: a JPEG mask with {values} grey levels that are not black and white; JPEG "
                            "compression changes the class values of a label map, so they cannot be read back: "
                            "save the masks as PNG (or NIfTI)")
        if values > 2:
            mask.array = np.where(mask.array >= (top + 1) // 2, 255, 0).astype(np.uint8)
            _note(mask, "mask.lossy", f"JPEG mask with {values} grey levels thresholded at {(top + 1) // 2} to 0 / 255")
    return mask


def _channels_agree(array: np.ndarray, tolerance: int) -> bool:
    wide = array.astype(np.int16)
    return bool(np.abs(wide[1:] - wide[:1]).max() <= tolerance)


def _note(mask: Image, code: str, message: str) -> None:
    mask.meta.setdefault("read_warnings", []).append({"code": code, "message": message})
