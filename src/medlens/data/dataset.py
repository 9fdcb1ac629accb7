"""The :class:`Dataset` every source yields, and how its cases are loaded."""

from __future__ import annotations

import contextlib
import contextvars
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medlens.errors import DatasetError, MedlensError
from medlens.io import Image, read_image
from medlens.types import Case, Split, Task


@dataclass
class Finding:
    """Something the audit or a source noticed.

    ``blocks_training`` marks what training cannot go past (unreadable files, a class without examples,
    masks off their images); other errors (leakage, label conflicts) are reported loudly but leave the
    decision to the user.
    """

    severity: str  # "error" | "warning" | "info"
    code: str  # e.g. "leakage.patient", "label.missing"
    message: str
    cases: list[str] = field(default_factory=list)
    blocks_training: bool = False

    @classmethod
    def blocking(cls, code: str, message: str, cases: list[str] | None = None) -> Finding:
        """An error training cannot go past."""
        return cls("error", code, message, list(cases or []), blocks_training=True)

    def as_dict(self) -> dict:
        return {"severity": self.severity, "code": self.code, "message": self.message, "cases": self.cases,
                "blocks_training": self.blocks_training}


@dataclass
class Dataset:
    """A list of cases plus what is known about the task.

    Attributes:
        root: the folder, CSV or archive the user pointed at.
        layout: which source built it (``class_folders``, ``manifest``, ``medmnist``,
            ``segmentation_pairs``, ``decathlon``; for detection ``voc``, ``coco``, ``box_manifest``, ``box_json``;
            without labels ``image_folder``, ``image_manifest``).
        task: binary / multi-class / multi-label / ordinal / segmentation / detection / pretraining (no labels).
        class_names: class (or label, or segmentation label) names, index = class id.
        cases: the cases, in a stable order.
        spatial_dims: 2 or 3 when known from the layout, else ``None`` (the audit finds out).
        meta: layout details (MedMNIST name and size, modality, official split sizes...).
        findings: problems noticed while listing cases (missing files, missing labels).
    """

    root: Path
    layout: str
    task: Task
    class_names: tuple[str, ...]
    cases: list[Case]
    spatial_dims: int | None = None
    meta: dict = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    loader: Callable[[Case], Image] | None = field(default=None, repr=False)
    mask_loader: Callable[[Case], Image] | None = field(default=None, repr=False)  # reads case.mask when set

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def load_image(self, case: Case) -> Image:
        """Read a case's image; several image paths are stacked as channels."""
        if self.loader is not None:
            return self.loader(case)
        return read_case_image(case, self.spatial_dims)

    def load_mask(self, case: Case) -> Image | None:
        if case.mask is None:
            return None
        if self.mask_loader is not None:
            return self.mask_loader(case)
        from medlens.data.label_maps import as_label_map

        return as_label_map(read_image(case.mask))  # a wrong dimensionality is a geometry finding, not unreadable

    def load_boxes(self, case: Case, image: Image) -> tuple[np.ndarray, np.ndarray]:
        """A case's boxes in voxel corners on ``image``, clipped to it, degenerate ones dropped.

        From ``case.boxes``, or one box per connected component of each mask label when the dataset was
        opened with ``boxes_from_masks`` (see :mod:`medlens.data.boxes`).

        Returns:
            ``(N, 2D)`` float32 corners ``(x_min, y_min[, z_min], x_max, y_max[, z_max])`` and ``(N,)`` int64
            class indices; ``N = 0`` for a negative case.
        """
        from medlens.data.boxes import annotated_boxes, usable_boxes

        corners, labels = annotated_boxes(self, case, image)
        return usable_boxes(corners, labels, image.spatial_shape)

    def by_split(self) -> dict[str, list[Case]]:
        groups: dict[str, list[Case]] = {}
        for case in self.cases:
            groups.setdefault(case.split.value if case.split else "unassigned", []).append(case)
        return groups

    def raise_on_errors(self) -> None:
        """Refuse a dataset whose listing found errors (training needs a clean list)."""
        errors = [f for f in self.findings if f.severity == "error"]
        if errors:
            raise DatasetError("\n".join(f.message for f in errors))


def read_case_image(case: Case, spatial_dims: int | None = None) -> Image:
    """Read one case's image(s); channel images (named views) on other grids are resampled onto the first's.

    Raises:
        DatasetError: channel images that cannot be put on one grid (they do not overlap, or their format
            stores no geometry); see :func:`medlens.data.views.stack_views`.
    """
    from medlens.data.views import stack_views

    images = [read_image(p, spatial_dims=spatial_dims) for p in case.images]
    if len(images) == 1:
        return images[0]
    names = list(case.views) if len(case.views) == len(images) else [str(p) for p in case.images]
    return stack_views(images, names, where=f"case {case.case_id}")


def describe_read_failure(path, exc: BaseException) -> str:
    """Why the file at ``path`` could not be read, in words for the card and the terminal; names ``path``.

    A medlens error already says what went wrong and how to fix it (only a budget refusal lacks the
    file, so it is prefixed). Any other exception (a decoder's ``struct.error``, ``MemoryError``,
    ``RecursionError``...) is given with its type, and quoted text in its message is elided: third-party
    messages may quote header values, such as a name in a field that failed to parse.
    """
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - an exception whose message itself fails is still a finding
        text = ""
    if isinstance(exc, MedlensError):
        return text if str(path) in text else f"{path}: {text}"
    message = _QUOTED.sub("'...'", text)
    if len(message) > MAX_REASON_CHARS:
        message = message[:MAX_REASON_CHARS] + "..."
    advice = ("not enough memory to read it: downsample it, or use a machine with more memory"
              if isinstance(exc, MemoryError) else
              "the file is corrupt or not what its name says: export it again, or remove it")
    return f"{path}: {type(exc).__name__}" + (f": {message}" if message else "") + f"; {advice}"


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
MAX_REASON_CHARS = 200  # of a third-party exception's message


_OUTSIDE_ROOT_ALLOWED: contextvars.ContextVar[bool] = contextvars.ContextVar("medlens_outside_root", default=False)


@contextlib.contextmanager
def outside_root_allowed(allowed: bool = True) -> Iterator[None]:
    """Within the block, datasets opened without an explicit ``allow_outside_root`` follow ``allowed``.

    For callers that open a dataset several layers down (``medlens plan`` / ``train`` through the
    engine): the CLI's ``--allow-outside-root`` is put in force around the whole command.
    """
    token = _OUTSIDE_ROOT_ALLOWED.set(bool(allowed))
    try:
        yield
    finally:
        _OUTSIDE_ROOT_ALLOWED.reset(token)


def allow_outside_root_in_force(explicit: bool | None = None) -> bool:
    """``explicit`` when given, else what :func:`outside_root_allowed` put in force (default: refused)."""
    return _OUTSIDE_ROOT_ALLOWED.get() if explicit is None else bool(explicit)


_BOXES_FROM_MASKS: contextvars.ContextVar[bool] = contextvars.ContextVar("medlens_boxes_from_masks", default=False)


@contextlib.contextmanager
def boxes_from_masks_requested(requested: bool = True) -> Iterator[None]:
    """Within the block, datasets opened without an explicit ``boxes_from_masks`` follow ``requested``
    (the CLI's ``--boxes-from-masks``, put in force around ``medlens plan`` / ``train``)."""
    token = _BOXES_FROM_MASKS.set(bool(requested))
    try:
        yield
    finally:
        _BOXES_FROM_MASKS.reset(token)


def boxes_from_masks_in_force(explicit: bool | None = None) -> bool:
    """``explicit`` when given, else what :func:`boxes_from_masks_requested` put in force (default: no)."""
    return _BOXES_FROM_MASKS.get() if explicit is None else bool(explicit)


_SKIP_UNREADABLE: contextvars.ContextVar[bool] = contextvars.ContextVar("medlens_skip_unreadable", default=False)


@contextlib.contextmanager
def unreadable_skipped(skip: bool = True) -> Iterator[None]:
    """Within the block, an audit run without an explicit ``skip_unreadable`` follows ``skip``: files no reader
    opens are left out of training (listed in the card's ``skipped``) instead of refusing the data (the CLI's
    ``--skip-unreadable`` or the plan's ``dataset.skip_unreadable``, put in force around ``plan`` / ``train``)."""
    token = _SKIP_UNREADABLE.set(bool(skip))
    try:
        yield
    finally:
        _SKIP_UNREADABLE.reset(token)


def skip_unreadable_in_force(explicit: bool | None = None) -> bool:
    """``explicit`` when given, else what :func:`unreadable_skipped` put in force (default: refuse them)."""
    return _SKIP_UNREADABLE.get() if explicit is None else bool(explicit)


_SERIES_RULES: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("medlens_series_rules", default=())


@contextlib.contextmanager
def series_rules_given(rules) -> Iterator[None]:
    """Within the block, datasets opened without explicit ``series_rules`` use ``rules`` (``"NAME=REGEX"`` texts:
    the CLI's ``--series-rule``, put in force around ``inspect`` / ``plan`` / ``train``) to pick the series of
    each DICOM study a CSV's ``study`` column names (:mod:`medlens.data.series`)."""
    token = _SERIES_RULES.set(tuple(rules or ()))
    try:
        yield
    finally:
        _SERIES_RULES.reset(token)


def series_rules_in_force(explicit=None) -> tuple[str, ...]:
    """``explicit`` when given, else what :func:`series_rules_given` put in force (default: none)."""
    return _SERIES_RULES.get() if explicit is None else tuple(explicit)


_UNLABELLED_ALLOWED: contextvars.ContextVar[bool] = contextvars.ContextVar("medlens_unlabelled", default=False)

#: layouts of images without labels (a flat folder of images, a CSV with an image column only)
UNLABELLED_LAYOUTS = ("image_folder", "image_manifest")


@contextlib.contextmanager
def unlabelled_allowed(allowed: bool = True) -> Iterator[None]:
    """Within the block, datasets opened without an explicit ``unlabelled`` follow ``allowed``: a folder of
    images without class folders, or a CSV without a label column, opens as images without labels
    (``medlens pretrain`` puts this in force; elsewhere they are refused, since a label is then missing)."""
    token = _UNLABELLED_ALLOWED.set(bool(allowed))
    try:
        yield
    finally:
        _UNLABELLED_ALLOWED.reset(token)


def unlabelled_in_force(explicit: bool | None = None) -> bool:
    """``explicit`` when given, else what :func:`unlabelled_allowed` put in force (default: refused)."""
    return _UNLABELLED_ALLOWED.get() if explicit is None else bool(explicit)


_ONE_CLASS_ALLOWED: contextvars.ContextVar[bool] = contextvars.ContextVar("medlens_one_class", default=False)


@contextlib.contextmanager
def one_class_allowed(allowed: bool = True) -> Iterator[None]:
    """Within the block, datasets opened without an explicit ``one_class`` follow ``allowed``: class folders
    or a label column holding a single class open as a one-class dataset (``--normal`` puts this in force: an
    anomaly model learns from normal images alone; elsewhere one class is refused, ``class.single``)."""
    token = _ONE_CLASS_ALLOWED.set(bool(allowed))
    try:
        yield
    finally:
        _ONE_CLASS_ALLOWED.reset(token)


def one_class_in_force(explicit: bool | None = None) -> bool:
    """``explicit`` when given, else what :func:`one_class_allowed` put in force (default: refused)."""
    return _ONE_CLASS_ALLOWED.get() if explicit is None else bool(explicit)


def single_class_finding(source, class_name: str, what: str) -> Finding:
    """``class.single``: a classifier needs two classes; one class of images is what anomaly detection learns."""
    return Finding.blocking("class.single", f"{source}: one class only ({class_name!r}, in {what}); "
                            "classification needs at least two. To learn what normal looks like from these images "
                            f"alone and flag what departs from it, train with --task anomaly --normal {class_name}")


def lies_outside(path: Path, root: Path) -> bool:
    """Whether ``path`` leaves ``root`` once ``..`` and symbolic links are resolved.

    ``root/sub/../x.png`` stays inside; ``root/../x.png``, an absolute path elsewhere and a link
    inside ``root`` pointing elsewhere do not. A path that cannot be resolved (a link loop, a NUL
    byte) counts as inside: it is then simply missing.
    """
    try:
        resolved, resolved_root = Path(path).resolve(), Path(root).resolve()
    except (OSError, ValueError, RuntimeError):  # a NUL byte; RuntimeError: a link loop (Python < 3.13)
        return False
    return not resolved.is_relative_to(resolved_root)


def escaping_link(path: Path, root: Path) -> tuple[Path, Path] | None:
    """The first symbolic link on ``path``'s way down from ``root`` that points outside it, and its target.

    ``root/axial -> /data/oasis/axial`` makes ``root/axial/a.jpg`` lie outside ``root`` although it is written
    inside; this names the link, so a message can say why. ``None`` when no link under ``root`` leads out.
    """
    try:
        resolved_root = Path(root).resolve()
        parts = Path(path).relative_to(root).parts
    except (OSError, ValueError, RuntimeError):
        return None
    here = Path(root)
    for part in parts:
        here = here / part
        try:
            if here.is_symlink():
                target = here.resolve()
                return None if target.is_relative_to(resolved_root) else (here, target)
        except (OSError, RuntimeError):
            return None
    return None


# what spreadsheets and data tools write for an empty cell: pandas' default ``na_values`` (case as written;
# lowercase ``none`` stays a class name, e.g. "no finding"), and what people type for "not known": a dash, a
# question mark (UCI's files), a lone point (SAS and Stata)
MISSING_VALUE_MARKERS = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
                                   "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
                                   "-", "--", "?", "."})
FORMULA_PREFIXES = ("=", "+", "-", "@")  # a cell starting with one of these runs as a formula in a spreadsheet
_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def class_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a class name, or ``None`` when it can.

    Refused: empty names, missing-value markers (:data:`MISSING_VALUE_MARKERS`, e.g. ``nan``, ``None``,
    ``NA``: a label lost on the way, not a class) and names a spreadsheet would run as a formula
    (starting with ``=``, ``+``, ``-`` or ``@``, e.g. ``=HYPERLINK(...)``): class names end up in
    prediction CSVs and reports. A negative number (``-1``, ``-0.5``) is a legitimate ordinal or
    "uncertain" label (CheXpert's ``-1``) and is kept.
    """
    if name in MISSING_VALUE_MARKERS:
        return "is empty" if not name else f"{name!r} is a missing-value marker, not a class"
    if name.startswith(FORMULA_PREFIXES) and not _NUMBER.fullmatch(name):
        return (f"{_shorten(name)!r} starts with {name[0]!r}, which a spreadsheet runs as a formula; write the class "
                "name itself (a negative number such as -1 is fine)")
    return None


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


NEGATIVE_NAMES = {"normal", "negative", "benign", "healthy", "control", "no", "absent", "false", "0", "neg", "none"}


def order_class_names(names: list[str]) -> list[str]:
    """Sorted class names; for two classes, a 'normal'/'negative'/'benign'-like name comes first.

    In a binary task class 1 is the positive (the finding), which is what sensitivity, AUC and
    the decision threshold refer to.
    """
    ordered = sorted(names, key=lambda n: (_number(n), n))  # numeric names (grades 0, 0.5, 1, 2) by value
    if len(ordered) == 2 and ordered[1].strip().lower() in NEGATIVE_NAMES:
        ordered.reverse()
    return ordered


def _number(name: str) -> float:
    """The value of a numeric class name (``"2"``, ``"0.5"``, ``"-1"``); infinity (sorts last) for any other."""
    try:
        value = float(name)
    except ValueError:
        return float("inf")
    return value if math.isfinite(value) else float("inf")


def parse_split(value: str | None, where: str) -> Split | None:
    """Map common split spellings (train/training/val/valid/validation/test/testing) to a Split."""
    if value is None or str(value).strip() == "":
        return None
    key = str(value).strip().lower()
    aliases = {"train": Split.TRAIN, "training": Split.TRAIN, "tr": Split.TRAIN,
               "val": Split.VAL, "valid": Split.VAL, "validation": Split.VAL, "dev": Split.VAL,
               "test": Split.TEST, "testing": Split.TEST, "ts": Split.TEST, "holdout": Split.TEST}
    if key not in aliases:
        raise DatasetError(f"{where}: unknown split {value!r}; use train, val or test")
    return aliases[key]
