"""``Predictor``: the one class the CLI, the library and the HTTP service predict with.

>>> predictor = Predictor.from_bundle("model.bundle")          # or Predictor.from_run("runs/pneumonia")
>>> result = predictor.predict("chest.png", heatmap=True)       # a file, a DICOM folder, an Image or an array
>>> result["label"], result["probabilities"], result["confidence"]

A model of several inputs (views encoded apart, clinical values beside the image; issue 16) takes a dict of
views and a record of clinical values; the answer also says what the prediction was made with and without:

>>> predictor.predict({"axial": "a.png", "coronal": "c.png"}, clinical={"Age": 71, "M/F": "F"})["missing"]
{'views': [], 'clinical': []}

The preprocessing, calibration, threshold and post-processing come from the bundle (or run), never
from code defaults. Classification can run the network through PyTorch, TorchScript or ONNX
Runtime (``backend``); Grad-CAM and segmentation use the PyTorch weights (safetensors in a bundle).
"""

from __future__ import annotations

import inspect
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from medlens.config import Config, read_plan
from medlens.errors import ConfigError, MedlensError
from medlens.io import Image, identity_direction, read_image

Backend = Literal["torch", "torchscript", "onnx"]
LOCAL_ZIP_BYTES = 8 << 30  # a zipped series on the user's own disk may be larger than an upload


def _is_zip(path: Path) -> bool:
    """A zipped DICOM series (a NumPy ``.npz`` is a zip too, but an image: read_image reads it)."""
    if not path.is_file() or path.name.lower().endswith(".npz"):
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


class Predictor:
    """A trained model with its own preprocessing; what a prediction returns is its task's answer.

    Attributes:
        config: the run's resolved plan.
        card: the model card (JSON-ready); for a run folder, the card a bundle of it would carry.
        task: the :class:`~medlens.tasks.Task` the model was trained for.
        logits_of: ``images (B, C, *input_size) -> logits`` through the chosen backend.
        root: the run folder or the verified (unpacked) bundle folder the model came from, where a task finds
            its other files (the classifier's OOD guard); ``None`` for a Predictor built from objects in memory.
        clinical: the run's fitted :class:`~medlens.data.clinical.ClinicalEncoder` (``clinical.json``), or
            ``None`` for a model without clinical inputs.
    """

    def __init__(self, config: Config, model: torch.nn.Module, *, calibration: dict, postprocess: dict,
                 card: dict, logits_of=None, keep_alive=None, root: Path | None = None, clinical=None):
        from medlens.tasks import task_for

        self.config, self.model, self.card = config, model.eval(), card
        self.task = task_for(config)
        self.calibration, self.postprocess = calibration, postprocess
        self.logits_of = logits_of or _torch_logits(self.model)
        self._keep_alive = keep_alive  # the temporary folder of an unzipped bundle lives as long as we do
        self.root = root
        self.clinical = clinical
        if clinical is None and (config.clinical.numeric or config.clinical.categorical):
            raise ConfigError(f"{root or 'the model'}: the plan has clinical inputs but there is no clinical.json "
                              "(the encoder fitted on the training cases); train the model again, or export the "
                              "bundle again from its run")

    @property
    def views(self) -> tuple[str, ...]:
        """The named views a case of this model has (``()``: one image per case)."""
        views = tuple(self.config.data.views)
        return views if len(views) > 1 else ()

    @property
    def fused(self) -> bool:
        """Whether a case is several inputs (named views, clinical values) rather than one image."""
        return bool(self.views) or self.clinical is not None

    @property
    def views_may_be_missing(self) -> bool:
        """Whether a case may lack a view: views encoded apart and trained with modality dropout."""
        return bool(self.views) and self.config.data.fusion == "views" and self.config.train.modality_dropout > 0

    @property
    def class_names(self) -> list[str]:
        return list(self.config.dataset.class_names)

    @classmethod
    def from_path(cls, path, *, backend: Backend = "torch") -> Predictor:
        """A bundle (folder with checksums.json, or .zip) or a run folder."""
        from medlens.deploy.bundle import is_bundle

        return cls.from_bundle(path, backend=backend) if is_bundle(path) else cls.from_run(path, backend=backend)

    @classmethod
    def from_run(cls, path, *, backend: Backend = "torch") -> Predictor:
        from medlens.deploy.bundle import sha256
        from medlens.deploy.card import model_card
        from medlens.runs import open_run
        from medlens.tasks import load_model

        if backend != "torch":
            raise ConfigError(f"backend {backend}: a run folder holds PyTorch weights only; export a bundle with "
                              f"`medlens export {path} --format both` for TorchScript / ONNX")
        from medlens.tasks.classification.inputs import read_clinical

        run = open_run(path)
        config = run.read_config()
        return cls(config, load_model(run, config), calibration=run.read_calibration(),
                   postprocess=run.read_postprocess(), card=model_card(run, config, sha256(run.weights)), root=run.root,
                   clinical=read_clinical(run.clinical))

    @classmethod
    def from_bundle(cls, path, *, backend: Backend = "torch") -> Predictor:
        """Open and verify a bundle (checksums first), then build the network from its safetensors weights."""
        from medlens.deploy.bundle import load_weights, open_bundle
        from medlens.runs import CLINICAL, NO_CALIBRATION, NO_POSTPROCESS
        from medlens.tasks import task_for
        from medlens.tasks.classification.inputs import read_clinical

        keep = tempfile.TemporaryDirectory(prefix="medlens-bundle-") if Path(path).is_file() else None
        bundle = open_bundle(path, unpack_to=Path(keep.name) if keep else None)
        config = read_plan(bundle.file("plan.yaml"))[0]
        model = load_weights(task_for(config).build_model(config), bundle)
        logits_of = _exported_logits(bundle, backend, config)
        return cls(config, model, calibration=bundle.read_json("calibration.json", dict(NO_CALIBRATION)),
                   postprocess=bundle.read_json("postprocess.json", dict(NO_POSTPROCESS)), card=bundle.card,
                   logits_of=logits_of, keep_alive=keep, root=bundle.root,
                   clinical=read_clinical(bundle.file(CLINICAL)))

    def read(self, source) -> Image:
        """An ``Image`` from a path (file, DICOM series folder, zip of a DICOM series), an ``Image``, or an
        array ``(C, *spatial)``."""
        dims = self.config.dataset.spatial_dims
        if isinstance(source, (str, Path)) and _is_zip(Path(source)):
            return self._read_zip(Path(source))
        if isinstance(source, Image):
            return source
        if isinstance(source, np.ndarray):
            array = source if source.ndim == dims + 1 else source[None]
            if array.ndim != dims + 1:
                raise ConfigError(f"an array of shape {source.shape} for a {dims}D model; give (C, *spatial) "
                                  f"or (*spatial) with {dims} spatial axes")
            return Image(array, (1.0,) * dims, (0.0,) * dims, identity_direction(dims), spacing_known=False)
        return read_image(Path(source), spatial_dims=dims)

    def _read_zip(self, path: Path) -> Image:
        """A zipped DICOM series, unpacked with the service's checks (zip-slip, bombs, size) into a temporary folder."""
        from medlens.deploy.uploads import UploadLimits, staged_upload

        with open(path, "rb") as f, staged_upload(f, UploadLimits(max_upload_bytes=LOCAL_ZIP_BYTES)) as staged:
            try:
                return read_image(staged.path, spatial_dims=self.config.dataset.spatial_dims)
            except MedlensError as exc:
                raise type(exc)(f"{path}: {staged.scrub(str(exc))}") from None

    def predict(self, source, *, clinical: dict | None = None, heatmap: bool = False, tta: bool | None = None,
                probabilities: bool = False) -> dict:
        """Predict one image, or one case of several inputs (``tta``: average over mirrored copies; default from
        the plan's ``evaluate.tta``).

        Args:
            source: a path (file, DICOM folder, zip), an ``Image`` or an array; for a model of named views a dict
                ``{view: source}`` (a view left out, or given as ``None``, is missing).
            clinical: ``{column: value}`` for a model with clinical inputs (a column left out, ``None`` or ``""``
                is missing).

        Returns:
            What the task answers, with ``task`` and ``model_version``. Classification: ``label``,
            ``probabilities {class: p}``, ``confidence``, ``explained_class``, ``heatmap_png`` (bytes, with
            ``heatmap``); for a model of several inputs also ``missing {"views": [...], "clinical": [...]}`` and
            ``inputs {"views": [...], "clinical": {column: value}}`` (what it was made with). Segmentation:
            ``mask`` (an ``Image`` on the input's grid), ``voxels {class: n}``, and ``probabilities (K, *S)``
            with ``probabilities``.

        Raises:
            ReadError / MedlensError: the input cannot be read or does not fit the model.
            ConfigError: an unknown view or clinical column, a view missing where the model cannot do without it,
                one image for a model of several views (or views for a model of one image).
            DatasetError: a clinical value that is not a number where numeric, or an unseen category.
        """
        where = str(source) if isinstance(source, (str, Path)) else "case" if isinstance(source, dict) else "image"
        if not self.fused:
            if isinstance(source, dict) or clinical:
                raise ConfigError(self._plain_refusal(source))
            image = self.read(source)
        else:
            image = self.case_inputs(source, clinical, where=where)
        return self.task.predict(self, image, heatmap=heatmap, tta=tta, probabilities=probabilities, where=where)

    def _plain_refusal(self, source) -> str:
        if isinstance(source, dict):
            return (f"this model takes one image per case, got views {', '.join(map(str, source))}; pass one file, "
                    "Image or array (medlens predict MODEL FILE)")
        return "this model takes no clinical values (its plan has no clinical section); leave clinical out"

    def case_inputs(self, source, clinical: dict | None, *, where: str = "case"):
        """The :class:`~medlens.tasks.classification.predict.CaseInputs` of one case: each view read, missing
        views checked against what the model allows, clinical values encoded.

        Raises:
            ConfigError / DatasetError: see :meth:`predict`.
        """
        from medlens.tasks.classification.predict import CaseInputs

        images = self._read_views(source) if self.views else {"image": self._read_one(source)}
        present = [name for name, image in images.items() if image is not None]
        missing = {"views": [name for name in self.views if images.get(name) is None], "clinical": []}
        used = {"views": present if self.views else [], "clinical": {}}
        encoded = None
        if clinical is not None and not isinstance(clinical, dict):
            raise ConfigError(f"clinical values must be a mapping {{column: value}}, got {type(clinical).__name__}")
        if self.clinical is not None:
            record = dict(clinical or {})
            self._check_columns(record)
            encoded = self.clinical.encode_record(record, f"{where}: clinical values")
            missing["clinical"] = self.clinical.missing(record)
            used["clinical"] = {c: record[c] for c in self.clinical.columns if c not in missing["clinical"]}
        elif clinical:
            raise ConfigError(self._plain_refusal(None))
        return CaseInputs(images, encoded, missing, used)

    def _read_one(self, source) -> Image:
        if isinstance(source, dict):
            raise ConfigError(self._plain_refusal(source))
        return self.read(source)

    def _read_views(self, source) -> dict:
        """``{view: Image or None}`` in ``data.views`` order, after checking the names and what may be missing."""
        names = self.views
        example = ", ".join(f"'{n}': FILE" for n in names)
        if not isinstance(source, dict):
            raise ConfigError(f"this model takes {len(names)} views ({', '.join(names)}), got one input; pass "
                              f"{{{example}}} (medlens predict MODEL --input {names[0]}=FILE --input ...)")
        unknown = [str(k) for k in source if k not in names]
        if unknown:
            raise ConfigError(f"unknown view {', '.join(map(repr, unknown))}; this model takes the views "
                              f"{', '.join(names)}")
        given = {name: source.get(name) for name in names}
        absent = [name for name, value in given.items() if value is None or (isinstance(value, str) and not value)]
        if len(absent) == len(names):
            raise ConfigError(f"no view given; this model takes {', '.join(names)} (pass at least one)")
        if absent and not self.views_may_be_missing:
            data = self.config.data
            why = ("its views are stacked as channels of one image (data.fusion: channels)" if data.fusion != "views"
                   else "it was trained with every view of every case (train.modality_dropout: 0)")
            raise ConfigError(f"view {', '.join(absent)} is missing, and this model cannot predict without it: {why}; "
                              f"give {' and '.join(absent)}")
        return {name: None if name in absent else self.read(value) for name, value in given.items()}

    def _check_columns(self, record: dict) -> None:
        """A clinical column the model does not take is refused (a misspelt one would silently read as missing)."""
        columns = self.clinical.columns
        unknown = [str(k) for k in record if k not in columns]
        if unknown:
            raise ConfigError(f"unknown clinical value {', '.join(map(repr, unknown))}; this model takes "
                              f"{', '.join(columns)} (names as in the training manifest)")


def _torch_logits(model: torch.nn.Module):
    """``(images, clinical=None) -> logits`` through PyTorch (clinical values for a fused network only)."""
    from medlens.models.inference import predict_logits

    return lambda images, clinical=None: predict_logits(model, images, clinical=clinical)


def _exported_logits(bundle, backend: Backend, config: Config):
    """The runner of the exported network the bundle carries, or None for PyTorch."""
    if backend == "torch":
        return None
    from medlens.tasks import task_for

    if not task_for(config).runs_exports:
        raise ConfigError(f"backend {backend}: {task_for(config).name} runs through PyTorch; use backend torch")
    from medlens.deploy.export import OnnxRunner, TorchScriptRunner

    name, runner = {"onnx": ("model.onnx", OnnxRunner), "torchscript": ("model.ts", TorchScriptRunner)}.get(
        backend, (None, None))
    if name is None:
        raise ConfigError(f"backend {backend}: choose torch, torchscript or onnx")
    if not bundle.file(name).exists():
        raise MedlensError(f"{bundle.root} holds no {name}; export it with `medlens export RUN --format both`")
    if _takes_several_inputs(config) and "clinical" not in inspect.signature(runner.__call__).parameters:
        raise ConfigError(f"backend {backend}: this model takes several inputs (views encoded apart or clinical "
                          "values), and this medlens' exported runners take images only; use backend torch")
    return runner(bundle.file(name))


def _takes_several_inputs(config: Config) -> bool:
    from medlens.tasks.classification.inputs import is_fused

    return is_fused(config)
