"""Format detection and every way read_image refuses a file, with the message the user sees."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from medlens.errors import MedlensError, ReadError
from medlens.io import detect_format, read_image


def float_volume() -> np.ndarray:
    """(Z, Y, X) float32 with no zeros, so a zero-filled tail is visible."""
    return np.random.default_rng(0).uniform(1.0, 2.0, size=(20, 30, 40)).astype(np.float32)


def cut_in_half(path, target):
    data = path.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


# --- what the path is ----------------------------------------------------------------------------


def test_nonexistent_path_raises_file_not_found_with_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "scan.nii.gz"

    with pytest.raises(FileNotFoundError, match=r"no such file or folder: .*nowhere/scan\.nii\.gz"):
        read_image(missing)


def test_empty_file_is_refused_as_incompletely_copied(tmp_path):
    (tmp_path / "empty.nii.gz").write_bytes(b"")

    with pytest.raises(ReadError, match=r"empty\.nii\.gz is empty \(0 bytes\); the file was probably not copied"):
        read_image(tmp_path / "empty.nii.gz")


def test_unknown_content_and_suffix_is_refused_with_the_list_of_formats(tmp_path):
    (tmp_path / "notes.xyz").write_bytes(b"patient notes, not an image\n" * 20)

    with pytest.raises(ReadError, match=r"unrecognised image format \(suffix '\.xyz'\)\. medlens reads DICOM, NIfTI"):
        read_image(tmp_path / "notes.xyz")


@pytest.mark.parametrize(("name", "payload"), [("archive.zip", b"PK\x03\x04" + b"\0" * 60),
                                               ("blob.gz", gzip.compress(b"not a nifti header" * 30))])
def test_zip_or_gzip_that_is_no_image_is_unrecognised(tmp_path, name, payload):
    (tmp_path / name).write_bytes(payload)

    with pytest.raises(ReadError, match="unrecognised image format"):
        read_image(tmp_path / name)


def test_png_name_with_jpeg_content_is_read_as_jpeg_with_a_warning(make_image, tmp_path):
    jpeg = make_image("jpeg").path
    disguised = tmp_path / "scan.png"
    disguised.write_bytes(jpeg.read_bytes())

    image = read_image(disguised)

    np.testing.assert_array_equal(image.array, read_image(jpeg).array)
    assert image.meta["format"] == "jpeg"
    assert image.meta["read_warnings"] == [{
        "code": "image.misnamed",
        "message": "holds a jpeg image but is named .png (png); read as jpeg, rename it to .jpg"}]


def test_nifti_name_with_png_content_is_read_as_png(make_image, tmp_path):
    disguised = tmp_path / "scan.nii.gz"
    disguised.write_bytes(make_image("png8").path.read_bytes())

    image = read_image(disguised)  # a raster is decoded from its bytes alone, whatever the name

    assert image.meta["format"] == "png" and image.meta["read_warnings"][0]["code"] == "image.misnamed"


def test_png_name_with_nifti_content_is_refused(make_image, tmp_path):
    disguised = tmp_path / "scan.png"
    disguised.write_bytes(make_image("nii").path.read_bytes())

    with pytest.raises(ReadError, match="named like a png file but its content looks like nifti; rename it"):
        read_image(disguised)


def test_png_name_with_zip_content_is_refused(tmp_path):
    (tmp_path / "scan.png").write_bytes(b"PK\x03\x04" + b"\0" * 60)

    with pytest.raises(ReadError, match="named like a png file but its content looks like zip"):
        read_image(tmp_path / "scan.png")


@pytest.mark.parametrize(("kind", "new_name", "expected"), [("dicom_file", "IM0001", "dicom"),
                                                            ("png8", "photo", "png"),
                                                            ("nii.gz", "volume", "nifti"),
                                                            ("npy", "array", "npy")])
def test_file_without_suffix_is_recognised_by_its_content(make_image, tmp_path, kind, new_name, expected):
    renamed = make_image(kind).path.rename(tmp_path / new_name)

    assert detect_format(renamed) == expected


def test_folder_is_detected_as_a_dicom_series(tmp_path):
    assert detect_format(tmp_path) == "dicom_series"


def test_read_errors_are_medlens_errors_so_the_cli_can_print_them():
    assert issubclass(ReadError, MedlensError)


# --- corrupt and truncated files -----------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("dtype", [np.float32, np.int16])
@pytest.mark.parametrize("extra_bytes", [0, 1], ids=["half", "half-plus-1-byte"])
def test_truncated_nifti_is_refused(tmp_path, suffix, dtype, extra_bytes):
    sitk.WriteImage(sitk.GetImageFromArray(float_volume().astype(dtype)), str(tmp_path / f"whole{suffix}"))
    data = (tmp_path / f"whole{suffix}").read_bytes()
    (tmp_path / f"half{suffix}").write_bytes(data[: len(data) // 2 + extra_bytes])

    with pytest.raises(ReadError, match=r"half\.nii(\.gz)?\b.*truncated"):
        read_image(tmp_path / f"half{suffix}")


@pytest.mark.parametrize(("suffix", "compress"), [(".mha", True), (".mha", False), (".nrrd", True), (".nrrd", False)])
def test_truncated_metaimage_or_nrrd_is_refused(tmp_path, suffix, compress):
    sitk.WriteImage(sitk.GetImageFromArray(float_volume()), str(tmp_path / f"whole{suffix}"), useCompression=compress)
    truncated = cut_in_half(tmp_path / f"whole{suffix}", tmp_path / f"half{suffix}")

    expected = r"half\.(mha|nrrd): truncated: the (compressed data inflates to|header declares) .*copy or export it"
    with pytest.raises(ReadError, match=expected):
        read_image(truncated)


def test_nifti_header_alone_is_refused(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(float_volume()), str(tmp_path / "whole.nii"))
    (tmp_path / "stub.nii").write_bytes((tmp_path / "whole.nii").read_bytes()[:300])

    with pytest.raises(ReadError, match=r"stub\.nii: could not be read as an image"):
        read_image(tmp_path / "stub.nii")


def test_metaimage_header_without_its_raw_file_is_refused(make_image):
    written = make_image("mhd")
    written.path.with_suffix(".raw").unlink()

    with pytest.raises(ReadError, match=r"\.mhd: could not be read as an image"):
        read_image(written.path)


def test_truncated_png_is_refused(make_image, tmp_path):
    truncated = cut_in_half(make_image("png_rgb").path, tmp_path / "half.png")

    with pytest.raises(ReadError, match=r"half\.png: could not decode the image \(.*truncated"):
        read_image(truncated)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif", ".bmp", ".gif"])
def test_raster_of_garbage_bytes_is_refused(tmp_path, suffix):
    (tmp_path / f"garbage{suffix}").write_bytes(b"\x00garbage" * 50)

    with pytest.raises(ReadError, match="could not decode the image"):
        read_image(tmp_path / f"garbage{suffix}")


def test_dcm_file_that_is_not_dicom_is_refused(tmp_path):
    (tmp_path / "slice.dcm").write_bytes(b"\x00garbage" * 50)

    with pytest.raises(ReadError, match=r"slice\.dcm is not a DICOM file"):
        read_image(tmp_path / "slice.dcm")


# --- NaN voxels --------------------------------------------------------------------------------------


def volume_with_nan() -> np.ndarray:
    volume = float_volume()
    volume[3, 4, 5], volume[0, 0, 0] = np.nan, np.inf
    return volume


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nan_voxels_in_float_nifti_are_refused(tmp_path, suffix):
    sitk.WriteImage(sitk.GetImageFromArray(volume_with_nan()), str(tmp_path / f"nan{suffix}"))

    with pytest.raises(ReadError, match=r"2 voxel\(s\) are NaN or infinite; fix the export"):
        read_image(tmp_path / f"nan{suffix}")


def test_allow_nan_reads_a_nifti_with_nan_and_keeps_them(tmp_path):
    # SimpleITK 2.5 (ITK 5.4) turns NaN/inf into 0 while reading NIfTI (ITK PR #6683 keeps them, from ITK 6);
    # medlens reads float NIfTI voxels itself, so they survive and are counted.
    sitk.WriteImage(sitk.GetImageFromArray(volume_with_nan()), str(tmp_path / "nan.nii.gz"))

    image = read_image(tmp_path / "nan.nii.gz", allow_nan=True)

    assert image.meta["nonfinite_voxels"] == 2
    np.testing.assert_array_equal(image.array[0], volume_with_nan().T)


def test_finite_float_nifti_counts_no_hidden_voxels(make_image):
    image = read_image(make_image("nii.gz").path)

    assert image.meta["nonfinite_voxels"] == 0


@pytest.mark.parametrize("suffix", [".mha", ".nrrd", ".npy"])
def test_nan_voxels_are_refused_unless_allowed(tmp_path, suffix):
    path = tmp_path / f"nan{suffix}"
    if suffix == ".npy":
        np.save(path, volume_with_nan())
    else:
        sitk.WriteImage(sitk.GetImageFromArray(volume_with_nan()), str(path))

    with pytest.raises(ReadError, match=r"2 voxel\(s\) are NaN or infinite; fix the export"):
        read_image(path)
    image = read_image(path, allow_nan=True)
    assert np.isnan(image.array[0, 5, 4, 3]) and np.isinf(image.array[0, 0, 0, 0])


def test_nan_in_a_float_tiff_is_refused(tmp_path):
    from PIL import Image as PILImage

    pixels = np.ones((4, 6), dtype=np.float32)
    pixels[1, 2] = np.nan
    PILImage.fromarray(pixels).save(tmp_path / "nan.tif")

    with pytest.raises(ReadError, match=r"1 voxel\(s\) are NaN"):
        read_image(tmp_path / "nan.tif")


# --- dimensionality ---------------------------------------------------------------------------------


def test_volume_where_a_2d_image_is_expected_is_refused(make_image):
    written = make_image("nii.gz")

    with pytest.raises(ReadError, match=r"expected a 2D image, found a 3D image of shape \(6, 5, 4\); use a 3D model"):
        read_image(written.path, spatial_dims=2)


def test_2d_image_where_a_volume_is_expected_is_refused(make_image):
    with pytest.raises(ReadError, match=r"expected a 3D image, found a 2D image of shape \(6, 4\)"):
        read_image(make_image("png8").path, spatial_dims=3)


def test_matching_dimensionality_is_accepted(make_image):
    assert read_image(make_image("png8").path, spatial_dims=2).spatial_dims == 2
    assert read_image(make_image("nii").path, spatial_dims=3).spatial_dims == 3


# --- NumPy ----------------------------------------------------------------------------------------------


def test_npz_with_several_arrays_none_of_them_the_image_is_refused(tmp_path):
    np.savez(tmp_path / "bundle.npz", weights=np.zeros(3), bias=np.ones(2))

    with pytest.raises(ReadError, match=r"holds 2 arrays and none is named image / images / arr_0; "
                                        r"save the image under the key 'image'"):
        read_image(tmp_path / "bundle.npz")


def test_medmnist_like_npz_is_pointed_to_the_dataset_reader(tmp_path):
    np.savez(tmp_path / "pneumoniamnist.npz", train_images=np.zeros((2, 28, 28), np.uint8),
             train_labels=np.zeros((2, 1), np.uint8))

    with pytest.raises(ReadError, match="looks like a MedMNIST dataset; open it as a dataset"):
        read_image(tmp_path / "pneumoniamnist.npz")


def test_npy_holding_pickled_objects_is_refused_without_unpickling(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)

    with pytest.raises(ReadError, match=r"objects\.npy: holds pickled Python objects, not numbers; medlens "
                                        r"never unpickles"):
        read_image(tmp_path / "objects.npy")


def test_npy_of_strings_is_refused(tmp_path):
    np.save(tmp_path / "names.npy", np.array([["a", "b"], ["c", "d"]]))

    with pytest.raises(ReadError, match="expected a numeric array, found dtype <U1"):
        read_image(tmp_path / "names.npy")


@pytest.mark.parametrize("shape", [(7,), (1, 2, 3, 4, 5)])
def test_npy_with_too_few_or_too_many_axes_is_refused(tmp_path, shape):
    np.save(tmp_path / "odd.npy", np.zeros(shape, dtype=np.float32))

    with pytest.raises(ReadError, match=r"expected a 2D or 3D image array \(2 to 4 axes\)"):
        read_image(tmp_path / "odd.npy")


def test_truncated_npy_is_refused(tmp_path):
    np.save(tmp_path / "whole.npy", float_volume())
    truncated = cut_in_half(tmp_path / "whole.npy", tmp_path / "half.npy")

    with pytest.raises(ReadError, match=r"half\.npy: truncated: the \.npy header declares shape "
                                        r"\(20, 30, 40\) of float32"):
        read_image(truncated)


def test_truncated_npz_is_refused(make_image, tmp_path):
    truncated = cut_in_half(make_image("npz").path, tmp_path / "half.npz")

    with pytest.raises(ReadError, match=r"half\.npz: not a readable \.npz archive .*may be truncated"):
        read_image(truncated)
