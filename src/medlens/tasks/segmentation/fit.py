"""What segmentation hands the engine's training loop: patches to train on, whole cases to validate,
and, once the best weights are back, the post-processing chosen on validation."""

from __future__ import annotations

import math

import torch

from medlens._files import write_json_atomic
from medlens.config import Config
from medlens.errors import DatasetError
from medlens.tasks.base import Fit


def prepare_fit(task, config: Config, dataset, cases: dict, *, world_size: int, log) -> Fit:
    """Preprocess the train and val volumes, then build the patch sampler, the module and the loaders.

    Each of ``world_size`` processes draws its own share of every epoch's patches (the patch at position
    ``i`` of epoch ``e`` is the same whoever draws it, so a resumed or distributed run sees the same patches).
    """
    from medlens.data.loading import ShardSampler
    from medlens.data.volumes import PatchDataset, VolumeDataset, prepare_volumes
    from medlens.tasks.segmentation.module import SegmentationModule

    train_volumes = prepare_volumes(dataset, cases["train"], config)
    val_volumes = prepare_volumes(dataset, cases["val"], config)
    check_foreground(train_volumes, config)
    t, s = config.train, config.segment
    patches = PatchDataset(train_volumes, tuple(config.data.input_size), length=s.iterations_per_epoch * t.batch_size,
                           foreground_fraction=s.foreground_fraction, seed=t.seed)
    torch.manual_seed(t.seed)
    module = SegmentationModule(task.build_model(config), config, patches)
    workers = config.data.num_workers
    loader = torch.utils.data.DataLoader(patches, batch_size=t.batch_size, sampler=ShardSampler(len(patches)),
                                         num_workers=workers)
    val_loader = torch.utils.data.DataLoader(VolumeDataset(val_volumes), batch_size=1, num_workers=workers)
    steps = math.ceil(s.iterations_per_epoch / max(world_size, 1))
    metrics = ("train_loss", "val_dice", *[f"val_dice_{n}" for n in config.dataset.class_names[1:]])
    return Fit(module, loader, val_loader, config, steps, validation=val_volumes, csv_metrics=metrics)


def check_foreground(volumes, config: Config) -> None:
    """Refuse a training split with no foreground voxel at all: there is nothing to learn."""
    if not any(len(p) for v in volumes for p in v.foreground):
        raise DatasetError(f"all {len(volumes)} training masks hold background only (labels "
                           f"{list(config.dataset.label_values[1:])} never appear); check the mask files and labels")


def finish(run, config: Config, model, fit: Fit, log) -> str:
    """Choose keep-largest-component per class on the validation volumes; write ``postprocess.json``."""
    from medlens.tasks.segmentation.postprocess import choose_postprocessing

    post = choose_postprocessing(model.eval(), config, fit.validation)
    write_json_atomic(run.postprocess, post)
    kept = [n for n, keep in post["keep_largest"].items() if keep]
    return f"keep largest component: {', '.join(kept) or 'no class'}"
