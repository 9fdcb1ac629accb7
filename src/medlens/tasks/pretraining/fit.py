"""What pretraining hands the engine's training loop (images of the train and val splits, the SimCLR module,
loaders), and ``pretrain.json``, written once the best encoder is back."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medlens._files import write_json_atomic
from medlens.config import Config
from medlens.errors import DatasetError
from medlens.tasks.base import Fit

CSV_METRICS = ("train_loss", "val_loss")
PRETRAIN_JSON = "pretrain.json"


@dataclass
class ImageSplit:
    """One split's preprocessed images ``(N, C, *input_size)`` (labels are not read)."""

    name: str
    images: np.ndarray


def prepare_fit(task, config: Config, dataset, cases: dict, *, world_size: int, log) -> Fit:
    """Preprocess the train and val images once; the ContrastiveModule around a seeded network, and loaders."""
    from medlens.data.loading import EpochSampler, make_loader
    from medlens.tasks.pretraining.module import ContrastiveModule

    train, val = (split_images(dataset, name, cases[name], config) for name in ("train", "val"))
    t, workers = config.train, config.data.num_workers
    steps = -(-len(train.images) // (t.batch_size * max(world_size, 1)))
    torch.manual_seed(t.seed)
    module = ContrastiveModule(task.build_model(config), config, steps_per_epoch=steps)
    loader = make_loader(train.images, None, t.batch_size, sampler=EpochSampler(len(train.images), t.seed),
                         num_workers=workers)
    # the validation batch is the training batch: NT-Xent's value depends on how many negatives a batch holds
    val_loader = make_loader(val.images, None, t.batch_size, num_workers=workers)
    log(f"pretraining on {len(train.images)} training images ({len(val.images)} for the validation loss)")
    return Fit(module, loader, val_loader, config, steps, validation=val, csv_metrics=CSV_METRICS,
               select_by="val_loss")


def split_images(dataset, name: str, cases: list, config: Config) -> ImageSplit:
    """Read and preprocess one split's images.

    Raises:
        DatasetError: fewer than 2 images (a contrastive batch needs another image to contrast with).
    """
    from medlens.data.tensors import preprocess_cases

    if len(cases) < 2:
        raise DatasetError(f"the {name} split holds {len(cases)} image(s); contrastive pretraining needs at least 2 "
                           "(each image is contrasted with the others of its batch): add images or change the splits")
    return ImageSplit(name, preprocess_cases(dataset, cases, config.data))


def finish(run, config: Config, model, fit: Fit, log) -> str:
    """Write ``pretrain.json``: what the encoder was trained on and how far its losses came."""
    rows = run.read_epoch_rows()
    last = rows[-1] if rows else {}
    n, steps, done = len(fit.train_loader.dataset), max(fit.steps_per_epoch, 1), int(fit.module.trainer.global_step)
    seen = (done // steps) * n + (done % steps) * config.train.batch_size  # the last batch of an epoch is smaller
    val_losses = [v for r in rows if (v := _number(r.get("val_loss"))) is not None]
    summary = {"method": config.pretrain.method, "network": config.model.name, "feature_size": model.num_features,
               "train_images": n, "val_images": len(fit.validation.images), "optimisation_steps": done,
               "epochs": int(fit.module.trainer.current_epoch), "images_seen": seen,
               "final_train_loss": _number(last.get("train_loss")), "final_val_loss": _number(last.get("val_loss")),
               "best_val_loss": min(val_losses, default=None),
               "fine_tune": f"medlens train DATA --init-from {run.root}"}
    write_json_atomic(run.root / PRETRAIN_JSON, summary)
    return f"encoder of {model.num_features} features after {seen} images seen"


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return round(number, 6) if np.isfinite(number) else None
