"""Lightning callbacks medlens adds: one ``metrics.csv`` row per epoch that survives resumes, and the time budget."""

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


class TimeBudget(pl.Callback):
    """Stops training once ``budget_s`` seconds have passed since ``started``, between two steps, mid-epoch if
    need be; Lightning then validates the weights it has and writes the checkpoints, as on any early stop.

    Lightning's own ``max_time`` starts counting when ``trainer.fit`` begins; this clock starts when the run's
    work began (``started``, a :func:`time.perf_counter` reading taken before preprocessing; a race of
    candidates before it has already taken its share off the budget), so reading and preprocessing the splits
    count too. A resumed run adds the time its checkpoint had used.

    Args:
        budget_s: seconds the run may spend (> 0).
        started: :func:`time.perf_counter` when the run's work began in this process.
    """

    def __init__(self, budget_s: float, started: float):
        self.budget_s, self.started = float(budget_s), started
        self.used_before = 0.0  # by the runs this one resumes
        self.epochs_completed, self.mid_epoch, self.stopped = 0, False, False
        self.stopped_at_s: float | None = None  # used_s when the budget stopped training

    def used_s(self) -> float:
        return self.used_before + time.perf_counter() - self.started

    def summary(self) -> dict:
        """For ``run.json``: ``budget_s``; ``used_s`` so far (the last validation and checkpoint included);
        ``stopped`` (the budget ended training), ``stopped_at_s`` (``used_s`` then, else ``None``), ``mid_epoch``
        (it cut an epoch short) and ``epochs_completed`` (whole epochs)."""
        at = None if self.stopped_at_s is None else round(self.stopped_at_s, 2)
        return {"budget_s": round(self.budget_s, 2), "used_s": round(self.used_s(), 2), "stopped": self.stopped,
                "stopped_at_s": at, "mid_epoch": self.mid_epoch, "epochs_completed": self.epochs_completed}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        used = self.used_s()
        out_of_time = trainer.strategy.broadcast(used >= self.budget_s)  # rank 0's clock decides for all
        if out_of_time and not trainer.should_stop:
            self.stopped, self.stopped_at_s = True, used
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        done = trainer.fit_loop.epoch_loop.batch_progress.current.completed  # restored on a mid-epoch resume
        if done >= trainer.num_training_batches:
            self.epochs_completed += 1
        else:
            self.mid_epoch = True

    def state_dict(self) -> dict:
        return {"used_s": self.used_s(), "epochs_completed": self.epochs_completed}

    def load_state_dict(self, state_dict: dict) -> None:
        self.used_before = float(state_dict.get("used_s", 0.0))
        self.epochs_completed = int(state_dict.get("epochs_completed", 0))
