"""Transformers in the registries: ViT patch sizes, width, padding and Grad-CAM; UNETR and SwinUNETR training,
their patch rules and errors; TorchScript / ONNX parity, SwinUNETR's ONNX refusal; and the segmentation
plan's choice (the CNN on a CPU, SwinUNETR on a GPU only where its timed step costs at most 1.5 CNN steps)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from monai.visualize import GradCAM

from medlens.deploy.export import OnnxRunner, TorchRunner, TorchScriptRunner, export_onnx, export_torchscript
from medlens.errors import ConfigError
from medlens.models import build_classifier, build_segmenter, patch_multiple
from medlens.models.transformers import vit_patch_size
from medlens.tasks.segmentation.plan import cnn_or_swin, plan_segmentation, swin_candidate
from medlens.tasks.segmentation.task import SegmentationTask

TOLERANCE = 1e-4  # as tests/deploy/test_deploy_export.py



# ---- ViT -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size,patch", [
    ((28, 28), (2, 2)),          # 14 x 14 tokens, at most 16 per axis in 2D
    ((224, 224), (16, 16)),      # ViT-B/16's 14 x 14
    ((224, 48), (16, 4)),        # each axis on its own
    ((8, 8), (2, 2)),            # never below 2
    ((28, 28, 28), (4, 4, 4)),   # 7^3 tokens, at most 8 per axis in 3D
    ((64, 64, 64), (8, 8, 8)),
    ((96, 96, 96), (16, 16, 16)),  # UNETR's 6^3
])
def test_vit_patch_size_keeps_the_token_grid_small(size, patch):
    assert vit_patch_size(size) == patch


def test_vit_pads_an_odd_size_to_whole_patches_and_grad_cam_sees_the_token_grid():
    torch.manual_seed(0)
    model = build_classifier("vit_2d", in_channels=1, num_classes=2, input_size=(30, 17), width=0.34)
    seen = []
    layer = dict(model.named_modules())[model.cam_layer]
    handle = layer.register_forward_hook(lambda module, args, output: seen.append(tuple(output.shape)))
    try:
        logits = model.eval()(torch.randn(3, 1, 30, 17))
    finally:
        handle.remove()

    assert model.cam_layer == "backbone.token_grid"
    assert logits.shape == (3, 2)
    assert seen == [(3, 64, 15, 9)]  # 2x2 patches over 30 x 18 (one zero column), one 64-wide head


@pytest.mark.parametrize("width,hidden", [(0.25, 64), (0.5, 128), (1.0, 192), (2.0, 384)])
def test_vit_width_sets_the_number_of_attention_heads(width, hidden):
    model = build_classifier("vit_2d", in_channels=1, num_classes=2, input_size=(28, 28), width=width)
    assert model.num_features == hidden
    assert model.backbone.vit.blocks[0].attn.num_heads == hidden // 64
    assert len(model.backbone.vit.blocks) == 12


def test_every_vit_parameter_learns():
    torch.manual_seed(0)
    model = build_classifier("vit_3d", in_channels=1, num_classes=2, input_size=(16, 16, 16), width=0.25)

    torch.nn.functional.cross_entropy(model.train()(torch.randn(2, 1, 16, 16, 16)), torch.tensor([0, 1])).backward()

    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())  # none idle under DDP


def test_monai_gradcam_on_vit_gives_a_map_of_the_input_size():
    torch.manual_seed(0)
    model = build_classifier("vit_2d", in_channels=1, num_classes=3, input_size=(28, 28), width=0.34)
    images = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))

    cam = GradCAM(nn_module=model, target_layers=model.cam_layer)(images)

    assert cam.shape == (2, 1, 28, 28)
    assert torch.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1
    assert cam.std() > 0  # the token grid is 14 x 14, so the map is not flat


# ---- UNETR and SwinUNETR -------------------------------------------------------------------------------

@pytest.mark.parametrize("name,filters,patch", [("unetr_2d", (4,), (32, 16)), ("swinunetr_2d", (12,), (64, 32))])
def test_transformer_segmenter_trains_one_step(name, filters, patch):
    torch.manual_seed(0)
    net = build_segmenter(name, in_channels=1, num_classes=2, filters=filters, input_size=patch)
    x, y = torch.randn(2, 1, *patch), torch.randint(0, 2, (2, *patch))

    out = net.train()(x)
    torch.nn.functional.cross_entropy(out, y).backward()

    assert out.shape == (2, 2, *patch)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize("feature,hidden,heads", [(4, 192, 3), (8, 384, 6), (16, 768, 12)])
def test_unetr_feature_size_sets_its_vit_encoder(feature, hidden, heads):
    net = build_segmenter("unetr_3d", in_channels=1, num_classes=2, filters=(feature,), input_size=(16, 16, 16))
    assert net.vit.norm.normalized_shape == (hidden,) and net.vit.blocks[0].attn.num_heads == heads
    # 16 gives the paper's encoder: hidden 768, 12 heads, 12 layers


@pytest.mark.parametrize("name,expected", [("unetr_2d", (16, 16)), ("unetr_3d", (16, 16, 16)),
                                           ("swinunetr_2d", (32, 32)), ("swinunetr_3d", (32, 32, 32))])
def test_transformer_patch_multiples_ignore_the_strides(name, expected):
    dims = len(expected)
    assert patch_multiple(name, ((1,) * dims, (2,) * dims)) == expected


def test_unetr_needs_the_patch_size():
    with pytest.raises(ConfigError, match=r"unetr_3d is built for one patch size: pass input_size, the 3-axis "
                                          r"training patch \(data.input_size\), got \[\]"):
        build_segmenter("unetr_3d", in_channels=1, num_classes=2, filters=(4,))


def test_unetr_patch_sides_must_divide_by_16():
    with pytest.raises(ConfigError, match=r"multiple of 16, got \[40, 56, 48\]; e.g. data.input_size=\[48, 64, 48\]"):
        build_segmenter("unetr_3d", in_channels=1, num_classes=2, filters=(4,), input_size=(40, 56, 48))


def test_swinunetr_feature_size_must_divide_by_12():
    with pytest.raises(ConfigError, match=r"model.filters\[0\]=16, which must be a multiple of 12 .* "
                                          r"e.g. model.filters=\[24\]"):
        build_segmenter("swinunetr_3d", in_channels=1, num_classes=2, filters=(16, 32))


@pytest.mark.parametrize("patch,fixed", [((32, 32), "[64, 32]"), ((48, 64), "[64, 64]"),
                                         ((40, 56, 48), "[64, 64, 64]")])
def test_swinunetr_patch_needs_multiples_of_32_and_a_lowest_level_above_one_voxel(patch, fixed):
    dims = len(patch)
    with pytest.raises(ConfigError, match=rf"swinunetr_{dims}d needs a {dims}-axis patch .* got \[.*\]; "
                                          rf"e.g. data.input_size={fixed.replace('[', '.').replace(']', '.')}"):
        build_segmenter(f"swinunetr_{dims}d", in_channels=1, num_classes=2, filters=(12,), input_size=patch)


# ---- export ------------------------------------------------------------------------------------------

def _random(shape: tuple[int, ...], batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)


def _assert_parity(model: torch.nn.Module, shape: tuple[int, ...], runners: dict) -> None:
    """Every runner gives PyTorch's logits at batch 1 and 3 (max abs difference < 1e-4)."""
    reference = TorchRunner(model)
    for batch, seed in ((1, 1), (3, 2)):
        images = _random(shape, batch, seed)
        expected = reference(images)
        for kind, runner in runners.items():
            got = runner(images)
            assert got.shape == expected.shape and np.abs(got - expected).max() < TOLERANCE, f"{kind}, batch {batch}"


@pytest.mark.e2e  # whole networks exported: out of `make check`, like tests/deploy/test_deploy_export.py
@pytest.mark.parametrize("name", ["vit_2d", "unetr_2d"])
def test_torchscript_and_onnx_give_pytorch_logits(name, tmp_path):
    torch.manual_seed(0)
    if name == "vit_2d":
        shape = (1, 28, 28)
        model = build_classifier(name, in_channels=1, num_classes=3, input_size=shape[1:], width=0.34)
    else:
        shape = (1, 32, 16)
        model = build_segmenter(name, in_channels=1, num_classes=3, filters=(4,), input_size=shape[1:])
    model.eval()
    example = torch.zeros(1, *shape)

    runners = {"torchscript": TorchScriptRunner(export_torchscript(model, example, tmp_path / "model.ts")),
               "onnx": OnnxRunner(export_onnx(model, example, tmp_path / "model.onnx", exporter="torchscript"))}

    _assert_parity(model, shape, runners)


@pytest.mark.e2e
def test_swinunetr_exports_to_torchscript_and_refuses_onnx_saying_why(tmp_path):
    torch.manual_seed(0)
    model = build_segmenter("swinunetr_2d", in_channels=1, num_classes=3, filters=(12,), input_size=(64, 32)).eval()
    example = torch.zeros(1, 1, 64, 32)

    _assert_parity(model, (1, 64, 32), {"torchscript": TorchScriptRunner(
        export_torchscript(model, example, tmp_path / "model.ts"))})
    with pytest.raises(ConfigError, match=r"swinunetr_2d cannot be exported to ONNX .* export TorchScript instead "
                                          r"\(--format torchscript\)"):
        export_onnx(model, example, tmp_path / "model.onnx")  # auto: dynamo, then the TorchScript-based exporter
    assert not (tmp_path / "model.onnx").exists()


# ---- the segmentation plan's network choice ----------------------------------------------------------

def segmentation_card(shape=(35, 50, 36)) -> dict:
    """A hand-made card with what the segmentation planner reads (as in tests/tasks/test_tasks_segmentation_plan)."""
    n, axes = 20, {f"axis{a}": {"min": float(v), "median": float(v), "max": float(v)} for a, v in enumerate(shape)}
    ones = {f"axis{a}": {"min": 1.0, "median": 1.0, "max": 1.0} for a in range(len(shape))}
    labels = {"0": "background", "1": "lesion"}
    return {"dataset": {"source": "/data/x", "layout": "decathlon", "task": "segmentation", "spatial_dims": len(shape),
                        "class_names": list(labels.values()), "num_cases": n, "num_readable": n, "modality": "MRI"},
            "images": {"shape": axes, "distinct_shapes": 1, "channels": {"1": n}, "dtypes": {"float32": n},
                       "spacing_known": True, "spacing_mm": ones},
            "masks": {"declared_labels": labels, "cases_with_label": {"0": n, "1": n}, "all_background": [],
                      "foreground_intensity": None},
            "findings": [], "fingerprint": "abc"}


@pytest.mark.parametrize("shape", [(35, 50, 36), (200, 180)])
def test_cpu_plan_keeps_the_cnn_and_says_why_not_a_transformer(shape):
    config, reasons = plan_segmentation(segmentation_card(shape), device="cpu", probe=False)

    assert config.model.name == f"dynunet_{len(shape)}d"
    assert "no transformer on a CPU: SwinUNETR took 3-4x DynUNet's time per voxel" in reasons["model.name"]


def test_gpu_plan_that_times_nothing_keeps_the_cnn():
    config, reasons = plan_segmentation(segmentation_card(), device="gpu", probe=False)

    assert config.model.name == "dynunet_3d"
    assert reasons["model.name"].endswith("SwinUNETR was not timed (no probe), so the CNN")


@pytest.mark.parametrize("shape,patch", [((35, 50, 36), (32, 64, 32)), ((20, 24), (32, 64))])
def test_swin_candidate_is_a_config_the_segmentation_task_accepts(shape, patch):
    config, _ = plan_segmentation(segmentation_card(shape), device="gpu", probe=False)

    data, model = swin_candidate(config.data, config.dataset)
    SegmentationTask().check(replace(config, data=data, model=model))  # raises if the patch does not fit

    assert data.input_size == patch and model.name == f"swinunetr_{len(shape)}d"
    assert model.filters == (48,) and model.deep_supervision is False


@pytest.mark.parametrize("swin_s,chosen,says", [
    (0.14, "swinunetr_3d", "took 140 ms on this GPU, 1.4x DynUNet's 100 ms, within 1.5x"),
    (0.16, "dynunet_3d", "; not SwinUNETR: one step of swinunetr_3d (patch [32, 64, 32]) took 160 ms on this GPU, "
                         "1.6x DynUNet's 100 ms, over the 1.5x it may cost"),
])
def test_swinunetr_is_taken_only_where_a_step_costs_at_most_one_and_a_half_cnn_steps(swin_s, chosen, says):
    config, reasons = plan_segmentation(segmentation_card(), device="gpu", probe=False)
    swin_data, swin_model = swin_candidate(config.data, config.dataset)

    data, model = cnn_or_swin((config.data, config.model, 0.1), (swin_data, swin_model, swin_s), reasons)

    assert model.name == chosen and says in reasons["model.name"]
    assert data.input_size == (swin_data if chosen.startswith("swin") else config.data).input_size
