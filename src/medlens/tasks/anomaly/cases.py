"""Which cases an anomaly run may learn from: the one-class rule, in one place.

* fitting (encoder, memory bank, autoencoder): NORMAL cases of the training split;
* the threshold: NORMAL cases of the validation split;
* every abnormal case, of any split, is for evaluation only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medlens.config import Config
from medlens.errors import DatasetError
from medlens.types import Case


@dataclass(frozen=True)
class OneClassCases:
    """The cases of each role: ``fit`` (normal train), ``threshold`` (normal val), ``held_out`` (abnormal train
    and val: never used for fitting or thresholding)."""

    fit: list[Case]
    threshold: list[Case]
    held_out: list[Case]


def normal_indices(config: Config) -> list[int]:
    """Class indices of ``anomaly.normal`` in ``dataset.class_names``."""
    names = list(config.dataset.class_names)
    return [names.index(n) for n in config.anomaly.normal if n in names]


def is_abnormal(labels: np.ndarray, config: Config) -> np.ndarray:
    """``(N,)`` bool: the case's class is not a normal one (``labels`` are class indices ``(N,)``)."""
    return ~np.isin(np.asarray(labels), normal_indices(config))


def one_class_cases(cases: dict[str, list[Case]], config: Config) -> OneClassCases:
    """Split the run's train and val cases by role.

    Raises:
        DatasetError: no normal training case, or no normal validation case (the threshold needs them).
    """
    normal = set(normal_indices(config))
    roles = {split: ([c for c in cases[split] if c.label in normal], [c for c in cases[split] if c.label not in normal])
             for split in ("train", "val")}
    names = ", ".join(config.anomaly.normal)
    if not roles["train"][0]:
        raise DatasetError(f"no normal ({names}) case in the training split ({len(cases['train'])} cases, all of "
                           "other classes); anomaly models learn normal images only: add some or change the splits")
    if not roles["val"][0]:
        raise DatasetError(f"no normal ({names}) case in the validation split ({len(cases['val'])} cases); the "
                           "decision threshold is set on normal validation cases: add some or change the splits")
    return OneClassCases(roles["train"][0], roles["val"][0], roles["train"][1] + roles["val"][1])
