"""Contrastive pretraining: the two views, the SimCLR module's loss and step, the task's plan and errors."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from medlens.config import AugmentSection, Config, DataSection, DatasetSection, ModelSection, PretrainSection
from medlens.models.classifiers import build_classifier
from medlens.tasks.pretraining.module import ContrastiveModule, images_of
from medlens.tasks.pretraining.views import random_crops, two_views

AUGMENT = AugmentSection(flip_axes=(0, 1), rotate_deg=15, scale=0.1, intensity=0.2, noise_std=0.05, gamma=0.2,
                         probability=0.8)


def config_for(size: tuple[int, ...], model: str = "seedcnn_2d") -> Config:
    return Config(dataset=DatasetSection(task="pretraining", spatial_dims=len(size)),
                  data=DataSection(input_size=size), model=ModelSection(name=model), augment=AUGMENT,
                  pretrain=PretrainSection(temperature=0.2, projection_dim=16, crop_scale=0.5))


def images(size: tuple[int, ...], batch: int = 4) -> torch.Tensor:
    return torch.randn((batch, 1, *size), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("size", [(24, 20), (12, 10, 14)])
def test_views_keep_the_shape_differ_and_repeat_per_generator(size):
    x, config = images(size), config_for(size)
    a, b = two_views(x, config, torch.Generator().manual_seed(3))
    assert a.shape == b.shape == x.shape and a.dtype == x.dtype
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert not torch.allclose(a, b) and not torch.allclose(a, x)
    again = two_views(x, config, torch.Generator().manual_seed(3))
    assert torch.equal(again[0], a) and torch.equal(again[1], b)
    other = two_views(x, config, torch.Generator().manual_seed(4))
    assert not torch.allclose(other[0], a)


def test_a_crop_is_a_zoomed_part_of_the_image():
    """With crop_scale 1 the crop is the whole image; with 0.5 a ramp's values span at most ~half its range."""
    ramp = torch.linspace(0, 1, 32).view(1, 1, 32, 1).expand(6, 1, 32, 32).contiguous()
    whole = random_crops(ramp, 1.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(whole, ramp)
    part = random_crops(ramp, 0.5, torch.Generator().manual_seed(0))
    spans = part.amax(dim=(1, 2, 3)) - part.amin(dim=(1, 2, 3))
    assert (spans <= 1.0 + 1e-6).all() and (spans < 0.97).any() and (spans > 0.45).all()


def test_views_refuse_a_batch_without_channels_and_a_bad_crop_scale():
    config = config_for((8, 8))
    with pytest.raises(ValueError, match=r"expected images \(B, C, H, W\).*got shape \(4, 8, 8\)"):
        two_views(torch.zeros(4, 8, 8), config, torch.Generator())
    bad = replace(config, pretrain=replace(config.pretrain, crop_scale=0.0))
    with pytest.raises(ValueError, match=r"crop_scale=0.0: expected a share of each axis in \(0, 1\]"):
        two_views(torch.zeros(2, 1, 8, 8), bad, torch.Generator())


def module_for(size=(16, 16), model="seedcnn_2d") -> ContrastiveModule:
    config = config_for(size, model)
    torch.manual_seed(0)
    classifier = build_classifier(model, in_channels=1, num_classes=2, input_size=size)
    return ContrastiveModule(classifier, config, steps_per_epoch=3)


def test_the_loss_is_monai_contrastive_loss_of_the_two_views_projections():
    from monai.losses import ContrastiveLoss

    module, x = module_for(), images((16, 16), batch=6)
    module.eval()  # batch norm in inference mode: the same projections twice
    loss = module.contrastive_loss(x, torch.Generator().manual_seed(5))
    a, b = two_views(x, module.config, torch.Generator().manual_seed(5))
    z = module.project(torch.cat([a, b]))
    expected = ContrastiveLoss(temperature=0.2)(z[:6], z[6:])
    torch.testing.assert_close(loss, expected)
    # NT-Xent of 2B views: at most log(2B - 1) + 2 / T when positives are opposite and negatives identical
    assert 0 < float(loss.detach()) < torch.log(torch.tensor(11.0)) + 2 / 0.2


def test_training_steps_lower_the_loss_on_a_fixed_batch_and_leave_the_head_alone():
    module, x = module_for(), images((16, 16), batch=8)
    head = {n: p.detach().clone() for n, p in module.model.head.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(8):
        loss = module.contrastive_loss(x, torch.Generator().manual_seed(0))  # the same views: a fixed target
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    for name, p in module.model.head.named_parameters():
        assert torch.equal(p, head[name]) and not p.requires_grad


def test_batches_are_images_or_tuples_whose_first_item_is():
    x = torch.zeros(2, 1, 4, 4)
    assert images_of(x) is x and images_of((x, torch.zeros(2))) is x and images_of([x]) is x
    with pytest.raises(TypeError, match="expected a batch of images"):
        images_of({"image": x})
