"""The upload layer: content decides the type, hostile files are refused before any decoder, temp files vanish."""

from __future__ import annotations

import io
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from corpus import malformed_uploads, png_bytes

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
