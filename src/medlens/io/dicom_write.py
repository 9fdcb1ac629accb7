"""Write a volume as a DICOM series (demo data, test fixtures, exporting predictions to PACS).

UIDs are derived from ``uid_seed`` so the same call writes the same files byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_dicom_series(volume: np.ndarray, out_dir: Path, *, spacing_mm=(1.0, 1.0, 1.0), origin_mm=(0.0, 0.0, 0.0),
                       modality: str = "CT", patient_id: str = "ANON", uid_seed: str = "medlens",
                       rescale_intercept: float = -1024.0, rescale_slope: float = 1.0,
                       series_description: str = "medlens synthetic", study_seed: str | None = None,
                       series_number: int = 1) -> list[Path]:
    """Write ``volume`` as one axial DICOM series, one file per slice.

    Args:
        volume: ``(X, Y, Z)`` values in output units (HU for CT); stored as uint16 after
            the inverse rescale, so ``(value - intercept) / slope`` must fit in 0..65535.
        out_dir: created if needed; files are named ``slice_000.dcm`` ...
        spacing_mm: ``(x, y, z)`` voxel size; z is the step between slice positions.
        origin_mm: position of the first voxel of the first slice.
        study_seed: derive the StudyInstanceUID from this instead of ``uid_seed`` (series of one study share it).
        series_number: the SeriesNumber written.

    Returns:
        The written paths, in slice order.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

    stored = np.round((np.asarray(volume, dtype=np.float64) - rescale_intercept) / rescale_slope)
    if stored.min() < 0 or stored.max() > 65535:
        raise ValueError("volume does not fit in uint16 after the inverse rescale; change rescale_intercept/slope")
    stored = stored.astype(np.uint16)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid = generate_uid(entropy_srcs=[study_seed or uid_seed, "study"])
    series_uid = generate_uid(entropy_srcs=[uid_seed, "series"])
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    paths = []
    for k in range(stored.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[uid_seed, "slice", str(k)])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = out_dir / f"slice_{k:03d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[uid_seed, "frame"])
        ds.Modality, ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = (modality, series_description,
                                                                            series_number, k + 1)
        ds.PatientID, ds.PatientName = patient_id, patient_id
        ds.ImagePositionPatient = [float(origin_mm[0]), float(origin_mm[1]), float(origin_mm[2] + k * spacing_mm[2])]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [float(spacing_mm[1]), float(spacing_mm[0])]  # DICOM: row spacing, column spacing
        ds.SliceThickness = float(spacing_mm[2])
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = rescale_intercept, rescale_slope
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # rows of the slice are y
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
