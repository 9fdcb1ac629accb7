"""Which reader a path needs: decided by the file's first bytes, its name only where they say nothing.

The content decides, not the name: a PNG named ``.jpg`` is read as the PNG it is (image viewers open
it, so medlens does too; :func:`misnamed_warning` says so), a file without a suffix (DICOM often has
none) is recognised by its magic, and a ``.png`` holding an archive, a NIfTI or nothing known is
refused before any decoder sees it.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

from medlens.errors import ReadError

SUFFIXES = {
    ".nii": "nifti", ".nii.gz": "nifti", ".mha": "metaimage", ".mhd": "metaimage",
    ".nrrd": "nrrd", ".nhdr": "nrrd", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg",
    ".tif": "tiff", ".tiff": "tiff", ".bmp": "bmp", ".gif": "gif", ".webp": "webp",
    ".npy": "npy", ".npz": "npz", ".dcm": "dicom", ".dicom": "dicom", ".ima": "dicom",
}
RASTER = {"png", "jpeg", "tiff", "bmp", "gif", "webp"}
ITK = {"nifti", "metaimage", "nrrd"}
IMAGE_SUFFIXES = tuple(SUFFIXES)
# Formats whose readers decode from the bytes alone (Pillow, pydicom), so a file of one of them is read
# whatever its name says. The ITK readers choose their decoder and checks by suffix: a NIfTI named .png
# stays refused rather than decoded by the wrong reader.
BY_CONTENT = RASTER | {"dicom"}
# What operating systems, file managers and archivers write beside a user's files: never data. A zip
# made on a Mac carries __MACOSX/ (with ._ copies of every file), Windows writes Thumbs.db and
# desktop.ini, a Synology NAS @eaDir/.
_CLUTTER = {"__macosx", "thumbs.db", "ehthumbs.db", "desktop.ini", "@eadir", "$recycle.bin",
            "system volume information", "__pycache__"}


def is_clutter(name: str) -> bool:
    """Whether a file or folder name is one the system or a tool wrote (hidden ``.x``, ``__MACOSX``,
    ``Thumbs.db``, ...): listing a dataset skips these without a word."""
    return name.startswith(".") or name.lower() in _CLUTTER


def suffix_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def sniff(path: Path) -> str | None:
    """Guess a format from the first bytes of a file; ``None`` when nothing matches."""
    with open(path, "rb") as f:
        head = f.read(352)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith(b"BM"):
        return "bmp"
    if head.startswith(b"GIF8"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"NRRD000"):
        return "nrrd"
    if _is_nifti_header(head):
        return "nifti"
    if head.startswith(b"\x1f\x8b"):
        return "nifti" if _is_nifti_header(_gunzip_head(path)) else "gzip"
    text = head[:200].decode("latin-1")
    if any(key in text for key in ("ObjectType", "NDims", "ElementType")):
        return "metaimage"
    return None


def _is_nifti_header(head: bytes) -> bool:
    return len(head) >= 348 and (head[344:347] in (b"n+1", b"ni1") or head[4:8] == b"n+2\x00")


def _gunzip_head(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as f:
            return f.read(352)
    except (OSError, EOFError, zlib.error):
        return b""


def detect_format(path: Path) -> str:
    """The reader name for ``path`` (``dicom_series`` for a folder).

    Raises:
        FileNotFoundError: the path does not exist.
        ReadError: the name and the content disagree and the content is not a raster or DICOM image
            (:data:`BY_CONTENT`), or neither names a known format. A raster or DICOM file under another
            suffix is no error: the content's format is returned (see :func:`misnamed_warning`).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.is_dir():
        return "dicom_series"
    if path.stat().st_size == 0:
        raise ReadError(f"{path} is empty (0 bytes); the file was probably not copied completely")
    by_name = SUFFIXES.get(suffix_of(path))
    by_content = sniff(path)
    if by_name == "npz" and by_content == "zip":
        return "npz"
    if by_name in ("nrrd", "metaimage") and by_content is None:
        return by_name  # detached headers (.nhdr, .mhd) are free-form text
    if by_name is not None and by_content is not None and by_name != by_content \
            and by_content not in BY_CONTENT:
        raise ReadError(
            f"{path} is named like a {by_name} file but its content looks like {by_content}; "
            "rename it with the right extension or re-export it"
        )
    found = by_content or by_name
    if found is None or found in ("zip", "gzip"):
        raise ReadError(
            f"{path}: unrecognised image format (suffix {suffix_of(path)!r}). medlens reads DICOM, NIfTI "
            "(.nii/.nii.gz), MetaImage (.mha/.mhd), NRRD (.nrrd/.nhdr), PNG/JPEG/TIFF/BMP and NumPy (.npy/.npz)"
        )
    return found


def misnamed_warning(path: Path, fmt: str) -> dict | None:
    """A warning when ``path``'s suffix names another format than ``fmt``, the one its content has.

    Args:
        path: the file that was read.
        fmt: the format :func:`detect_format` found for it.

    Returns:
        ``{"code": "image.misnamed", "message": ...}`` (the message names the suffix and both formats,
        not the path, so it can sit in an image's ``meta``), or ``None`` when the name fits or says nothing.
    """
    path = Path(path)
    by_name = SUFFIXES.get(suffix_of(path))
    if path.is_dir() or by_name is None or by_name == fmt:
        return None
    right = next((suffix for suffix, name in SUFFIXES.items() if name == fmt), "")
    return {"code": "image.misnamed",
            "message": f"holds a {fmt} image but is named {suffix_of(path)} ({by_name}); read as {fmt}, "
                       f"rename it to {right}"}
