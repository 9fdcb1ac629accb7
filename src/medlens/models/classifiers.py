"""The classifier registry: one interface for every 2D/3D image classifier [timm].

>>> model = build_classifier("resnet18_2d", in_channels=1, num_classes=2, input_size=(28, 28))
>>> logits = model(torch.zeros(8, 1, 28, 28))                  # (8, 2)
>>> GradCAM(nn_module=model, target_layers=model.cam_layer)   # explanations work on every model

Every :class:`Classifier` is a *backbone* (image -> pooled features) followed by the same head,
``Dropout -> Linear``, named ``head``. ResNet, DenseNet and EfficientNet come from MONAI; SeedCNN,
MobileNet and ContextNet are our own small nets (:mod:`medlens.models.blocks`). Images smaller
than 64 voxels on an axis get a CIFAR-style stem (3x3 conv, stride 1, no stem pooling), the
choice MedMNIST made for its 28x28 baselines, so they are not downsampled to nothing.
"""

from __future__ import annotations

import numbers
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from monai.networks import nets
from torch import nn

from medlens.errors import ConfigError
from medlens.models import blocks
from medlens.registry import Registry

SMALL_INPUT = 64  # an image whose smallest axis is below this many voxels gets the small stem
MIN_INPUT = 8  # below this, DenseNet's pooling empties the feature map
FIXED_WIDTH_FAMILIES = ("densenet121", "efficientnetb0")

# efficientnet-b0 stages, as in monai.networks.nets.EfficientNetBN; repeated here so that the
# network can be built with the real image size (EfficientNetBN fixes 224 for its "same" padding).
_EFFICIENTNET_B0_BLOCKS = [
    "r1_k3_s11_e1_i32_o16_se0.25", "r2_k3_s22_e6_i16_o24_se0.25", "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25", "r3_k5_s11_e6_i80_o112_se0.25", "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
]


@dataclass
class Backbone:
    """What a registered builder returns.

    Attributes:
        module: maps ``(B, C, *spatial)`` to pooled features ``(B, num_features)``.
        num_features: ``F``, the input size of the linear head.
        cam_layer: dotted name, inside ``module``, of the last spatial feature layer.
    """

    module: nn.Module
    num_features: int
    cam_layer: str


CLASSIFIERS: Registry = Registry("classifier")
"""Name -> builder ``(*, spatial_dims, in_channels, input_size, width) -> Backbone``."""


class Classifier(nn.Module):
    """A backbone and a ``Dropout -> Linear`` head: ``(B, C, *spatial) -> logits (B, num_classes)``.

    Attributes:
        name: registry key, e.g. ``"resnet18_2d"``.
        spatial_dims, in_channels, num_classes, input_size: what the model was built for.
        num_features: ``F``, the number of pooled features the head sees.
        cam_layer: dotted module name (relative to this module) of the last spatial feature layer,
            for ``monai.visualize.GradCAM(nn_module=model, target_layers=model.cam_layer)``.
        head_prefix: prefix of the head's parameter names (``"head"``): freeze the rest for
            transfer learning, re-initialise these when the number of classes changes.
    """

    head_prefix = "head"

    def __init__(
        self, backbone: Backbone, *, name: str, in_channels: int, num_classes: int,
        input_size: Sequence[int], dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.name = name
        self.input_size = tuple(input_size)
        self.spatial_dims = len(self.input_size)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.num_features = backbone.num_features
        self.backbone = backbone.module
        self.head = nn.Sequential(
            OrderedDict(dropout=nn.Dropout(dropout), fc=nn.Linear(backbone.num_features, num_classes))
        )
        self.cam_layer = f"backbone.{backbone.cam_layer}"
        if self.cam_layer not in dict(self.named_modules()):
            raise ValueError(f"{name}: cam_layer {self.cam_layer!r} is not a module of the network")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, num_features)`` of images ``(B, C, *spatial)``."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of images ``(B, C, *spatial)``."""
        return self.head(self.backbone(x))

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(1, B, num_classes)``: a single network is an ensemble of one (see :mod:`.ensemble`)."""
        return self(x)[None]

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the final classifier (names starting with ``head_prefix``)."""
        return (p for n, p in self.named_parameters() if _in_head(n, self.head_prefix))

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter that is not in the head."""
        return (p for n, p in self.named_parameters() if not _in_head(n, self.head_prefix))


def _in_head(parameter_name: str, head_prefix: str) -> bool:
    return parameter_name.startswith(f"{head_prefix}.")


def build_classifier(
    name: str, *, in_channels: int, num_classes: int, input_size: Sequence[int],
    width: float = 1.0, dropout: float = 0.0,
) -> Classifier:
    """Build a registered classifier for images of a given size.

    Args:
        name: registry key, ``family_dims`` (``"seedcnn_2d"``, ``"resnet18_3d"``...); see
            ``CLASSIFIERS.names()``.
        in_channels: image channels ``C``.
        num_classes: number of logits.
        input_size: spatial size of the images, without the channel axis: ``(28, 28)``.
        width: channel multiplier (ResNet ``widen_factor``; base channels of our own nets).
        dropout: dropout probability before the final linear layer.

    Returns:
        A :class:`Classifier` mapping ``(B, in_channels, *input_size)`` to ``(B, num_classes)``.

    Raises:
        ConfigError: unknown name (with a suggestion), input dimensionality not the model's,
            input too small, width on a fixed-width model, or an out-of-range number.
    """
    builder = CLASSIFIERS.get(name)
    spatial_dims = int(name.rsplit("_", 1)[1][:-1])
    input_size = _check_input_size(name, spatial_dims, input_size)
    _check_numbers(name, in_channels=in_channels, num_classes=num_classes, width=width, dropout=dropout)
    in_channels, num_classes = int(in_channels), int(num_classes)
    backbone = builder(spatial_dims=spatial_dims, in_channels=in_channels, input_size=input_size, width=width)
    return Classifier(
        backbone, name=name, in_channels=in_channels, num_classes=num_classes,
        input_size=input_size, dropout=dropout,
    )


def _check_input_size(name: str, spatial_dims: int, input_size: Sequence[int]) -> tuple[int, ...]:
    size = tuple(input_size)
    if not all(_is_whole(s) for s in size):
        raise ConfigError(f"input_size must be whole numbers of voxels, got {size} for `{name}`")
    size = tuple(int(s) for s in size)
    if len(size) != spatial_dims:
        raise ConfigError(_dims_message(name, spatial_dims, size))
    if min(size) < MIN_INPUT:
        raise ConfigError(
            f"input_size {size} is too small for `{name}`: every axis needs at least {MIN_INPUT} voxels; "
            "resize the images (e.g. a Resize transform) or pad them"
        )
    return size


def _dims_message(name: str, spatial_dims: int, size: tuple[int, ...]) -> str:
    family = name.rsplit("_", 1)[0]
    message = f"{name} is a {spatial_dims}D model but the input is {len(size)}D {size}"
    other = f"{family}_{len(size)}d"
    if other in CLASSIFIERS:
        message += f"; use {other}"
    else:
        same_dims = [n for n in CLASSIFIERS.names() if n.endswith(f"_{len(size)}d")]
        message += f"; there is no {other}, {len(size)}D models are: {', '.join(same_dims) or '(none)'}"
    if len(size) == spatial_dims + 1:
        message += " (input_size is the spatial size only, without the channel axis)"
    return message


def _check_numbers(name: str, *, in_channels: int, num_classes: int, width: float, dropout: float) -> None:
    for label, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if not _is_whole(value) or value < 1:
            raise ConfigError(f"{label} must be a whole number >= 1, got {value!r} for `{name}`")
    if not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout is a probability in [0, 1), got {dropout!r} for `{name}`")
    if not isinstance(width, numbers.Real) or not width > 0:
        raise ConfigError(f"width multiplies channel counts and must be > 0, got {width!r} for `{name}`")
    family = name.rsplit("_", 1)[0]
    if width != 1.0 and family in FIXED_WIDTH_FAMILIES:
        scalable = sorted({n.rsplit("_", 1)[0] for n in CLASSIFIERS.names()} - set(FIXED_WIDTH_FAMILIES))
        raise ConfigError(
            f"`{name}` has a fixed width, got width={width}; set width=1.0 or pick a model that "
            f"supports width: {', '.join(scalable)} (each as _2d / _3d)"
        )


def _is_whole(value: object) -> bool:
    """An int, NumPy integer included (sizes often come from array shapes), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_small(input_size: Sequence[int]) -> bool:
    return min(input_size) < SMALL_INPUT


# --- MONAI networks ------------------------------------------------------------------------------


def _resnet(
    block: str, layers: list[int], spatial_dims: int, in_channels: int, input_size: Sequence[int], width: float
) -> Backbone:
    small = _is_small(input_size)
    net = nets.ResNet(
        block, layers, [64, 128, 256, 512], spatial_dims=spatial_dims, n_input_channels=in_channels,
        conv1_t_size=3 if small else 7, conv1_t_stride=1 if small else 2, no_max_pool=small,
        widen_factor=width, feed_forward=False,
    )
    # after construction ResNet.in_planes holds the channel count of layer4's output
    return Backbone(net, net.in_planes, "layer4")


@CLASSIFIERS.register("resnet18_2d")
@CLASSIFIERS.register("resnet18_3d")
def build_resnet18(*, spatial_dims: int, in_channels: int, input_size: Sequence[int], width: float) -> Backbone:
    """ResNet-18 (He et al., CVPR 2016) from MONAI: basic blocks (2, 2, 2, 2)."""
    return _resnet("basic", [2, 2, 2, 2], spatial_dims, in_channels, input_size, width)


@CLASSIFIERS.register("resnet34_2d")
@CLASSIFIERS.register("resnet34_3d")
def build_resnet34(*, spatial_dims: int, in_channels: int, input_size: Sequence[int], width: float) -> Backbone:
    """ResNet-34 from MONAI: basic blocks (3, 4, 6, 3)."""
    return _resnet("basic", [3, 4, 6, 3], spatial_dims, in_channels, input_size, width)


@CLASSIFIERS.register("resnet50_2d")
@CLASSIFIERS.register("resnet50_3d")
def build_resnet50(*, spatial_dims: int, in_channels: int, input_size: Sequence[int], width: float) -> Backbone:
    """ResNet-50 from MONAI: bottleneck blocks (3, 4, 6, 3)."""
    return _resnet("bottleneck", [3, 4, 6, 3], spatial_dims, in_channels, input_size, width)


@CLASSIFIERS.register("densenet121_2d")
@CLASSIFIERS.register("densenet121_3d")
def build_densenet121(*, spatial_dims: int, in_channels: int, input_size: Sequence[int], width: float) -> Backbone:
    """DenseNet-121 (Huang et al., CVPR 2017) from MONAI; small inputs get a 3x3 stride-1 stem, no pool."""
    net = nets.DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=1)
    num_features = net.class_layers.out.in_features
    net.class_layers.out = nn.Identity()
    if _is_small(input_size):
        stem = type(net.features.conv0)(in_channels, net.features.conv0.out_channels, 3, padding=1, bias=False)
        nn.init.kaiming_normal_(stem.weight)  # as DenseNet initialises its convolutions
        net.features.conv0 = stem
        net.features.pool0 = nn.Identity()
    # class_layers.relu is the last op with a spatial output (norm5's output is modified in place there)
    return Backbone(net, num_features, "class_layers.relu")


@CLASSIFIERS.register("efficientnetb0_2d")
def build_efficientnetb0(*, spatial_dims: int, in_channels: int, input_size: Sequence[int], width: float) -> Backbone:
    """EfficientNet-B0 (Tan & Le, ICML 2019) from MONAI, random init, MONAI's default drop-connect 0.2.

    Small inputs get a stride-1 stem; the network is then built for twice the image size so that
    every later "same" padding matches the feature-map sizes it will really see.
    """
    small = _is_small(input_size)
    net = nets.EfficientNet(
        _EFFICIENTNET_B0_BLOCKS, spatial_dims=spatial_dims, in_channels=in_channels, num_classes=1,
        dropout_rate=0.0, image_size=min(input_size) * (2 if small else 1),
    )
    num_features = net._fc.in_features
    net._fc = nn.Identity()
    if small:
        old = net._conv_stem
        net._conv_stem = type(old)(old.in_channels, old.out_channels, 3, stride=1, padding=1, bias=False)
        net._conv_stem.weight.data.copy_(old.weight.data)
        net._conv_stem_padding = nn.Identity()
    return Backbone(net, num_features, "_bn1")


# --- our own small networks ----------------------------------------------------------------------


def _own(net: nn.Module) -> Backbone:
    return Backbone(net, net.num_features, net.cam_layer)


@CLASSIFIERS.register("seedcnn_2d")
@CLASSIFIERS.register("seedcnn_3d")
def build_seedcnn(*, spatial_dims: int, in_channels: int, input_size: Sequence[int], width: float) -> Backbone:
    """The tutorial CNN, :class:`medlens.models.blocks.SeedCNN`."""
    return _own(blocks.SeedCNN(spatial_dims, in_channels, input_size, width))


@CLASSIFIERS.register("mobilenet_2d")
@CLASSIFIERS.register("mobilenet_3d")
def build_mobilenet(*, spatial_dims: int, in_channels: int, input_size: Sequence[int], width: float) -> Backbone:
    """Depthwise-separable inverted residuals, :class:`medlens.models.blocks.MobileNet`."""
    return _own(blocks.MobileNet(spatial_dims, in_channels, input_size, width))


@CLASSIFIERS.register("contextnet_2d")
@CLASSIFIERS.register("contextnet_3d")
def build_contextnet(*, spatial_dims: int, in_channels: int, input_size: Sequence[int], width: float) -> Backbone:
    """CNN with multi-scale context attention, :class:`medlens.models.blocks.ContextNet`."""
    return _own(blocks.ContextNet(spatial_dims, in_channels, input_size, width))
