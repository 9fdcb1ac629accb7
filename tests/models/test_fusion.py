"""Fusion classifier: shapes for 2-4 views in 2D and 3D, missing views, clinical fusion, parameters,
Grad-CAM per view, refusals, and a synthetic task that only the fused model can learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.visualize import GradCAM

from medlens.errors import ConfigError
from medlens.models import FusionClassifier, build_fusion_classifier

NUM_CLASSES = 3
SIZES = {2: (8, 8), 3: (8, 8, 8)}  # seedcnn's smallest input: every case below runs in milliseconds
ABSENT = (0.0, 1.0, 0.0, 0.0, 1.0)  # one numeric column [z, missing], one categorical [A, B, missing]


def build(views: int = 2, dims: int = 2, channels: int = 1, **overrides) -> FusionClassifier:
    """A seeded narrow seedcnn fusion network; keyword arguments override the defaults."""
    torch.manual_seed(0)
    options = dict(in_channels=views * channels, views=views, num_classes=NUM_CLASSES, input_size=SIZES[dims],
                   width=0.25) | overrides
    return build_fusion_classifier(f"seedcnn_{dims}d", **options)


def images(model: FusionClassifier, batch: int = 3, seed: int = 1) -> torch.Tensor:
    shape = (batch, model.in_channels, *model.input_size)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def clinical_values(batch: int = 3, seed: int = 2) -> torch.Tensor:
    return torch.randn(batch, len(ABSENT), generator=torch.Generator().manual_seed(seed))


def drop(x: torch.Tensor, model: FusionClassifier, case: int, view: int) -> torch.Tensor:
    """A copy of ``x`` where ``case`` lacks ``view`` (its channels all NaN)."""
    x = x.clone()
    c = model.view_channels
    x[case, view * c:(view + 1) * c] = float("nan")
    return x


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("views", [2, 3, 4])
@pytest.mark.parametrize(("encoder", "pooling"), [("shared", "concat"), ("separate", "attention")])
def test_logits_and_features_have_the_documented_shapes(views, dims, encoder, pooling):
    model = build(views, dims, channels=2, encoder=encoder, pooling=pooling, clinical_absent=ABSENT).eval()
    x = images(model)

    with torch.no_grad():
        logits, features = model(x, clinical_values()), model.forward_features(x)

    assert model.in_channels == 2 * views and model.view_channels == 2 and model.spatial_dims == dims
    assert logits.shape == (3, NUM_CLASSES) and features.shape == (3, model.num_features)
    assert model.member_logits(x).shape == (1, 3, NUM_CLASSES)
    assert len(model.encoders) == (1 if encoder == "shared" else views) and len(model.cam_layers) == views
    assert model.cam_layer == model.cam_layers[0] and model.clinical_features == len(ABSENT)


@pytest.mark.parametrize("pooling", ["concat", "attention"])
@pytest.mark.parametrize(("absent", "fusion"), [((), "concat"), (ABSENT, "concat"), (ABSENT, "film")])
def test_every_pooling_and_clinical_fusion_gives_logits(pooling, absent, fusion):
    model = build(3, pooling=pooling, clinical_absent=absent, clinical_fusion=fusion).eval()
    x = images(model)
    clinical = clinical_values() if absent else None

    with torch.no_grad():
        logits = model(x, clinical)

    assert logits.shape == (3, NUM_CLASSES) and torch.isfinite(logits).all()
    assert hasattr(model, "film") == (fusion == "film" and bool(absent))
    assert hasattr(model, "clinical_embedding") == (fusion == "concat" and bool(absent))
    assert hasattr(model, "attention") == (pooling == "attention")


@pytest.mark.parametrize("fusion", ["concat", "film"])
def test_clinical_values_change_the_logits_and_none_means_all_missing(fusion):
    model = build(2, clinical_absent=ABSENT, clinical_fusion=fusion).eval()
    if fusion == "film":  # FiLM starts as the identity; give it a scale and shift to test
        torch.nn.init.normal_(model.film.weight, std=0.5)
    x = images(model)

    with torch.no_grad():
        given, other = model(x, clinical_values(seed=2)), model(x, clinical_values(seed=3))
        absent, none = model(x, torch.tensor([ABSENT] * 3)), model(x)

    assert (given - other).abs().max() > 1e-4
    torch.testing.assert_close(none, absent)


@pytest.mark.parametrize(("encoder", "pooling"), [("shared", "concat"), ("shared", "attention"),
                                                  ("separate", "concat"), ("separate", "attention")])
def test_missing_views_give_finite_logits_and_a_case_without_any_view_reads_its_clinical_values(encoder, pooling):
    model = build(3, encoder=encoder, pooling=pooling, clinical_absent=ABSENT).eval()
    x = drop(images(model), model, case=0, view=1)
    for view in range(3):
        x = drop(x, model, case=1, view=view)  # case 1 has no image at all

    with torch.no_grad():
        logits = model(x, clinical_values())
        other_clinical = model(x, clinical_values(seed=5))

    assert torch.isfinite(logits).all()
    assert (logits[1] - other_clinical[1]).abs().max() > 1e-4


def test_attention_weighs_only_present_views():
    """With a shared encoder, a missing view and a copy of the present one pool to the same features:
    the masked softmax gives the missing view no weight at all."""
    model = build(2, pooling="attention").eval()
    x = images(model)
    copied = x.clone()
    copied[:, 1] = x[:, 0]

    with torch.no_grad():
        missing, duplicate = model(drop(x, model, 0, 1)), model(copied)

    torch.testing.assert_close(missing[0], duplicate[0])
    assert (missing[1:] - duplicate[1:]).abs().max() > 1e-4  # cases with both views see both


def test_a_missing_view_is_not_a_black_image():
    """Concat pooling flags absence: a missing view and an all-zero view give different logits."""
    model = build(2, pooling="concat").eval()
    x = drop(images(model), model, 0, 1)
    zeros = torch.nan_to_num(x, nan=0.0)

    with torch.no_grad():
        assert (model(x)[0] - model(zeros)[0]).abs().max() > 1e-4


@pytest.mark.parametrize("pooling", ["concat", "attention"])
def test_a_missing_view_is_irrelevant_to_training(pooling):
    """Separate encoders: the encoder of a view no case has gets no gradient, whatever its pixels were."""
    model = build(2, encoder="separate", pooling=pooling, clinical_absent=ABSENT)  # training mode
    for module in model.modules():  # batch-norm shifts start at 0, where ReLU passes no gradient
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.constant_(module.bias, 0.5)
    x = images(model, batch=4)
    x[:, 1] = float("nan")

    model(x, clinical_values(4)).logsumexp(1).sum().backward()

    missing = [p.grad for p in model.encoders[1].parameters()]
    present = [p.grad for p in model.encoders[0].parameters()]
    assert all(g is not None and not g.any() for g in missing)
    assert all(g is not None and torch.isfinite(g).all() for g in present) and any(g.any() for g in present)


@pytest.mark.parametrize("fusion", ["concat", "film"])
def test_gradients_reach_every_parameter_and_the_clinical_values(fusion):
    model = build(2, encoder="separate", pooling="attention", clinical_absent=ABSENT, clinical_fusion=fusion)
    x = drop(images(model, batch=4), model, 0, 1)
    clinical = clinical_values(4).requires_grad_()

    torch.nn.functional.cross_entropy(model(x, clinical), torch.tensor([0, 1, 2, 0])).backward()

    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.any(), name
    # FiLM starts as the identity (zero weights), so the values themselves get a gradient after a first step
    assert (clinical.grad.abs().sum() > 0) == (fusion == "concat")


@pytest.mark.parametrize("pooling", ["concat", "attention"])
def test_bf16_autocast_and_channels_last_with_missing_views(pooling):
    """Training may run in bfloat16 and channels-last (models/speed.py); masking must survive both."""
    model = build(2, dims=3, pooling=pooling, clinical_absent=ABSENT).to(memory_format=torch.channels_last_3d)
    x = drop(drop(images(model), model, 0, 1), model, 1, 0)
    x = drop(x, model, 1, 1).to(memory_format=torch.channels_last_3d)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x, clinical_values())
    logits.float().sum().backward()

    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("encoder", ["shared", "separate"])
def test_head_and_backbone_parameters_partition_the_network(encoder):
    model = build(3, encoder=encoder, pooling="attention", clinical_absent=ABSENT, clinical_fusion="film")
    head = {id(p) for p in model.head_parameters()}
    backbone = {id(p) for p in model.backbone_parameters()}
    names = {id(p): n for n, p in model.named_parameters()}

    assert head.isdisjoint(backbone) and head | backbone == set(names)
    assert {names[i] for i in backbone} == {n for n in names.values() if n.startswith("encoders.")}
    assert {"head.fc.weight", "head.fc.bias", "fusion.0.weight", "film.weight", "attention.weight"} <= {
        names[i] for i in head}
    assert isinstance(model.head.dropout, torch.nn.Dropout) and model.head.fc.out_features == NUM_CLASSES


@pytest.mark.parametrize("encoder", ["shared", "separate"])
def test_gradcam_gives_one_map_per_view(encoder):
    model = build(3, encoder=encoder).eval()
    x = images(model, batch=2)
    modules = dict(model.named_modules())

    maps = [GradCAM(nn_module=model, target_layers=layer)(x, class_idx=1) for layer in model.cam_layers]

    assert all(layer in modules for layer in model.cam_layers)
    if encoder == "shared":  # one layer: its B * V rows are the views, batch-major
        assert len(set(model.cam_layers)) == 1 and maps[0].shape == (2 * 3, 1, *model.input_size)
    else:
        assert len(set(model.cam_layers)) == 3 and all(m.shape == (2, 1, *model.input_size) for m in maps)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"views": 0}, r"views must be a whole number >= 1, got 0"),
    ({"views": 2.0}, r"views must be a whole number >= 1, got 2.0"),
    ({"in_channels": 3, "views": 2}, r"in_channels=3 is not divisible by views=2 .*views \* data.channels"),
    ({"encoder": "siamese"}, r"encoder='siamese' for `seedcnn_2d`: choose shared or separate .*model.view_encoder"),
    ({"pooling": "max"}, r"pooling='max' .*choose concat or attention"),
    ({"clinical_fusion": "daft"}, r"clinical_fusion='daft' .*choose concat or film .*clinical.fusion"),
    ({"clinical_absent": (0.0, float("nan"))}, r"clinical_absent must be finite numbers.*absent_vector"),
    ({"input_size": (4, 4)}, r"too small for `seedcnn_2d`"),
    ({"width": 0}, r"width multiplies channel counts"),
])
def test_bad_arguments_are_refused_with_a_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build(**{"views": 2} | overrides)


def test_an_unknown_backbone_and_bad_clinical_inputs_are_refused():
    with pytest.raises(ConfigError, match="seedcnn_2d"):  # the registry's "did you mean"
        build_fusion_classifier("seedcn_2d", in_channels=2, views=2, num_classes=2, input_size=(8, 8))
    without, with_clinical = build(2).eval(), build(2, clinical_absent=ABSENT).eval()
    x = images(without)
    with pytest.raises(ConfigError, match=r"built without clinical inputs, got clinical values \(3, 5\)"):
        without(x, clinical_values())
    with pytest.raises(ConfigError, match=r"takes clinical values \(B, 5\), got \(3, 4\)"):
        with_clinical(x, clinical_values()[:, :4])


def xor_cases(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two views whose mean brightness is a bit each, and a numeric clinical value that is a third bit.

    Returns:
        images ``(n, 2, 8, 8)``, clinical ``(n, 2)`` ([z, missing flag]), labels ``(n,)`` = a XOR b XOR c,
        and the bits ``(n, 3)``.
    """
    g = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 2, (n, 3), generator=g)
    signs = (2 * bits - 1).float()
    x = 0.5 * torch.randn(n, 2, 8, 8, generator=g) + signs[:, :2, None, None]
    clinical = torch.stack([signs[:, 2] + 0.1 * torch.randn(n, generator=g), torch.zeros(n)], dim=1)
    return x, clinical, bits[:, 0] ^ bits[:, 1] ^ bits[:, 2], bits


@pytest.mark.parametrize(("encoder", "fusion"), [("shared", "concat"), ("separate", "film")])
def test_the_fused_model_learns_an_interaction_of_two_views_and_a_clinical_value(encoder, fusion):
    """Each source alone says nothing about the label (a 3-way XOR); the fused network learns it in ~2 s."""
    x, clinical, labels, bits = xor_cases(1024, seed=0)
    for source in range(3):  # the best guess from one source is a coin flip
        agreement = (bits[:, source] == labels).float().mean().item()
        assert abs(agreement - 0.5) < 0.05
    torch.manual_seed(0)
    model = build_fusion_classifier("seedcnn_2d", in_channels=2, views=2, num_classes=2, input_size=(8, 8),
                                    width=0.25, encoder=encoder, clinical_absent=(0.0, 1.0), clinical_fusion=fusion)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(1)

    for _ in range(200):
        rows = torch.randint(0, len(x), (32,), generator=order)
        loss = torch.nn.functional.cross_entropy(model(x[rows], clinical[rows]), labels[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.eval()
    new_x, new_clinical, new_labels, _ = xor_cases(256, seed=1)
    with torch.no_grad():
        train_accuracy = (model(x, clinical).argmax(1) == labels).float().mean().item()
        new_accuracy = (model(new_x, new_clinical).argmax(1) == new_labels).float().mean().item()
        blind_accuracy = (model(new_x).argmax(1) == new_labels).float().mean().item()  # clinical missing
    assert train_accuracy >= 0.9 and new_accuracy >= 0.9
    assert abs(blind_accuracy - 0.5) < 0.15  # without the clinical bit, the label is not in the images
    assert np.isfinite(loss.item())


def test_residual_fusion_starts_as_the_clinical_regression_and_keeps_it_fixed():
    model = build(2, clinical_absent=ABSENT, clinical_fusion="residual")
    x, clinical = images(model), clinical_values()
    assert torch.equal(model(x, clinical), torch.zeros(3, NUM_CLASSES))  # nothing learnt yet: the head is zero
    weight, bias = torch.randn(NUM_CLASSES, len(ABSENT)), torch.randn(NUM_CLASSES)
    model.set_clinical_logits(weight, bias)
    assert torch.allclose(model(x, clinical), clinical @ weight.T + bias, atol=1e-6)  # the regression, exactly
    assert torch.allclose(model(x), torch.tensor(ABSENT) @ weight.T + bias, atol=1e-6)  # no values: the absent record
    assert not any(p.requires_grad for p in model.clinical_logits.parameters())
    assert hasattr(model, "clinical_embedding")  # the images still meet the clinical values (interactions)
    encoder = [p.detach().clone() for p in model.encoders.parameters()]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):  # step 1 moves the head off zero, step 2 reaches the encoders
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x, clinical), torch.tensor([0, 1, 2])).backward()
        optimizer.step()
    assert model.head.fc.weight.abs().sum() > 0 and torch.equal(model.clinical_logits.weight, weight)
    assert any(not torch.equal(a, b) for a, b in zip(encoder, model.encoders.parameters()))
