"""From a run's configuration to the arrays of each split (the bridge between data and training)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medlens.config import Config
from medlens.data import open_dataset
from medlens.data.dataset import UNLABELLED_LAYOUTS, Dataset
from medlens.data.splits import leave_out, make_splits, read_splits
from medlens.data.tensors import label_array, preprocess_cases
from medlens.errors import ConfigError, DatasetError
from medlens.types import Case


@dataclass
class SplitData:
    """One split, preprocessed: ``images (N, C, *input_size)``, ``labels (N,)`` or ``(N, L)``, ``groups (N,)``;
    ``clinical (N, F)`` encoded clinical values when the plan has clinical inputs (set by the task, which fits
    the encoder on the training split)."""

    name: str
    cases: list[Case]
    images: np.ndarray
    labels: np.ndarray
    clinical: np.ndarray | None = None

    @property
    def groups(self) -> np.ndarray:
        """Patient ids where known (bootstrap resamples patients), else case ids."""
        return np.asarray([c.patient_id or c.case_id for c in self.cases])


def open_config_dataset(config: Config) -> Dataset:
    """Re-open the dataset a plan was made for, checking it still matches."""
    dataset = open_dataset(config.dataset.source, **reopen_options(config))
    check_plan_fits(config, dataset)
    return dataset


def reopen_options(config: Config) -> dict:
    """The :func:`~medlens.data.open_dataset` options that the plan's ``dataset`` section records (how the data
    was opened when the plan was made): image root, links and paths outside it, boxes from masks, series rules,
    images without labels, one class."""
    section = config.dataset
    return {"image_root": section.image_root or None, "allow_outside_root": section.allow_outside_root or None,
            "boxes_from_masks": section.boxes_from_masks, "series_rules": section.series_rules,
            "unlabelled": section.layout in UNLABELLED_LAYOUTS or None,
            "one_class": len(section.class_names) == 1 or None}


def check_plan_fits(config: Config, dataset: Dataset) -> None:
    """The plan's classes must be the dataset's, and its views the manifest's (a plan made for other data is
    refused)."""
    lacking = [v for v in config.data.views if v not in (dataset.meta.get("views") or ())]
    if lacking:
        have = dataset.meta.get("views") or ()
        raise ConfigError(f"{config.dataset.source}: the plan takes the view(s) {', '.join(lacking)}, but the manifest "
                          f"has no {', '.join(f'image:{v}' for v in lacking)} column (its views: "
                          f"{', '.join(have) or 'none'}); add the column, or make a new plan with `medlens plan`")
    if not dataset.class_names:
        return  # image/mask pairs name no classes; the plan took them from the mask values
    if tuple(dataset.class_names) != tuple(config.dataset.class_names):
        raise ConfigError(f"{config.dataset.source}: classes are now {list(dataset.class_names)} but the plan was "
                          f"made for {list(config.dataset.class_names)}; make a new plan with `medlens plan`")


def resolve_splits(dataset: Dataset, config: Config, card: dict | None) -> dict:
    """The splits file named in the plan, else splits made from the data (the dataset's own kept).

    Args:
        card: the audit of ``dataset`` (:func:`~medlens.data.audit.inspect_dataset`): made splits keep each
            group of identical or near-identical images (:func:`kept_together`) in one split, and every split
            leaves out the unreadable files the audit skipped (``card["skipped"]``, ``--skip-unreadable``).
            ``None`` only where no audit ran (the splits then ignore duplicates).

    Raises:
        ConfigError: ``dataset.fold`` is not a fold of the splits.
    """
    skipped = [entry["case"] for entry in (card or {}).get("skipped", [])]
    if config.dataset.splits:
        splits = read_splits(Path(config.dataset.splits), dataset)
        splits = leave_out(splits, skipped) if skipped else splits
    else:
        splits = make_splits(dataset, seed=config.train.seed, duplicates=kept_together(card) or None,
                             skipped=skipped)
    if not 0 <= config.dataset.fold < len(splits["folds"]):
        raise ConfigError(f"dataset.fold={config.dataset.fold} but the splits hold {len(splits['folds'])} fold(s)")
    return splits


def kept_together(card: dict | None) -> list[list[str]]:
    """The groups of case ids a split must not divide: exact and near duplicates (the card's ``duplicates`` and
    ``near_duplicates``)."""
    card = card or {}
    return list(card.get("duplicates") or []) + list(card.get("near_duplicates") or [])


def split_cases(dataset: Dataset, splits: dict, fold: int) -> dict[str, list[Case]]:
    by_id = {c.case_id: c for c in dataset.cases}
    chosen = {"train": splits["folds"][fold]["train"], "val": splits["folds"][fold]["val"], "test": splits["test"]}
    return {name: [by_id[i] for i in ids] for name, ids in chosen.items()}


def prepare_split(dataset: Dataset, name: str, cases: list[Case], config: Config, progress=None) -> SplitData:
    if not cases:
        raise DatasetError(f"the {name} split is empty; make splits with `medlens split` or add data")
    images = preprocess_cases(dataset, cases, config.data, progress=progress)
    return SplitData(name, cases, images, label_array(dataset, cases))
