"""Lightning callbacks medlens adds: one ``metrics.csv`` row per epoch that survives resumes."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import lightning.pytorch as pl

from medlens._files import write_text_atomic
from medlens.runs import read_epoch_rows


class EpochCSV(pl.Callback):
    """Appends ``epoch, <metrics>..., lr, elapsed_s`` after each epoch (the metrics the task names, e.g.
    train_loss, val_loss, val_auc, val_accuracy; or train_loss, val_dice and val_dice per class).

    On a resumed run, rows of epochs the checkpoint had not reached are dropped first, so the file
    always describes the training that the weights come from.
    """

    def __init__(self, path: Path, metrics: tuple[str, ...]):
        self.path, self.start = Path(path), time.perf_counter()
        self.columns = ["epoch", *metrics, "lr", "elapsed_s"]
        self.elapsed_before = 0.0

    def on_train_start(self, trainer, pl_module) -> None:  # after a checkpoint restored the epoch
        if trainer.global_rank != 0:
            return
        rows = read_epoch_rows(self.path)
        kept = [r for r in rows if int(r["epoch"]) < trainer.current_epoch]
        self.elapsed_before = float(kept[-1]["elapsed_s"]) if kept else 0.0
        self.start = time.perf_counter()
        _write(self.path, kept, self.columns)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.global_rank != 0 or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        value = lambda k: f"{float(metrics[k]):.6g}" if k in metrics else ""  # noqa: E731
        lr = trainer.optimizers[0].param_groups[-1]["lr"] if trainer.optimizers else ""
        row = {"epoch": trainer.current_epoch, **{k: value(k) for k in self.columns[1:-2]}, "lr": f"{lr:.6g}",
               "elapsed_s": f"{self.elapsed_before + time.perf_counter() - self.start:.2f}"}
        _write(self.path, read_epoch_rows(self.path) + [row], self.columns)


def _write(path: Path, rows: list[dict], columns: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())
