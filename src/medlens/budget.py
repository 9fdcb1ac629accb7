"""One work budget for every step that can grow: decode, resample, resize, overlay, sliding window.

A size limit on what was uploaded is not enough: an 8 KB NIfTI with 1000 mm voxels asks the
resampler for a volume of billions of voxels. So each such step asks, *before it allocates*,
whether what it is about to make fits the budget in force:

>>> check_voxels((1, 512, 512, 300), "resampling to the plan's spacing")   # fine
>>> with work_budget(WorkBudget(max_voxels=10**6, hint="raise --max-voxels")):
...     check_voxels((1, 4096, 4096), "decoding the PNG")
Traceback (most recent call last):
BudgetError: decoding the PNG would make 16,777,216 voxels (1 x 4096 x 4096), more than ...

The CLI runs under :data:`CLI_BUDGET` (``medlens --max-voxels N`` raises it), the service under
:data:`SERVICE_BUDGET` (``medlens serve --max-voxels``). Library code with no budget set runs under
the CLI's.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from medlens.errors import BudgetError


@dataclass(frozen=True)
class WorkBudget:
    """What one input may make any single step produce.

    Attributes:
        max_voxels: elements (voxels x channels) of any one array a step makes from an input.
        hint: how the user raises the limit, appended to every refusal.
    """

    max_voxels: int
    hint: str

    def check(self, shape: int | Sequence[int], what: str) -> int:
        """The element count of ``shape`` (or the count itself), refused past ``max_voxels``.

        Raises:
            BudgetError: ``what`` would make more than the budget allows (also for a negative or
                non-finite size, which only a lying header produces).
        """
        count, shown = _count(shape)
        if count < 0:
            raise BudgetError(f"{what}: the input declares an impossible size{shown}; the file is corrupt or its "
                              "header lies, export it again")
        if count > self.max_voxels:
            raise BudgetError(f"{what} would make {count:,} voxels{shown}, more than the limit of "
                              f"{self.max_voxels:,}; {self.hint}")
        return count


# 2048^3 / 8: a whole-body CT at full resolution (512 x 512 x 2000 = 5.2e8) fits, 4 GiB of float32
CLI_BUDGET = WorkBudget(max_voxels=1 << 30, hint="downsample the image, or raise the limit with "
                        "`medlens --max-voxels N COMMAND ...` if this machine has the memory")
SERVICE_BUDGET = WorkBudget(max_voxels=512**3, hint="send a smaller or downsampled image (the server's limit is "
                            "set by `medlens serve --max-voxels`)")

_CURRENT: contextvars.ContextVar[WorkBudget] = contextvars.ContextVar("medlens_work_budget", default=CLI_BUDGET)


def current_budget() -> WorkBudget:
    """The budget in force in this thread / task (the CLI's when none was set)."""
    return _CURRENT.get()


@contextlib.contextmanager
def work_budget(budget: WorkBudget) -> Iterator[WorkBudget]:
    """Run the ``with`` block under ``budget``."""
    token = _CURRENT.set(budget)
    try:
        yield budget
    finally:
        _CURRENT.reset(token)


def set_budget(budget: WorkBudget) -> None:
    """Put ``budget`` in force for the rest of this process's main context (CLI start, service worker)."""
    _CURRENT.set(budget)


def check_voxels(shape: int | Sequence[int], what: str) -> int:
    """:meth:`WorkBudget.check` with the budget in force; returns the element count."""
    return current_budget().check(shape, what)


def _count(shape: int | Sequence[int]) -> tuple[int, str]:
    if isinstance(shape, (int, float)):
        if not math.isfinite(shape):
            return -1, ""
        return int(shape), ""
    dims = [int(d) if math.isfinite(d) else -1 for d in shape]
    if any(d < 0 for d in dims):
        return -1, f" ({' x '.join(str(d) for d in dims)})"
    return math.prod(dims), f" ({' x '.join(str(d) for d in dims)})"
