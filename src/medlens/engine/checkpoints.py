"""Lightning checkpoints written atomically (weights on disk: :mod:`medlens.models.weights`)."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.plugins.io import TorchCheckpointIO

from medlens.models.weights import save_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file, fsyncs, then renames: a kill -9 at any moment
    leaves the previous checkpoint or the new one, never a half-written file."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        save_atomic(checkpoint, Path(path))
