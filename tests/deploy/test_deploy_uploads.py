"""The upload layer: content decides the type, hostile files are refused before any decoder, temp files vanish."""

from __future__ import annotations

import io
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from corpus import dicom_files, malformed_uploads, png_bytes

from medlens.budget import WorkBudget, work_budget
from medlens.deploy.uploads import UploadError, UploadLimits, detect_upload, staged_upload
from medlens.errors import MedlensError
from medlens.io import read_image

CORPUS = malformed_uploads()


def zipped_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, Path("study") / path.relative_to(folder))
    return buffer.getvalue()


@pytest.mark.parametrize("kind, expected", [("nii", "nifti"), ("nii.gz", "nifti"), ("mha", "metaimage"),
                                            ("nrrd", "nrrd"), ("png8", "png"), ("png16", "png"), ("jpeg", "jpeg"),
                                            ("dicom_file", "dicom"), ("dicom_series", "dicom_series")])
def test_every_accepted_type_is_staged_from_its_content_and_reads_like_the_original(make_image, kind, expected):
    written = make_image(kind)
    data = zipped_folder(written.path) if kind == "dicom_series" else written.path.read_bytes()
    with staged_upload(data) as staged:
        assert staged.kind == expected and staged.size_bytes == len(data)
        image = read_image(staged.path)
        assert staged.voxels == image.array.size
    original = read_image(written.path)
    np.testing.assert_array_equal(image.array, original.array)
    assert image.spacing_mm == pytest.approx(original.spacing_mm)


def test_the_corpus_is_large_and_covers_every_refusal_status():
    assert len(CORPUS) >= 50
    assert {b.status for b in CORPUS} == {400, 413, 415, 422}
    assert len({b.name for b in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("bad", CORPUS, ids=[b.name for b in CORPUS])
def test_malformed_uploads_are_refused_with_their_status_before_or_by_the_reader(bad):
    if bad.status == 422:  # well-formed headers, bad content: the reader refuses it
        with staged_upload(bad.data) as staged, pytest.raises(MedlensError):
            read_image(staged.path)
        return
    with pytest.raises(UploadError) as caught:
        with staged_upload(bad.data):
            pytest.fail("staged a malformed upload")
    assert caught.value.status == bad.status, str(caught.value)
    assert "medlens-upload-" not in str(caught.value)


def test_the_temporary_folder_is_removed_after_success_and_after_an_error():
    with staged_upload(png_bytes()) as staged:
        folder = staged.folder
        assert staged.path.is_file() and staged.path.parent == folder
    assert not folder.exists()
    before = set(Path(tempfile.gettempdir()).glob("medlens-upload-*"))
    with pytest.raises(UploadError):
        with staged_upload(b"not an image at all"):
            pass
    with pytest.raises(RuntimeError):
        with staged_upload(png_bytes()) as staged:
            raise RuntimeError("the caller failed")
    assert not staged.folder.exists()
    assert set(Path(tempfile.gettempdir()).glob("medlens-upload-*")) == before


class Endless(io.RawIOBase):
    """A client that never stops sending; counts what was read from it."""

    def __init__(self):
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        buffer[:] = b"\0" * len(buffer)
        self.read_bytes += len(buffer)
        return len(buffer)


def test_the_size_limit_stops_reading_a_stream_as_soon_as_it_is_passed():
    source = Endless()
    with pytest.raises(UploadError, match="larger than the limit of 1 MiB") as caught:
        with staged_upload(io.BufferedReader(source), UploadLimits(max_upload_bytes=1 << 20)):
            pass
    assert caught.value.status == 413
    assert source.read_bytes <= 3 << 20


def test_the_voxel_budget_is_configurable_and_judged_from_the_header():
    data = png_bytes((64, 48))
    with staged_upload(data, UploadLimits(max_voxels=64 * 48)) as staged:
        assert staged.voxels == 64 * 48
    with pytest.raises(UploadError, match=r"64 x 48.*3,072 voxels, more than the limit of 3,071") as caught:
        with staged_upload(data, UploadLimits(max_voxels=64 * 48 - 1)):
            pass
    assert caught.value.status == 413


def test_a_zip_slip_writes_nothing_outside_the_upload_folder(tmp_path):
    target = Path(tempfile.gettempdir()) / "evil.dcm"
    bad = next(b for b in CORPUS if b.name == "slip.zip")
    with pytest.raises(UploadError, match="points outside the archive"):
        with staged_upload(bad.data):
            pass
    assert not target.exists()


def test_unknown_content_lists_what_is_accepted():
    accepted = r"match no accepted image type. Accepted: DICOM .*NIfTI.*PNG, JPEG"
    with pytest.raises(UploadError, match=accepted) as caught:
        detect_upload(b"GIF89a......")
    assert caught.value.status == 415


def test_scrub_removes_the_temporary_folder_from_reader_messages():
    with staged_upload(png_bytes()) as staged:
        message = staged.scrub(f"{staged.path}: could not decode; see {staged.folder}")
    assert message == "upload.png: could not decode; see upload"
    shutil.rmtree(staged.folder, ignore_errors=True)


# ---- zip entry names: refused without being quoted --------------------------------------------------

MARKER = "JOHN_DOE_1957_MARKER"


def zip_of(*infos: tuple[zipfile.ZipInfo | str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about duplicate names, which one test wants
        with zipfile.ZipFile(buffer, "w", compression) as archive:
            for info, data in infos:  # a ZipInfo: writestr(name) refuses the empty name the tests need
                archive.writestr(info if isinstance(info, zipfile.ZipInfo) else zipfile.ZipInfo(info), data)
    return buffer.getvalue()


def with_mode(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    return info


def refusal(data: bytes) -> UploadError:
    with pytest.raises(UploadError) as caught:
        with staged_upload(data):
            pytest.fail("staged a malformed zip")
    return caught.value


@pytest.mark.parametrize("name", ["", ".", "./", "./."])
def test_a_zip_entry_with_an_empty_name_is_a_400_naming_its_number(name):
    data = zip_of((f"{MARKER}/slice_0.dcm", b"x"), (name, b"DICM"))
    error = refusal(data)
    assert error.status == 400
    assert str(error).startswith("zip entry #2 has an empty name")


def test_a_zip_entry_named_only_a_slash_is_a_400():
    error = refusal(zip_of(("/", b"DICM")))
    assert error.status == 400 and "zip entry #1 points outside the archive" in str(error)


def corrupt_crc() -> bytes:
    data = bytearray(zip_of((f"{MARKER}/slice.dcm", b"\x00" * 200), compression=zipfile.ZIP_STORED))
    data[data.find(b"\x00" * 200) + 100] = 1  # stored data no longer matches its CRC
    return bytes(data)


def encrypted() -> bytes:
    data = bytearray(zip_of((f"{MARKER}/slice.dcm", b"x")))
    data[6] |= 1  # the encryption flag, in the local header and the central directory (zipfile clears it on write)
    data[data.find(b"PK\x01\x02") + 8] |= 1
    return bytes(data)


@pytest.mark.parametrize("make, status, message", [
    (lambda: zip_of((f"../{MARKER}.dcm", b"x")), 400, "zip entry #1 points outside the archive"),
    (lambda: zip_of((f"/{MARKER}.dcm", b"x")), 400, "zip entry #1 points outside the archive"),
    (lambda: zip_of(("a.dcm", b"x"), (with_mode(MARKER, 0o120777), b"/etc/passwd")), 400,
     "zip entry #2 is a symbolic link or special file"),
    (encrypted, 400, "zip entry #1 is encrypted"),
    (lambda: zip_of((MARKER, b"x"), (MARKER, b"y")), 400, "zip entry #2 repeats the name of an earlier entry"),
    (corrupt_crc, 400, "the zip archive is corrupt or uses an unsupported feature (BadZipFile)"),
    (lambda: zip_of(("/".join([MARKER] * 33) + "/s.dcm", b"x")), 400, "zip entry #1 is nested more than 32 folders"),
    (lambda: zip_of((MARKER * 30 + ".dcm", b"x")), 400, "or has a name part longer than 255 bytes"),
])
def test_no_zip_refusal_quotes_an_entry_name(make, status, message):
    error = refusal(make())
    assert error.status == status and message in str(error), str(error)
    assert MARKER not in str(error)


def test_metaimage_refusals_do_not_quote_the_headers_text():
    data_file = ("ObjectType = Image\nNDims = 2\nDimSize = 8 8\nElementType = MET_UCHAR\n"
                 f"ElementDataFile = {MARKER}.raw\n")
    for header in (data_file, data_file.replace("ObjectType = Image", f"ObjectType = {MARKER}"),
                   data_file.replace("DimSize = 8 8", f"DimSize = 8 {MARKER}")):
        error = refusal(header.encode())
        assert error.status == 400 and MARKER not in str(error), str(error)


# ---- the work budget in force also bounds what an upload may declare ---------------------------------

def test_the_work_budget_refuses_an_upload_past_it_even_under_the_stagers_own_limit():
    data = png_bytes((64, 48))
    with work_budget(WorkBudget(max_voxels=64 * 48, hint="the budget's hint")), staged_upload(data) as staged:
        assert staged.voxels == 64 * 48
    with work_budget(WorkBudget(max_voxels=64 * 48 - 1, hint="the budget's hint")):
        error = refusal(data)
    assert error.status == 413
    assert "3,072 voxels, more than the limit of 3,071; the budget's hint" in str(error)
    # the stager's own limit, when it is the smaller one, still answers with its own advice
    with work_budget(WorkBudget(max_voxels=10**6, hint="the budget's hint")), pytest.raises(
            UploadError, match="more than the limit of 3,071; send a smaller or downsampled image"):
        with staged_upload(data, UploadLimits(max_voxels=64 * 48 - 1)):
            pass


def test_a_zipped_dicom_series_is_judged_against_the_budget_too():
    files = dicom_files()  # 16 x 12 x 3 slices
    with work_budget(WorkBudget(max_voxels=16 * 12 * 3, hint="h")), staged_upload(zip_of(*files)) as staged:
        assert staged.voxels == 16 * 12 * 3
    with work_budget(WorkBudget(max_voxels=16 * 12 * 3 - 1, hint="h")):
        error = refusal(zip_of(*files))
    assert error.status == 413 and "the DICOM series (3 files) declares 576 voxels" in str(error)
