"""read_dicom_labels: DICOM SEG (written by highdicom) and RTSTRUCT objects as label maps on their series' grid."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medlens.errors import DicomError, ReadError
from medlens.io import read_image
from medlens.io.dicom_labels import label_kind, read_dicom_labels, referenced_series_uid
from tests.io.dicom_label_data import ellipsoid, write_seg, write_series

SHAPE = (24, 20, 8)
REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("MEDLENS_DATA_DIR") or REPO.parent / "shared" / "datasets") / "dicom"


@pytest.fixture(scope="module")
def oblique_seg(tmp_path_factory):
    """An oblique series and a highdicom SEG of two overlapping segments (empty frames omitted)."""
    root = tmp_path_factory.mktemp("seg")
    write_series(root / "ct", SHAPE, oblique=True)
    liver, tumour = ellipsoid(SHAPE, (10, 10, 3), (6, 5, 2)), ellipsoid(SHAPE, (14, 10, 4), (5, 5, 1.5))
    write_seg(root / "ct", [liver, tumour], ["Liver", "Tumour"], root / "seg.dcm")
    return root, liver, tumour


def test_seg_on_an_oblique_series_is_read_exactly_on_the_series_grid(oblique_seg):
    root, liver, tumour = oblique_seg
    mask, names = read_dicom_labels(root / "seg.dcm", root / "ct")

    expected = np.where(tumour, 2, np.where(liver, 1, 0))
    assert names == ("Liver", "Tumour") and mask.array.dtype == np.int16 and mask.array.shape == (1, *SHAPE)
    np.testing.assert_array_equal(mask.array[0], expected)
    assert mask.same_geometry(read_image(root / "ct"))
    assert mask.meta["label_kind"] == "SEG" and mask.meta["series_uid"] == referenced_series_uid(root / "seg.dcm")


def test_seg_frames_for_some_slices_only_leave_the_other_slices_empty(oblique_seg):
    root, liver, _ = oblique_seg
    assert pydicom.dcmread(root / "seg.dcm").NumberOfFrames < 2 * SHAPE[2]  # highdicom omitted the empty frames
    mask, _ = read_dicom_labels(root / "seg.dcm", root / "ct")
    assert not mask.array[0, :, :, 7].any() and (mask.array[0, :, :, 3] > 0).sum() >= liver[:, :, 3].sum()


def test_overlapping_segments_later_wins_and_says_how_many_voxels(oblique_seg):
    root, liver, tumour = oblique_seg
    mask, _ = read_dicom_labels(root / "seg.dcm", root / "ct")

    shared = int((liver & tumour).sum())
    assert shared > 0 and (mask.array[0][liver & tumour] == 2).all()
    warning = next(w for w in mask.meta["read_warnings"] if w["code"] == "labels.overlap")
    assert f"on {shared} voxel(s)" in warning["message"]


def test_names_choose_values_ignoring_case_and_leave_the_rest_out(oblique_seg):
    root, liver, tumour = oblique_seg
    mask, names = read_dicom_labels(root / "seg.dcm", root / "ct", names=["tumour", "Spleen", "LIVER"])

    assert names == ("tumour", "Spleen", "LIVER")
    assert set(np.unique(mask.array)) == {0, 1, 3}  # no spleen voxels; the later name (liver) wins overlaps
    assert (mask.array[0][liver] == 3).all() and (mask.array[0][tumour & ~liver] == 1).all()
    only_liver, _ = read_dicom_labels(root / "seg.dcm", root / "ct", names=["Liver"])
    assert set(np.unique(only_liver.array)) == {0, 1}
    assert any(w["code"] == "labels.dropped" and "Tumour" in w["message"] for w in only_liver.meta["read_warnings"])


def test_seg_frames_without_source_references_are_placed_by_their_positions(oblique_seg, tmp_path):
    root, liver, tumour = oblique_seg
    ds = pydicom.dcmread(root / "seg.dcm")
    for frame in ds.PerFrameFunctionalGroupsSequence:
        del frame.DerivationImageSequence
    ds.save_as(tmp_path / "seg.dcm")

    mask, _ = read_dicom_labels(tmp_path / "seg.dcm", root / "ct")
    np.testing.assert_array_equal(mask.array[0], np.where(tumour, 2, np.where(liver, 1, 0)))


def test_fractional_seg_is_thresholded_at_half_its_maximum(tmp_path):
    write_series(tmp_path / "ct", SHAPE)
    probability = ellipsoid(SHAPE, (10, 10, 3), (6, 5, 2)) * np.float32(0.8)
    probability[:3] = 0.3  # below one half: background
    write_seg(tmp_path / "ct", [probability], ["Liver"], tmp_path / "seg.dcm", fractional=True)
    assert pydicom.dcmread(tmp_path / "seg.dcm").SegmentationType == "FRACTIONAL"

    mask, _ = read_dicom_labels(tmp_path / "seg.dcm", tmp_path / "ct")
    np.testing.assert_array_equal(mask.array[0], (probability > 0.5).astype(np.int16))


@pytest.mark.parametrize("factor, warnings", [(2.0, []), (1.5, ["labels.resampled"])])
def test_seg_on_another_grid_of_the_same_frame_of_reference(tmp_path, factor, warnings):
    """A SEG drawn on a fine series, read onto a coarser one (``factor`` times the pixel spacing, the first centre
    a quarter of a fine voxel off): no frame sits on a coarse slice. Twice the spacing: highdicom's volume is
    subsampled exactly (every other voxel); 1.5 times: resampled nearest-neighbour (``labels.resampled``)."""
    fine = write_series(tmp_path / "fine", SHAPE, seed="fine")
    size = (int(SHAPE[0] / factor), int(SHAPE[1] / factor), SHAPE[2])
    offset = 0.25 if factor != 2 else 1.0  # in fine voxels
    coarse = write_series(tmp_path / "coarse", size, spacing_mm=(0.8 * factor, 0.9 * factor, 2.0), seed="coarse",
                          origin_mm=(-10.0 + 0.8 * offset, 5.0 + 0.9 * offset, 3.0))
    first = pydicom.dcmread(fine[0])
    for path in coarse:  # the same patient space
        ds = pydicom.dcmread(path)
        ds.FrameOfReferenceUID, ds.StudyInstanceUID = first.FrameOfReferenceUID, first.StudyInstanceUID
        ds.save_as(path)
    liver = ellipsoid(SHAPE, (10, 10, 3), (6, 5, 2))
    write_seg(tmp_path / "fine", [liver], ["Liver"], tmp_path / "seg.dcm")
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    seg.ReferencedSeriesSequence[0].SeriesInstanceUID = pydicom.dcmread(coarse[0]).SeriesInstanceUID
    seg.save_as(tmp_path / "seg.dcm")

    mask, _ = read_dicom_labels(tmp_path / "seg.dcm", tmp_path / "coarse")
    assert [w["code"] for w in mask.meta["read_warnings"]] == warnings
    nearest = [np.rint(offset + factor * np.arange(n)).astype(int) for n in size[:2]]  # fine index of each centre
    np.testing.assert_array_equal(mask.array[0], liver[np.ix_(*nearest, range(SHAPE[2]))].astype(np.int16))
    assert mask.same_geometry(read_image(tmp_path / "coarse"))


def test_seg_whose_series_is_not_in_the_folder_is_refused_with_the_fix(oblique_seg, tmp_path):
    root, _, _ = oblique_seg
    write_series(tmp_path / "other", SHAPE, seed="another series")
    with pytest.raises(DicomError, match="annotates a series that is not in .*copy the referenced series"):
        read_dicom_labels(root / "seg.dcm", tmp_path / "other")


def test_label_kind_and_a_plain_slice_refused_as_labels(oblique_seg):
    root, _, _ = oblique_seg
    slice_file = sorted((root / "ct").iterdir())[0]
    assert label_kind(root / "seg.dcm") == "SEG" and label_kind(slice_file) is None
    with pytest.raises(ReadError, match="not a SEG or RTSTRUCT"):
        read_dicom_labels(slice_file, root / "ct")


# ---- real data ------------------------------------------------------------------------------------------


def need(relative: str) -> Path:
    path = DATA / relative
    if not path.exists():
        pytest.skip(f"{path} is missing from the datasets folder")
    return path


@pytest.mark.realdata
def test_dcmqi_liver_seg_equals_its_nrrd_label_map_voxel_for_voxel():
    """dcmqi's liver SEG read onto ct/ equals liver_seg.nrrd exactly (every voxel) on the same grid (1e-3 mm)."""
    root = need("dcmqi_liver_ct_seg")
    mask, names = read_dicom_labels(root / "liver.dcm", root / "ct")
    nrrd = read_image(root / "liver_seg.nrrd")

    assert names == ("Liver",) and mask.array.shape == (1, 512, 512, 3)
    assert mask.same_geometry(nrrd) and mask.same_geometry(read_image(root / "ct"))
    np.testing.assert_array_equal(mask.array, nrrd.array)
    assert int(mask.array.sum()) == 107098


@pytest.mark.realdata
def test_rtutils_phantom_rtstruct_fills_its_contours_on_the_first_slice():
    root = need("rtutils_phantom_ct_rtstruct")
    mask, names = read_dicom_labels(root / "rt.dcm", root)

    assert names == ("ROI-1",) and mask.array.shape == (1, 512, 512, 2) and mask.same_geometry(read_image(root))
    assert [w["code"] for w in mask.meta["read_warnings"]] == ["labels.frame_of_reference"]  # rt-utils' own FoR
    # both contours lie on z = 60 mm, the first slice: a 24 mm square with a hole (the second contour lies
    # inside the first, so even-odd filling leaves it out); filled area = outer minus inner polygon within 3%
    ds = pydicom.dcmread(root / "rt.dcm")
    outer, inner = (_polygon_area(np.asarray(c.ContourData, float).reshape(-1, 3)[:, :2])
                    for c in ds.ROIContourSequence[0].ContourSequence)
    assert outer == 576.0 and inner > 150
    assert not mask.array[0, :, :, 1].any()
    assert int(mask.array[0, :, :, 0].sum()) * 0.488281 ** 2 == pytest.approx(outer - inner, rel=0.03)
    index = lambda mm: round((mm + 125.0) / 0.488281)  # noqa: E731 - origin -125 mm, axial, x and y alike
    assert mask.array[0, index(-39.5), index(-39.5), 0] == 0  # the middle of the hole
    assert mask.array[0, index(-49.0), index(-39.5), 0] == 1  # the square's rim


def _polygon_area(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2


@pytest.mark.realdata
def test_rtstruct_with_contours_on_absent_slices_says_how_many_are_missing():
    root = need("rtutils_phantom_ct_rtstruct")
    with pytest.raises(DicomError, match=r"4 contour\(s\) of 4 ROI\(s\) .* lie on 1 slice\(s\) the series folder "
                                         r"lacks: it holds 2 slice\(s\), and 3 of the 5 image\(s\)"):
        read_dicom_labels(root / "invalid_reference_rt.dcm", root)


@pytest.mark.realdata
def test_rtstruct_without_a_referenced_series_is_refused_clearly():
    root = need("rtutils_phantom_ct_rtstruct")
    with pytest.raises(DicomError, match="names no referenced image series .*RTReferencedSeriesSequence"):
        read_dicom_labels(root / "non_existent_reference_rt.dcm", root)


@pytest.mark.realdata
def test_dicompyler_structure_set_on_one_ct_slice_names_the_97_missing_slices():
    """Only one CT slice of the 98 the structure set references is present: refused (a partial mask would
    teach a model that the missing organs are background), naming how many slices are missing."""
    root = need("dicompyler_example_rt")
    with pytest.raises(DicomError, match=r"it holds 1 slice\(s\), and 97 of the 98 image\(s\) the structure set "
                                         r"references are missing; copy the complete series"):
        read_dicom_labels(root / "rtss.dcm", root)
