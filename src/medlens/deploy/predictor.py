"""``Predictor``: the one class the CLI, the library and the HTTP service predict with.

>>> predictor = Predictor.from_bundle("model.bundle")          # or Predictor.from_run("runs/pneumonia")
>>> result = predictor.predict("chest.png", heatmap=True)       # a file, a DICOM folder, an Image or an array
>>> result["label"], result["probabilities"], result["confidence"]

The preprocessing, calibration, threshold and post-processing come from the bundle (or run), never
from code defaults. Classification can run the network through PyTorch, TorchScript or ONNX
Runtime (``backend``); Grad-CAM and segmentation use the PyTorch weights (safetensors in a bundle).
"""

from __future__ import annotations

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
    """

    def __init__(self, config: Config, model: torch.nn.Module, *, calibration: dict, postprocess: dict,
                 card: dict, logits_of=None, keep_alive=None, root: Path | None = None):
        from medlens.tasks import task_for

        self.config, self.model, self.card = config, model.eval(), card
        self.task = task_for(config)
        self.calibration, self.postprocess = calibration, postprocess
        self.logits_of = logits_of or _torch_logits(self.model)
        self._keep_alive = keep_alive  # the temporary folder of an unzipped bundle lives as long as we do
        self.root = root

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
        run = open_run(path)
        config = run.read_config()
        return cls(config, load_model(run, config), calibration=run.read_calibration(),
                   postprocess=run.read_postprocess(), card=model_card(run, config, sha256(run.weights)), root=run.root)

    @classmethod
    def from_bundle(cls, path, *, backend: Backend = "torch") -> Predictor:
        """Open and verify a bundle (checksums first), then build the network from its safetensors weights."""
        from medlens.deploy.bundle import load_weights, open_bundle
        from medlens.runs import NO_CALIBRATION, NO_POSTPROCESS
        from medlens.tasks import task_for

        keep = tempfile.TemporaryDirectory(prefix="medlens-bundle-") if Path(path).is_file() else None
        bundle = open_bundle(path, unpack_to=Path(keep.name) if keep else None)
        config = read_plan(bundle.file("plan.yaml"))[0]
        model = load_weights(task_for(config).build_model(config), bundle)
        logits_of = _exported_logits(bundle, backend, config)
        return cls(config, model, calibration=bundle.read_json("calibration.json", dict(NO_CALIBRATION)),
                   postprocess=bundle.read_json("postprocess.json", dict(NO_POSTPROCESS)), card=bundle.card,
                   logits_of=logits_of, keep_alive=keep, root=bundle.root)

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

    def predict(self, source, *, heatmap: bool = False, tta: bool | None = None, probabilities: bool = False) -> dict:
        """Predict one image (``tta``: average over mirrored copies; default from the plan's ``evaluate.tta``).

        Returns:
            What the task answers, with ``task`` and ``model_version``. Classification: ``label``,
            ``probabilities {class: p}``, ``confidence``, ``explained_class``, ``heatmap_png`` (bytes, with
            ``heatmap``). Segmentation: ``mask`` (an ``Image`` on the input's grid), ``voxels {class: n}``, and
            ``probabilities (K, *S)`` with ``probabilities``.

        Raises:
            ReadError / MedlensError: the input cannot be read or does not fit the model.
        """
        image = self.read(source)
        where = str(source) if isinstance(source, (str, Path)) else "image"
        return self.task.predict(self, image, heatmap=heatmap, tta=tta, probabilities=probabilities, where=where)


def _torch_logits(model: torch.nn.Module):
    from medlens.models.inference import predict_logits

    return lambda images: predict_logits(model, images)


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
    return runner(bundle.file(name))
