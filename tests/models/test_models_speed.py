"""Speed options for 3D on a CPU: what is timed where, the choice leaves the model alone, layouts keep values."""

from __future__ import annotations

import pytest
import torch

from medlens.models import build_classifier
from medlens.models.speed import PLAIN, SpeedOptions, candidates, choose_speed_options, native_bf16

CL = SpeedOptions(channels_last=True)


def small_3d(name: str = "seedcnn_3d"):
    torch.manual_seed(0)
    return build_classifier(name, in_channels=1, num_classes=2, input_size=(12, 12, 12), width=0.25)


def test_only_3d_on_a_cpu_has_options_to_time_and_bf16_only_where_native_and_allowed():
    assert candidates(2, "cpu") == [PLAIN]
    assert candidates(3, "cuda") == [PLAIN]
    assert candidates(3, "cpu", allow_bf16=False) == [PLAIN, CL]
    with_bf16 = [PLAIN, CL, SpeedOptions(channels_last=True, bf16=True)]
    assert candidates(3, "cpu") == (with_bf16 if native_bf16("cpu") else [PLAIN, CL])


def test_choosing_times_a_copy_and_leaves_the_model_as_it_was():
    model = small_3d()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    example = torch.randn(6, 1, 12, 12, 12)

    chosen, reason = choose_speed_options(model, example)

    assert chosen in candidates(3, "cpu")
    assert f"{chosen.describe()}: " in reason and "ms per step of 6 volumes vs" in reason
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics included
    assert all(p.grad is None and p.is_contiguous() for p in model.parameters())


def test_a_2d_model_is_not_timed():
    model = build_classifier("seedcnn_2d", in_channels=1, num_classes=2, input_size=(16, 16), width=0.25)

    chosen, reason = choose_speed_options(model, torch.randn(2, 1, 16, 16))

    assert chosen == PLAIN and "no faster option" in reason


@pytest.mark.parametrize("name", ["seedcnn_3d", "slices25d_3d"])  # 5D weights only / 5D stems and a 2D trunk
def test_channels_last_keeps_parameters_values_and_logits(name):
    model = small_3d(name).eval()
    x = torch.randn(2, 1, 12, 12, 12)
    params = {n: (id(p), p.detach().clone()) for n, p in model.named_parameters()}
    with torch.no_grad():
        expected = model(x)

    CL.apply(model)
    with torch.no_grad():
        got = model(CL.layout(x))

    for n, p in model.named_parameters():
        assert id(p) == params[n][0] and torch.equal(p, params[n][1])
        if p.dim() == 5:
            assert p.is_contiguous(memory_format=torch.channels_last_3d)
    assert CL.layout(x).is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.allclose(got, expected, atol=1e-5)
    PLAIN.apply(model)
    assert all(p.is_contiguous() for p in model.parameters())


def test_bf16_autocast_computes_in_bf16_and_leaves_float32_weights():
    model = small_3d()
    option = SpeedOptions(channels_last=True, bf16=True)
    option.apply(model)

    with option.autocast("cpu"):
        logits = model(option.layout(torch.randn(2, 1, 12, 12, 12)))

    assert logits.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_a_3d_run_records_its_choice_in_the_checkpoint_with_float32_weights(blob_run_3d):
    checkpoint = torch.load(blob_run_3d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)

    chosen = SpeedOptions(**checkpoint["speed_options"])  # what a resumed run trains with

    assert chosen in candidates(3, "cpu")
    assert all(v.dtype == torch.float32 for v in checkpoint["state_dict"].values() if v.is_floating_point())
