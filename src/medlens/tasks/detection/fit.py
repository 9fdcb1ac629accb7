"""What detection hands the engine's training loop: patches with boxes to train on, whole images to validate."""

from __future__ import annotations

import math

import torch

from medlens._files import write_json_atomic
from medlens.config import Config
from medlens.errors import DatasetError
from medlens.tasks.base import Fit


def prepare_fit(task, config: Config, dataset, cases: dict, *, world_size: int, log) -> Fit:
    """Preprocess the train and val images with their boxes, then build the patch sampler, module and loaders."""
    from medlens.data.loading import ShardSampler
    from medlens.tasks.detection.module import DetectionModule, WholeImages
    from medlens.tasks.detection.prepare import BoxPatches, collate, prepare_boxes

    train = prepare_boxes(dataset, cases["train"], config)
    val = prepare_boxes(dataset, cases["val"], config)
    check_boxes(train, config)
    t, d, a = config.train, config.detect, config.augment
    steps = d.iterations_per_epoch or math.ceil(len(train) / (t.batch_size * max(world_size, 1)))
    patches = BoxPatches(train, tuple(config.data.input_size), length=steps * t.batch_size * max(world_size, 1),
                         positive_fraction=d.positive_fraction, flip_axes=a.flip_axes, intensity=a.intensity,
                         noise_std=a.noise_std, probability=a.probability, seed=t.seed)
    torch.manual_seed(t.seed)
    module = DetectionModule(task.build_model(config), config, patches)
    workers = config.data.num_workers
    loader = torch.utils.data.DataLoader(patches, batch_size=t.batch_size, sampler=ShardSampler(len(patches)),
                                         num_workers=workers, collate_fn=collate)
    val_loader = torch.utils.data.DataLoader(WholeImages(val), batch_size=1, num_workers=workers)
    boxes = sum(len(item.boxes) for item in train)
    log(f"detection: {len(train)} training images ({boxes} boxes), {len(val)} validation images")
    return Fit(module, loader, val_loader, config, steps, validation=val,
               csv_metrics=("train_loss", "val_map", "val_map50"))


def check_boxes(items, config: Config) -> None:
    """Refuse a training split without a single box: there is nothing to learn."""
    if not any(len(item.boxes) for item in items):
        raise DatasetError(f"none of the {len(items)} training images has a box of the classes "
                           f"{list(config.dataset.class_names)}; check the annotation files and the split")


def finish(run, config: Config, model, fit: Fit, log) -> str:
    """Choose the display threshold on the validation images (best F1 at IoU 0.5); write ``postprocess.json``."""
    from medlens.tasks.detection.infer import detect_array
    from medlens.tasks.detection.threshold import best_f1_threshold

    found = [detect_array(model, torch.from_numpy(item.image), config) for item in fit.validation]
    post = best_f1_threshold(found, [(item.boxes, item.labels) for item in fit.validation],
                             config.detect.score_threshold)
    write_json_atomic(run.postprocess, post)
    return f"display threshold {post['display_threshold']:.3f} (validation F1 {post['f1']})"
