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
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


class Predictor:
    """A trained model with its own preprocessing.

    Attributes:
        config: the run's resolved plan.
        card: the model card (JSON-ready); for a run folder, the card a bundle of it would carry.
        task: ``binary``, ``multiclass``, ``multilabel`` or ``segmentation``.
    """

    def __init__(self, config: Config, model: torch.nn.Module, *, calibration: dict, postprocess: dict,
                 card: dict, logits_of=None, keep_alive=None):
        self.config, self.model, self.card = config, model.eval(), card
        self.calibration, self.postprocess = calibration, postprocess
        self._logits_of = logits_of or _torch_logits(self.model)
        self._keep_alive = keep_alive  # the temporary folder of an unzipped bundle lives as long as we do

    @property
    def task(self) -> str:
        return self.config.dataset.task

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
        from medlens.deploy.card import model_card
        from medlens.deploy.bundle import sha256
        from medlens.engine.evaluate import load_model
        from medlens.engine.runs import open_run

        if backend != "torch":
            raise ConfigError(f"backend {backend}: a run folder holds PyTorch weights only; export a bundle with "
                              f"`medlens export {path} --format both` for TorchScript / ONNX")
        run = open_run(path)
        config = run.read_config()
        return cls(config, load_model(run, config), calibration=run.read_calibration(),
                   postprocess=run.read_postprocess(), card=model_card(run, config, sha256(run.weights)))

    @classmethod
    def from_bundle(cls, path, *, backend: Backend = "torch") -> Predictor:
        """Open and verify a bundle (checksums first), then build the network from its safetensors weights."""
        from medlens.deploy.bundle import load_weights, open_bundle
        from medlens.engine.lightning import build_model
        from medlens.engine.runs import NO_CALIBRATION, NO_POSTPROCESS

        keep = tempfile.TemporaryDirectory(prefix="medlens-bundle-") if Path(path).is_file() else None
        bundle = open_bundle(path, unpack_to=Path(keep.name) if keep else None)
        config = read_plan(bundle.file("plan.yaml"))[0]
        model = load_weights(build_model(config), bundle)
        logits_of = _exported_logits(bundle, backend, config)
        return cls(config, model, calibration=bundle.read_json("calibration.json", dict(NO_CALIBRATION)),
                   postprocess=bundle.read_json("postprocess.json", dict(NO_POSTPROCESS)), card=bundle.card,
                   logits_of=logits_of, keep_alive=keep)

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
        """Predict one image (``tta``: flips / mirroring; default from the plan).

        Returns:
            classification: ``task, label, probabilities {class: p}, confidence, model_version,
            explained_class, heatmap_png`` (bytes or None). segmentation: ``task, mask`` (an ``Image`` on
            the input's grid), ``voxels {class: n}``, ``model_version`` (and ``probabilities`` ``(K, *S)`` if asked).

        Raises:
            ReadError / MedlensError: the input cannot be read or does not fit the model.
        """
        image = self.read(source)
        where = str(source) if isinstance(source, (str, Path)) else "image"
        if self.task == "segmentation":
            mirror = self.config.segment.mirror_tta if tta is None else tta
            return self._segment(image, mirror, probabilities, where)
        return self._classify(image, heatmap, self.config.evaluate.tta if tta is None else tta, where)

    def _classify(self, image: Image, heatmap: bool, tta: bool, where: str) -> dict:
        from medlens.engine.predict import classify_image

        result = classify_image(self._logits_of, image, self.config, self.calibration, tta=tta, where=where)
        names = self.class_names
        chosen = [n for n in result.predicted.split(";") if n] or [names[result.target]]
        return {"task": self.task, "label": result.predicted,
                "probabilities": {n: round(float(p), 6) for n, p in zip(names, result.probs)},
                "confidence": round(float(min(result.probs[names.index(n)] for n in chosen)), 6),
                "model_version": self.card.get("model_version"),
                "explained_class": names[result.target] if heatmap else None,
                "heatmap_png": self._heatmap(image, result.array, result.target) if heatmap else None}

    def _heatmap(self, image: Image, array: np.ndarray, target: int) -> bytes:
        from medlens.engine.explain import map_on_grid, overlay_png
        from medlens.explain import compute_cams

        cam = compute_cams(self.model, array[None], class_indices=[target])[0]
        return overlay_png(image, map_on_grid(image, cam))

    def _segment(self, image: Image, mirror: bool, probabilities: bool, where: str) -> dict:
        from medlens.engine.segment import segment_image
        from medlens.engine.segment_io import class_labels

        result = segment_image(self.model, image, self.config, self.postprocess, mirror=mirror,
                               keep_probs=probabilities, where=where)
        out = {"task": "segmentation", "mask": result.as_image(), "model_version": self.card.get("model_version"),
               "voxels": {n: int((result.labels == v).sum()) for v, n in class_labels(self.config).items()}}
        if probabilities:
            out["probabilities"] = result.probs
        return out


def _torch_logits(model: torch.nn.Module):
    from medlens.engine.inference import predict_logits

    return lambda images: predict_logits(model, images)


def _exported_logits(bundle, backend: Backend, config: Config):
    """The runner of the exported network the bundle carries, or None for PyTorch."""
    if backend == "torch":
        return None
    if config.dataset.task == "segmentation":
        raise ConfigError(f"backend {backend}: segmentation runs through PyTorch (sliding windows); use backend torch")
    from medlens.deploy.export import OnnxRunner, TorchScriptRunner

    name, runner = {"onnx": ("model.onnx", OnnxRunner), "torchscript": ("model.ts", TorchScriptRunner)}.get(
        backend, (None, None))
    if name is None:
        raise ConfigError(f"backend {backend}: choose torch, torchscript or onnx")
    if not bundle.file(name).exists():
        raise MedlensError(f"{bundle.root} holds no {name}; export it with `medlens export RUN --format both`")
    return runner(bundle.file(name))
