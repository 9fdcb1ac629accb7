"""What every DICOM result medlens writes shares: who made it, coded names of classes, new UIDs, atomic saves."""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from medlens.errors import MedlensError

MANUFACTURER = "medlens"
#: series numbers of the objects medlens adds to a study (high, so they sort after the acquired series)
SERIES_NUMBERS = {"seg": 9001, "rtstruct": 9002, "sr": 9003, "capture": 9004}
#: a private coding scheme (PS3.3 8.2: designators beginning "99") for class names no standard code matches
PRIVATE_SCHEME = "99MEDLENS"

# class names that mean a standard concept: (category, type) keywords of pydicom's SNOMED CT dictionary
_ABNORMAL = {"lesion": "Lesion", "lesions": "Lesion", "tumor": "Neoplasm", "tumour": "Neoplasm",
             "neoplasm": "Neoplasm", "mass": "Mass", "nodule": "Nodule"}
_ORGANS = ("liver", "kidney", "lung", "heart", "brain", "spleen", "pancreas", "prostate", "hippocampus")


def software_versions(model_version: str | None) -> tuple[str, ...]:
    """``("medlens X.Y.Z", "model VERSION")``: the program, then the model that ran (each value within LO's 64
    characters)."""
    from medlens import __version__

    return (f"medlens {__version__}"[:64], *((f"model {model_version}"[:64],) if model_version else ()))


def algorithm_version(model_version: str | None) -> str:
    """The model card's version (or medlens' own without one), within LO's 64 characters."""
    from medlens import __version__

    return str(model_version or __version__)[:64]


def structure_codes(name: str):
    """The (category, type) codes of a class called ``name``.

    Lesion-like names (lesion, tumor, mass, nodule...) are SCT "Morphologically Abnormal Structure" with their
    SNOMED CT type; organ names (liver, kidney, lung, heart, brain, spleen, pancreas, prostate, hippocampus) are
    SCT "Anatomical Structure" with the organ's code; anything else is SCT "Tissue" / "Tissue", the generic
    pair (the class name stays in the segment label).
    """
    from pydicom.sr.codedict import codes

    key = name.strip().lower().replace("_", " ")
    if key in _ABNORMAL:
        return codes.SCT.MorphologicallyAbnormalStructure, getattr(codes.SCT, _ABNORMAL[key])
    if key in _ORGANS:
        return codes.SCT.AnatomicalStructure, getattr(codes.SCT, key.capitalize())
    return codes.SCT.Tissue, codes.SCT.Tissue


def class_concept(name: str):
    """A coded concept for a class: its standard code when :func:`structure_codes` knows one, else a code of
    the private scheme ``99MEDLENS`` whose meaning is the class name."""
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    category, kind = structure_codes(name)
    if kind != codes.SCT.Tissue:
        return CodedConcept(kind.value, kind.scheme_designator, kind.meaning)
    value = re.sub(r"[^A-Za-z0-9_.-]", "_", name.strip())[:16] or "class"
    return CodedConcept(value, PRIVATE_SCHEME, name.strip()[:64] or "class")


def new_uid() -> str:
    from pydicom.uid import generate_uid

    return generate_uid()


def save_dataset(dataset, path: Path) -> Path:
    """Write ``dataset`` as a DICOM file with its file meta, atomically (a temporary name, then a rename)."""
    from medlens._files import write_atomic

    return write_atomic(path, lambda f: dataset.save_as(f, enforce_file_format=True))


def labels_frames(mask, n_slices: int, rows: int, columns: int, where: str) -> np.ndarray:
    """``mask`` (an ``Image`` ``(1, X, Y[, Z])``) as ``(frames, rows, columns)``: DICOM's order, frame k on slice k.

    Raises:
        MedlensError: the mask is not on the series' grid (``columns x rows x n_slices``).
    """
    array = np.asarray(mask.array)
    labels = array[0] if array.ndim == 4 else array[0][..., None]
    if labels.shape != (columns, rows, n_slices):
        raise MedlensError(f"{where}: the mask is {'x'.join(map(str, labels.shape))} voxels but the series is "
                           f"{columns}x{rows}x{n_slices} (columns x rows x slices); predict on this series folder "
                           "and write its own result")
    return np.ascontiguousarray(np.transpose(labels, (2, 1, 0)))


# Type 2 patient / study attributes highdicom copies from the source: present but empty when the source lacks them
_TYPE2_LINK = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
               "StudyDate", "StudyTime", "ReferringPhysicianName")


def linkable(source: Sequence) -> list:
    """Copies of the source datasets with the patient / study attributes a result copies present (empty where
    the source has none, as Type 2 allows); the source files are not touched."""
    import copy

    completed = []
    for dataset in source:
        dataset = copy.copy(dataset)
        for keyword in _TYPE2_LINK:
            if keyword not in dataset:
                setattr(dataset, keyword, "")
        completed.append(dataset)
    return completed


@contextlib.contextmanager
def quiet_highdicom() -> Iterator[None]:
    """highdicom's warnings quote attribute values (a patient's name among them): never let them reach a log."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
