"""read_image on every supported format: array order (C, X, Y[, Z]), values, dtype and geometry."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image as PILImage

from medlens.errors import ReadError
from medlens.io import read_image

KINDS = ("nii", "nii.gz", "mha", "mha_vector", "mhd", "nrrd", "nii_2d", "png8", "png16", "png_rgb", "jpeg",
         "tiff", "tiff_float", "bmp", "gif", "npy", "npz", "dicom_series", "dicom_file")
FORMAT_OF_KIND = {"nii": "nifti", "nii.gz": "nifti", "nii_2d": "nifti", "mha": "metaimage", "mha_vector": "metaimage",
                  "mhd": "metaimage", "nrrd": "nrrd", "png8": "png", "png16": "png", "png_rgb": "png", "jpeg": "jpeg",
                  "tiff": "tiff", "tiff_float": "tiff", "bmp": "bmp", "gif": "gif", "npy": "npy", "npz": "npz",
                  "dicom_series": "dicom_series", "dicom_file": "dicom"}
GEOMETRY_KINDS = list(KINDS)


def test_the_kinds_tested_here_are_every_kind_the_factory_writes(make_image):
    assert set(KINDS) == set(make_image.kinds)


@pytest.mark.parametrize("kind", KINDS)
def test_reader_returns_the_written_values_in_channel_x_y_z_order(make_image, kind):
    written = make_image(kind)

    image = read_image(written.path)

    assert image.array.shape == written.array.shape
    if written.value_atol:
        np.testing.assert_allclose(image.array.astype(np.float64), written.array, rtol=0, atol=written.value_atol)
    else:
        np.testing.assert_array_equal(image.array, written.array)


@pytest.mark.parametrize("kind", KINDS)
def test_reader_keeps_the_stored_dtype(make_image, kind):
    written = make_image(kind)

    image = read_image(written.path)

    if written.dtype is None:  # DICOM CT after RescaleIntercept: signed HU, width chosen by ITK
        assert image.array.dtype.kind == "i"
    else:
        assert image.array.dtype == written.dtype


@pytest.mark.parametrize("kind", GEOMETRY_KINDS)
def test_reader_returns_the_written_geometry(make_image, kind):
    written = make_image(kind)

    image = read_image(written.path)

    tol = written.geometry_atol
    assert image.spatial_dims == written.array.ndim - 1
    assert image.spacing_known is written.spacing_known
    np.testing.assert_allclose(image.spacing_mm, written.spacing_mm, rtol=0, atol=tol)
    np.testing.assert_allclose(image.origin_mm, written.origin_mm, rtol=0, atol=tol)
    np.testing.assert_allclose(image.direction, written.direction, rtol=0, atol=tol)


@pytest.mark.parametrize("kind", KINDS)
def test_reader_records_the_format_and_the_path(make_image, kind):
    written = make_image(kind)

    image = read_image(written.path)

    assert image.meta["format"] == FORMAT_OF_KIND[kind]
    assert image.path == written.path


def test_png_of_height_4_and_width_6_gives_shape_1_6_4(tmp_path):
    pixels = np.arange(24, dtype=np.uint8).reshape(4, 6)  # rows (y) x columns (x)
    PILImage.fromarray(pixels).save(tmp_path / "wide.png")

    image = read_image(tmp_path / "wide.png")

    assert image.array.shape == (1, 6, 4)
    assert image.array[0, 5, 0] == pixels[0, 5]  # x=5, y=0 is the last column of the first row
    assert image.spatial_shape == (6, 4) and image.channels == 1


def test_four_dimensional_nifti_gives_the_fourth_axis_as_channels(tmp_path):
    stack_tzyx = np.arange(2 * 3 * 4 * 5, dtype=np.int16).reshape(2, 3, 4, 5)
    volumes = [sitk.GetImageFromArray(v) for v in stack_tzyx]
    for volume in volumes:
        volume.SetSpacing((0.5, 0.75, 2.0))
        volume.SetOrigin((1.0, -2.0, 3.0))
    sitk.WriteImage(sitk.JoinSeries(volumes), str(tmp_path / "multimodal.nii.gz"))

    image = read_image(tmp_path / "multimodal.nii.gz")

    assert image.array.shape == (2, 5, 4, 3)
    np.testing.assert_array_equal(image.array, stack_tzyx.transpose(0, 3, 2, 1))
    np.testing.assert_allclose(image.spacing_mm, (0.5, 0.75, 2.0), atol=1e-6)
    np.testing.assert_allclose(image.origin_mm, (1.0, -2.0, 3.0), atol=1e-6)


def test_detached_nrrd_header_is_read_with_its_data_file(make_image, tmp_path):
    written = make_image("nrrd")
    sitk.WriteImage(sitk.ReadImage(str(written.path)), str(tmp_path / "detached.nhdr"))

    image = read_image(tmp_path / "detached.nhdr")

    np.testing.assert_array_equal(image.array, written.array)
    np.testing.assert_allclose(image.spacing_mm, written.spacing_mm, rtol=0, atol=1e-12)
    np.testing.assert_allclose(image.direction, written.direction, rtol=0, atol=1e-12)


def test_itk_reader_records_the_pixel_type(make_image):
    image = read_image(make_image("mha").path)

    assert image.meta["pixel_type"] == "16-bit unsigned integer"


def test_uppercase_suffix_is_recognised(make_image, tmp_path):
    written = make_image("nii.gz")
    upper = written.path.rename(tmp_path / "SCAN.NII.GZ")

    image = read_image(upper)

    np.testing.assert_array_equal(image.array, written.array)


# --- rasters ---------------------------------------------------------------------------------------


def test_opaque_rgba_png_drops_the_alpha_channel_with_a_note(tmp_path):
    rgba = np.zeros((4, 6, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 255
    PILImage.fromarray(rgba).save(tmp_path / "rgba.png")

    image = read_image(tmp_path / "rgba.png")

    assert image.array.shape == (3, 6, 4)
    assert image.array[:, 0, 0].tolist() == [10, 20, 30]
    assert image.meta["read_warnings"] == [{"code": "image.alpha",
                                            "message": "alpha channel dropped (every pixel is opaque)"}]


def test_translucent_png_is_flattened_onto_black(tmp_path):
    rgba = np.full((4, 6, 4), 200, dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 128  # (row 0, column 0) transparent, (row 0, column 1) half
    PILImage.fromarray(rgba).save(tmp_path / "translucent.png")

    image = read_image(tmp_path / "translucent.png")

    assert image.array.shape == (3, 6, 4)
    assert image.array[:, 0, 0].tolist() == [0, 0, 0]
    assert image.array[:, 1, 0].tolist() == [100, 100, 100]  # round(200 * 128 / 255) = 100
    assert image.array[:, 2, 0].tolist() == [200, 200, 200]
    assert image.meta["read_warnings"][0]["code"] == "image.alpha"
    assert "flattened onto black" in image.meta["read_warnings"][0]["message"]


def test_grey_png_with_alpha_stays_one_channel_and_is_flattened(tmp_path):
    la = np.full((4, 6, 2), 90, dtype=np.uint8)
    la[..., 1] = 255
    la[3, 5, 1] = 0
    PILImage.fromarray(la, mode="LA").save(tmp_path / "grey_alpha.png")

    image = read_image(tmp_path / "grey_alpha.png")

    assert image.array.shape == (1, 6, 4)
    assert image.array[0, 5, 3] == 0 and image.array[0, 0, 0] == 90


def test_palette_without_transparency_has_no_alpha_note(tmp_path):
    PILImage.fromarray(np.arange(24, dtype=np.uint8).reshape(4, 6)).convert("P").save(tmp_path / "palette.png")

    image = read_image(tmp_path / "palette.png")

    assert "read_warnings" not in image.meta


def test_bilevel_png_reads_as_grey_0_and_255(tmp_path):
    PILImage.fromarray(np.eye(4, 6, dtype=bool)).convert("1").save(tmp_path / "mask.png")

    image = read_image(tmp_path / "mask.png")

    assert image.array.dtype == np.uint8 and image.array.shape == (1, 6, 4)
    assert set(np.unique(image.array).tolist()) == {0, 255}
    assert image.array[0, 2, 2] == 255 and image.array[0, 3, 2] == 0


def test_multi_frame_tiff_is_refused(tmp_path):
    frames = [PILImage.fromarray(np.full((4, 6), 40 * i, dtype=np.uint8)) for i in range(3)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])

    with pytest.raises(ReadError, match="holds 3 frames; medlens reads single-frame"):
        read_image(tmp_path / "stack.tif")


def test_png_resolution_in_dots_per_inch_becomes_the_spacing(tmp_path):
    PILImage.fromarray(np.zeros((4, 6), dtype=np.uint8)).save(tmp_path / "scan.png", dpi=(254, 254))

    image = read_image(tmp_path / "scan.png")

    assert image.spacing_known is True
    np.testing.assert_allclose(image.spacing_mm, (0.1, 0.1), rtol=1e-5)


@pytest.mark.parametrize("suffix", [".png", ".bmp"])
def test_screen_default_72_dpi_is_not_taken_as_a_spacing(tmp_path, suffix):
    path = tmp_path / f"screenshot{suffix}"
    PILImage.fromarray(np.zeros((4, 6), dtype=np.uint8)).save(path, dpi=(72, 72))

    image = read_image(path)

    assert image.spacing_known is False
    assert image.spacing_mm == (1.0, 1.0)


def test_tiff_at_72_dpi_has_no_known_spacing(tmp_path):
    PILImage.fromarray(np.zeros((4, 6), dtype=np.uint8)).save(tmp_path / "screen.tif", dpi=(72, 72))

    image = read_image(tmp_path / "screen.tif")

    assert image.spacing_known is False and image.spacing_mm == (1.0, 1.0)


def test_png_geometry_text_chunk_sets_the_spacing(tmp_path):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("medlens:geometry", '{"spacing_mm": [0.2, 0.3], "origin_mm": [4, 5], "direction": [0, 1, 1, 0]}')
    PILImage.fromarray(np.zeros((4, 6), dtype=np.uint8)).save(tmp_path / "tagged.png", pnginfo=info)

    image = read_image(tmp_path / "tagged.png")

    assert image.spacing_known is True
    assert (image.spacing_mm, image.origin_mm, image.direction) == ((0.2, 0.3), (4.0, 5.0), (0.0, 1.0, 1.0, 0.0))


def test_png_with_a_malformed_geometry_chunk_is_refused(tmp_path):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("medlens:geometry", '{"spacing_mm": [0.2]')
    PILImage.fromarray(np.zeros((4, 6), dtype=np.uint8)).save(tmp_path / "broken.png", pnginfo=info)

    with pytest.raises(ReadError, match="medlens:geometry text chunk is malformed; re-save the PNG"):
        read_image(tmp_path / "broken.png")


def test_palette_gif_with_colours_reads_as_rgb(tmp_path):
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[:2] = (255, 0, 0)
    PILImage.fromarray(rgb).convert("P").save(tmp_path / "colour.gif")

    image = read_image(tmp_path / "colour.gif")

    assert image.array.shape == (3, 6, 4)
    assert image.array[:, 0, 0].tolist() == [255, 0, 0] and image.array[:, 0, 3].tolist() == [0, 0, 0]


# --- NumPy -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("numpy_shape", "expected_shape", "to_expected"),
    [
        ((4, 6), (1, 6, 4), lambda a: a.T[None]),                                 # (Y, X) grey
        ((4, 6, 3), (3, 6, 4), lambda a: a.transpose(2, 1, 0)),                   # (Y, X, 3) colour
        ((4, 5, 6), (1, 6, 5, 4), lambda a: a.T[None]),                           # (Z, Y, X) volume
        ((2, 4, 5, 6), (2, 6, 5, 4), lambda a: a.transpose(0, 3, 2, 1)),          # (C, Z, Y, X)
    ],
    ids=["grey-2d", "rgb-2d", "volume", "multichannel-volume"],
)
def test_npy_is_read_in_numpy_row_major_order(tmp_path, numpy_shape, expected_shape, to_expected):
    array = np.arange(np.prod(numpy_shape), dtype=np.int16).reshape(numpy_shape)
    np.save(tmp_path / "array.npy", array)

    image = read_image(tmp_path / "array.npy")

    assert image.array.shape == expected_shape
    np.testing.assert_array_equal(image.array, to_expected(array))
    assert image.spacing_known is False


def test_npz_with_one_array_reads_it_whatever_its_key(tmp_path):
    np.savez_compressed(tmp_path / "one.npz", volume=np.arange(24, dtype=np.uint8).reshape(4, 6))

    image = read_image(tmp_path / "one.npz")

    np.testing.assert_array_equal(image.array, np.arange(24, dtype=np.uint8).reshape(4, 6).T[None])


@pytest.mark.parametrize("shape", [(1, 6, 4), (3, 6, 4), (1, 6, 5, 4), (2, 6, 5, 4)])
def test_npy_factory_layout_reads_back_unchanged(make_image, shape):
    written = make_image.npy("layout.npy", make_image.random_array(shape, np.int16, seed=30))

    np.testing.assert_array_equal(read_image(written.path).array, written.array)


def test_lossless_webp_is_read_by_its_name_and_by_its_content_when_misnamed(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    PILImage.fromarray(rgb).save(tmp_path / "photo.webp", lossless=True)
    (tmp_path / "photo.png").write_bytes((tmp_path / "photo.webp").read_bytes())

    image, misnamed = read_image(tmp_path / "photo.webp"), read_image(tmp_path / "photo.png")

    np.testing.assert_array_equal(image.array, rgb.transpose(2, 1, 0))
    np.testing.assert_array_equal(misnamed.array, image.array)
    assert [note["code"] for note in misnamed.meta["read_warnings"]] == ["image.misnamed"]


@pytest.mark.parametrize("orientation, turn", [(3, lambda a: a[::-1, ::-1]), (6, lambda a: np.rot90(a, -1)),
                                                (8, lambda a: np.rot90(a, 1))])
def test_exif_orientation_is_applied_as_viewers_show_the_photo(tmp_path, orientation, turn):
    stored = np.zeros((16, 24), np.uint8)
    stored[:8, :8], stored[8:, 16:] = 255, 128  # 8 x 8 blocks survive JPEG: top left bright, bottom right grey
    pil = PILImage.fromarray(stored)
    exif = pil.getexif()
    exif[0x0112] = orientation
    pil.save(tmp_path / "photo.jpg", exif=exif, quality=95)

    image = read_image(tmp_path / "photo.jpg")

    upright = turn(stored).T.astype(int)  # (X, Y) of the upright (H, W)
    assert image.array.shape[1:] == upright.shape and np.abs(image.array[0] - upright).max() < 40
    assert image.meta["read_warnings"] == [{"code": "image.orientation",
                                            "message": f"EXIF orientation {orientation} applied"}]


def test_upright_exif_orientation_leaves_the_photo_without_a_note(tmp_path):
    pil = PILImage.fromarray(np.arange(24, dtype=np.uint8).reshape(4, 6))
    exif = pil.getexif()
    exif[0x0112] = 1
    pil.save(tmp_path / "photo.jpg", exif=exif, quality=100)

    image = read_image(tmp_path / "photo.jpg")

    assert image.array.shape == (1, 6, 4) and "read_warnings" not in image.meta


def test_a_few_translucent_pixels_are_counted_not_rounded_to_zero_percent(tmp_path):
    rgba = np.full((40, 50, 4), 200, dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0
    PILImage.fromarray(rgba).save(tmp_path / "speck.png")

    image = read_image(tmp_path / "speck.png")

    assert "(1 pixel(s) not opaque)" in image.meta["read_warnings"][0]["message"]
