"""The detection network: MONAI's RetinaNet (2D and 3D) on a ResNet + feature pyramid, behind one builder.

>>> det = build_detector("retinanet_2d", in_channels=3, num_classes=3, filters=(32, 64, 128),
...                      base_anchors=((16, 16), (24, 20), (20, 24)), returned_layers=(1, 2))
>>> targets = [{"box": torch.tensor([[10., 12, 60, 70]]), "label": torch.tensor([0])}]
>>> det.train(); det([torch.rand(3, 256, 320)], targets)
{'classification': tensor(...), 'box_regression': tensor(...)}
>>> det.eval(); det([torch.rand(3, 480, 640)])[0]     # {'box': (P, 4), 'label': (P,), 'label_scores': (P,)}

MONAI's box coder, ATSS matcher, hard-negative sampler, box selector (per-class NMS) and sliding-window
inferer do the work. MONAI builds its feature extractor with torchvision's ``IntermediateLayerGetter``;
:class:`ResNetFeatures` does that part here so nothing on the path imports torchvision (its compiled ops
do not work beside medlens's CPU torch).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from monai.networks.nets import resnet
from torch import nn

from medlens.errors import ConfigError
from medlens.registry import Registry

DETECTORS: Registry = Registry("detection network")
BOX_KEY, LABEL_KEY = "box", "label"


class ResNetFeatures(nn.Module):
    """A MONAI ResNet's stem and residual layers, returning the chosen layers' maps through a feature pyramid.

    Args:
        backbone: a :class:`monai.networks.nets.ResNet`.
        returned_layers: which residual layers (1-4) feed the pyramid; the pyramid adds one max-pooled level.
        out_channels: channels of every pyramid level.

    ``forward(x (B, C, *spatial)) -> OrderedDict`` of ``len(returned_layers) + 1`` maps ``(B, out_channels, ...)``,
    finest first; the stride of layer ``k`` is ``2 ** (k + 1)`` with the default stem (stride 2 + max-pool).
    """

    def __init__(self, backbone: resnet.ResNet, spatial_dims: int, returned_layers: Sequence[int],
                 out_channels: int) -> None:
        super().__init__()
        last = max(returned_layers)
        self.stem = nn.Sequential(backbone.conv1, backbone.bn1, backbone.act, backbone.maxpool)
        self.layers = nn.ModuleList(getattr(backbone, f"layer{k}") for k in range(1, last + 1))
        self.returned = tuple(int(k) for k in returned_layers)
        channels = [_out_channels(getattr(backbone, f"layer{k}")) for k in self.returned]
        self.fpn = FeaturePyramidNetwork(spatial_dims=spatial_dims, in_channels_list=channels,
                                         out_channels=out_channels, extra_blocks=LastLevelMaxPool(spatial_dims))
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        maps: OrderedDict[str, torch.Tensor] = OrderedDict()
        for k, layer in enumerate(self.layers, start=1):
            x = layer(x)
            if k in self.returned:
                maps[str(k)] = x
        return self.fpn(maps)


class Detector(RetinaNetDetector):
    """MONAI's RetinaNet detector, matching anchors with its ATSS matcher only.

    MONAI's own matching step first asks whether the matcher is torchvision's (an import that fails
    without torchvision); this override keeps MONAI's ATSS branch, as MONAI's error message invites.
    """

    def compute_anchor_matched_idxs(self, anchors, targets, num_anchor_locs_per_level):
        """``(sum(HWA),)`` per image: the matched ground-truth index, or a negative value for none."""
        matched = []
        for anchors_per_image, targets_per_image in zip(anchors, targets):
            boxes = targets_per_image[self.target_box_key].to(anchors_per_image.device)
            if boxes.numel() == 0:
                matched.append(torch.full((anchors_per_image.size(0),), -1, dtype=torch.int64,
                                          device=anchors_per_image.device))
                continue
            _, idxs = self.proposal_matcher(boxes, anchors_per_image, num_anchor_locs_per_level,
                                            self.num_anchors_per_loc)
            matched.append(idxs)
        return matched


class DetectorHeads(nn.Module):
    """The detector's network as one tensor out, for TorchScript / ONNX export (box decoding stays in Python).

    ``forward(x (B, C, *P)) -> (B, N, K + 2D)``: for every anchor of every level (MONAI's anchor order), the
    ``K`` class logits then the ``2D`` box-regression deltas the detector's box coder decodes.
    """

    def __init__(self, detector: Detector):
        super().__init__()
        self.network = detector.network
        self.num_classes = detector.network.num_classes
        self.spatial_dims = detector.network.spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x)
        logits = [self._flat(t, self.num_classes) for t in out["classification"]]
        deltas = [self._flat(t, 2 * self.spatial_dims) for t in out["box_regression"]]
        return torch.cat([torch.cat(logits, 1), torch.cat(deltas, 1)], dim=2)

    @staticmethod
    def _flat(t: torch.Tensor, width: int) -> torch.Tensor:
        """``(B, A * width, *S) -> (B, prod(S) * A, width)``, as MONAI's detector orders its anchors."""
        b, dims = t.shape[0], t.dim() - 2
        t = t.reshape(b, -1, width, *t.shape[2:])
        return t.permute(0, *range(3, 3 + dims), 1, 2).reshape(b, -1, width)


def _out_channels(layer: nn.Module) -> int:
    convs = [m for m in layer.modules() if isinstance(m, nn.Conv2d | nn.Conv3d)]
    return convs[-1].out_channels


def build_detector(name: str, *, in_channels: int, num_classes: int, filters: Sequence[int],
                   base_anchors: Sequence[Sequence[float]], returned_layers: Sequence[int] = (1, 2),
                   fpn_channels: int = 64, blocks: int = 1) -> Detector:
    """A RetinaNet detector whose anchors, matcher and sampler are set; the caller sets post-processing.

    Args:
        name: ``retinanet_2d`` or ``retinanet_3d``.
        in_channels: image channels ``C``.
        num_classes: foreground classes ``K`` (no background class: RetinaNet scores each class by a sigmoid).
        filters: channels of the ResNet's residual layers, one per layer up to ``max(returned_layers)``.
        base_anchors: ``(A, D)`` anchor side lengths in voxels of the network input at the finest pyramid level;
            each coarser level doubles them (``A`` anchors per location on every level).
        returned_layers: residual layers feeding the pyramid; level ``l`` has stride ``2 ** (returned[0] + 1 + l)``.
        fpn_channels: channels of the pyramid and the heads.
        blocks: residual blocks per layer.

    Raises:
        ConfigError: unknown name, or sizes that do not fit together.
    """
    dims = _dims(name)
    returned = tuple(int(k) for k in returned_layers)
    if sorted(set(returned)) != list(returned) or not 1 <= returned[0] <= returned[-1] <= 4:
        raise ConfigError(f"model.returned_layers={list(returned)}: give increasing residual layers between 1 and 4")
    if len(filters) < returned[-1]:
        raise ConfigError(f"model.filters={list(filters)}: {name} needs channels for {returned[-1]} residual layers")
    if not base_anchors or any(len(a) != dims for a in base_anchors):
        raise ConfigError(f"detect.anchors={[list(a) for a in base_anchors]}: {name} needs anchors of {dims} sides")
    backbone = resnet.ResNet(block=resnet.ResNetBlock, layers=[blocks] * 4,
                             block_inplanes=list(filters[:4]) + [filters[-1]] * (4 - len(filters[:4])),
                             spatial_dims=dims, n_input_channels=int(in_channels), conv1_t_size=7,
                             conv1_t_stride=2, num_classes=1)
    features = ResNetFeatures(backbone, dims, returned, fpn_channels)
    scales = [2 ** level for level in range(len(returned) + 1)]
    anchors = AnchorGeneratorWithAnchorShape(feature_map_scales=scales,
                                             base_anchor_shapes=[[float(s) for s in a] for a in base_anchors])
    network = RetinaNet(spatial_dims=dims, num_classes=int(num_classes), num_anchors=len(base_anchors),
                        feature_extractor=features, size_divisible=network_multiple(dims, returned))
    detector = Detector(network, anchors, debug=False)
    detector.set_atss_matcher(num_candidates=4, center_in_gt=False)
    detector.set_hard_negative_sampler(batch_size_per_image=64, positive_fraction=0.3, pool_size=20, min_neg=16)
    detector.set_target_keys(box_key=BOX_KEY, label_key=LABEL_KEY)
    return detector


def network_multiple(dims: int, returned_layers: Sequence[int]) -> tuple[int, ...]:
    """What every input side must be a multiple of: the coarsest pyramid level's stride (the extra max-pool
    level halves the last returned layer once more)."""
    return (2 ** (max(returned_layers) + 2),) * dims


def set_postprocessing(detector: Detector, *, score_threshold: float, nms_iou: float,
                       max_detections: int) -> None:
    """Per-class non-maximum suppression and how many boxes an image keeps."""
    detector.set_box_selector_parameters(score_thresh=float(score_threshold), topk_candidates_per_level=1000,
                                         nms_thresh=float(nms_iou), detections_per_img=int(max_detections),
                                         apply_sigmoid=True)


def _dims(name: str) -> int:
    DETECTORS.get(name)  # unknown names fail here, with a suggestion
    return int(name.rsplit("_", 1)[1][:-1])


DETECTORS.register("retinanet_2d")(build_detector)
DETECTORS.register("retinanet_3d")(build_detector)
