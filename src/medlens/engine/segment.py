"""Segmentation through the run folder: fit, choose post-processing on validation, segment new images.

``medlens train`` hands segmentation plans to :func:`fit_segmentation`; the run folder is the
same as for classification, with ``postprocess.json`` (which classes keep only their largest
connected component, chosen on validation) in place of a temperature.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medlens._files import write_json_atomic
from medlens.config import Config
from medlens.engine.runs import RunFolder, now
from medlens.engine.sliding import sliding_probs
from medlens.errors import ConfigError
from medlens.io import Image
from medlens.transforms.volume import prepare_image, to_original_grid


def fit_segmentation(run: RunFolder, config: Config, dataset, cases: dict, *, checkpoint, devices: int,
                     strategy: str, init_from, progress_bar: bool, log) -> RunFolder:
    """Train on patches of the train split, validate whole cases, keep the best Dice, choose post-processing."""
    from medlens.data.volumes import PatchDataset, VolumeDataset, prepare_volumes
    from medlens.engine.checkpoints import transfer_weights
    from medlens.engine.lightning import build_model, build_trainer
    from medlens.tasks.segmentation import SegmentationModule

    if devices > 1 or strategy not in ("auto",):
        raise ConfigError("segmentation trains on one device for now (--devices 1); multi-device training is "
                          "available for classification")
    started = time.perf_counter()
    train_volumes = prepare_volumes(dataset, cases["train"], config)
    val_volumes = prepare_volumes(dataset, cases["val"], config)
    check_foreground(train_volumes, config)
    t, s = config.train, config.segment
    patches = PatchDataset(train_volumes, tuple(config.data.input_size), length=s.iterations_per_epoch * t.batch_size,
                           foreground_fraction=s.foreground_fraction, seed=t.seed)
    torch.manual_seed(t.seed)
    model = build_model(config)
    transfer = transfer_weights(model, Path(init_from)) if init_from else None
    module = SegmentationModule(model, config, patches)
    trainer, best = build_trainer(run, config, progress_bar=progress_bar)
    loader = torch.utils.data.DataLoader(patches, batch_size=t.batch_size, shuffle=False,
                                         num_workers=config.data.num_workers)
    val_loader = torch.utils.data.DataLoader(VolumeDataset(val_volumes), batch_size=1,
                                             num_workers=config.data.num_workers)
    run.update_info(status="running", started=now(), dataset=config.dataset.source, task="segmentation",
                    transfer=transfer, prepare_seconds=round(time.perf_counter() - started, 2))
    trainer.fit(module, loader, val_loader, ckpt_path=checkpoint)
    if trainer.interrupted:
        run.update_info(status="interrupted")
        raise KeyboardInterrupt
    _finish(run, config, model, val_volumes, trainer, best, started, log)
    return run


def check_foreground(volumes, config: Config) -> None:
    """Refuse a training split with no foreground voxel at all: there is nothing to learn."""
    if not any(len(p) for v in volumes for p in v.foreground):
        from medlens.errors import DatasetError

        raise DatasetError(f"all {len(volumes)} training masks hold background only (labels "
                           f"{list(config.dataset.label_values[1:])} never appear); check the mask files and labels")


def _finish(run: RunFolder, config: Config, model, val_volumes, trainer, best, started: float, log) -> None:
    from medlens.engine.checkpoints import load_state_dict, save_atomic
    from medlens.engine.train import stop_reason

    source = Path(best.best_model_path) if best.best_model_path else run.last_checkpoint
    model.load_state_dict(load_state_dict(source))
    save_atomic(model.state_dict(), run.weights)
    post = choose_postprocessing(model.eval(), config, val_volumes)
    write_json_atomic(run.postprocess, post)
    score = best.best_model_score
    run.update_info(status="finished", finished=now(), epochs_run=trainer.current_epoch, best_checkpoint=source.name,
                    best_score=None if score is None else round(float(score), 6), monitor=best.monitor,
                    train_seconds=round(time.perf_counter() - started, 2), stopped_by=stop_reason(trainer, config))
    kept = [n for n, keep in post["keep_largest"].items() if keep]
    log(f"best {best.monitor} {float(score) if score is not None else float('nan'):.4f}; keep largest component: "
        f"{', '.join(kept) or 'no class'}; weights in {run.weights}")
    from medlens.report import write_report

    write_report(run, log=log)


def choose_postprocessing(model, config: Config, volumes) -> dict:
    """Per foreground class, keep only its largest connected component if that raises validation Dice.

    ``segment.keep_largest`` = ``always`` / ``never`` skips the comparison.
    """
    from medlens.tasks.segmentation import dice_per_class

    names = list(config.dataset.class_names[1:])
    rule = config.segment.keep_largest
    if rule != "auto":
        return {"keep_largest": {n: rule == "always" for n in names}, "rule": rule}
    plain, kept = [], []
    for volume in volumes:
        labels = sliding_probs(model, torch.from_numpy(np.ascontiguousarray(volume.image))[None], config)[0].argmax(0)
        target = torch.from_numpy(volume.mask.astype(np.int64))
        plain.append(dice_per_class(labels, target, len(names) + 1))
        largest = keep_largest_component(labels.numpy(), range(1, len(names) + 1))
        kept.append(dice_per_class(torch.from_numpy(largest), target, len(names) + 1))
    plain_mean, kept_mean = np.nanmean(np.stack(plain), 0), np.nanmean(np.stack(kept), 0)
    return {"keep_largest": {n: bool(k > p) for n, p, k in zip(names, plain_mean, kept_mean)},
            "rule": "auto: chosen on the validation split",
            "validation_dice": {n: {"plain": round(float(p), 4), "largest_component": round(float(k), 4)}
                                for n, p, k in zip(names, plain_mean, kept_mean)}}


def keep_largest_component(labels: np.ndarray, classes) -> np.ndarray:
    """Label map with, for each class in ``classes``, only its largest connected component (face-connected)."""
    from scipy import ndimage

    out = labels.copy()
    for k in classes:
        components, count = ndimage.label(labels == k)
        if count > 1:
            sizes = np.bincount(components.ravel())[1:]
            out[(components > 0) & (components != 1 + int(np.argmax(sizes)))] = 0
    return out


@dataclass
class Segmentation:
    """A predicted mask on the input's grid: ``labels (*S)`` in the dataset's mask values, ``probs (K, *S)``."""

    labels: np.ndarray
    probs: np.ndarray | None
    image: Image

    def as_image(self) -> Image:
        """The mask with exactly the input image's spacing, origin and direction."""
        return Image(self.labels[None], self.image.spacing_mm, self.image.origin_mm, self.image.direction,
                     spacing_known=self.image.spacing_known, meta={})


def segment_image(model, image: Image, config: Config, postprocess: dict, *, mirror: bool = False,
                  keep_probs: bool = False, where: str = "image") -> Segmentation:
    """Preprocess like training, slide the network over the whole image, map back to its own grid."""
    array = prepare_image(image, config.data, where)
    probs = sliding_probs(model, torch.from_numpy(array)[None], config, mirror=mirror)[0].cpu()
    probs = to_original_grid(probs, image.spatial_shape)
    indices = probs.argmax(0).numpy().astype(np.uint8)
    names = list(config.dataset.class_names)
    chosen = [names.index(n) for n, keep in postprocess.get("keep_largest", {}).items() if keep and n in names]
    if chosen:
        indices = keep_largest_component(indices, chosen)
    values = np.asarray(config.dataset.label_values or range(len(names)))
    dtype = np.uint8 if values.max() < 256 else np.uint16
    return Segmentation(values[indices].astype(dtype), probs.numpy() if keep_probs else None, image)
