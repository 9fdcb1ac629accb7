"""MetaImage (``.mha`` / ``.mhd``) and NRRD text headers, checked before SimpleITK reads the data.

Sizes must be positive and fit the work budget; data attached to the header (MetaImage
``ElementDataFile = LOCAL``, NRRD without ``data file:``) must hold what the header declares:
raw data at least that many bytes, compressed data inflating (in bounded steps, output counted and
dropped) to exactly that many, so a zlib bomb is refused after reading no more than the declared
size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medlens.budget import check_voxels
from medlens.errors import ReadError
from medlens.io.codecs import StreamError, inflate_bounded

_HEADER_LIMIT = 1 << 16
_MET_BYTES = {"MET_UCHAR": 1, "MET_CHAR": 1, "MET_USHORT": 2, "MET_SHORT": 2, "MET_UINT": 4, "MET_INT": 4,
              "MET_FLOAT": 4, "MET_DOUBLE": 8, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8}
_NRRD_BYTES = {**dict.fromkeys(("uchar", "unsigned char", "uint8", "uint8_t", "signed char", "int8", "int8_t",
                                "char"), 1),
               **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t",
                                "ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), 2),
               **dict.fromkeys(("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32",
                                "uint32_t", "float"), 4),
               **dict.fromkeys(("longlong", "long long", "long long int", "signed long long", "int64", "int64_t",
                                "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t",
                                "double"), 8)}

_MET_TYPES = {*_MET_BYTES, "MET_LONG", "MET_ULONG"}  # sized by the platform's long: no length check


@dataclass(frozen=True)
class TextHeader:
    """What a MetaImage / NRRD header declares about its data.

    Attributes:
        shape: element counts per axis, channels included.
        itemsize: bytes per element, ``None`` for a type medlens does not size.
        compressed: the data is zlib / gzip compressed.
        attached: the data follows the header in the same file.
        data_start: where the attached data starts.
        compressed_size: the declared compressed length (MetaImage), if any.
    """

    shape: tuple[int, ...]
    itemsize: int | None
    compressed: bool
    attached: bool
    data_start: int
    compressed_size: int | None = None


def check_text_header(path: Path) -> None:
    """Refuse a MetaImage / NRRD file whose header is impossible, too large, or lies about its data.

    Raises:
        ReadError: a size of 0 or less (or not a number), attached data shorter than declared, or
            compressed data that is corrupt or inflates to another size than declared.
        BudgetError: the declared elements are past the work budget.
    """
    with open(path, "rb") as f:
        head = f.read(_HEADER_LIMIT)
    header = _nrrd_header(head, path) if head.startswith(b"NRRD") else _meta_header(head, path)
    if header is None:
        return
    count = check_voxels(header.shape, f"reading {path.name}")
    if header.itemsize is None or not header.attached:
        return
    expected = count * header.itemsize
    data = path.read_bytes()[header.data_start:]
    if not header.compressed:
        if len(data) < expected:
            raise ReadError(f"{path}: truncated: the header declares {expected:,} bytes of data, the file holds "
                            f"{len(data):,}; copy or export it again")
        return
    if header.compressed_size is not None:
        data = data[:header.compressed_size]
    try:
        inflated = inflate_bounded(data, wbits=47, limit=expected, keep=False)
    except StreamError as exc:
        raise ReadError(f"{path}: {exc}; export it again") from None
    if inflated.size != expected:
        raise ReadError(f"{path}: truncated: the compressed data inflates to {inflated.size:,} bytes, the header "
                        f"declares {expected:,}; copy or export it again")


def _meta_header(head: bytes, path: Path) -> TextHeader | None:
    fields, end = {}, None
    at = 0
    while at < len(head):
        newline = head.find(b"\n", at)
        if newline < 0:
            break
        line = head[at:newline].decode("latin-1").strip()
        at = newline + 1
        key, sep, value = line.partition("=")
        if not sep:
            continue
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            end = at
            break
    if "DimSize" not in fields:
        return None
    dims = _positive_ints(fields["DimSize"], "DimSize", path)
    ndims = fields.get("NDims")
    if ndims is not None and ndims.isdigit() and int(ndims) != len(dims):
        raise ReadError(f"{path}: the MetaImage header declares NDims = {ndims} but {len(dims)} DimSize values; "
                        "the header is corrupt, export the image again")
    element_type = fields.get("ElementType", "")
    if element_type not in _MET_TYPES:
        raise ReadError(f"{path}: the MetaImage ElementType is not a numeric type medlens reads "
                        f"({', '.join(sorted(_MET_BYTES))}); export the image again")
    channels = _positive_ints(fields.get("ElementNumberOfChannels", "1"), "ElementNumberOfChannels", path)[:1]
    compressed = fields.get("CompressedData", "False").lower() == "true"
    size = fields.get("CompressedDataSize", "")
    return TextHeader((*channels, *dims), _MET_BYTES.get(element_type), compressed,
                      attached=end is not None and fields.get("ElementDataFile") == "LOCAL",
                      data_start=end or 0, compressed_size=int(size) if size.isdigit() else None)


def _nrrd_header(head: bytes, path: Path) -> TextHeader | None:
    end = head.find(b"\n\n")
    if end < 0:
        end, attached = len(head), False
    else:
        attached = True
    fields = {}
    for line in head[:end].decode("latin-1").splitlines()[1:]:
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields[key.strip().lower()] = value.lstrip("=").strip()
    if "sizes" not in fields:
        return None
    sizes = _positive_ints(fields["sizes"], "sizes", path)
    encoding = fields.get("encoding", "raw").lower()
    attached = attached and "data file" not in fields and "datafile" not in fields
    if encoding not in ("raw", "gzip", "gz"):
        attached = False  # text, hex, bzip2: SimpleITK reads (or refuses) those
    return TextHeader(tuple(sizes), _NRRD_BYTES.get(fields.get("type", "").lower()), encoding in ("gzip", "gz"),
                      attached=attached, data_start=end + 2)


def _positive_ints(text: str, field: str, path: Path) -> tuple[int, ...]:
    values = text.split()
    if not values or not all(v.lstrip("+").isdigit() and int(v) > 0 for v in values) or len(values) > 16:
        raise ReadError(f"{path}: the header's {field} must be 1 to 16 positive whole numbers, found "
                        f"{len(values)} value(s) that are not; the header is corrupt, export the image again")
    return tuple(int(v) for v in values)
