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


def epochs_in_budget(budget_s: float, epoch_s: float, *, most: int, share: float = 0.85) -> tuple[int, str]:
    """The whole epochs of ``epoch_s`` seconds that fit ``share`` of ``budget_s`` (at most ``most``), and why.

    Never more than fit: the floor is one epoch, planned even when it does not fit, and then the reason says
    that the time budget (a hard stop, :class:`medlens.engine.callbacks.TimeBudget`) ends it mid-epoch.

    Returns:
        ``(epochs, phrase)``: e.g. ``(3, "3 epochs fit 85% of the 60 s budget (1..100)")``.
    """
    fit = int(share * budget_s // epoch_s) if epoch_s > 0 else most
    epochs = min(max(fit, 1), most)
    if fit >= 1:
        return epochs, f"{epochs} epochs fit {share:.0%} of the {budget_s:.0f} s budget (1..{most})"
    return 1, (f"not even one epoch fits {share:.0%} of the {budget_s:g} s budget: one is planned, and the "
               f"budget stops it mid-epoch (after about {min(share * budget_s / epoch_s, 1.0):.0%} of its steps)")
