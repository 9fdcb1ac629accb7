"""Single-image latency of a classifier through each runner: PyTorch, TorchScript, ONNX Runtime.

    python benchmarks/export_latency.py [--calls 200] [--threads 1] [--models resnet18_2d seedcnn_2d]

Each model (width 0.25, one channel, 28x28, two classes, seeded) is exported with
``export_torchscript`` and ``export_onnx`` (``exporter="auto"``) to a temporary folder; every runner
is warmed up with 20 calls, then timed over ``--calls`` calls of one image ``(1, 1, 28, 28)``, the
three runners interleaved call by call so that load from other processes spreads evenly. Prints
the median and the 90th percentile per runner, in milliseconds, and the largest difference of its
logits from PyTorch's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medlens.deploy.export import OnnxRunner, TorchRunner, TorchScriptRunner, export_onnx, export_torchscript
from medlens.models import build_classifier

WARMUP_CALLS = 20


def runners_for(name: str, folder: Path) -> dict:
    """The three runners of ``name`` (built seeded, exported into ``folder``)."""
    torch.manual_seed(0)
    model = build_classifier(name, in_channels=1, num_classes=2, input_size=(28, 28), width=0.25).eval()
    example = torch.zeros(1, 1, 28, 28)
    return {"torch": TorchRunner(model),
            "torchscript": TorchScriptRunner(export_torchscript(model, example, folder / f"{name}.ts")),
            "onnx": OnnxRunner(export_onnx(model, example, folder / f"{name}.onnx"))}


def time_runners(runners: dict, image: np.ndarray, calls: int) -> dict[str, list[float]]:
    """Seconds per call, per runner, interleaved."""
    for _ in range(WARMUP_CALLS):
        for runner in runners.values():
            runner(image)
    seconds = {kind: [] for kind in runners}
    for _ in range(calls):
        for kind, runner in runners.items():
            start = time.perf_counter()
            runner(image)
            seconds[kind].append(time.perf_counter() - start)
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime intra-op threads")
    parser.add_argument("--models", nargs="+", default=["resnet18_2d", "seedcnn_2d"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    image = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    print(f"single image (1, 1, 28, 28), {args.calls} calls after {WARMUP_CALLS} warm-up, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    print(f"{'model':<14}{'runner':<13}{'median ms':>10}{'p90 ms':>9}{'max |diff|':>12}")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            runners = runners_for(name, Path(folder))
            reference = runners["torch"](image)
            for kind, seconds in time_runners(runners, image, args.calls).items():
                p90 = statistics.quantiles(seconds, n=10)[-1]
                diff = float(np.abs(runners[kind](image) - reference).max())
                print(f"{name:<14}{kind:<13}{statistics.median(seconds) * 1e3:>10.3f}{p90 * 1e3:>9.3f}{diff:>12.2e}")


if __name__ == "__main__":
    main()
