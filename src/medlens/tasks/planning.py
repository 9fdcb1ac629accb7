"""Plan rules every task shares: how a batch and an epoch are shared by several training processes."""

from __future__ import annotations

import math


def per_process_batch(batch: int, processes: int, reasons: dict[str, str]) -> int:
    """The batch each of ``processes`` processes takes so the global batch stays ``batch`` (at least 1 each);
    adds the reason for ``train.batch_size`` when there is more than one process."""
    if processes <= 1:
        return batch
    share = max(math.ceil(batch / processes), 1)
    reasons["train.batch_size"] = (f"{share} per process: the planned batch of {batch} shared by {processes} "
                                   f"processes (global batch {share * processes})")
    return share


def axis_stat(summary: dict | None, axis: int, key: str, default: float) -> float:
    """``summary["axis<axis>"][key]`` of a card's per-axis summary (shape, spacing), or ``default``."""
    try:
        return float(summary[f"axis{axis}"][key])
    except (KeyError, TypeError):
        return float(default)


def processes_reason(processes: int) -> str:
    if processes <= 1:
        return "one training process; `medlens train --devices N --num-nodes M` shares every epoch among N x M"
    return (f"planned for {processes} training processes (devices x nodes): each takes 1/{processes} of every "
            "epoch, so the epoch count is planned for that share")


def fastest_step(step, *, cuda: bool = False, repeats: int = 4, warmup: int = 2) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``step()`` (one optimisation step) after ``warmup`` untimed
    ones: the first steps pay for allocator and kernel set-up, and the minimum is robust to other processes' load.
    ``cuda``: wait for the GPU before reading the clock."""
    import time

    import torch

    times = []
    for i in range(repeats + warmup):
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return float(min(times))
