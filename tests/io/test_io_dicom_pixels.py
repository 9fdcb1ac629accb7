"""Uncompressed DICOM series pixels: medlens stacks them from the bytes of its header scan, and
must give exactly what pydicom's ``pixel_array`` (plus the rescale) gives, whatever the encoding."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from medlens.errors import DicomError
from medlens.io import read_image


def pydicom_volume(files) -> np.ndarray:
    """The reference: pydicom's ``pixel_array`` of each slice, stacked, rescaled as medlens documents it."""
    datasets = [pydicom.dcmread(p) for p in files]
    stored = np.stack([ds.pixel_array for ds in datasets], axis=-1)  # (rows, columns, Z)
    slopes = np.array([float(ds.get("RescaleSlope", 1) or 1) for ds in datasets])
    intercepts = np.array([float(ds.get("RescaleIntercept", 0) or 0) for ds in datasets])
    if np.all(slopes == 1) and np.all(intercepts == 0):
        volume = stored
    elif np.all(slopes == np.round(slopes)) and np.all(intercepts == np.round(intercepts)):
        volume = stored.astype(np.int32) * slopes.astype(np.int32) + intercepts.astype(np.int32)
    else:
        volume = (stored.astype(np.float64) * slopes + intercepts).astype(np.float32)
    return volume.transpose(1, 0, 2)  # (X, Y, Z)


def rewrite(files, change, **write_args) -> None:
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        change(ds, k)
        if write_args:
            pydicom.dcmwrite(path, ds, **write_args)
        else:
            ds.save_as(path)


def high_bits_set(bits_stored: int, signed: int):
    """BitsStored < BitsAllocated, with junk in the unused high bits (pydicom clears or sign-extends them)."""
    def change(ds, k):
        pixels = np.frombuffer(ds.PixelData, "<u2") | np.uint16(0xF000 if k % 2 else 0x8000)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, signed
        ds.PixelData = pixels.tobytes()
    return change


def eight_bit_odd_length(ds, k):
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = np.frombuffer(ds.PixelData, "<u2").astype(np.uint8).tobytes() + b"\0"  # 7 x 5: padded


def implicit_vr(ds, k):
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian


def big_endian(ds, k):
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    ds.PixelData = np.frombuffer(ds.PixelData, "<u2").astype(">u2").tobytes()


CASES = {
    "uint16": (lambda ds, k: None, {}),
    "bits_stored_12_unsigned": (high_bits_set(12, 0), {}),
    "bits_stored_12_signed": (high_bits_set(12, 1), {}),
    "signed_int16": (lambda ds, k: setattr(ds, "PixelRepresentation", 1), {}),
    "mixed_signedness": (lambda ds, k: setattr(ds, "PixelRepresentation", k % 2), {}),
    "per_slice_float_rescale": (lambda ds, k: (setattr(ds, "RescaleSlope", [1, 2.5, 0.1, 3, 7][k]),
                                               setattr(ds, "RescaleIntercept", -10.5 * k)), {}),
    "per_slice_int_rescale": (lambda ds, k: (setattr(ds, "RescaleSlope", [1, 2, 1, 3, 7][k]),
                                             setattr(ds, "RescaleIntercept", -10 * k)), {}),
    "uint8_odd_length": (eight_bit_odd_length, {}),
    "implicit_vr_little_endian": (implicit_vr, {"enforce_file_format": True}),
    "explicit_vr_big_endian": (big_endian, {"implicit_vr": False, "little_endian": False, "force_encoding": True}),
}


@pytest.mark.parametrize("case", CASES)
def test_series_pixels_are_what_pydicom_decodes(make_image, case):
    change, write_args = CASES[case]
    volume = np.random.default_rng(7).integers(0, 4000, size=(7, 5, 5))
    written = make_image.dicom_series(case, volume, modality="MR", rescale_intercept=0.0)
    rewrite(written.files, change, **write_args)

    image = read_image(written.path)

    expected = pydicom_volume(written.files)
    assert image.array.dtype == expected.dtype
    np.testing.assert_array_equal(image.array[0], expected)


def test_pixel_data_longer_than_expected_is_refused_not_trimmed(make_image):
    written = make_image.dicom_series("excess", np.random.default_rng(8).integers(0, 4000, size=(7, 5, 4)),
                                      modality="MR", rescale_intercept=0.0)
    rewrite(written.files, lambda ds, k: setattr(ds, "PixelData", ds.PixelData + b"\0" * 8))

    with pytest.raises(DicomError, match=r"slice_000\.dcm: the pixel data holds 78 bytes, but the header declares "
                                         r"5 x 7 pixels x 1 frame\(s\) x 1 sample\(s\) x 16 bits = 70 bytes"):
        read_image(written.path)
