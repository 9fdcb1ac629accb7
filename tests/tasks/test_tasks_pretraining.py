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


@pytest.mark.parametrize("size, model", [((16, 16), "seedcnn_2d"), ((16, 16, 16), "seedcnn_3d")])
def test_the_loss_is_monai_contrastive_loss_of_the_two_views_projections(size, model):
    from monai.losses import ContrastiveLoss

    module, x = module_for(size, model), images(size, batch=6)
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
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    for name, p in module.model.head.named_parameters():
        assert torch.equal(p, head[name]) and not p.requires_grad


def test_batches_are_images_or_tuples_whose_first_item_is():
    x = torch.zeros(2, 1, 4, 4)
    assert images_of(x) is x and images_of((x, torch.zeros(2))) is x and images_of([x]) is x
    with pytest.raises(TypeError, match="expected a batch of images"):
        images_of({"image": x})


# ---- data without labels ---------------------------------------------------------------------------------------

def write_images(folder, n: int = 12, size: int = 16):
    """``n`` grey PNGs: even ones hold a bright square, odd ones a bright bar (two visibly different kinds)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        pixels = rng.integers(0, 60, (size, size)).astype(np.uint8)
        if i % 2:
            pixels[size // 2 - 1:size // 2 + 1, :] += 150
        else:
            pixels[4:12, 4:12] += 150
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return folder


def test_a_flat_folder_and_a_csv_without_labels_open_as_images_without_labels(tmp_path):
    from medlens.data import open_dataset
    from medlens.data.audit import inspect_dataset
    from medlens.data.splits import make_splits
    from medlens.types import Task

    folder = write_images(tmp_path / "flat", n=20)
    flat = open_dataset(folder, unlabelled=True)
    assert (flat.layout, flat.task, flat.class_names, len(flat)) == ("image_folder", Task.PRETRAINING, (), 20)
    assert all(c.label is None for c in flat.cases)
    card = inspect_dataset(flat)
    assert card["dataset"]["task"] == "pretraining" and card["counts"]["total"] == {"cases": 20}
    assert not [f for f in card["findings"] if f["blocks_training"]]
    splits = make_splits(flat, seed=0)
    assert splits["stratified_by"] is None and len(splits["folds"][0]["val"]) > 0
    (tmp_path / "images.csv").write_text("image,patient_id\n" + "".join(f"flat/{i:03d}.png,p{i // 2}\n"
                                                                       for i in range(20)))
    manifest = open_dataset(tmp_path / "images.csv", unlabelled=True)
    assert (manifest.layout, manifest.task, len(manifest)) == ("image_manifest", Task.PRETRAINING, 20)
    assert manifest.cases[3].patient_id == "p1" and manifest.cases[3].label is None


def test_without_pretraining_the_same_inputs_are_refused_pointing_at_medlens_pretrain(tmp_path):
    from medlens.data import open_dataset
    from medlens.data.dataset import unlabelled_allowed
    from medlens.errors import DatasetError

    folder = write_images(tmp_path / "flat", n=4)
    (tmp_path / "images.csv").write_text("image\n" + "".join(f"flat/{i:03d}.png\n" for i in range(4)))
    with pytest.raises(DatasetError, match=r"holds 4 files but no class folders.*`medlens pretrain FOLDER`"):
        open_dataset(folder)
    with pytest.raises(DatasetError, match=r"no label column .* found columns \['image'\].*`medlens pretrain CSV`"):
        open_dataset(tmp_path / "images.csv")
    with unlabelled_allowed():
        assert len(open_dataset(folder)) == 4


def test_labelled_data_keep_their_labels_when_unlabelled_inputs_are_allowed(tmp_path):
    from medlens.data import open_dataset
    from medlens.types import Task

    for name in ("a", "b"):
        write_images(tmp_path / "cls" / name, n=3)
    dataset = open_dataset(tmp_path / "cls", unlabelled=True)
    assert dataset.task is Task.BINARY and dataset.class_names == ("a", "b")


# ---- plan, task, probe ------------------------------------------------------------------------------------------

def test_the_plan_takes_classifications_network_and_size_with_a_bigger_batch_and_view_augmentation(tmp_path):
    from medlens.data import open_dataset
    from medlens.data.audit import inspect_dataset
    from medlens.tasks.classification.plan import plan_classification
    from medlens.tasks.pretraining.plan import plan_pretraining

    for name in ("a", "b"):
        write_images(tmp_path / "cls" / name, n=100, size=20)
    card = inspect_dataset(open_dataset(tmp_path / "cls"))
    config, reasons = plan_pretraining(card, probe=False)
    reference, _ = plan_classification(card, probe=False)
    assert (config.dataset.task, config.dataset.class_names) == ("pretraining", ("a", "b"))
    assert config.data == reference.data and config.model == replace(reference.model, members=1)
    assert config.train.batch_size == 32 > 0 and config.train.monitor == "val_loss"  # 128 training images / 4
    assert config.augment.intensity > 0 and config.augment.translate == 0 and config.pretrain.crop_scale == 0.5
    assert {"train.batch_size", "augment.intensity", "pretrain.temperature", "model.name"} <= set(reasons)
    from medlens.tasks import task_named

    task_named("pretraining").check(config)  # the plan passes its own task's checks


def test_the_batch_grows_with_the_data_and_shrinks_with_the_image():
    from medlens.tasks.pretraining.plan import batch_size

    assert batch_size((28, 28), 1, 20_000) == 256
    assert batch_size((28, 28), 1, 100) == 16  # at least 4 steps per epoch
    assert batch_size((224, 224), 3, 20_000) == 4  # the memory of a classification batch, for both views
    assert batch_size((224, 224), 3, 20_000, "gpu") == 64
    assert batch_size((64, 64, 64), 1, 1000) == 4


def test_the_budget_halves_the_batch_until_300_steps_fit_but_not_below_32():
    from medlens.tasks.pretraining.plan import TARGET_STEPS, _steps_in, budget_batch

    # PneumoniaMNIST's CPU plan: ~15 ms per image (both views) on a shared 2-core CPU, a 5-minute budget
    assert budget_batch(256, 0.015, 300.0) == 32 and _steps_in(300.0, 32 * 0.015) >= TARGET_STEPS > _steps_in(
        300.0, 64 * 0.015)
    assert budget_batch(256, 0.015, 900.0) == 128  # 15 minutes afford 300 steps of 128
    assert budget_batch(256, 1e-4, 300.0) == 256  # a GPU: memory decides
    assert budget_batch(256, 1.0, 60.0) == 32  # nothing fits 300 steps: the smallest batch with enough negatives
    assert budget_batch(16, 1.0, 60.0) == 16  # memory already allows fewer than 32


def test_the_task_is_registered_and_satisfies_the_protocol():
    import dataclasses

    from medlens.tasks import Task, task_for, task_named

    task = task_named("pretraining")
    assert isinstance(task, Task) and task_for("pretraining") is task and task.monitors == ("val_loss",)
    default = Config()
    sections = [s.name for s in dataclasses.fields(default)]
    fields = {f"{s}.{k.name}" for s in sections for k in dataclasses.fields(getattr(default, s))} | set(sections)
    assert task.ignored <= fields


def test_the_task_refuses_to_predict_export_or_explain():
    from medlens.errors import ConfigError
    from medlens.tasks import task_named

    task = task_named("pretraining")
    message = r"a pretraining run is an encoder, not a predictor; fine-tune it: medlens train DATA --init-from RUN"
    for call in (lambda: task.predict(None, None, heatmap=False, tta=None, probabilities=False, where="x"),
                 lambda: task.write_outputs(None, [], None, tta=None, probabilities=False, log=print),
                 lambda: task.exportable(None),
                 lambda: task.explain(None, None, {}, None, method="gradcam", class_name=None, where="x")):
        with pytest.raises(ConfigError, match=message):
            call()


def test_check_names_a_segmenter_a_wrong_dimensionality_and_an_ignored_key():
    from medlens.errors import ConfigError
    from medlens.tasks import task_named

    task, config = task_named("pretraining"), config_for((16, 16))
    config = replace(config, train=replace(config.train, monitor="val_loss"))
    task.check(config)
    with pytest.raises(ConfigError, match="model.name=unet_2d is not a classifier"):
        task.check(replace(config, model=ModelSection(name="unet_2d")))
    with pytest.raises(ConfigError, match=r"seedcnn_3d .* does not fit 2D data; use seedcnn_2d"):
        task.check(replace(config, model=ModelSection(name="seedcnn_3d")))
    with pytest.raises(ConfigError, match=r"train.sampler='weighted' does nothing for pretraining runs"):
        task.check(replace(config, train=replace(config.train, sampler="weighted")))
    with pytest.raises(ConfigError, match=r"temperature=0.0.*expected a temperature"):
        task.check(replace(config, pretrain=replace(config.pretrain, temperature=0.0)))


def test_the_knn_probe_classifies_by_neighbours_and_gives_a_ci():
    import numpy as np

    from medlens.tasks.pretraining.evaluate import knn_probe, probe_metrics

    rng = np.random.default_rng(0)
    centres = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    train_y, test_y = rng.integers(0, 2, 60), np.array([0, 1, 1, 0, 1, 0, 0, 1])
    train_x = centres[train_y] + 0.1 * rng.normal(size=(60, 3))
    test_x = centres[test_y] + 0.1 * rng.normal(size=(8, 3))
    predicted = knn_probe(train_x, train_y, test_x)
    np.testing.assert_array_equal(predicted, test_y)
    wrong = predicted.copy()
    wrong[:2] = 1 - wrong[:2]  # 6 of 8 right
    metrics = probe_metrics(test_y, wrong, np.arange(8).astype(str), n_boot=200, seed=0)
    assert metrics["accuracy"]["value"] == 0.75
    assert metrics["accuracy"]["ci_low"] < 0.75 < metrics["accuracy"]["ci_high"]
