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

INPUT_NAME, OUTPUT_NAME = "image", "logits"
EXTRA_FILE = "medlens.json"  # inside a TorchScript file: model name and input shape (C, *spatial)
PARITY_RTOL, PARITY_ATOL = 1e-3, 1e-4  # exported vs PyTorch logits, checked before a file is written
PROTOBUF_LIMIT = 2**31 - 1  # bytes; a larger ONNX model needs external data, which we never write

log = logging.getLogger(__name__)


class Runner(Protocol):
    """Anything that maps ``images (B, C, *spatial) float32`` to logits ``(B, K[, *spatial]) float32``."""

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


# --- export ------------------------------------------------------------------------------------------


def export_torchscript(model: nn.Module, example: torch.Tensor, path: str | os.PathLike) -> Path:
    """Trace (or, where tracing fails, script) an eval-mode model and save it atomically.

    Args:
        model: in eval mode, on the CPU: ``(B, C, *spatial) -> logits``.
        example: ``(1, C, *spatial)`` float32 CPU tensor of the input shape the file will accept.
        path: where the ``.ts`` file goes (its folder is created).

    Returns:
        ``path``. The file loads with ``torch.jit.load(path, map_location="cpu")`` and takes any batch size.

    Raises:
        ConfigError: model in training mode or not on the CPU, an example of the wrong shape/dtype.
        RuntimeError: neither tracing nor scripting gives a network that matches the model.
    """
    name = _check_exportable(model, example)
    module = _trace_or_script(model, example, name)
    extra = {EXTRA_FILE: json.dumps({"model": name, "input_shape": list(example.shape[1:])})}
    return write_atomic(path, lambda f: torch.jit.save(module, f, _extra_files=extra))


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike, *, opset: int | None = None,
                exporter: Exporter = "auto") -> Path:
    """Export an eval-mode model to one self-contained ONNX file (input ``image``, output ``logits``).

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
    data = _export_onnx_bytes(model, example, name, opset, order[exporter])
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


def _model_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """``(C, *input_size)`` of a registry classifier; ``None`` for a fully convolutional network."""
    if hasattr(model, "in_channels") and hasattr(model, "input_size"):
        return (int(model.in_channels), *(int(s) for s in model.input_size))
    return None


def _trace_or_script(model: nn.Module, example: torch.Tensor, name: str) -> torch.jit.ScriptModule:
    errors = []
    for how in ("trace", "script"):
        try:
            # check_trace re-traces to compare graphs; _parity_problem below compares outputs instead
            module = torch.jit.trace(model, example, check_trace=False) if how == "trace" else torch.jit.script(model)
        except Exception as error:  # noqa: BLE001 - any failure means "try the other way"
            errors.append(f"torch.jit.{how}: {type(error).__name__}: {_last_line(error)}")
            continue
        problem = _parity_problem(model, lambda x, m=module: m(torch.from_numpy(x)).numpy(), example)
        if problem is None:
            return module
        errors.append(f"torch.jit.{how}: {problem}")
    raise RuntimeError(f"TorchScript export of `{name}` failed:\n  " + "\n  ".join(errors))


def _export_onnx_bytes(model: nn.Module, example: torch.Tensor, name: str, opset: int | None,
                       exporters: tuple[str, ...]) -> bytes:
    """The serialised, checked ONNX model from the first exporter whose output matches the model."""
    import onnx

    errors = []
    for how in exporters:
        try:
            proto = _ONNX_EXPORTERS[how](model, example, opset)
            data = _single_file(proto, name)
            onnx.checker.check_model(proto)
            problem = _parity_problem(model, _Session(data, ("CPUExecutionProvider",)), example)
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


def _dynamo_export(model: nn.Module, example: torch.Tensor, opset: int | None):
    program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset,
                                external_data=False, verbose=False)
    return program.model_proto


def _torchscript_onnx_export(model: nn.Module, example: torch.Tensor, opset: int | None):
    import onnx

    buffer = io.BytesIO()
    # no constant folding: ONNX Runtime folds constants itself when it loads the graph, and torch's
    # folding took 4 of the 5 s of exporting vnet_3d (a 45 M-parameter net) for no smaller file
    torch.onnx.export(model, (example,), buffer, dynamo=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=opset,
                      do_constant_folding=False)
    return onnx.load_from_string(buffer.getvalue())


_ONNX_EXPORTERS = {"dynamo": _dynamo_export, "torchscript": _torchscript_onnx_export}


def _single_file(proto, name: str) -> bytes:
    size = proto.ByteSize()
    if size > PROTOBUF_LIMIT:
        raise ConfigError(f"`{name}` exports to {size / 2**30:.1f} GiB of ONNX, above the 2 GiB a single file can "
                          "hold; use the TorchScript export (--format torchscript) or a narrower model (model.width)")
    return proto.SerializeToString()


def _parity_problem(model: nn.Module, exported: Runner, example: torch.Tensor) -> str | None:
    """Why ``exported`` differs from ``model`` on a seeded random batch of two, or ``None``."""
    x = torch.randn(2, *example.shape[1:], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).numpy()
        try:
            got = exported(x.numpy())
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

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Logits ``(B, K[, *spatial])`` float32 of ``images (B, C, *spatial)``."""
        x = torch.from_numpy(_check_images(images, self.input_shape, "the PyTorch model")).to(self.device)
        return self.model(x).float().cpu().numpy()


class TorchScriptRunner:
    """A file written by :func:`export_torchscript`, loaded on the CPU (or ``device``)."""

    def __init__(self, path: str | os.PathLike, *, device: str | torch.device = "cpu") -> None:
        self.path = _existing(path)
        self.device = torch.device(device)
        extra = {EXTRA_FILE: ""}
        self.module = torch.jit.load(str(self.path), map_location=self.device, _extra_files=extra).eval()
        info = json.loads(extra[EXTRA_FILE] or "{}")
        self.input_shape = tuple(info["input_shape"]) if "input_shape" in info else None

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Logits ``(B, K[, *spatial])`` float32 of ``images (B, C, *spatial)``."""
        x = torch.from_numpy(_check_images(images, self.input_shape, str(self.path))).to(self.device)
        return self.module(x).float().cpu().numpy()


class OnnxRunner:
    """An ONNX file run by ONNX Runtime, on ``CPUExecutionProvider`` unless ``providers`` say otherwise.

    The session uses as many intra-op threads as torch (``torch.get_num_threads()``), so one
    setting bounds the CPU use of every backend.
    """

    def __init__(self, path: str | os.PathLike, *, providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> None:
        self.path = _existing(path)
        self._run = _Session(str(self.path), providers)
        self.session, self.input_shape = self._run.session, self._run.input_shape

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Logits ``(B, K[, *spatial])`` float32 of ``images (B, C, *spatial)``."""
        return self._run(_check_images(images, self.input_shape, str(self.path)))


class _Session:
    """An ONNX Runtime session over a file path or serialised bytes, called like a runner."""

    def __init__(self, model: str | bytes, providers: tuple[str, ...]) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model, sess_options=options, providers=list(providers))
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        dims = first.shape[1:]
        self.input_shape = tuple(dims) if all(isinstance(d, int) for d in dims) else None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: images})[0], dtype=np.float32)


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
