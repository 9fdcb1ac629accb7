"""Model weights on disk: atomic saving, safe loading (never unpickling code), and transfer between networks.

``transfer_weights`` takes a medlens run or checkpoint (tensors matched by name and shape), or a file
in a layout users download (torchvision / timm / MedicalNet; see :mod:`medlens.models.pretrained`),
or the name of a known file that ``medlens fetch weights NAME`` put in the weights folder.
"""

from __future__ import annotations

from pathlib import Path

import torch

from medlens._files import write_atomic
from medlens.errors import ConfigError
from medlens.models import pretrained


def save_atomic(obj, path: Path) -> Path:
    """``torch.save`` that leaves the old file or the new one, never a half-written one."""
    return write_atomic(path, lambda f: torch.save(obj, f))


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Model weights from a ``weights.pt``, a Lightning ``.ckpt``, a run folder, or a downloaded file.

    Torch files are read with ``weights_only`` loading (no code is unpickled); ``.safetensors`` files
    with safetensors. A ``{"state_dict": ...}`` wrapper (MedicalNet, Lightning) is opened, and the
    ``module.`` prefix DataParallel writes is removed.

    Raises:
        ConfigError: missing or unreadable file, or a file that holds no weights.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "weights.pt"
    if not path.is_file():
        raise ConfigError(f"{path}: no such checkpoint; give a run folder, its weights.pt, a .ckpt file, a downloaded "
                          f"weights file, or a known name ({', '.join(pretrained.KNOWN_WEIGHTS)})")
    content = _read_weights_file(path)
    state = content.get("state_dict", content) if isinstance(content, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path}: holds no state_dict of tensors")
    if all(k.startswith("module.") for k in state):  # saved from torch.nn.DataParallel (MedicalNet)
        state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("model.") for k in state):  # a Lightning checkpoint of a task's module
        state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    return state


def _read_weights_file(path: Path):
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling/parsing failure means: not a plain weights file
        raise ConfigError(f"{path}: not a loadable weights file ({str(exc).splitlines()[0]}); only plain tensors "
                          "are accepted (torch.load weights_only=True, or .safetensors)") from None


def resolve_source(source) -> Path:
    """``--init-from``'s value as a path: an existing path as is, a known name as its fetched file.

    Raises:
        ConfigError: a known name whose file is absent (the message says how to fetch it, or what to put where).
    """
    path = Path(source)
    if not path.exists() and str(source) in pretrained.KNOWN_WEIGHTS:
        return pretrained.locate_weights(str(source))
    return path


def layout_network(source, spatial_dims: int) -> str | None:
    """The registry network a downloaded weights file (or known name) is for, e.g. ``"resnet18_2d"``.

    For the plan of a run started ``--init-from`` such a file (its width is 1.0). None for a medlens
    run or checkpoint (its own plan says its network), an unrecognised file, or a file of other dimensions.

    Raises:
        ConfigError: a missing or unreadable file, or a known name not fetched yet.
    """
    state = load_state_dict(resolve_source(source))
    if any(k.startswith(("backbone.", "head.", "members.")) for k in state):
        return None
    layout = pretrained.recognise_layout(state)
    if layout is None or layout.family is None or layout.spatial_dims != spatial_dims:
        return None
    return f"{layout.family}_{layout.spatial_dims}d"


def transfer_weights(model: torch.nn.Module, source) -> dict:
    """Load matching weights from ``source`` into ``model``; report what was loaded, re-initialised and why.

    ``source`` is a medlens run folder or checkpoint, a downloaded file in a known layout
    (torchvision / timm ResNet, DenseNet-121, EfficientNet-B0; MedicalNet 3D ResNet), or a known
    name (``resnet18-imagenet``). For a medlens source, tensors whose shapes differ (typically the
    head, when the class count changes) keep their fresh initialisation. A single network's weights
    seed every member of an ensemble.

    Returns:
        ``source``, ``layout`` (what the file was recognised as), ``loaded`` (count), ``reinitialised``
        and ``missing`` (sorted network keys), ``groups`` (``action``, ``why``, ``tensors``, ``keys``) and
        ``summary`` (one line for the log).

    Raises:
        ConfigError: less than half of the model's tensors match (another network, task or width), or a
            downloaded layout for another network family or dimensionality (naming the one it fits).
    """
    source = resolve_source(source)
    state = load_state_dict(source)
    first = model.members[0] if getattr(model, "members", None) is not None else model
    if hasattr(first, "encoders"):  # a fusion network: a one-image network's backbone seeds every view's encoder
        state = _onto_encoders(first, state, source)
    if hasattr(first, "backbone") and not any(k.startswith(("backbone.", "head.", "members.")) for k in state):
        backbone_keys = [k.removeprefix("backbone.") for k in first.state_dict() if k.startswith("backbone.")]
        layout = pretrained.recognise_layout(state, backbone_keys)
        if layout is not None:
            return _transfer_layout(model, first, state, layout, source)
    return _transfer_medlens(model, state, source)


def _onto_encoders(fused: torch.nn.Module, state: dict, source: Path) -> dict:
    """``state`` of a one-image medlens network (``backbone.*``) renamed onto each of ``fused``'s view encoders
    (``encoders.<i>.*``); the head and the fusion layers keep their fresh initialisation. A fused network's own
    weights (``encoders.*``) are returned as they are.

    Raises:
        ConfigError: a downloaded layout (ImageNet, MedicalNet): give a one-image run trained from it instead.
    """
    if any(k.startswith(("encoders.", "members.")) for k in state):
        return state
    if not any(k.startswith("backbone.") for k in state):
        raise ConfigError(f"{source}: a downloaded weights file seeds one-image networks only; train (or pretrain) a "
                          "one-image run from it with --init-from, then start this fused run from that run")
    return {f"encoders.{i}.{k.removeprefix('backbone.')}": v for i in range(len(fused.encoders))
            for k, v in state.items() if k.startswith("backbone.")}


def _transfer_medlens(model: torch.nn.Module, state: dict, source: Path) -> dict:
    """A medlens run or checkpoint: tensors matched by name and shape."""
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
                          + _other_network_hint(state))
    own.update(matched)
    model.load_state_dict(own)
    groups = [{"action": "re-initialised", "why": "shape: differs from the checkpoint's (the head, when the class "
               "count changes)", "tensors": len(reshaped), "keys": reshaped}] if reshaped else []
    summary = f"medlens weights: loaded {len(matched)} of {len(own)} tensors" + _describe(groups)
    return {"source": str(source), "layout": "medlens run or checkpoint", "loaded": len(matched),
            "reinitialised": reshaped, "missing": missing, "groups": groups, "summary": summary}


def _transfer_layout(model: torch.nn.Module, first: torch.nn.Module, state: dict, layout, source: Path) -> dict:
    """A downloaded file in a recognised layout, mapped onto every member's network."""
    own = model.state_dict()
    prefixes = [f"members.{i}." for i in range(len(model.members))] if first is not model else [""]
    single = first.state_dict()
    pretrained.check_fits(layout, first.name, first.spatial_dims, source)
    mapped = pretrained.map_onto(single, state, layout, network=first.name,
                                 small=min(first.input_size) < pretrained.SMALL_INPUT)
    counted = [k for k in single if not k.endswith("num_batches_tracked")]
    from_file = [k for k in mapped.from_file if not k.endswith("num_batches_tracked")]
    if len(from_file) < len(counted) / 2:
        shape = next((why for (_, why) in mapped.groups if why.startswith("shape")), "no shared names")
        raise ConfigError(f"{source}: a {layout.name} file, but only {len(from_file)} of {len(counted)} tensors of "
                          f"{first.name} take its weights ({shape}); the network is built at another width than the "
                          "file: set --set model.width=1.0 (the width the file was trained at)")
    for prefix in prefixes:
        own.update({prefix + k: v for k, v in mapped.tensors.items()})
    model.load_state_dict(own)
    groups = [{"action": action, "why": why, "tensors": len(keys) * len(prefixes),
               "keys": [p + k for p in prefixes for k in keys]} for (action, why), keys in mapped.groups.items()]
    loaded = len(mapped.from_file) * len(prefixes)
    summary = f"{layout.name} file: loaded {loaded} of {len(own)} tensors of {model.name}{_describe(groups)}"
    if mapped.unused:
        summary += f"; {len(mapped.unused)} tensors of the file have no place in the network"
    return {"source": str(source), "layout": layout.name, "loaded": loaded,
            "reinitialised": _keys(groups, "re-initialised"), "adapted": _keys(groups, "adapted"),
            "missing": _keys(groups, "re-initialised", ("not in the file", "head")),
            "groups": groups, "unused": mapped.unused, "summary": summary}


def _other_network_hint(state: dict) -> str:
    if any(k.startswith(("backbone.", "head.", "members.")) for k in state):
        return "it is a checkpoint of another network or task. Use a run of the same model name"
    return ("it is neither a medlens checkpoint nor a layout medlens recognises (torchvision / timm ResNet-18/34/50, "
            "DenseNet-121, EfficientNet-B0; MedicalNet 3D ResNet-18/34/50; see docs/guide/pretrained-weights.md)")


def _keys(groups: list[dict], action: str, why: tuple[str, ...] = ("",)) -> list[str]:
    """Sorted keys of the groups with this action whose reason starts with one of ``why``."""
    return sorted(k for g in groups if g["action"] == action and g["why"].startswith(why) for k in g["keys"])


def _describe(groups: list[dict]) -> str:
    """``"; re-initialised head.fc.weight, head.fc.bias (head: ...)"`` for every group, or ``""``."""
    parts = []
    for g in groups:
        keys = g["keys"]
        named = ", ".join(keys) if len(keys) <= 2 else f"{len(keys)} tensors ({keys[0]}, ...)"
        parts.append(f"; {g['action']} {named} ({g['why']})")
    return "".join(parts)
