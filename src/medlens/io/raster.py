"""2D raster images (PNG, JPEG, TIFF, BMP, GIF, WebP) through Pillow.

Grey images give one channel, colour images three. An alpha channel is dropped when it is opaque and
otherwise flattened onto black (see :func:`remove_alpha`); an EXIF orientation (a phone's or camera's
photo stored sideways) is applied, so the pixels stand as every viewer shows them. Each of these leaves a
note in ``meta["read_warnings"]``.
8- and 16-bit integers keep their dtype. PNGs written by medlens carry their geometry in a text
chunk (``medlens:geometry``), so a PNG round trip keeps spacing, origin and direction exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medlens.budget import check_voxels
from medlens.errors import ReadError
from medlens.io.codecs import MAX_JPEG_SCANS, StreamError, check_jpeg_length, check_png_data, jpeg_scans, png_header
from medlens.io.image import Image, identity_direction

GEOMETRY_KEY = "medlens:geometry"
# A 2D medical image past this many pixels is far more likely a decompression bomb than a scan.
MAX_PIXELS = 30_000 * 30_000


def read_raster(path: Path) -> Image:
    """Read a 2D raster image.

    The codec's own header is checked before Pillow decodes anything: the pixel count against the
    work budget, a PNG's data against its IHDR (CRCs, truncation), a JPEG's number of scans.

    Returns:
        Image ``(C, X, Y)`` with C = 1 (grey) or 3 (RGB).

    Raises:
        ReadError: corrupt/truncated file, several frames, or an unsupported pixel mode.
        BudgetError: the declared pixel count is past the work budget.
    """
    import io
    import warnings

    from PIL import Image as PILImage

    PILImage.MAX_IMAGE_PIXELS = MAX_PIXELS
    data = Path(path).read_bytes()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: the budget below decides
            with PILImage.open(io.BytesIO(data)) as pil:
                _check_before_decode(pil, data, path)
                pil.load()
                text = dict(getattr(pil, "text", {}) or {})
                notes: list[dict] = []
                array = _to_array(_upright(pil, notes), path, notes)
                dpi = pil.info.get("dpi")
    except ReadError:
        raise
    except (OSError, ValueError, SyntaxError, PILImage.DecompressionBombError, StreamError) as exc:
        raise ReadError(f"{path}: could not decode the image ({exc}); the file may be truncated or corrupt") from None
    array = array.transpose(2, 1, 0)  # (H, W, C) -> (C, X, Y)
    image = Image(array, (1.0, 1.0), (0.0, 0.0), identity_direction(2), spacing_known=False, path=Path(path))
    if notes:
        image.meta["read_warnings"] = notes
    if GEOMETRY_KEY in text:
        _apply_geometry(image, text[GEOMETRY_KEY], path)
    elif dpi and dpi[0] > 1 and min(abs(dpi[0] - 72), abs(dpi[0] - 96)) > 0.5:
        # 72/96 dpi are screen defaults, not measurements (stored as whole pixels per metre: 96.012)
        image.spacing_mm = (25.4 / float(dpi[0]), 25.4 / float(dpi[1]))
        image.spacing_known = True
    return image


def _check_before_decode(pil, data: bytes, path: Path) -> None:
    """Frames, budget and the codec's own stream, from the header Pillow has parsed (nothing decoded yet).

    Raises:
        ReadError: several frames.
        BudgetError: width x height x bands past the work budget.
        StreamError: a PNG's data contradicts its header, or a JPEG has absurdly many scans.
    """
    if getattr(pil, "n_frames", 1) > 1:
        raise ReadError(f"{path} holds {pil.n_frames} frames; medlens reads single-frame 2D rasters. "
                        "Save a volume as NIfTI or a DICOM series instead")
    width, height = pil.size
    check_voxels((len(pil.getbands()), width, height), f"decoding {Path(path).name}")
    if pil.format == "PNG":
        check_png_data(data, png_header(data))
    elif pil.format in ("JPEG", "MPO"):
        if jpeg_scans(data) > MAX_JPEG_SCANS:
            raise StreamError(f"the JPEG holds {jpeg_scans(data)} scans (more than {MAX_JPEG_SCANS}); a real image "
                              "has about 10, re-export it")
        check_jpeg_length(data)


ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_ORIENTATION = 0x0112  # EXIF tag: 1 upright; 2-8 mirrored and / or turned by 90, 180 or 270 degrees


def _upright(pil, notes: list[dict]):
    """``pil`` turned as its EXIF orientation says (the way every viewer shows it), with a note; else itself."""
    from PIL import ImageOps

    orientation = pil.getexif().get(_ORIENTATION, 1)
    if orientation in (1, None) or not isinstance(orientation, int) or not 2 <= orientation <= 8:
        return pil
    notes.append({"code": "image.orientation", "message": f"EXIF orientation {orientation} applied"})
    return ImageOps.exif_transpose(pil)


def _to_array(pil, path: Path, notes: list[dict]) -> np.ndarray:
    """Pixels as ``(H, W, C)``, grey or RGB, integer dtypes preserved; alpha removed (a note in ``notes``)."""
    mode = pil.mode
    has_alpha = mode in ALPHA_MODES or (mode == "P" and "transparency" in pil.info)
    if has_alpha or mode == "P":
        rgba = np.asarray(pil.convert("RGBA"))
        rgb = remove_alpha(rgba, notes) if has_alpha else rgba[..., :3]
        # grey + alpha stays grey; palette images (GIF masks) whose colours are all grey levels are grey images
        grey = mode in ("LA", "La") or (mode in ("P", "PA") and _is_grey(rgb))
        return rgb[..., :1] if grey else rgb
    if mode == "1":
        return np.asarray(pil.convert("L"))[..., None]
    if mode in ("L", "I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(pil)
        if mode == "I" and array.min() >= 0 and array.max() < 65536:
            array = array.astype(np.uint16)  # Pillow may open 16-bit PNGs as 32-bit "I"
        return array[..., None]
    if mode in ("RGB", "CMYK", "YCbCr"):
        return np.asarray(pil.convert("RGB"))
    raise ReadError(f"{path}: pixel mode {mode!r} is not supported; convert it to grey or RGB")


def remove_alpha(rgba: np.ndarray, notes: list[dict]) -> np.ndarray:
    """Drop an opaque alpha channel, or flatten a translucent one onto black; say which in ``notes``.

    Black, because a transparent pixel holds no image, and black (0) is "no signal" in most modalities
    (outside the body on a radiograph or CT, outside the fundus, the border of a dermoscopy or endoscopy
    frame); white would make the empty parts the brightest pixels of the image.

    Args:
        rgba: ``(H, W, 4)`` uint8.
        notes: receives one ``{"code": "image.alpha", "message": ...}``.

    Returns:
        ``(H, W, 3)`` uint8: ``round(rgb * alpha / 255)``.
    """
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        notes.append({"code": "image.alpha", "message": "alpha channel dropped (every pixel is opaque)"})
        return rgba[..., :3]
    count = int((alpha < 255).sum())
    share = f"{count / alpha.size:.1%} of pixels" if count >= alpha.size / 1000 else f"{count} pixel(s)"
    notes.append({"code": "image.alpha", "message": f"translucent alpha channel ({share} not opaque) "
                                                    "flattened onto black"})
    weight = alpha[..., None].astype(np.uint16)
    return ((rgba[..., :3].astype(np.uint16) * weight + 127) // 255).astype(np.uint8)


def _is_grey(rgb: np.ndarray) -> bool:
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))


def _apply_geometry(image: Image, text: str, path: Path) -> None:
    try:
        geometry = json.loads(text)
        spacing = tuple(float(v) for v in geometry["spacing_mm"])
        origin = tuple(float(v) for v in geometry["origin_mm"])
        direction = tuple(float(v) for v in geometry["direction"])
    except (ValueError, KeyError, TypeError, RecursionError):
        raise ReadError(f"{path}: the {GEOMETRY_KEY} text chunk is malformed; re-save the PNG") from None
    values = np.array(spacing + origin + direction, dtype=float)
    if (len(spacing), len(origin), len(direction)) != (2, 2, 4) or not np.isfinite(values).all() \
            or min(spacing) <= 0:
        raise ReadError(f"{path}: the {GEOMETRY_KEY} text chunk does not hold 2 positive finite spacings, 2 origin "
                        "and 4 direction values; re-save the PNG")
    image.spacing_mm, image.origin_mm, image.direction = spacing, origin, direction
    image.spacing_known = True


def write_png(image: Image, path: Path) -> None:
    """Write a 2D grey or RGB image as PNG, with its geometry in a text chunk.

    Raises:
        ValueError: not 2D, not 1 or 3 channels, or not 8/16-bit unsigned integers.
    """
    from PIL import Image as PILImage
    from PIL.PngImagePlugin import PngInfo

    if image.spatial_dims != 2 or image.channels not in (1, 3):
        raise ValueError(f"PNG holds 2D grey or RGB images; got spatial shape {image.spatial_shape} with "
                         f"{image.channels} channels. Write NIfTI (.nii.gz) or MHA instead")
    if image.array.dtype not in (np.uint8, np.uint16) or (image.channels == 3 and image.array.dtype != np.uint8):
        raise ValueError(f"PNG holds 8-bit grey/RGB or 16-bit grey integers; got {image.array.dtype} with "
                         f"{image.channels} channel(s). Rescale to uint8/uint16 or write NIfTI/MHA instead")
    pixels = image.array.transpose(2, 1, 0)  # (C, X, Y) -> (H, W, C)
    pixels = np.ascontiguousarray(pixels[..., 0] if image.channels == 1 else pixels)
    info = PngInfo()
    geometry = {"spacing_mm": image.spacing_mm, "origin_mm": image.origin_mm, "direction": image.direction}
    info.add_text(GEOMETRY_KEY, json.dumps(geometry))
    PILImage.fromarray(pixels).save(path, format="PNG", pnginfo=info)
