"""Detection networks: RetinaNet 2D/3D without torchvision, output shapes, size multiples, the class-score
head's layout, and the builder's refusals."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from medlens.errors import ConfigError
from medlens.models.detectors import DETECTORS, build_detector, network_multiple, set_postprocessing

# A finder that refuses torchvision, first on sys.meta_path: any import of it on the detector's path fails.
NO_TORCHVISION = textwrap.dedent("""
    import sys

    asked = []

    class RefuseTorchvision:
        def find_spec(self, name, path=None, target=None):
            if name == "torchvision" or name.startswith("torchvision."):
                asked.append(name)
                raise ImportError(f"torchvision is refused in this test ({name})")
            return None

    sys.meta_path.insert(0, RefuseTorchvision())
    import torch
    from medlens.models.detectors import build_detector, set_postprocessing

    torch.manual_seed(0)
    asked.clear()  # MONAI's optional imports at import time tolerate the refusal; what runs below must not ask
    for dims in (2, 3):
        det = build_detector(f"retinanet_{dims}d", in_channels=1, num_classes=2, filters=(4,),
                             base_anchors=[[6.0] * dims, [8.0] * dims], returned_layers=(1,), fpn_channels=8)
        set_postprocessing(det, score_threshold=0.0, nms_iou=0.5, max_detections=10)
        x = torch.randn(2, 1, *[16] * dims)
        targets = [{"box": torch.tensor([[2.0] * dims + [10.0] * dims]), "label": torch.tensor([1])},
                   {"box": torch.zeros(0, 2 * dims), "label": torch.zeros(0, dtype=torch.long)}]  # a negative image
        losses = det.train()(x, targets)
        (losses["classification"] + losses["box_regression"]).backward()
        assert all(torch.isfinite(v) for v in losses.values()), losses
        det.eval()
        with torch.no_grad():
            whole = det(x[:1], use_inferer=False)[0]
            det.set_sliding_window_inferer(roi_size=[16] * dims, sw_batch_size=2, overlap=0.25, mode="constant",
                                           padding_mode="constant", cval=0.0)
            windows = det(torch.randn(1, 1, *[40] * dims), use_inferer=True)[0]
        for out in (whole, windows):
            assert out["box"].shape[1] == 2 * dims and len(out["box"]) > 0, out["box"].shape
    print("torchvision imported:", "torchvision" in sys.modules, "asked:", sorted(set(asked)))
""")


def test_detectors_train_and_predict_without_torchvision():
    done = subprocess.run([sys.executable, "-c", NO_TORCHVISION], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torchvision imported: False asked: []" in done.stdout


def detector(dims: int = 2, *, classes: int = 3, anchors: int = 2, returned=(1, 2)):
    torch.manual_seed(0)
    net = build_detector(f"retinanet_{dims}d", in_channels=2, num_classes=classes, filters=(4, 8, 8),
                         base_anchors=[[6.0 + k] * dims for k in range(anchors)], returned_layers=returned,
                         fpn_channels=8)
    set_postprocessing(net, score_threshold=0.0, nms_iou=0.5, max_detections=7)
    return net


def test_every_registered_detector_is_tested():
    assert DETECTORS.names() == ["retinanet_2d", "retinanet_3d"]


@pytest.mark.parametrize("dims, shape", [(2, (32, 48)), (3, (16, 16, 32))])
def test_eval_output_has_boxes_labels_and_scores(dims, shape):
    net = detector(dims).eval()
    with torch.no_grad():
        out = net([torch.randn(2, *shape), torch.randn(2, *shape)], use_inferer=False)

    assert len(out) == 2
    for image in out:
        assert set(image) == {"box", "label", "label_scores"}
        n = len(image["box"])
        assert 0 < n <= 7 and image["box"].shape == (n, 2 * dims)
        assert image["label"].shape == (n,) and image["label_scores"].shape == (n,)
        assert image["label"].min() >= 0 and image["label"].max() < 3
        assert ((image["label_scores"] >= 0) & (image["label_scores"] <= 1)).all()
        assert (image["box"][:, dims:] >= image["box"][:, :dims]).all()


def test_an_image_the_network_does_not_divide_is_padded_and_its_boxes_stay_on_it():
    net = detector(2).eval()
    with torch.no_grad():
        boxes = net([torch.randn(2, 21, 30)], use_inferer=False)[0]["box"]
    assert boxes.shape[1] == 4 and len(boxes) > 0


@pytest.mark.parametrize("returned, expected", [((1,), 8), ((1, 2), 16), ((2, 3), 32), ((1, 2, 3, 4), 64)])
def test_network_multiple_is_the_coarsest_stride(returned, expected):
    assert network_multiple(2, returned) == (expected, expected)
    assert network_multiple(3, returned) == (expected,) * 3


@pytest.mark.parametrize("returned", [(1,), (1, 2), (2, 3)])
def test_pyramid_levels_have_the_strides_the_multiple_promises(returned):
    net = detector(2, returned=returned)
    maps = net.network.feature_extractor(torch.zeros(1, 2, 64, 64))
    strides = [64 // m.shape[-1] for m in maps.values()]
    assert strides == [2 ** (returned[0] + 1 + level) for level in range(len(returned) + 1)]
    assert strides[-1] == network_multiple(2, returned)[0]


@pytest.mark.parametrize("dims", [2, 3])
def test_the_finest_class_head_has_anchors_times_classes_channels(dims):
    # explain.py reads det.network(x)["classification"][0] as (B, A * K, *S0), anchors major, classes minor
    net = detector(dims, classes=3, anchors=2).eval()
    with torch.no_grad():
        heads = net.network(torch.zeros(1, 2, *[32] * dims))["classification"]
    assert heads[0].shape == (1, 2 * 3, *[8] * dims)
    assert len(heads) == 3


def test_the_class_head_orders_channels_anchor_by_anchor():
    # MONAI flattens the head as (B, A, K) per location before scoring: channel a * K + k is anchor a, class k
    net = detector(2, classes=3, anchors=2).eval()
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        head = net.network(x)["classification"][0]  # (1, 6, 8, 8)
        flat = net._reshape_maps([head])  # MONAI's (B, sum HWA, K), what its box selector scores
    expected = head.permute(0, 2, 3, 1).reshape(1, 8 * 8 * 2, 3)
    torch.testing.assert_close(flat, expected)


def test_one_training_step_changes_the_weights():
    net = detector(2).train()
    before = [p.detach().clone() for p in net.parameters()]
    targets = [{"box": torch.tensor([[4.0, 4.0, 14.0, 12.0]]), "label": torch.tensor([2])}]
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    losses = net(torch.randn(1, 2, 32, 32), targets)
    (losses["classification"] + losses["box_regression"]).backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


@pytest.mark.parametrize("returned", [(2, 1), (0, 1), (1, 5), (1, 1)])
def test_build_detector_refuses_bad_returned_layers(returned):
    with pytest.raises(ConfigError, match=r"model.returned_layers=.*give increasing residual layers between 1 and 4"):
        build_detector("retinanet_2d", in_channels=1, num_classes=1, filters=(4, 8, 8, 8),
                       base_anchors=[[8.0, 8.0]], returned_layers=returned)


def test_build_detector_refuses_too_few_filters():
    with pytest.raises(ConfigError, match=r"model.filters=\[4\]: retinanet_2d needs channels for 2 residual layers"):
        build_detector("retinanet_2d", in_channels=1, num_classes=1, filters=(4,), base_anchors=[[8.0, 8.0]])


@pytest.mark.parametrize("name, anchors", [("retinanet_2d", [[8.0, 8.0, 8.0]]), ("retinanet_3d", [[8.0, 8.0]]),
                                           ("retinanet_2d", [])])
def test_build_detector_refuses_anchors_of_the_wrong_dimension(name, anchors):
    with pytest.raises(ConfigError, match=f"detect.anchors=.*{name} needs anchors of {name[-2]} sides"):
        build_detector(name, in_channels=1, num_classes=1, filters=(4, 8), base_anchors=anchors)


def test_build_detector_suggests_a_name_for_an_unknown_one():
    with pytest.raises(ConfigError, match="unknown detection network `retinanet2d`; did you mean `retinanet_2d`"):
        build_detector("retinanet2d", in_channels=1, num_classes=1, filters=(4, 8), base_anchors=[[8.0, 8.0]])


@pytest.mark.parametrize("dims", [2, 3])
def test_export_heads_order_anchors_as_the_detector_scores_them(dims):
    from medlens.models.detectors import DetectorHeads

    net = detector(dims, classes=3, anchors=2).eval()
    x = torch.randn(2, 2, *[32] * dims)
    with torch.no_grad():
        out = net.network(x)
        heads = DetectorHeads(net).eval()(x)
        expected = torch.cat([net._reshape_maps(out["classification"]), net._reshape_maps(out["box_regression"])], 2)
    anchors = 2 * sum((32 // 2 ** (2 + level)) ** dims for level in range(3))  # strides 4, 8, 16; 2 per location
    assert heads.shape == (2, anchors, 3 + 2 * dims)
    torch.testing.assert_close(heads, expected)
