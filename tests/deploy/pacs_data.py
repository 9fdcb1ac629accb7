"""Small DICOM studies for the PACS tests: the demo lesion volume (what the demo segmenter learnt) as an MR
series carrying a recognisable patient name and ID, so a test can look for them in every log line."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PATIENT_ID = "PAT-SECRET-4711"
PATIENT_NAME = "Doe^Jane-Secret"


def write_study(folder: Path, seed: int, *, modality: str = "MR", shape=(48, 48, 32)) -> list[Path]:
    """A demo lesion volume as one DICOM series (its own study) in ``folder``; returns its files in slice order."""
    import pydicom

    from medlens.data.synthetic import lesion_volume
    from medlens.io.dicom_write import write_dicom_series

    volume, _ = lesion_volume(np.random.default_rng(seed), shape=shape)
    paths = write_dicom_series(np.clip(volume, 0, 4000), folder, spacing_mm=(0.8, 0.8, 1.5),
                               origin_mm=(-19.2, -19.2, -24.0), modality=modality, patient_id=PATIENT_ID,
                               uid_seed=f"pacs-test-{seed}-{modality}", rescale_intercept=0.0)
    for path in paths:  # a name unlike the ID, so both are looked for
        ds = pydicom.dcmread(path)
        ds.PatientName = PATIENT_NAME
        ds.save_as(path)
    return paths


def study_uid(paths) -> str:
    import pydicom

    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


def leaks(text: str) -> list[str]:
    """The patient identifiers of :func:`write_study` found in ``text``."""
    return [s for s in (PATIENT_ID, PATIENT_NAME, "Doe", "Secret") if s in text]
