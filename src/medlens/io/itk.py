"""NIfTI, MetaImage and NRRD through SimpleITK (which does the parsing; we check the result)."""

from __future__ import annotations

from pathlib import Path

from medlens.errors import ReadError
from medlens.io.image import Image, from_sitk


def read_itk(path: Path) -> Image:
    """Read a NIfTI / MetaImage / NRRD file with its geometry.

    Returns:
        Image ``(C, X, Y[, Z])``; 4D files give a 3D image with the 4th axis as channels.

    Raises:
        ReadError: the file is corrupt, truncated, or its data file is missing.
    """
    import SimpleITK as sitk

    try:
        sitk_image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ReadError(f"{path}: could not be read as an image ({_first_line(exc)}); "
                        "the file may be truncated or corrupt, re-export or re-download it") from None
    image = from_sitk(sitk_image, path=Path(path))
    image.meta["pixel_type"] = sitk_image.GetPixelIDTypeAsString()
    return image


def write_itk(image: Image, path: Path) -> None:
    import SimpleITK as sitk

    from medlens.io.image import to_sitk

    sitk.WriteImage(to_sitk(image), str(path), useCompression=str(path).endswith((".gz", ".nrrd", ".mha")))


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = [line for line in lines if "Description:" in line or "ERROR" in line.upper()]
    return (detail or lines or ["unknown error"])[-1][:300]
