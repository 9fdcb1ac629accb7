"""Model weights on disk: atomic saving, safe loading (never unpickling code), and transfer between networks."""

from __future__ import annotations

from pathlib import Path

import torch

from medlens._files import write_atomic
from medlens.errors import ConfigError


def save_atomic(obj, path: Path) -> Path:
    """``torch.save`` that leaves the old file or the new one, never a half-written one."""
    return write_atomic(path, lambda f: torch.save(obj, f))


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Model weights from a ``weights.pt``, a Lightning ``.ckpt`` or a run folder (``weights_only`` loading).

    Raises:
        ConfigError: missing or unreadable file, or a file that holds no weights.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "weights.pt"
    if not path.is_file():
        raise ConfigError(f"{path}: no such checkpoint; give a run folder, its weights.pt, or a .ckpt file")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means: not a plain weights file
        raise ConfigError(f"{path}: not a loadable weights file ({str(exc).splitlines()[0]}); only plain tensors "
                          "are accepted (torch.load weights_only=True)") from None
    state = content.get("state_dict", content) if isinstance(content, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path}: holds no state_dict of tensors")
    if any(k.startswith("model.") for k in state):  # a Lightning checkpoint of a task's module
        state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    return state


def transfer_weights(model: torch.nn.Module, source: Path) -> dict:
    """Load matching weights from ``source`` into ``model``; report what was re-initialised.

    Tensors whose shapes differ (typically the classifier head, when the class count changes) keep
    their fresh initialisation. A single network's weights seed every member of an ensemble.
    Raises ConfigError when less than half of the model's tensors match,
    which means the checkpoint belongs to another network or task.
    """
    state = load_state_dict(source)
    own = model.state_dict()
    members = getattr(model, "members", None)
    if members is not None and not any(k.startswith("members.") for k in state):  # one network -> each member
        state = {f"members.{i}.{k}": v for i in range(len(members)) for k, v in state.items()}
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    reshaped = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
    missing = sorted(k for k in own if k not in state)
    if len(matched) < len(own) / 2:
        raise ConfigError(f"{source}: only {len(matched)} of {len(own)} weight tensors fit this "
                          f"{getattr(model, 'name', 'model')} (e.g. missing {missing[:1] or reshaped[:1]}); "
                          "it is a checkpoint of another network or task. Use a run of the same model name")
    own.update(matched)
    model.load_state_dict(own)
    return {"source": str(source), "loaded": len(matched), "reinitialised": reshaped, "missing": missing}
