"""write_image: geometry and values survive a round trip, and nothing half-written is left behind."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.io import Image, read_image, write_image

# NIfTI stores spacing and direction as float32; the other formats keep doubles.
GEOMETRY_ATOL = {".nii": 1e-6, ".nii.gz": 1e-6, ".mha": 0.0, ".mhd": 0.0, ".nrrd": 1e-12, ".png": 0.0}
VOLUMES = ("oblique_volume", "vector_volume")
SLICES = ("rotated_slice", "rgb_slice")
ROUND_TRIPS = [(suffix, name) for suffix in (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd") for name in VOLUMES + SLICES]
ROUND_TRIPS += [(".png", name) for name in SLICES]


def assert_same_image(actual: Image, expected: Image, atol: float) -> None:
    assert actual.array.dtype == expected.array.dtype
    np.testing.assert_array_equal(actual.array, expected.array)
    np.testing.assert_allclose(actual.spacing_mm, expected.spacing_mm, rtol=0, atol=atol)
    np.testing.assert_allclose(actual.origin_mm, expected.origin_mm, rtol=0, atol=atol)
    np.testing.assert_allclose(actual.direction, expected.direction, rtol=0, atol=atol)
    assert actual.spacing_known is True


@pytest.mark.parametrize(("suffix", "name"), ROUND_TRIPS, ids=[f"{s}-{n}" for s, n in ROUND_TRIPS])
def test_round_trip_keeps_values_and_geometry(make_image, tmp_path, suffix, name):
    image = make_image.in_memory(name)

    written = write_image(image, tmp_path / f"out{suffix}")

    assert written == tmp_path / f"out{suffix}"
    assert_same_image(read_image(written), image, GEOMETRY_ATOL[suffix])


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha", ".mhd", ".nrrd", ".png"])
def test_write_leaves_no_staging_folder(make_image, tmp_path, suffix):
    image = make_image.in_memory("rotated_slice")

    write_image(image, tmp_path / f"out{suffix}")

    assert not list(tmp_path.glob(".medlens-write-*"))


def test_mhd_is_written_with_its_raw_data_file_beside_it(make_image, tmp_path):
    write_image(make_image.in_memory("oblique_volume"), tmp_path / "volume.mhd")

    assert sorted(p.name for p in tmp_path.iterdir()) == ["volume.mhd", "volume.raw"]
    assert "ElementDataFile = volume.raw" in (tmp_path / "volume.mhd").read_text()


def test_write_creates_missing_parent_folders_and_replaces_an_existing_file(make_image, tmp_path):
    target = tmp_path / "new" / "deeper" / "image.nii.gz"
    write_image(make_image.in_memory("oblique_volume"), target)

    replacement = make_image.in_memory("vector_volume")
    write_image(replacement, target)

    assert_same_image(read_image(target), replacement, GEOMETRY_ATOL[".nii.gz"])


def test_sixteen_bit_grey_png_round_trip(make_image, tmp_path):
    pixels = make_image.random_array((1, 5, 6), np.uint16, seed=24, low=300)
    image = Image(pixels, (0.2, 0.3), (1.0, 2.0), make_image.ROTATED_2D)

    write_image(image, tmp_path / "deep.png")

    assert_same_image(read_image(tmp_path / "deep.png"), image, 0.0)


def test_png_written_by_medlens_opens_in_pillow_as_an_ordinary_image(make_image, tmp_path):
    from PIL import Image as PILImage

    image = make_image.in_memory("rotated_slice")
    write_image(image, tmp_path / "plain.png")

    with PILImage.open(tmp_path / "plain.png") as pil:
        assert pil.size == (5, 6)  # (width = X, height = Y)
        np.testing.assert_array_equal(np.asarray(pil), image.array[0].T)


# --- refusals ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["image.jpg", "image.tif", "image.npy", "image.dcm", "image.foo"])
def test_writing_an_unsupported_suffix_is_refused_with_the_supported_list(make_image, tmp_path, name):
    supported = r"medlens writes \.nii, \.nii\.gz, \.mha, \.mhd, \.nrrd, \.png"
    with pytest.raises(ValueError, match=rf"cannot write .*{supported}"):
        write_image(make_image.in_memory("rotated_slice"), tmp_path / name)

    assert list(tmp_path.iterdir()) == []


def test_writing_float_pixels_as_png_is_refused_and_leaves_nothing(make_image, tmp_path):
    image = Image(np.zeros((1, 5, 6), dtype=np.float32), (1.0, 1.0), (0.0, 0.0), make_image.ROTATED_2D)

    with pytest.raises(ValueError, match="PNG holds 8-bit grey/RGB or 16-bit grey integers; got float32"):
        write_image(image, tmp_path / "float.png")

    assert list(tmp_path.iterdir()) == []


def test_writing_a_volume_as_png_is_refused(make_image, tmp_path):
    with pytest.raises(ValueError, match=r"PNG holds 2D grey or RGB images; got spatial shape \(5, 6, 7\)"):
        write_image(make_image.in_memory("oblique_volume"), tmp_path / "volume.png")

    assert not list(tmp_path.glob(".medlens-write-*"))


def test_writing_16_bit_rgb_png_is_refused(make_image, tmp_path):
    image = Image(np.zeros((3, 5, 6), dtype=np.uint16), (1.0, 1.0), (0.0, 0.0), make_image.ROTATED_2D)

    with pytest.raises(ValueError, match="got uint16 with 3 channel"):
        write_image(image, tmp_path / "rgb16.png")
