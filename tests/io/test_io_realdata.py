"""read_image on the public datasets in ../shared/datasets (or $MEDLENS_DATA_DIR); skipped when absent.

The expected numbers come from the datasets' own documentation (MANIFEST.md) and, for pixels and
geometry, from SimpleITK reading the same files directly.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medlens.errors import ReadError
from medlens.io import read_image

pytestmark = pytest.mark.realdata

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("MEDLENS_DATA_DIR") or REPO.parent / "shared" / "datasets")
if not DATA.is_dir():
    pytest.skip(f"real datasets not found at {DATA}; set MEDLENS_DATA_DIR", allow_module_level=True)

PGBM = "dicom/brain_tumor_progression_PGBM-003"
PGBM_SERIES = {  # folder: (shape, spacing); the four registered series share one grid
    "11-T1post-18670": ((1, 280, 320, 22), (0.6875, 0.6875, 6.5)),
    "26401-T1prereg-52906": ((1, 280, 320, 22), (0.6875, 0.6875, 6.5)),
    "36468-FLAIRreg-58706": ((1, 280, 320, 22), (0.6875, 0.6875, 6.5)),
    "37870-T2reg-78532": ((1, 280, 320, 22), (0.6875, 0.6875, 6.5)),
    "11_HCropVolume": ((1, 34, 50, 40), (1.0, 1.0, 1.0)),
}
PYRADIOMICS = {  # image, label, spatial shape, label values
    "brain1": ("brain1_image.nrrd", "brain1_label.nrrd", (256, 256, 25), {0, 1}),
    "brain2": ("brain2_image.nrrd", "brain2_label.nrrd", (256, 256, 23), {0, 1}),
    "breast1": ("breast1_image.nrrd", "breast1_label.nrrd", (45, 120, 21), {0, 1}),
    "prostate": ("prostate_phantom_subvolume.nrrd", "prostate_phantom_subvolume-label.nrrd", (82, 67, 13),
                 {0, 1, 7, 8, 9}),
}


def need(relative: str) -> Path:
    path = DATA / relative
    if not path.exists():
        pytest.skip(f"{path} is missing from the datasets folder")
    return path


def sitk_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def assert_matches_sitk(image, sitk_image) -> None:
    """Pixels and geometry equal to SimpleITK's own reading of the same data."""
    np.testing.assert_array_equal(image.array[0], sitk.GetArrayFromImage(sitk_image).T)
    np.testing.assert_allclose(image.spacing_mm, sitk_image.GetSpacing(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(image.origin_mm, sitk_image.GetOrigin(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(image.direction, sitk_image.GetDirection(), rtol=0, atol=1e-9)


# --- DICOM ------------------------------------------------------------------------------------------------


def test_brain_tumor_progression_holds_the_five_documented_series():
    folder = need(PGBM)

    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == sorted(PGBM_SERIES)


@pytest.mark.parametrize("series", sorted(PGBM_SERIES))
def test_brain_tumor_progression_series(series):
    folder = need(f"{PGBM}/{series}")
    shape, spacing = PGBM_SERIES[series]

    image = read_image(folder)

    assert image.array.shape == shape and image.meta["num_slices"] == shape[-1]
    np.testing.assert_allclose(image.spacing_mm, spacing, rtol=1e-6)
    assert image.meta["modality"] == "MR" and image.meta["skipped_files"] == 0
    assert_matches_sitk(image, sitk_series(folder))
    patient_id = str(pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True).PatientID)
    assert patient_id not in repr(image.meta) and image.meta["patient_key"].startswith("pid-")


def test_brain_tumor_progression_registered_series_share_one_grid():
    images = [read_image(need(f"{PGBM}/{s}")) for s in PGBM_SERIES if s != "11_HCropVolume"]

    assert all(images[0].same_geometry(other) for other in images[1:])
    assert len({image.meta["series_uid"] for image in images}) == 4
    assert len({image.meta["patient_key"] for image in images}) == 1


def test_liver_ct_is_in_signed_hounsfield_units():
    folder = need("dicom/dcmqi_liver_ct_seg/ct")

    image = read_image(folder)

    assert image.array.shape == (1, 512, 512, 3)
    assert image.array.dtype.kind == "i"
    assert image.array.min() == -3024  # the scanner's outside-the-field value, only possible after rescale
    np.testing.assert_allclose(image.spacing_mm, (0.810547, 0.810547, 1.0), rtol=1e-6)
    assert image.meta["modality"] == "CT"
    assert_matches_sitk(image, sitk_series(folder))


def test_phantom_folder_mixing_ct_and_rtstructs_gives_the_two_slice_ct():
    folder = need("dicom/rtutils_phantom_ct_rtstruct")

    image = read_image(folder)

    assert image.array.shape == (1, 512, 512, 2)
    assert image.meta["modality"] == "CT" and image.meta["skipped_files"] == 3
    np.testing.assert_allclose(image.spacing_mm, (0.488281, 0.488281, 5.0), rtol=1e-6)
    assert image.array.min() == -3024


@pytest.mark.parametrize("name", ["rt.dcm", "invalid_reference_rt.dcm", "non_existent_reference_rt.dcm"])
def test_phantom_rtstruct_read_on_its_own_is_refused(name):
    with pytest.raises(ReadError, match="is a DICOM RTSTRUCT object without pixels"):
        read_image(need(f"dicom/rtutils_phantom_ct_rtstruct/{name}"))


def test_phantom_ct_slice_read_on_its_own_is_2d_with_its_position():
    image = read_image(need("dicom/rtutils_phantom_ct_rtstruct/ct_1.dcm"))

    assert image.array.shape == (1, 512, 512)
    assert image.meta["position_mm"] == pytest.approx((-125.0, -125.0, 60.0))


def test_rt_plan_folder_with_one_ct_slice_gives_that_slice():
    image = read_image(need("dicom/dicompyler_example_rt"))

    assert image.array.shape == (1, 512, 512) and image.meta["skipped_files"] == 2
    assert image.array.min() == -1000


# --- NIfTI, NRRD ---------------------------------------------------------------------------------------


def test_hippocampus_images_and_labels_share_geometry_case_by_case():
    images_dir, labels_dir = need("seg3d/Task04_Hippocampus/imagesTr"), need("seg3d/Task04_Hippocampus/labelsTr")
    images = sorted(images_dir.glob("*.nii.gz"))
    assert len(images) == 260 and sorted(p.name for p in labels_dir.glob("*.nii.gz")) == [p.name for p in images]
    dtypes, shapes = Counter(), []

    for path in images:
        image, label = read_image(path), read_image(labels_dir / path.name)
        assert image.same_geometry(label), path.name
        assert image.spacing_mm == (1.0, 1.0, 1.0) and image.channels == 1, path.name
        assert set(np.unique(label.array).tolist()) <= {0, 1, 2}, path.name
        np.testing.assert_array_equal(image.array[0], sitk.GetArrayFromImage(sitk.ReadImage(str(path))).T)
        dtypes[(image.array.dtype.name, label.array.dtype.name)] += 1
        shapes.append(image.spatial_shape)

    assert dtypes == {("float32", "uint8"): 203, ("uint8", "uint8"): 55, ("float32", "float32"): 2}
    assert tuple(np.min(shapes, axis=0)) == (31, 40, 24) and tuple(np.max(shapes, axis=0)) == (43, 59, 47)


@pytest.mark.parametrize("case", sorted(PYRADIOMICS))
def test_pyradiomics_nrrd_pairs(case):
    image_name, label_name, shape, label_values = PYRADIOMICS[case]
    image_path = need(f"seg3d/pyradiomics_testcases/{image_name}")
    label_path = need(f"seg3d/pyradiomics_testcases/{label_name}")

    image, label = read_image(image_path), read_image(label_path)

    assert image.spatial_shape == shape and image.same_geometry(label)
    assert set(np.unique(label.array).tolist()) == label_values
    assert_matches_sitk(image, sitk.ReadImage(str(image_path)))
    assert_matches_sitk(label, sitk.ReadImage(str(label_path)))


def test_every_pyradiomics_nrrd_is_covered():
    folder = need("seg3d/pyradiomics_testcases")
    covered = {name for image, label, _, _ in PYRADIOMICS.values() for name in (image, label)}

    assert {p.name for p in folder.glob("*.nrrd")} == covered


# --- 2D rasters ----------------------------------------------------------------------------------------


def test_drive_photographs_are_rgb_and_masks_are_binary_grey():
    folder = need("seg2d/drive")
    seen = Counter()

    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        image = read_image(path)
        group = path.parent.name
        assert image.spatial_shape == (565, 584), path
        if group == "images":
            assert image.array.shape[0] == 3 and image.array.dtype == np.uint8, path
        elif group in ("1st_manual", "mask"):
            assert image.channels == 1 and set(np.unique(image.array).tolist()) == {0, 255}, path
        else:  # 2nd_manual: a two-colour palette of near-greys, (4, 2, 4) and (252, 254, 252), read as RGB
            assert group == "2nd_manual", path
            red, green, blue = image.array.astype(np.uint32)
            assert len(np.unique(red << 16 | green << 8 | blue)) == 2, path
        seen[(path.parts[-3], group, path.suffix)] += 1

    assert seen == {("training", "images", ".tif"): 20, ("training", "1st_manual", ".gif"): 20,
                    ("training", "mask", ".gif"): 20, ("test", "images", ".tif"): 20,
                    ("test", "1st_manual", ".gif"): 20, ("test", "2nd_manual", ".gif"): 20,
                    ("test", "mask", ".gif"): 20}


def test_isbi_em_images_are_grey_and_labels_binary():
    folder = need("seg2d/isbi2012_em_membrane/train")
    images, labels = sorted((folder / "image").glob("*.png")), sorted((folder / "label").glob("*.png"))
    assert len(images) == len(labels) == 30

    for path in images:
        image = read_image(path)
        assert image.array.shape == (1, 512, 512) and image.array.dtype == np.uint8, path
    for path in labels:
        assert set(np.unique(read_image(path).array).tolist()) == {0, 255}, path


def test_busi_class_folders_hold_780_rgb_pngs():
    folder = need("folders/busi_256")
    per_class = Counter()

    for path in sorted(folder.rglob("*.png")):
        image = read_image(path)
        assert image.array.shape == (3, 256, 256) and image.array.dtype == np.uint8, path
        per_class[path.parent.name] += 1

    assert per_class == {"benign": 437, "malignant": 210, "normal": 133}
