"""Weights from elsewhere: torchvision / timm ImageNet files and MedicalNet 3D ResNets on registry networks.

>>> layout = recognise_layout(state)              # from the file's keys: "torchvision/timm ResNet-18 (2D)"
>>> mapped = map_onto(model, state, layout)       # tensors by name, shapes checked, stem/head/channels decided

A file is recognised from its key patterns, never from its name. ResNets and DenseNets carry the
same names in torchvision, timm, MedicalNet and MONAI (up to MONAI's ``layers.`` inside a dense
layer, the rule of ``monai.networks.nets.densenet._load_state_dict``, and DataParallel's ``module.``
that MONAI's MedicalNet loader strips). EfficientNet-B0 blocks are named differently by each
library (timm ``blocks.S.I.conv_dw``, torchvision ``features.S+1.I.block.J``, lukemelas/MONAI
``_blocks.N._depthwise_conv``), so each block's tensors are mapped role by role onto MONAI's
``_blocks.S.N``; the block index comes from the network, and every shape is checked. MONAI's own
converters download as they convert, so their rules are reproduced here, not called.

The known downloadable files (``medlens fetch weights NAME``) are in :data:`KNOWN_WEIGHTS`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from medlens._download import Checksum, download_verified
from medlens.errors import ConfigError

SMALL_INPUT = 64  # as medlens.models.classifiers: smaller images get a 3x3 stride-1 stem
_RESNET_DEPTHS = {(False, (1, 1, 1, 1)): 10, (False, (2, 2, 2, 2)): 18, (False, (3, 4, 6, 3)): 34,
                  (True, (3, 4, 6, 3)): 50, (True, (3, 4, 23, 3)): 101, (True, (3, 8, 36, 3)): 152,
                  (True, (3, 24, 36, 3)): 200}
_DENSENET_DEPTHS = {(6, 12, 24, 16): 121, (6, 12, 32, 32): 169, (6, 12, 48, 32): 201}
_EFFICIENTNET_B0 = (1, 2, 2, 3, 3, 4, 1)  # blocks per stage
_DENSE_LAYER = re.compile(r"^(features\.denseblock\d+\.denselayer\d+)\.(norm|conv)\.?([12])\.(.+)$")


@dataclass
class Layout:
    """A source layout recognised from a file's keys.

    Attributes:
        name: what the file is, for messages and run.json (``"torchvision/timm ResNet-18 (2D, ImageNet)"``).
        family: the registry family it fits (``"resnet18"``), or None when no registry network has it.
        spatial_dims: 2 or 3, from the input convolution.
        rename: source key -> key inside the classifier's ``backbone`` (None: the file's own head).
        notes: what the reader of the report should know (e.g. MedicalNet's shortcut type).
    """

    name: str
    family: str | None
    spatial_dims: int
    rename: Callable[[str], str | None]
    notes: list[str] = field(default_factory=list)


def recognise_layout(state: dict[str, torch.Tensor], backbone_keys: list[str] = ()) -> Layout | None:
    """The source layout of a state dict (``module.`` already stripped), or None when it is none of them.

    Args:
        state: the file's tensors.
        backbone_keys: the target network's keys inside ``backbone`` (EfficientNet's block numbering).
    """
    for recognise in (_resnet_layout, _densenet_layout, _efficientnet_layout):
        layout = recognise(state, list(backbone_keys))
        if layout is not None:
            return layout
    return None


def _count(state: dict, pattern: str) -> int:
    """1 + the largest number the pattern's group takes in the keys (0 when none match)."""
    found = [int(m.group(1)) for k in state if (m := re.match(pattern, k))]
    return max(found) + 1 if found else 0


def _resnet_layout(state: dict, _backbone_keys: list[str]) -> Layout | None:
    if "conv1.weight" not in state or "layer1.0.conv1.weight" not in state:
        return None
    from monai.networks.nets.resnet import get_medicalnet_pretrained_resnet_args

    bottleneck = "layer1.0.conv3.weight" in state
    blocks = tuple(_count(state, rf"layer{i}\.(\d+)\.") for i in range(1, 5))
    depth = _RESNET_DEPTHS.get((bottleneck, blocks))
    dims = state["conv1.weight"].ndim - 2
    title = f"ResNet-{depth}" if depth else f"ResNet with {'bottleneck' if bottleneck else 'basic'} blocks {blocks}"
    notes = []
    if dims == 3:
        name = f"MedicalNet {title} (3D)"
        if depth and get_medicalnet_pretrained_resnet_args(depth)[1] == "A":
            notes.append(f"MedicalNet ResNet-{depth} uses shortcut A (parameter-free), the registry shortcut B: "
                         "its projection shortcuts start fresh")
    else:
        name = f"torchvision/timm {title} ({dims}D, ImageNet)"
    family = f"resnet{depth}" if depth in (18, 34, 50) else None
    return Layout(name, family, dims, lambda k: None if k.startswith(("fc.", "conv_seg.")) else k, notes)


def _densenet_layout(state: dict, _backbone_keys: list[str]) -> Layout | None:
    first_layer = any(k.startswith("features.denseblock1.denselayer1.") for k in state)
    if not first_layer or "features.conv0.weight" not in state:
        return None
    blocks = tuple(_count(state, rf"features\.denseblock{i}\.denselayer(\d+)\.") - 1 for i in range(1, 5))
    depth = _DENSENET_DEPTHS.get(blocks)
    dims = state["features.conv0.weight"].ndim - 2
    title = f"DenseNet-{depth}" if depth else f"DenseNet with dense blocks {blocks}"

    def rename(key: str) -> str | None:
        if key.startswith("classifier."):
            return None
        # torchvision's file names a dense layer's parts "norm.1"; newer code and timm "norm1"; MONAI "layers.norm1"
        return _DENSE_LAYER.sub(r"\1.layers.\2\3.\4", key)

    return Layout(f"torchvision/timm {title} ({dims}D, ImageNet)", "densenet121" if depth == 121 else None, dims,
                  rename)


def _efficientnet_layout(state: dict, backbone_keys: list[str]) -> Layout | None:
    block_of = _monai_blocks(backbone_keys)
    if "conv_stem.weight" in state and "blocks.0.0.conv_dw.weight" in state:
        source, stem = "timm", "conv_stem.weight"
        stages = tuple(_count(state, rf"blocks\.{s}\.(\d+)\.") for s in range(_count(state, r"blocks\.(\d+)\.")))
        rename = _timm_efficientnet(state, block_of)
    elif "features.0.0.weight" in state and "features.1.0.block.0.0.weight" in state:
        source, stem = "torchvision", "features.0.0.weight"
        last = _count(state, r"features\.(\d+)\.") - 1
        stages = tuple(_count(state, rf"features\.{s}\.(\d+)\.") for s in range(1, last))
        rename = _torchvision_efficientnet(state, block_of, last)
    elif "_conv_stem.weight" in state and "_blocks.0._depthwise_conv.weight" in state:
        source, stem = "lukemelas (MONAI)", "_conv_stem.weight"
        stages = (_count(state, r"_blocks\.(\d+)\."),)
        rename = _lukemelas_efficientnet(block_of)
    else:
        return None
    b0 = state[stem].shape[0] == 32 and stages in (_EFFICIENTNET_B0, (sum(_EFFICIENTNET_B0),))
    title = "EfficientNet-B0" if b0 else f"EfficientNet (stem width {state[stem].shape[0]}, blocks {stages})"
    return Layout(f"{source} {title} ({state[stem].ndim - 2}D, ImageNet)", "efficientnetb0" if b0 else None,
                  state[stem].ndim - 2, rename)


def _monai_blocks(backbone_keys: list[str]) -> dict[tuple[int, int], str]:
    """``(stage, index in stage)`` and ``(-1, global index)`` -> MONAI's ``_blocks.S.N`` of the target network."""
    found = sorted({(int(m.group(1)), int(m.group(2))) for k in backbone_keys
                    if (m := re.match(r"_blocks\.(\d+)\.(\d+)\.", k))}, key=lambda sn: sn[1])
    block_of = {(-1, n): f"_blocks.{s}.{n}" for s, n in found}
    for s in {s for s, _ in found}:
        for i, n in enumerate(sorted(n for t, n in found if t == s)):
            block_of[(s, i)] = f"_blocks.{s}.{n}"
    return block_of


# each library's names for the parts of an MBConv block -> MONAI's (MBConvBlock)
_TIMM_DEPTHWISE = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "se.conv_reduce": "_se_reduce",
                   "se.conv_expand": "_se_expand", "conv_pw": "_project_conv", "bn2": "_bn2"}
_TIMM_INVERTED = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
                  "se.conv_reduce": "_se_reduce", "se.conv_expand": "_se_expand", "conv_pwl": "_project_conv",
                  "bn3": "_bn2"}
_TORCHVISION_DEPTHWISE = {"block.0.0": "_depthwise_conv", "block.0.1": "_bn1", "block.1.fc1": "_se_reduce",
                          "block.1.fc2": "_se_expand", "block.2.0": "_project_conv", "block.2.1": "_bn2"}
_TORCHVISION_INVERTED = {"block.0.0": "_expand_conv", "block.0.1": "_bn0", "block.1.0": "_depthwise_conv",
                         "block.1.1": "_bn1", "block.2.fc1": "_se_reduce", "block.2.fc2": "_se_expand",
                         "block.3.0": "_project_conv", "block.3.1": "_bn2"}


def _part(rest: str, roles: dict[str, str]) -> str | None:
    """``"se.conv_reduce.weight"`` -> ``"_se_reduce.weight"`` by the role table; None for an unknown part."""
    module, _, parameter = rest.rpartition(".")
    return f"{roles[module]}.{parameter}" if module in roles else None


def _timm_efficientnet(state: dict, block_of: dict) -> Callable[[str], str | None]:
    top = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1"}

    def rename(key: str) -> str | None:
        if key.startswith("classifier."):
            return None
        if m := re.match(r"blocks\.(\d+)\.(\d+)\.(.+)$", key):
            s, i = int(m.group(1)), int(m.group(2))
            inverted = f"blocks.{s}.{i}.conv_pwl.weight" in state
            part = _part(m.group(3), _TIMM_INVERTED if inverted else _TIMM_DEPTHWISE)
            return f"{block_of[(s, i)]}.{part}" if part and (s, i) in block_of else key
        return _part(key, top) or key

    return rename


def _torchvision_efficientnet(state: dict, block_of: dict, last: int) -> Callable[[str], str | None]:
    top = {"features.0.0": "_conv_stem", "features.0.1": "_bn0", f"features.{last}.0": "_conv_head",
           f"features.{last}.1": "_bn1"}

    def rename(key: str) -> str | None:
        if key.startswith("classifier."):
            return None
        if m := re.match(r"features\.(\d+)\.(\d+)\.(block\..+)$", key):
            s, i = int(m.group(1)) - 1, int(m.group(2))
            inverted = any(k.startswith(f"features.{s + 1}.{i}.block.3.") for k in state)
            part = _part(m.group(3), _TORCHVISION_INVERTED if inverted else _TORCHVISION_DEPTHWISE)
            return f"{block_of[(s, i)]}.{part}" if part and (s, i) in block_of else key
        return _part(key, top) or key

    return rename


def _lukemelas_efficientnet(block_of: dict) -> Callable[[str], str | None]:
    def rename(key: str) -> str | None:
        if key.startswith("_fc."):
            return None
        if (m := re.match(r"_blocks\.(\d+)\.(.+)$", key)) and (-1, int(m.group(1))) in block_of:
            return f"{block_of[(-1, int(m.group(1)))]}.{m.group(2)}"
        return key

    return rename


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """An input convolution ``(O, S, *kernel)`` for ``in_channels`` inputs, as timm's ``adapt_input_conv``.

    One channel: the sum over the file's channels (a grey image then gets the response the RGB
    filters give the same grey image in colour). Other counts: the channels repeated cyclically and
    scaled by ``S / in_channels`` so the summed response keeps its size.

    Returns:
        ``(O, in_channels, *kernel)``.
    """
    source = weight.shape[1]
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_channels / source)
    return weight.repeat(1, repeats, *[1] * (weight.ndim - 2))[:, :in_channels] * (source / in_channels)


# --- mapping onto a registry network --------------------------------------------------------------


@dataclass
class Mapped:
    """What :func:`map_onto` decided for one network.

    Attributes:
        tensors: network key -> tensor to load (the file's, or adapted from it).
        groups: ``(action, why)`` -> network keys, action ``"re-initialised"`` or ``"adapted"``.
        from_file: the keys of ``tensors`` that came from the file (an adapted input convolution included).
        unused: the file's keys with no place in the network (besides its own head).
        dropped: the file's own head keys.
    """

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    groups: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    from_file: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def add(self, action: str, why: str, key: str) -> None:
        self.groups.setdefault((action, why), []).append(key)


def check_fits(layout: Layout, network: str, spatial_dims: int, source: Path) -> None:
    """Refuse a file of another family or dimensionality before anything is loaded.

    Raises:
        ConfigError: naming the layout found, the network, and what to do (``--set model.name=...``).
    """
    family = network.rsplit("_", 1)[0]
    if layout.family == family and layout.spatial_dims == spatial_dims:
        return
    fits = f"{layout.family}_{layout.spatial_dims}d" if layout.family else None
    if fits is None:
        what = ("no registry network has this layout; files that fit: torchvision/timm ResNet-18/34/50, DenseNet-121, "
                "EfficientNet-B0 (2D) and MedicalNet ResNet-18/34/50 (3D)")
    elif layout.family == family:
        what = (f"it holds {layout.spatial_dims}D weights for {fits}; use that network for {layout.spatial_dims}D "
                f"images, or a {spatial_dims}D file" + (" (MedicalNet for 3D)" if spatial_dims == 3 else ""))
    else:
        what = f"train the network it is for: --set model.name={fits}"
    raise ConfigError(f"{source}: a {layout.name} weights file matches no layer of {network}; {what}")


def map_onto(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], layout: Layout, *, network: str,
             small: bool) -> Mapped:
    """Decide, tensor by tensor, what of ``state`` goes into one classifier's ``own`` state dict.

    Args:
        own: the network's state dict (``backbone.*``, ``head.*``).
        state: the file's tensors (``module.`` stripped).
        layout: from :func:`recognise_layout`.
        network, small: the registry name, and whether it has the small-image stem (the input convolution's
            channels come from ``own``).

    Returns:
        :class:`Mapped`; nothing is loaded yet.
    """
    stem = next(k for k, v in own.items() if k.startswith("backbone.") and v.ndim >= 3)
    mapped, targets = Mapped(), set()
    for key, value in state.items():
        target = layout.rename(key)
        if target is None:
            mapped.dropped.append(key)
            continue
        target = f"backbone.{target}"
        targets.add(target)
        if target not in own:
            mapped.unused.append(key)
        elif value.shape == own[target].shape:
            mapped.tensors[target] = value
        elif target == stem:
            _map_stem(mapped, target, value, own[target].shape, network=network, small=small)
        else:
            mapped.add("re-initialised", f"shape: the file has {tuple(value.shape)} where {network} has "
                       f"{tuple(own[target].shape)}", target)
    mapped.from_file = list(mapped.tensors)
    if small and stem in mapped.tensors:  # same kernel (EfficientNet's 3x3), but no longer downsampling
        mapped.add("adapted", f"stem: loaded, but {network} runs it at stride 1 without pooling (its stem for "
                   "images under 64 px)", stem)
    _account_rest(mapped, own, targets, layout)
    return mapped


def _map_stem(mapped: Mapped, target: str, value: torch.Tensor, want: torch.Size, *, network: str,
              small: bool) -> None:
    """The input convolution: another kernel (small-image stem) or another channel count (adapted)."""
    if value.shape[2:] != want[2:] or value.shape[0] != want[0]:
        kernel = "x".join(str(s) for s in value.shape[2:])
        why = (f"stem: {network} uses a {'x'.join(str(s) for s in want[2:])} stride-1 stem for images under 64 px; "
               f"the file's {kernel} stem does not fit") if small and value.shape[0] == want[0] else \
            f"shape: the file has {tuple(value.shape)} where {network} has {tuple(want)}"
        mapped.add("re-initialised", why, target)
        return
    source, channels = value.shape[1], want[1]
    mapped.tensors[target] = adapt_input_conv(value, channels)
    how = "summed over its channels into 1" if channels == 1 else \
        f"repeated to {channels} channels and scaled by {source}/{channels}"
    mapped.add("adapted", f"channels: the file's {source}-channel input convolution {how} (timm's "
               "adapt_input_conv)", target)


def _account_rest(mapped: Mapped, own: dict, targets: set[str], layout: Layout) -> None:
    """The network's tensors the file did not fill: head, bias-free convolutions, absent layers."""
    head_classes = next((v.shape[0] for k, v in own.items() if k.startswith("head.") and v.ndim == 2), None)
    file_head = f"; the file's own head ({len(mapped.dropped)} tensors) is not used" if mapped.dropped else ""
    placed = {k for keys in mapped.groups.values() for k in keys}
    for key in own:
        if key in mapped.tensors or key in placed:
            continue
        weight = key.removesuffix(".bias") + ".weight"
        if key.startswith("head."):
            mapped.add("re-initialised", f"head: always new, for this task's {head_classes} classes{file_head}", key)
        elif key.endswith(".bias") and key not in targets and weight in mapped.tensors:
            mapped.tensors[key] = torch.zeros_like(own[key])
            mapped.add("adapted", "bias: the file's convolution has none; set to zero so the layer computes what "
                       "it computed there", key)
        elif key.endswith("num_batches_tracked") and key not in targets:
            continue  # a step counter older files lack; it does not change what the layer computes
        else:
            why = "; ".join(["not in the file", *layout.notes])
            mapped.add("re-initialised", why, key)


# --- known files -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownWeights:
    """A published weights file ``medlens fetch weights NAME`` knows.

    Attributes:
        name: what the user types (``resnet18-imagenet``).
        file: the file's name in the weights folder.
        network: the registry network it fits (``resnet18_2d``).
        url: direct download address, or None where only a page to download from by hand is known.
        checksum: what the download must hash to (None with ``url`` None).
        page: where the file is published.
    """

    name: str
    file: str
    network: str
    url: str | None
    checksum: Checksum | None
    page: str


def _torchvision(name: str, file: str, network: str) -> KnownWeights:
    prefix = file.rsplit("-", 1)[1].split(".")[0]
    return KnownWeights(name, file, network, f"https://download.pytorch.org/models/{file}",
                        Checksum("sha256", prefix, prefix=True), "https://pytorch.org/vision/stable/models.html")


def _medicalnet(depth: int) -> KnownWeights:
    return KnownWeights(f"medicalnet-resnet{depth}", f"resnet_{depth}_23dataset.pth", f"resnet{depth}_3d", None, None,
                        f"https://huggingface.co/TencentMedicalNet/MedicalNet-Resnet{depth} (or the links on "
                        "https://github.com/Tencent/MedicalNet)")


KNOWN_WEIGHTS: dict[str, KnownWeights] = {k.name: k for k in (
    _torchvision("resnet18-imagenet", "resnet18-f37072fd.pth", "resnet18_2d"),
    _torchvision("resnet34-imagenet", "resnet34-b627a593.pth", "resnet34_2d"),
    _torchvision("resnet50-imagenet", "resnet50-0676ba61.pth", "resnet50_2d"),
    _torchvision("densenet121-imagenet", "densenet121-a639ec97.pth", "densenet121_2d"),
    _torchvision("efficientnetb0-imagenet", "efficientnet_b0_rwightman-7f5810bc.pth", "efficientnetb0_2d"),
    _medicalnet(18), _medicalnet(34), _medicalnet(50),
)}
"""Name -> file. torchvision publishes only the SHA-256 prefix in each file's name (torch.hub checks
that prefix); MedicalNet publishes no checksum, so its files are downloaded by hand."""


def weights_dir() -> Path:
    """Where fetched weights live: ``$MEDLENS_DATA_DIR/weights``, else ``~/.medlens/weights``."""
    base = os.environ.get("MEDLENS_DATA_DIR")
    return Path(base).expanduser() / "weights" if base else Path("~/.medlens/weights").expanduser()


def known_weights(name: str) -> KnownWeights:
    """The table entry for ``name``.

    Raises:
        ConfigError: unknown name; the message lists the known ones.
    """
    if name not in KNOWN_WEIGHTS:
        known = ", ".join(f"{k.name} ({k.network})" for k in KNOWN_WEIGHTS.values())
        raise ConfigError(f"no known weights named {name!r}; known: {known}. A weights file you have can be "
                          "given to --init-from as a path")
    return KNOWN_WEIGHTS[name]


def locate_weights(name: str, root: Path | None = None) -> Path:
    """The fetched file of a known name (``--init-from resnet18-imagenet``).

    Raises:
        ConfigError: unknown name, or the file is not there (the message says which file to put where).
    """
    entry = known_weights(name)
    target = Path(root or weights_dir()) / entry.file
    if target.is_file():
        return target
    if entry.url:
        how = (f"run `medlens fetch weights {name}`, or (offline) download {entry.url} elsewhere, check its "
               f"{entry.checksum.describe()}, and put it at {target}")
    else:
        how = f"download {entry.file} from {entry.page} by hand and put it at {target}"
    raise ConfigError(f"{name}: weights not found at {target}; {how}. Set MEDLENS_DATA_DIR to use "
                      "another folder (its weights/ subfolder)")


def fetch_weights(name: str, root: Path | None = None, *, url: str | None = None) -> Path:
    """Download a known weights file into ``root`` (default :func:`weights_dir`) and verify it.

    Args:
        name: a key of :data:`KNOWN_WEIGHTS`.
        root: destination folder.
        url: another address for the same file (a mirror, or ``file://`` offline); the checksum still applies.

    Returns:
        Path of the verified file (a file already there and verified is kept).

    Raises:
        ConfigError: unknown name, a file without a published checksum, a failed download (with which file
            to put where), or a checksum mismatch (the partial file is deleted).
    """
    entry = known_weights(name)
    target = Path(root or weights_dir()).expanduser() / entry.file
    if entry.checksum is None:
        raise ConfigError(f"{name} has no published checksum, so medlens does not download it: get {entry.file} "
                          f"from {entry.page} and put it at {target}; then --init-from {name} finds it")
    return download_verified(url or entry.url, target, entry.checksum, error=ConfigError)
