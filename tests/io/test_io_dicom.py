"""DICOM series and files: slice order, HU, the checks that refuse a broken series, and privacy."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from medlens.errors import DicomError, ReadError
from medlens.io import read_image

PATIENT_ID = "SYNTH-PATIENT-0042"


def ct_volume(z: int = 8, seed: int = 0) -> np.ndarray:
    """(X=6, Y=5, Z) in HU with air (-1000) in the first voxel; every slice differs from the others."""
    volume = np.random.default_rng(seed).integers(-1024, 3000, size=(6, 5, z)).astype(np.int16)
    volume[0, 0, 0] = -1000
    return volume


def set_tags(path, **tags) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


def write_rtstruct(path, series_uid: str) -> None:
    """An RTSTRUCT-like object: same series and patient, no Rows, no pixels."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTStructureSetStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = RTStructureSetStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.PatientID = "RTSTRUCT", series_uid, PATIENT_ID
    ds.StructureSetLabel = "contours"
    ds.save_as(path, enforce_file_format=True)


# --- a good series ----------------------------------------------------------------------------------


def test_series_is_a_volume_in_hu_with_its_geometry(make_image):
    volume = ct_volume()
    written = make_image.dicom_series("ct", volume, spacing_mm=(0.7, 0.8, 2.5), origin_mm=(-10.0, 20.0, 30.0),
                                      patient_id=PATIENT_ID)

    image = read_image(written.path)

    assert image.array.shape == (1, 6, 5, 8)
    np.testing.assert_array_equal(image.array[0], volume)
    assert image.array[0, 0, 0, 0] == -1000  # RescaleIntercept -1024 applied to the stored 24
    assert image.array.min() < 0  # HU, not the unsigned stored values
    np.testing.assert_allclose(image.spacing_mm, (0.7, 0.8, 2.5), rtol=0, atol=1e-9)
    np.testing.assert_allclose(image.origin_mm, (-10.0, 20.0, 30.0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(image.direction, np.eye(3).ravel(), rtol=0, atol=1e-12)
    assert image.meta["modality"] == "CT" and image.meta["num_slices"] == 8 and image.meta["skipped_files"] == 0
    assert image.meta["slice_order"] == "position along the slice normal"


def test_rescale_slope_and_intercept_give_output_units(make_image):
    volume = ct_volume().astype(np.float64) * 2.0  # even values, so slope 2 is exact
    written = make_image.dicom_series("scaled", volume, rescale_slope=2.0, rescale_intercept=-2048.0)

    image = read_image(written.path)

    np.testing.assert_allclose(image.array[0], volume)


def test_slices_are_sorted_by_position_not_by_file_name(make_image):
    volume = ct_volume()
    written = make_image.dicom_series("shuffled", volume)
    last = len(written.files) - 1
    renamed = [path.rename(path.with_name(f"tmp_{k}")) for k, path in enumerate(written.files)]
    for k, path in enumerate(renamed):  # slice k is now named after slice (last - k)
        path.rename(path.with_name(f"slice_{last - k:03d}.dcm"))

    image = read_image(written.path)

    np.testing.assert_array_equal(image.array[0], volume)
    np.testing.assert_allclose(image.origin_mm, written.origin_mm)


def test_slices_without_positions_are_ordered_by_instance_number(make_image):
    volume = ct_volume(z=5)
    written = make_image.dicom_series("no_position", volume)
    for path in written.files:
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(path)
    for k, path in enumerate(written.files):  # reverse the names; InstanceNumber still says k + 1
        path.rename(path.with_name(f"x_{len(written.files) - k:02d}.dcm"))

    image = read_image(written.path)

    np.testing.assert_array_equal(image.array[0], volume)
    assert image.meta["slice_order"] == "InstanceNumber (ImagePositionPatient missing)"


def test_oblique_series_is_sorted_along_its_slice_normal(make_image):
    volume = ct_volume(z=6)
    written = make_image.dicom_series("oblique", volume, spacing_mm=(0.7, 0.8, 2.5))
    direction = make_image.rotation(0.3, -0.2, 0.5)  # columns: row direction, column direction, normal
    row, col, normal = direction[:, 0], direction[:, 1], direction[:, 2]
    origin = np.array([-10.0, 20.0, 30.0])
    for k, path in enumerate(written.files):
        position = origin + k * 2.5 * normal
        set_tags(path, ImageOrientationPatient=[*row, *col], ImagePositionPatient=list(position))
    for k, path in enumerate(written.files):
        path.rename(path.with_name(f"z{(k * 7) % 6}_{k}.dcm"))  # names no longer follow the slices

    image = read_image(written.path)

    np.testing.assert_array_equal(image.array[0], volume)
    np.testing.assert_allclose(image.direction, direction.ravel(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(image.spacing_mm, (0.7, 0.8, 2.5), rtol=0, atol=1e-6)
    np.testing.assert_allclose(image.origin_mm, origin, rtol=0, atol=1e-6)


def test_slices_in_subfolders_and_stray_files_are_handled(make_image):
    volume = ct_volume(z=6)
    written = make_image.dicom_series("nested", volume)
    (written.path / "part2").mkdir()
    for path in written.files[3:]:
        path.rename(written.path / "part2" / path.name)
    (written.path / "README.txt").write_text("exported by a PACS\n")
    (written.path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")

    image = read_image(written.path)

    np.testing.assert_array_equal(image.array[0], volume)
    assert image.meta["skipped_files"] == 1  # README.txt; hidden files are not even looked at


def test_single_slice_series_folder_gives_a_2d_image(make_image):
    written = make_image.dicom_series("one_slice", ct_volume(z=1))

    image = read_image(written.path)

    assert image.spatial_dims == 2 and image.array.shape == (1, 6, 5)
    assert image.meta["position_mm"] == (-10.0, 20.0, 30.0)


def test_single_file_is_a_2d_slice_with_its_3d_position(make_image):
    volume = ct_volume(z=4)
    written = make_image.dicom_series("ct", volume, spacing_mm=(0.7, 0.8, 2.5), origin_mm=(-10.0, 20.0, 30.0))

    image = read_image(written.files[2])

    np.testing.assert_array_equal(image.array[0], volume[:, :, 2])
    assert image.spacing_mm == pytest.approx((0.7, 0.8)) and image.origin_mm == pytest.approx((-10.0, 20.0))
    assert image.meta["position_mm"] == pytest.approx((-10.0, 20.0, 35.0))
    assert image.meta["format"] == "dicom"


# --- broken series --------------------------------------------------------------------------------------


def test_missing_slice_is_refused_naming_its_neighbours(make_image):
    written = make_image.dicom_series("gap", ct_volume(z=8))
    written.files[3].unlink()

    with pytest.raises(DicomError, match=r"about 1 slice\(s\) missing between slice_002\.dcm and slice_004\.dcm "
                                         r"\(gap 5\.000 mm, step 2\.500 mm\); copy the complete series"):
        read_image(written.path)


def test_two_missing_slices_in_a_row_are_counted(make_image):
    written = make_image.dicom_series("gap2", ct_volume(z=10))
    written.files[4].unlink()
    written.files[5].unlink()

    with pytest.raises(DicomError, match=r"about 2 slice\(s\) missing between slice_003\.dcm and slice_006\.dcm"):
        read_image(written.path)


def test_missing_slice_in_a_short_series_is_called_missing(make_image):
    written = make_image.dicom_series("short_gap", ct_volume(z=4))
    written.files[1].unlink()

    with pytest.raises(DicomError, match=r"about 1 slice\(s\) missing between slice_000\.dcm and slice_002\.dcm"):
        read_image(written.path)


def test_uneven_spacing_is_refused_naming_the_slices(make_image):
    written = make_image.dicom_series("uneven", ct_volume(z=8), spacing_mm=(0.7, 0.8, 2.0),
                                      origin_mm=(0.0, 0.0, 0.0))
    set_tags(written.files[-1], ImagePositionPatient=[0.0, 0.0, 6 * 2.0 + 1.3 * 2.0])  # last gap 1.3 steps

    with pytest.raises(DicomError, match=r"uneven slice spacing: 2\.600 mm between slice_006\.dcm and "
                                         r"slice_007\.dcm, but the step is 2\.000 mm; resample"):
        read_image(written.path)


def test_two_slices_at_one_position_are_refused(make_image):
    written = make_image.dicom_series("duplicate", ct_volume(z=8), spacing_mm=(0.7, 0.8, 1.0),
                                      origin_mm=(0.0, 0.0, 0.0))
    set_tags(written.files[4], ImagePositionPatient=[0.0, 0.0, 3.0])  # where slice 3 already is

    with pytest.raises(DicomError, match=r"slices slice_00[34]\.dcm and slice_00[34]\.dcm sit at the same position"):
        read_image(written.path)


def test_slices_of_different_sizes_are_refused(make_image):
    written = make_image.dicom_series("sizes", ct_volume(z=5))
    set_tags(written.files[2], Rows=7)

    with pytest.raises(DicomError, match=r"slice slice_002\.dcm is 7x6 but slice_000\.dcm is 5x6"):
        read_image(written.path)


def test_slices_with_different_orientations_are_refused(make_image):
    written = make_image.dicom_series("tilted", ct_volume(z=5))
    set_tags(written.files[3], ImageOrientationPatient=[1.0, 0.0, 0.0, 0.0, 0.8, -0.6])

    with pytest.raises(DicomError, match=r"slice_003\.dcm has orientation .* a tilted or mixed acquisition"):
        read_image(written.path)


def test_truncated_slice_is_reported_as_undecodable(make_image):
    written = make_image.dicom_series("cut", ct_volume(z=5))
    data = written.files[2].read_bytes()
    written.files[2].write_bytes(data[:-20])

    with pytest.raises(ReadError, match=r"slice_002\.dcm: truncated: the pixel data should hold 60 bytes"):
        read_image(written.path)


def test_folder_without_dicom_images_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")

    with pytest.raises(DicomError, match="no DICOM image files found"):
        read_image(tmp_path)


def test_dicom_errors_are_read_errors():
    assert issubclass(DicomError, ReadError)


# --- several series, non-image objects ---------------------------------------------------------------


def two_series_folder(make_image):
    ct = make_image.dicom_series("study/ct", ct_volume(z=6, seed=1), uid_seed="ct")
    mr_volume = np.random.default_rng(2).integers(0, 4000, size=(6, 5, 3)).astype(np.uint16)
    mr = make_image.dicom_series("study/mr", mr_volume, uid_seed="mr", modality="MR", rescale_intercept=0.0,
                                 series_description="T1 post")
    return ct.path.parent, ct, mr, mr_volume


def test_folder_mixing_two_series_is_refused_with_a_description_of_each(make_image):
    study, ct, mr, _ = two_series_folder(make_image)

    expected = r"mixes 2 DICOM series: series 1 \(CT, 6 files\); series 2 \(MR, 3 files\)\. .*series_uid="
    with pytest.raises(DicomError, match=expected) as refused:
        read_image(study)
    uids = {pydicom.dcmread(f).SeriesInstanceUID for f in (ct.files[0], mr.files[0])}
    assert "T1 post" not in str(refused.value) and not any(uid in str(refused.value) for uid in uids)


def test_series_uid_picks_one_series_from_a_mixed_folder(make_image):
    study, ct, mr, mr_volume = two_series_folder(make_image)
    mr_uid = pydicom.dcmread(mr.files[0]).SeriesInstanceUID

    image = read_image(study, series_uid=mr_uid)
    by_number = read_image(study, series_uid="2")

    np.testing.assert_array_equal(image.array[0], mr_volume)
    np.testing.assert_array_equal(by_number.array[0], mr_volume)
    assert image.meta["series_uid"] == mr_uid and image.meta["modality"] == "MR"


def test_unknown_series_uid_lists_the_series_found(make_image):
    study, *_ = two_series_folder(make_image)

    with pytest.raises(DicomError, match=r"no series with SeriesInstanceUID 1\.2\.3; found: .*CT.*MR"):
        read_image(study, series_uid="1.2.3")


def test_rtstruct_in_the_folder_is_skipped(make_image):
    volume = ct_volume(z=5)
    written = make_image.dicom_series("with_rt", volume)
    write_rtstruct(written.path / "rtstruct.dcm", pydicom.dcmread(written.files[0]).SeriesInstanceUID)

    image = read_image(written.path)

    np.testing.assert_array_equal(image.array[0], volume)
    assert image.meta["skipped_files"] == 1 and image.meta["num_slices"] == 5


def test_rtstruct_read_on_its_own_is_refused(tmp_path):
    write_rtstruct(tmp_path / "rtstruct.dcm", "1.2.3.4")

    with pytest.raises(ReadError, match="is a DICOM RTSTRUCT object without pixels; read the image series"):
        read_image(tmp_path / "rtstruct.dcm")


def test_folder_holding_only_an_rtstruct_is_refused(tmp_path):
    write_rtstruct(tmp_path / "rtstruct.dcm", "1.2.3.4")

    with pytest.raises(DicomError, match="no DICOM image files found .*RTSTRUCT or SEG are skipped"):
        read_image(tmp_path)


# --- privacy --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["series", "file"])
def test_patient_id_never_reaches_the_image_metadata(make_image, what):
    written = make_image.dicom_series("private", ct_volume(z=3), patient_id=PATIENT_ID)

    image = read_image(written.path if what == "series" else written.files[0])

    assert PATIENT_ID not in repr(image.meta)
    assert image.meta["patient_key"].startswith("pid-")
    assert len(image.meta["patient_key"]) == len("pid-") + 16


def test_patient_key_is_stable_per_patient_and_differs_between_patients(make_image):
    first = make_image.dicom_series("a", ct_volume(z=3), patient_id=PATIENT_ID, uid_seed="a")
    again = make_image.dicom_series("b", ct_volume(z=3), patient_id=PATIENT_ID, uid_seed="b")
    other = make_image.dicom_series("c", ct_volume(z=3), patient_id="SOMEONE-ELSE", uid_seed="c")

    keys = [read_image(w.path).meta["patient_key"] for w in (first, again, other)]

    assert keys[0] == keys[1] != keys[2]
