"""Exported networks: TorchScript and single-file ONNX, and one runner interface over them and PyTorch.

>>> export_torchscript(model.eval(), torch.zeros(1, 1, 28, 28), "model.ts")
>>> export_onnx(model.eval(), torch.zeros(1, 1, 28, 28), "model.onnx")
>>> load_runner("onnx", "model.onnx")(images)      # images (B, 1, 28, 28) float32 -> logits (B, K)

Both exports keep the batch axis free and fix the rest of the shape to the example's
``(C, *spatial)``: a classifier's input size, a segmenter's patch (sliding windows supply patches).
Before a file is written, the exported network is run on a random batch of two and compared with
the PyTorch model, so a trace that baked in a batch size or a Python branch is refused instead of
shipped. Every runner maps ``images (B, C, *spatial) float32`` to ``logits (B, K)`` (classifiers) or
``(B, K, *spatial)`` (segmenters) as NumPy ``float32``, on the CPU unless told otherwise.

A network with clinical inputs (a :class:`~medlens.models.fusion.FusionClassifier` whose
``clinical_absent`` is not empty) is exported with a second input, ``clinical (B, Fc)``; the files
carry its ``clinical_absent`` vector, so every runner called without clinical values treats them all
as missing, as the PyTorch model does.
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from torch import nn

from medlens._files import write_atomic
from medlens.errors import ConfigError

Exporter = Literal["auto", "dynamo", "torchscript"]
RunnerKind = Literal["torch", "torchscript", "onnx"]

INPUT_NAME, OUTPUT_NAME, CLINICAL_NAME = "image", "logits", "clinical"
EXTRA_FILE = "medlens.json"  # inside a TorchScript file: model name, input shape (C, *spatial)[, clinical_absent]
CLINICAL_METADATA = "medlens.clinical_absent"  # ONNX metadata_props key: JSON list, the (Fc,) absent vector
PARITY_RTOL, PARITY_ATOL = 1e-3, 1e-4  # exported vs PyTorch logits, checked before a file is written
PROTOBUF_LIMIT = 2**31 - 1  # bytes; a larger ONNX model needs external data, which we never write

log = logging.getLogger(__name__)


class Runner(Protocol):
    """Anything that maps ``images (B, C, *spatial) float32`` (and, for a network with clinical inputs,
    ``clinical (B, Fc) float32``; ``None``: every value missing) to logits ``(B, K[, *spatial]) float32``."""

    def __call__(self, images: np.ndarray, clinical: np.ndarray | None = None) -> np.ndarray: ...


# --- export ------------------------------------------------------------------------------------------


def export_torchscript(model: nn.Module, example: torch.Tensor, path: str | os.PathLike) -> Path:
    """Trace (or, where tracing fails, script) an eval-mode model and save it atomically.

    Args:
        model: in eval mode, on the CPU: ``(B, C, *spatial) -> logits``, or ``(images, clinical (B, Fc))``
            for a network with clinical inputs (traced with its ``clinical_absent`` as the example).
        example: ``(1, C, *spatial)`` float32 CPU tensor of the input shape the file will accept.
        path: where the ``.ts`` file goes (its folder is created).

    Returns:
        ``path``. The file loads with ``torch.jit.load(path, map_location="cpu")`` and takes any batch size.

    Raises:
        ConfigError: model in training mode or not on the CPU, an example of the wrong shape/dtype.
        RuntimeError: neither tracing nor scripting gives a network that matches the model.
    """
    name = _check_exportable(model, example)
    module = _trace_or_script(model, _examples(model, example), name)
    info = {"model": name, "input_shape": list(example.shape[1:])}
    absent = _clinical_absent(model)
    if absent is not None:
        info["clinical_absent"] = absent.tolist()
    extra = {EXTRA_FILE: json.dumps(info)}
    return write_atomic(path, lambda f: torch.jit.save(module, f, _extra_files=extra))


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike, *, opset: int | None = None,
                exporter: Exporter = "auto") -> Path:
    """Export an eval-mode model to one self-contained ONNX file (input ``image``, output ``logits``).

    A network with clinical inputs gets a second input, ``clinical (batch, Fc)``, and its absent
    vector in the metadata (``medlens.clinical_absent``).

    With ``exporter="auto"`` the dynamo exporter (``torch.export`` + onnxscript) is tried first and
    the TorchScript-based one is the fallback (logged as a warning). With torch 2.13 both export every
    registered classifier and segmenter; the dynamo one is 5-20x slower (DenseNet-121: 13 s vs 1 s).

    Args:
        model: in eval mode, on the CPU.
        example: ``(1, C, *spatial)`` float32 CPU tensor; the batch axis of the file is dynamic.
        path: where the ``.onnx`` file goes; weights are stored inside it (never external data).
        opset: ONNX opset version; ``None`` takes the exporter's default.
        exporter: ``"auto"``, or ``"dynamo"`` / ``"torchscript"`` to use one exporter and no fallback.

    Returns:
        ``path``, after ``onnx.checker.check_model`` and an ONNX Runtime parity check passed.

    Raises:
        ConfigError: bad model/example (see :func:`export_torchscript`), an unknown ``exporter``, or
            a model too large for a single ONNX file (2 GB).
        RuntimeError: every exporter tried failed; the message carries each one's error.
    """
    name = _check_exportable(model, example)
    # torch 2.13: both exporters handle all 20 registered classifiers and dynunet_3d, unet_2d, vnet_3d (parity 1e-5,
    # tests/deploy); dynamo is the maintained one, the TorchScript-based one is the older, faster fallback
    order = {"auto": ("dynamo", "torchscript"), "dynamo": ("dynamo",), "torchscript": ("torchscript",)}
    if exporter not in order:
        raise ConfigError(f"exporter={exporter!r} for `{name}`: choose auto, dynamo or torchscript")
    data = _export_onnx_bytes(model, _examples(model, example), name, opset, order[exporter])
    return write_atomic(path, lambda f: f.write(data))


def _check_exportable(model: nn.Module, example: torch.Tensor) -> str:
    """The model's name, after checking that it can be exported from ``example``."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"expected a torch.nn.Module to export, got {type(model).__name__}")
    name = str(getattr(model, "name", type(model).__name__))
    if model.training:
        raise ConfigError(f"`{name}` is in training mode (dropout and batch-norm statistics would be exported "
                          "as in training); call model.eval() before exporting")
    if not isinstance(example, torch.Tensor):
        raise ConfigError(f"the example input for `{name}` must be a torch.Tensor, got {type(example).__name__}; "
                          "e.g. torch.zeros(1, C, *input_size)")
    devices = {example.device.type} | {p.device.type for p in model.parameters()}
    if devices != {"cpu"}:
        raise ConfigError(f"export `{name}` from the CPU, found devices {sorted(devices)}; call model.cpu() and "
                          "example.cpu() first")
    if example.dtype != torch.float32 or example.ndim not in (4, 5) or example.shape[0] != 1:
        raise ConfigError(f"the example input for `{name}` must be float32 (1, C, H, W) or (1, C, D, H, W), got "
                          f"{example.dtype} {tuple(example.shape)}; e.g. torch.zeros(1, C, *input_size)")
    expected = _model_input_shape(model)
    if expected is not None and tuple(example.shape[1:]) != expected:
        raise ConfigError(f"`{name}` was built for inputs (C, *spatial) = {expected}, the example is "
                          f"{tuple(example.shape[1:])}; use torch.zeros(1, {', '.join(map(str, expected))})")
    return name


def _examples(model: nn.Module, example: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The inputs to export from: ``(example,)``, or ``(example, clinical_absent (1, Fc))``."""
    absent = _clinical_absent(model)
    return (example,) if absent is None else (example, torch.from_numpy(absent)[None])


def _clinical_absent(model: nn.Module) -> np.ndarray | None:
    """``(Fc,)`` float32 absent vector of a network with clinical inputs, ``None`` for one that has none."""
    absent = getattr(model, "clinical_absent", None)
    if not isinstance(absent, torch.Tensor) or absent.numel() == 0:
        return None
    return absent.detach().cpu().float().reshape(-1).numpy().copy()


def _model_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """``(C, *input_size)`` of a registry classifier; ``None`` for a fully convolutional network."""
    if hasattr(model, "in_channels") and hasattr(model, "input_size"):
        return (int(model.in_channels), *(int(s) for s in model.input_size))
    return None


def _trace_or_script(model: nn.Module, examples: tuple[torch.Tensor, ...], name: str) -> torch.jit.ScriptModule:
    errors = []
    for how in ("trace", "script"):
        try:
            # check_trace re-traces to compare graphs; _parity_problem below compares outputs instead
            module = torch.jit.trace(model, examples, check_trace=False) if how == "trace" else torch.jit.script(model)
        except Exception as error:  # noqa: BLE001 - any failure means "try the other way"
            errors.append(f"torch.jit.{how}: {type(error).__name__}: {_last_line(error)}")
            continue
        problem = _parity_problem(model, lambda *xs, m=module: m(*map(torch.from_numpy, xs)).numpy(), examples)
        if problem is None:
            return module
        errors.append(f"torch.jit.{how}: {problem}")
    raise RuntimeError(f"TorchScript export of `{name}` failed:\n  " + "\n  ".join(errors))


def _export_onnx_bytes(model: nn.Module, examples: tuple[torch.Tensor, ...], name: str, opset: int | None,
                       exporters: tuple[str, ...]) -> bytes:
    """The serialised, checked ONNX model from the first exporter whose output matches the model."""
    import onnx

    errors = []
    for how in exporters:
        try:
            proto = _ONNX_EXPORTERS[how](model, examples, opset)
            _add_clinical_metadata(proto, model)
            data = _single_file(proto, name)
            onnx.checker.check_model(proto)
            problem = _parity_problem(model, _Session(data, ("CPUExecutionProvider",)), examples)
        except ConfigError:
            raise
        except Exception as error:  # noqa: BLE001 - the next exporter may succeed
            problem = f"{type(error).__name__}: {error}"
        if problem is None:
            return data
        errors.append(f"{how} exporter: {problem}")
        if how != exporters[-1]:
            log.warning("ONNX %s exporter failed for `%s`, trying the next one: %s", how, name, problem)
    raise RuntimeError(f"ONNX export of `{name}` failed:\n  " + "\n  ".join(errors))


def _input_names(examples: tuple[torch.Tensor, ...]) -> list[str]:
    return [INPUT_NAME, CLINICAL_NAME][:len(examples)]


def _dynamo_export(model: nn.Module, examples: tuple[torch.Tensor, ...], opset: int | None):
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(model, examples, dynamo=True, input_names=_input_names(examples),
                                output_names=[OUTPUT_NAME], dynamic_shapes=tuple({0: batch} for _ in examples),
                                opset_version=opset, external_data=False, verbose=False)
    return program.model_proto


def _torchscript_onnx_export(model: nn.Module, examples: tuple[torch.Tensor, ...], opset: int | None):
    import onnx

    buffer = io.BytesIO()
    names = _input_names(examples)
    # no constant folding: ONNX Runtime folds constants itself when it loads the graph, and torch's
    # folding took 4 of the 5 s of exporting vnet_3d (a 45 M-parameter net) for no smaller file
    torch.onnx.export(model, examples, buffer, dynamo=False, input_names=names, output_names=[OUTPUT_NAME],
                      dynamic_axes={n: {0: "batch"} for n in (*names, OUTPUT_NAME)}, opset_version=opset,
                      do_constant_folding=False)
    return onnx.load_from_string(buffer.getvalue())


def _add_clinical_metadata(proto, model: nn.Module) -> None:
    """Record the absent vector of a network with clinical inputs in the ONNX metadata."""
    absent = _clinical_absent(model)
    if absent is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = CLINICAL_METADATA, json.dumps(absent.tolist())


_ONNX_EXPORTERS = {"dynamo": _dynamo_export, "torchscript": _torchscript_onnx_export}


def _single_file(proto, name: str) -> bytes:
    size = proto.ByteSize()
    if size > PROTOBUF_LIMIT:
        raise ConfigError(f"`{name}` exports to {size / 2**30:.1f} GiB of ONNX, above the 2 GiB a single file can "
                          "hold; use the TorchScript export (--format torchscript) or a narrower model (model.width)")
    return proto.SerializeToString()


def _parity_problem(model: nn.Module, exported: Runner, examples: tuple[torch.Tensor, ...]) -> str | None:
    """Why ``exported`` differs from ``model`` on a seeded random batch of two (every input), or ``None``."""
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(2, *example.shape[1:], generator=generator) for example in examples]
    with torch.no_grad():
        expected = model(*inputs).numpy()
        try:
            got = exported(*(x.numpy() for x in inputs))
        except Exception as error:  # noqa: BLE001 - e.g. a reshape to the traced batch size
            return f"a batch of 2 fails: {type(error).__name__}: {_last_line(error)}"
    if got.shape != expected.shape:
        return f"a batch of 2 gives logits {got.shape}, PyTorch gives {expected.shape}"
    if not np.allclose(got, expected, rtol=PARITY_RTOL, atol=PARITY_ATOL):
        return f"logits differ from PyTorch by up to {np.abs(got - expected).max():.3g} on a batch of 2"
    return None


def _last_line(error: Exception) -> str:
    """The last line of a message (TorchScript and ONNX Runtime put the real error after a traceback)."""
    lines = str(error).strip().splitlines()
    return lines[-1] if lines else ""


# --- runners -----------------------------------------------------------------------------------------


class TorchRunner:
    """A PyTorch model behind the runner interface (put in eval mode, gradients off).

    Args:
        model: ``(B, C, *spatial) -> logits``.
        device: where the model runs; inputs are moved there, logits come back to NumPy.
    """

    def __init__(self, model: nn.Module, *, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.input_shape = _model_input_shape(model)
        self.clinical_absent = _clinical_absent(model)

    @torch.no_grad()
    def __call__(self, images: np.ndarray, clinical: np.ndarray | None = None) -> np.ndarray:
        """Logits ``(B, K[, *spatial])`` float32 of ``images (B, C, *spatial)`` [and ``clinical (B, Fc)``]."""
        arrays = _inputs(images, clinical, self.input_shape, self.clinical_absent, "the PyTorch model")
        return self.model(*(torch.from_numpy(a).to(self.device) for a in arrays)).float().cpu().numpy()


class TorchScriptRunner:
    """A file written by :func:`export_torchscript`, loaded on the CPU (or ``device``)."""

    def __init__(self, path: str | os.PathLike, *, device: str | torch.device = "cpu") -> None:
        self.path = _existing(path)
        self.device = torch.device(device)
        extra = {EXTRA_FILE: ""}
        self.module = torch.jit.load(str(self.path), map_location=self.device, _extra_files=extra).eval()
        info = json.loads(extra[EXTRA_FILE] or "{}")
        self.input_shape = tuple(info["input_shape"]) if "input_shape" in info else None
        absent = info.get("clinical_absent")
        self.clinical_absent = None if absent is None else np.asarray(absent, dtype=np.float32)

    @torch.no_grad()
    def __call__(self, images: np.ndarray, clinical: np.ndarray | None = None) -> np.ndarray:
        """Logits ``(B, K[, *spatial])`` float32 of ``images (B, C, *spatial)`` [and ``clinical (B, Fc)``]."""
        arrays = _inputs(images, clinical, self.input_shape, self.clinical_absent, str(self.path))
        return self.module(*(torch.from_numpy(a).to(self.device) for a in arrays)).float().cpu().numpy()


class OnnxRunner:
    """An ONNX file run by ONNX Runtime, on ``CPUExecutionProvider`` unless ``providers`` say otherwise.

    The session uses as many intra-op threads as torch (``torch.get_num_threads()``), so one
    setting bounds the CPU use of every backend.
    """

    def __init__(self, path: str | os.PathLike, *, providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> None:
        self.path = _existing(path)
        self._run = _Session(str(self.path), providers)
        self.session, self.input_shape = self._run.session, self._run.input_shape
        self.clinical_absent = self._run.clinical_absent

    def __call__(self, images: np.ndarray, clinical: np.ndarray | None = None) -> np.ndarray:
        """Logits ``(B, K[, *spatial])`` float32 of ``images (B, C, *spatial)`` [and ``clinical (B, Fc)``]."""
        return self._run(*_inputs(images, clinical, self.input_shape, self.clinical_absent, str(self.path)))


class _Session:
    """An ONNX Runtime session over a file path or serialised bytes, called like a runner."""

    def __init__(self, model: str | bytes, providers: tuple[str, ...]) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model, sess_options=options, providers=list(providers))
        inputs = self.session.get_inputs()
        self.input_names = [i.name for i in inputs]
        dims = inputs[0].shape[1:]
        self.input_shape = tuple(dims) if all(isinstance(d, int) for d in dims) else None
        absent = self.session.get_modelmeta().custom_metadata_map.get(CLINICAL_METADATA)
        self.clinical_absent = None if absent is None else np.asarray(json.loads(absent), dtype=np.float32)

    def __call__(self, images: np.ndarray, clinical: np.ndarray | None = None) -> np.ndarray:
        feed = dict(zip(self.input_names, (images, clinical) if clinical is not None else (images,)))
        return np.asarray(self.session.run(None, feed)[0], dtype=np.float32)


def load_runner(kind: RunnerKind, source: nn.Module | str | os.PathLike) -> Runner:
    """The runner of ``kind`` for ``source``: a model (``"torch"``) or an exported file.

    Raises:
        ConfigError: an unknown ``kind``, or a source that does not fit it.
        FileNotFoundError: the exported file does not exist.
    """
    if kind == "torch":
        if not isinstance(source, nn.Module):
            raise ConfigError(f"runner torch needs a torch.nn.Module, got {type(source).__name__}")
        return TorchRunner(source)
    runners = {"torchscript": TorchScriptRunner, "onnx": OnnxRunner}
    if kind not in runners:
        raise ConfigError(f"runner {kind!r}: choose torch, torchscript or onnx")
    if isinstance(source, nn.Module):
        raise ConfigError(f"runner {kind} reads an exported file, got a model; use export_{kind}(model, ...) first "
                          "or kind='torch'")
    return runners[kind](source)


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported network at {path}; write it with export_torchscript / export_onnx")
    return path


def _inputs(images: np.ndarray, clinical: np.ndarray | None, input_shape: tuple[int, ...] | None,
            clinical_absent: np.ndarray | None, where: str) -> tuple[np.ndarray, ...]:
    """``(images,)``, or ``(images, clinical)`` for a network with clinical inputs, checked and float32."""
    images = _check_images(images, input_shape, where)
    if clinical_absent is None:
        if clinical is not None:
            raise ConfigError(f"{where} takes no clinical values (its network has no clinical inputs), got "
                              f"{getattr(clinical, 'shape', type(clinical).__name__)}; pass the images only")
        return (images,)
    if clinical is None:  # every clinical value missing, as the PyTorch model reads clinical=None
        return images, np.ascontiguousarray(np.broadcast_to(clinical_absent, (len(images), len(clinical_absent))))
    width = len(clinical_absent)
    if not isinstance(clinical, np.ndarray) or not np.issubdtype(clinical.dtype, np.floating) \
            or clinical.shape != (len(images), width):
        what = f"{clinical.dtype} {clinical.shape}" if isinstance(clinical, np.ndarray) else type(clinical).__name__
        raise ConfigError(f"{where} takes clinical values as float32 ({len(images)}, {width}), one row per image, "
                          f"got {what}; encode them with the run's clinical encoder (clinical.json)")
    return images, np.ascontiguousarray(clinical, dtype=np.float32)


def _check_images(images: np.ndarray, input_shape: tuple[int, ...] | None, where: str) -> np.ndarray:
    """``images`` as a contiguous float32 array, after checking its shape against ``(C, *spatial)``."""
    if not isinstance(images, np.ndarray) or not np.issubdtype(images.dtype, np.floating):
        what = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
        raise ConfigError(f"{where} takes a float32 NumPy array (B, C, *spatial), got {what}; preprocess the "
                          "images first (e.g. uint8 scaled to [0, 1])")
    if input_shape is not None and tuple(images.shape[1:]) != tuple(input_shape):
        raise ConfigError(f"{where} takes images (B, {', '.join(map(str, input_shape))}), got {images.shape}; "
                          "resize / pad them as the model's preprocessing does")
    if input_shape is None and images.ndim not in (4, 5):
        raise ConfigError(f"{where} takes images (B, C, H, W) or (B, C, D, H, W), got {images.shape}")
    return np.ascontiguousarray(images, dtype=np.float32)
