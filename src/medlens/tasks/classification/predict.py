"""Classifying one image, the way every prediction path does it (CLI, ``Predictor``, service, explain).

Nothing comes from code defaults: input size, channels, normalisation, temperature and threshold
are read from the run (or bundle). :class:`medlens.deploy.Predictor` puts them together.

A case of several inputs (issue 16) is one :class:`CaseInputs`: its named views, each read as an ``Image``
(``None`` for a view the case lacks), and its clinical values encoded with the run's
:class:`~medlens.data.clinical.ClinicalEncoder`. :func:`case_array` prepares the views as training did.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medlens._files import write_text_atomic
from medlens.config import Config
from medlens.errors import ConfigError
from medlens.models.inference import to_probs


@dataclass
class CaseInputs:
    """What one prediction of a fused model is made from.

    Attributes:
        images: ``{view: Image or None}`` in ``data.views`` order (``None``: the case lacks the view), or
            ``{"image": Image}`` for a model of one image.
        clinical: ``(F,)`` float32 encoded clinical values, or ``None`` for a model without clinical inputs.
        missing: ``{"views": [...], "clinical": [...]}``, the inputs the prediction was made without.
        used: ``{"views": [...], "clinical": {column: value}}``, the inputs it was made with.
    """

    images: dict
    clinical: np.ndarray | None = None
    missing: dict = field(default_factory=lambda: {"views": [], "clinical": []})
    used: dict = field(default_factory=lambda: {"views": [], "clinical": {}})

    @property
    def first_image(self):
        """The first view the case has (what a heat map is drawn over)."""
        return next(image for image in self.images.values() if image is not None)


@dataclass(frozen=True)
class CaseSource:
    """One case to predict from files (``medlens predict`` with ``--input`` / ``--clinical``, or a CSV row).

    Attributes:
        source: a path (one image) or ``{view: path}``; ``None`` for a study.
        clinical: ``{column: value}`` (text or numbers; ``""`` / ``None``: missing).
        name: how the case is named in printed lines and in ``--out`` (its ``path`` column).
        study: a DICOM study folder, its views the series the model's ``dataset.series_rules`` pick
            (:meth:`views`), resolved when the case is predicted, so that one study's error is that case's.
    """

    source: object
    clinical: dict
    name: str
    study: str | None = None

    def views(self, config: Config):
        """``source``, or the study's ``{view: series folder}`` by the plan's series rules.

        Raises:
            ConfigError: a study for a model trained without series rules.
            DatasetError: a rule that matches no series of the study, or several.
        """
        if self.study is None:
            return self.source
        if not config.dataset.series_rules:
            raise ConfigError(f"{self.name}: a study folder ({self.study}), but this model was trained without "
                              "series rules (--series-rule NAME=REGEX), so it cannot tell which series to read; "
                              "give the images themselves")
        from medlens.data.series import pick_series

        return {name: str(folder) for name, folder in pick_series(self.study, config.dataset.series_rules).items()}


def case_array(inputs: CaseInputs, config: Config, where: str) -> np.ndarray:
    """The network input of a case, preprocessed as training did.

    ``data.fusion == "views"``: each view through :class:`~medlens.transforms.Preprocessor` on its own, all-NaN
    channels for a view the case lacks, in ``data.views`` order; ``"channels"``: the views resampled onto the
    first one's grid and stacked (:func:`~medlens.data.views.stack_views`), then preprocessed; one image: as is.

    Returns:
        float32 ``(V * C, *input_size)`` or ``(C, *input_size)``.
    """
    from medlens.data.views import stack_views
    from medlens.transforms import Preprocessor

    data, prepare = config.data, Preprocessor(config.data)
    if data.fusion == "views" and len(data.views) > 1:
        c = data.channels
        out = np.full((len(data.views) * c, *data.input_size), np.nan, dtype=np.float32)
        for v, name in enumerate(data.views):
            image = inputs.images.get(name)
            if image is not None:
                out[v * c:(v + 1) * c] = prepare(image, where=f"{where}, view {name}")
        return out
    images = list(inputs.images.values())
    if len(images) > 1:
        if any(image is None for image in images):
            raise ConfigError(f"{where}: data.fusion is channels, so every view is needed")  # refused earlier
        return prepare(stack_views(images, list(inputs.images), where=where), where=where)
    return prepare(images[0], where=where)


@dataclass
class Classified:
    """One image through a classifier: ``array (C, *input_size)`` as the network saw it, calibrated
    ``probs (K,)``, the decision (class name, or names joined by ``;``) and the class a map should explain."""

    array: np.ndarray
    probs: np.ndarray
    predicted: str
    target: int


def classify_image(logits_of, image, config: Config, calibration: dict, *, tta: bool = False,
                   where: str = "image") -> Classified:
    """Preprocess ``image`` as the run was trained, score it, calibrate, decide.

    Args:
        logits_of: ``images (B, C, *input_size) -> logits (B, K)`` (PyTorch, TorchScript or ONNX Runtime); for a
            :class:`CaseInputs` with clinical values, ``(images, clinical (B, F)) -> logits``.
        image: an ``Image``, or the :class:`CaseInputs` of a fused model.
        tta: average the logits over the mirrored copies along ``augment.flip_axes``.
    """
    import torch

    from medlens.transforms import Preprocessor, flip_variants

    names, task = list(config.dataset.class_names), config.dataset.task
    fused = isinstance(image, CaseInputs)
    array = case_array(image, config, where) if fused else Preprocessor(config.data)(image, where=where)
    more = (image.clinical[None],) if fused and image.clinical is not None else ()
    variants = flip_variants(torch.from_numpy(array[None]), tuple(config.augment.flip_axes) if tta else ())
    logits = np.mean([logits_of(v.numpy(), *more) for v in variants], axis=0)
    probs = to_probs(logits, multilabel=task == "multilabel", temperature=calibration["temperature"])[0]
    predicted = decide(probs, task, names, calibration["threshold"])
    target = int(np.argmax(probs)) if task == "multilabel" or not predicted else names.index(predicted)
    return Classified(array, probs, predicted, target)


def decide(probs: np.ndarray, task: str, names: list[str], threshold: float) -> str:
    """The predicted class: binary at the run's threshold, multi-class argmax, multi-label every label >= 0.5."""
    if task == "binary":
        return names[int(probs[1] >= threshold)]
    if task == "multilabel":
        return ";".join(n for n, p in zip(names, probs) if p >= 0.5)
    return names[int(np.argmax(probs))]


def write_predictions(rows: list[dict], out: Path, names: list[str], *, fused: bool = False) -> Path:
    """CSV (``path, predicted, p_<class>..., ood_score, in_distribution, error``; the last two empty without a
    guard) or JSON when ``out`` ends in ``.json``. ``fused``: a model of several inputs; the CSV gains
    ``missing_views`` and ``missing_clinical`` (names joined by ``;``) before ``error``."""
    if out.suffix.lower() == ".json":
        return write_text_atomic(out, json.dumps(rows, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    extra = ["missing_views", "missing_clinical"] if fused else []
    writer.writerow(["path", "predicted", *[f"p_{n}" for n in names], "ood_score", "in_distribution", *extra,
                     "error"])
    for row in rows:
        probs = row.get("probabilities", {})
        ood = [_cell(row.get(key)) for key in ("ood_score", "in_distribution")]
        missing = [";".join(row.get("missing", {}).get(k, [])) for k in ("views", "clinical")] if fused else []
        writer.writerow([row["path"], row.get("predicted", ""), *[probs.get(n, "") for n in names], *ood, *missing,
                         row.get("error", "")])
    return write_text_atomic(out, buffer.getvalue())


def _cell(value) -> str:
    """A CSV cell: empty for ``None`` (no guard, or the input failed), ``true`` / ``false`` for booleans."""
    if value is None:
        return ""
    return str(value).lower() if isinstance(value, bool) else str(value)
