"""CPU speed options for 3D networks, chosen by timing them on the machine that trains.

Two options pay for 3D convolutions on a CPU with oneDNN: the ``channels_last_3d`` memory layout
(oneDNN's native blocked layout, so no reorder around each convolution) and bfloat16 autocast,
which pays only where the CPU computes bf16 natively (AVX512-BF16 or AMX; elsewhere it is
emulated and slower). Neither pays everywhere: on a 2-core AVX512-BF16 EPYC, channels-last plus
bf16 made ``seedcnn_3d`` 2.1x faster but ``acsresnet18_3d`` 4x *slower* (oneDNN has no fast bf16
path for its flat ``(1, 3, 3)`` kernels at 32 volumes, though it won at 8; see
``benchmarks/speed3d.py``), so the choice is made by timing training steps of the real network at
the real batch size, never by a constant. Weights stay float32; only
the layout of their storage changes. ``torch.compile`` is not an option here: on that machine it
took minutes to compile a 3D ResNet for a gain the layout already gives (see ``docs/benchmarks.md``).
"""

from __future__ import annotations

import copy
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

MIN_GAIN = 0.1  # an option must save at least this share of a step to be taken


@dataclass(frozen=True)
class SpeedOptions:
    """How a network trains on its device.

    Attributes:
        channels_last: weights and inputs in ``torch.channels_last_3d``.
        bf16: forward and loss under ``torch.autocast(device, torch.bfloat16)``.
    """

    channels_last: bool = False
    bf16: bool = False

    def describe(self) -> str:
        parts = [name for name, on in (("channels-last 3D", self.channels_last), ("bf16 autocast", self.bf16)) if on]
        return " + ".join(parts) or "float32, contiguous"

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, C, D, H, W)`` in the chosen memory layout (the same values)."""
        return x.contiguous(memory_format=torch.channels_last_3d) if self.channels_last else x

    def autocast(self, device_type: str) -> AbstractContextManager:
        """The autocast context for the forward pass and loss (a no-op when bf16 is off)."""
        return torch.autocast(device_type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def apply(self, model: nn.Module) -> nn.Module:
        """Put ``model``'s weights in the chosen layout, in place (parameters keep their identity and values).

        With ``channels_last``, 5D weights take ``channels_last_3d`` and 4D ones (a 2.5D network's 2D
        trunk) ``channels_last``; otherwise every weight is made contiguous again.
        """
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = tensor.data.contiguous(memory_format=_memory_format(tensor.dim(), self.channels_last))
        return model


def _memory_format(dims: int, channels_last: bool) -> torch.memory_format:
    if channels_last and dims in (4, 5):
        return torch.channels_last if dims == 4 else torch.channels_last_3d
    return torch.contiguous_format


PLAIN = SpeedOptions()


def native_bf16(device_type: str) -> bool:
    """Whether the device computes bfloat16 natively (CPU: oneDNN's check for AVX512-BF16 / AMX)."""
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def candidates(spatial_dims: int, device_type: str, *, allow_bf16: bool = True) -> list[SpeedOptions]:
    """The option sets worth timing: 3D on a CPU with oneDNN only (a GPU gets its precision from Lightning).

    bf16 is timed only with channels-last (alone it was slower than both on every network measured)
    and only where the CPU computes it natively and ``allow_bf16`` (``train.precision: auto``).
    """
    if spatial_dims != 3 or device_type != "cpu" or not torch.backends.mkldnn.is_available():
        return [PLAIN]
    options = [PLAIN, SpeedOptions(channels_last=True)]
    if allow_bf16 and native_bf16(device_type):
        options.append(SpeedOptions(channels_last=True, bf16=True))
    return options


def choose_speed_options(model: nn.Module, example: torch.Tensor, *, allow_bf16: bool = True,
                         repeats: int = 1) -> tuple[SpeedOptions, str]:
    """Time a forward/backward step of a copy of ``model`` under each candidate; keep the fastest.

    Args:
        model: a classifier, ``(B, C, *spatial) -> logits (B, K)``, on its training device; not modified.
        example: one batch ``(B, C, *spatial)`` of the training batch size: the fastest option depends
            on it (``acsresnet18_3d``: bf16 won at 8 volumes and lost by 2x at 32).
        allow_bf16: time bf16 autocast too (where the device computes it natively).
        repeats: timed steps per candidate after one untimed one (which pays for oneDNN's set-up),
            interleaved so load from other processes falls on every candidate alike; each keeps its fastest.

    Returns:
        The options, and a reason with the times, e.g. ``"channels-last 3D: 1650 ms per step of 32
        volumes vs 2620 ms float32, contiguous"``. An option is kept only if it saves ``MIN_GAIN``.
    """
    options = candidates(example.dim() - 2, example.device.type, allow_bf16=allow_bf16)
    if len(options) == 1:
        return PLAIN, "float32, contiguous: no faster option to time on this device for these inputs"
    probe = copy.deepcopy(model).train()
    x = example.detach()
    times = {o: float("inf") for o in options}
    for round_ in range(repeats + 1):
        for option in options:
            seconds = _timed_step(probe, x, option)
            if round_:
                times[option] = min(times[option], seconds)
    best = min(options, key=lambda o: times[o])
    if times[best] > (1 - MIN_GAIN) * times[PLAIN]:
        best = PLAIN
    others = ", ".join(f"{times[o] * 1000:.0f} ms {o.describe()}" for o in options if o != best)
    return best, f"{best.describe()}: {times[best] * 1000:.0f} ms per step of {len(x)} volumes vs {others}"


def _timed_step(model: nn.Module, x: torch.Tensor, option: SpeedOptions) -> float:
    model, x = option.apply(model), option.layout(x)
    start = time.perf_counter()
    with option.autocast(x.device.type):
        logits = model(x)
    logits.float().sum().backward()
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return seconds
