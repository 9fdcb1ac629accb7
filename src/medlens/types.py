"""Shared vocabulary: the task kinds and the :class:`Case` record every data source yields.

Shape notation used across medlens docstrings:
``C`` channels, ``X, Y[, Z]`` spatial axes in ITK index order (column, row[, slice]),
so an image array is ``(C, X, Y)`` in 2D and ``(C, X, Y, Z)`` in 3D, the order MONAI uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path


class Task(str, Enum):
    """What a dataset's labels are, as the data layer detects it (the plan's ``dataset.task``).

    The task that trains each kind is looked up in :mod:`medlens.tasks.registry`; code below the tasks
    asks a kind how its cases are labelled (:attr:`label_form`), never which kind it is.
    """

    BINARY = "binary"
    MULTICLASS = "multiclass"
    MULTILABEL = "multilabel"
    ORDINAL = "ordinal"  # ordered grades: a K-class softmax trained with an ordinal loss; kappa and grade error
    SEGMENTATION = "segmentation"
    DETECTION = "detection"
    PRETRAINING = "pretraining"  # images without labels: what they train is an encoder (self-supervised)

    @property
    def label_form(self) -> str:
        """``"class"`` (one class index per case), ``"flags"`` (a 0/1 flag per class), ``"mask"`` (a label map),
        ``"boxes"`` (labelled boxes, none for a negative case) or ``"none"`` (images without labels)."""
        return _LABEL_FORMS.get(self.value, "class")


_LABEL_FORMS = {"multilabel": "flags", "segmentation": "mask", "detection": "boxes", "pretraining": "none"}


class Split(str, Enum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


@dataclass(frozen=True)
class Boxes:
    """One case's boxes as annotated, before they meet the image's geometry.

    Attributes:
        values: ``(N, 2 * D)`` numbers per box: ``corners`` = ``(min_x, min_y[, min_z], max_x, max_y[, max_z])``,
            ``center_size`` = ``(centre_x, centre_y[, centre_z], size_x, size_y[, size_z])``.
        labels: ``(N,)`` class index of each box.
        form: ``"corners"`` or ``"center_size"``.
        unit: ``"voxel"``: continuous voxel coordinates along the array's axes, voxel ``i`` spanning
            ``[i, i + 1)``; ``"mm"``: world (patient) millimetres, placed on the grid by the image's
            origin, spacing and direction.
    """

    values: tuple[tuple[float, ...], ...]
    labels: tuple[int, ...]
    form: str = "corners"
    unit: str = "voxel"

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Case:
    """One study: an image (or a channel stack of images) plus its label or mask.

    Attributes:
        case_id: unique, stable identifier within the dataset (a relative path, or
            ``split/index`` for array archives); split files refer to cases by it.
        images: path(s) of the image; several paths are stacked as channels (multi-modal MRI).
        label: class index (binary / multi-class), or a tuple of 0/1 per class (multi-label);
            ``None`` for segmentation or unlabelled cases.
        mask: path of the label map for segmentation (or the mask boxes are derived from).
        boxes: the labelled boxes for detection (empty for a negative image); ``None`` when the case has
            none declared (not a detection case, or boxes derived from ``mask``).
        patient_id: cases of one patient always share a split; ``None`` when unknown.
        split: a split fixed by the dataset itself (official MedMNIST splits, ``train/``
            folders, a CSV ``split`` column); ``None`` when medlens is free to choose.
        index: position inside an array archive (MedMNIST ``.npz``), else ``None``.
        views: the name of each of ``images`` when a case has several named inputs (manifest ``image:NAME``
            columns, DICOM series rules), aligned with ``images``; a view the case lacks is simply absent.
            Empty for one image (or unnamed channel files).
        clinical: raw text of the case's clinical columns, ``{column: cell}`` (``""`` = missing); encoded with
            training statistics by :mod:`medlens.data.clinical`.
    """

    case_id: str
    images: tuple[Path, ...]
    label: int | tuple[int, ...] | None = None
    mask: Path | None = None
    boxes: Boxes | None = None
    patient_id: str | None = None
    split: Split | None = None
    index: int | None = None
    views: tuple[str, ...] = ()
    clinical: dict = field(default_factory=dict, compare=False, hash=False)
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def image(self) -> Path:
        """The first (often only) image path."""
        return self.images[0]
