"""The work budget in the steps after reading: resampling to the plan's spacing, mapping back, sliding
window, classification resize. Each check is tested at its boundary: exactly the budget passes, one
voxel more is refused before anything is allocated."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from medlens.budget import WorkBudget, work_budget
from medlens.config import AugmentSection, Config, DataSection, DatasetSection, ModelSection, SegmentSection
from medlens.errors import BudgetError, ConfigError, DatasetError
from medlens.io import Image, identity_direction, read_image, write_image
from medlens.models import build_segmenter
from medlens.models.sliding import sliding_probs
from medlens.tasks.segmentation.infer import segment_image
from medlens.transforms import Preprocessor
from medlens.transforms.volume import prepare_image, prepare_mask, target_shape, to_original_grid

HINT = "raise the test's budget"


def budget(max_voxels: int):
    return work_budget(WorkBudget(max_voxels=max_voxels, hint=HINT))


def cube(side: int, spacing_mm: float, channels: int = 1) -> Image:
    array = np.random.default_rng(0).normal(size=(channels, side, side, side)).astype(np.float32)
    return Image(array, (spacing_mm,) * 3, (0.0,) * 3, identity_direction(3))


def seg_config(target_spacing=(1.0, 1.0, 2.0)) -> Config:
    return Config(dataset=DatasetSection(task="segmentation", class_names=("background", "a", "b"),
                                         label_values=(0, 1, 2), spatial_dims=3),
                  data=DataSection(input_size=(16, 16, 8), channels=1, normalization="zscore",
                                   target_spacing=target_spacing),
                  model=ModelSection(name="dynunet_3d", filters=(2, 4, 8), strides=((1, 1, 1), (2, 2, 2), (2, 2, 1)),
                                     kernels=((3, 3, 3),) * 3),
                  augment=AugmentSection(flip_axes=()), segment=SegmentSection(sw_batch_size=1))


def seg_model(config: Config) -> torch.nn.Module:
    torch.manual_seed(0)
    m = config.model
    return build_segmenter(m.name, in_channels=1, num_classes=3, filters=m.filters, strides=m.strides,
                           kernels=m.kernels).eval()


# ---- resampling to the plan's spacing -------------------------------------------------------------

def test_resampling_to_the_plans_spacing_is_checked_at_its_boundary():
    image, data = cube(4, 16.0), DataSection(target_spacing=(1.0, 1.0, 1.0), normalization="none")
    assert target_shape(image, data) == (64, 64, 64)  # 4 voxels of 16 mm -> 64 of 1 mm
    with budget(64**3):
        assert prepare_image(image, data, "here").shape == (1, 64, 64, 64)
    expected = (r"resampling the image to the plan's spacing \(1, 1, 1 mm\) from its own \(16, 16, 16 mm\) would "
                rf"make 262,144 voxels \(1 x 64 x 64 x 64\), more than the limit of 262,143; {HINT}")
    with budget(64**3 - 1), pytest.raises(BudgetError, match=expected):
        prepare_image(image, data, "here")


def test_channels_count_in_the_resampled_volume():
    image, data = cube(4, 2.0, channels=2), DataSection(target_spacing=(1.0,) * 3, channels=2, normalization="none")
    with budget(2 * 8**3):
        prepare_image(image, data, "here")
    with budget(2 * 8**3 - 1), pytest.raises(BudgetError, match=r"1,024 voxels \(2 x 8 x 8 x 8\)"):
        prepare_image(image, data, "here")


def test_a_1000_mm_voxel_is_refused_at_once_under_the_cli_budget():
    image = cube(16, 1000.0)  # 16000^3 voxels of 1 mm: 4e12, never allocated
    start = time.perf_counter()
    with pytest.raises(BudgetError, match=r"would make 4,096,000,000,000 voxels \(1 x 16000 x 16000 x 16000\).*"
                                          r"--max-voxels"):
        prepare_image(image, DataSection(target_spacing=(1.0, 1.0, 1.0)), "here")
    assert time.perf_counter() - start < 1.0


def test_a_spacing_that_overflows_is_refused_by_the_budget_not_an_overflow():
    with pytest.raises(BudgetError, match="resampling the image to the plan's spacing"):
        prepare_image(cube(2, 1e307), DataSection(target_spacing=(1e-3, 1e-3, 1e-3)), "here")


@pytest.mark.parametrize("spacing", [float("nan"), 0.0, -1.0, float("inf")])
def test_a_corrupt_image_spacing_is_a_dataset_error(spacing):
    image = Image(np.zeros((1, 4, 4, 4), np.float32), (1.0, spacing, 1.0), (0.0,) * 3, identity_direction(3))
    with pytest.raises(DatasetError, match=r"voxel spacing .* is not a positive finite size; its header is corrupt"):
        target_shape(image, DataSection(target_spacing=(1.0, 1.0, 1.0)))


def test_a_zero_target_spacing_in_the_plan_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data.target_spacing must be positive numbers of mm, found \[1.0, 0.0"):
        target_shape(cube(4, 1.0), DataSection(target_spacing=(1.0, 0.0, 1.0)))


def test_masks_are_checked_at_the_same_boundary():
    image, data = cube(4, 4.0), DataSection(target_spacing=(1.0, 1.0, 1.0))
    mask = image.with_array(np.zeros((1, 4, 4, 4), np.uint8))
    with budget(16**3):
        assert prepare_mask(mask, image, data, [0, 1], "here").shape == (16, 16, 16)
    with budget(16**3 - 1), pytest.raises(BudgetError, match=r"resampling the mask .* 4,096 voxels"):
        prepare_mask(mask, image, data, [0, 1], "here")


# ---- mapping back, sliding window, the whole segmentation path -------------------------------------

def test_mapping_probabilities_back_counts_every_class():
    probs = torch.full((3, 4, 4, 4), 1 / 3)
    with budget(3 * 8**3):
        assert to_original_grid(probs, (8, 8, 8)).shape == (3, 8, 8, 8)
    with budget(3 * 8**3 - 1), pytest.raises(BudgetError, match=r"mapping the class probabilities back .* 1,536"):
        to_original_grid(probs, (8, 8, 8))


def test_the_sliding_window_output_is_checked_with_the_padding_to_one_window():
    config = seg_config()
    x = torch.zeros(1, 1, 10, 10, 4)  # padded to the 16 x 16 x 8 window: 3 x 2048 voxels, not 3 x 400
    with budget(3 * 16 * 16 * 8):
        assert sliding_probs(seg_model(config), x, config).shape == (1, 3, 10, 10, 4)
    with budget(3 * 16 * 16 * 8 - 1), pytest.raises(BudgetError, match=r"stitching the sliding-window output "
                                                    r"\(3 classes\) would make 6,144 voxels \(1 x 3 x 16 x 16 x 8\)"):
        sliding_probs(seg_model(config), x, config)


def test_segmenting_a_nifti_with_huge_voxels_is_refused_before_any_window_runs(tmp_path):
    config = seg_config()
    model = seg_model(config)
    path = write_image(cube(4, 4.0), tmp_path / "coarse.nii.gz")  # 4 mm -> 16 x 16 x 8 on the 1 x 1 x 2 mm plan
    image = read_image(path)
    with budget(3 * 16 * 16 * 8):  # the largest step: 3 classes over one window
        assert segment_image(model, image, config, {"keep_largest": {}}).labels.shape == (4, 4, 4)
    with budget(3 * 16 * 16 * 8 - 1), pytest.raises(BudgetError, match="stitching the sliding-window output"):
        segment_image(model, image, config, {"keep_largest": {}})
    big = read_image(write_image(cube(16, 3.0), tmp_path / "big.nii.gz"))  # 3 mm: 48 x 48 x 24 on the plan
    with budget(48 * 48 * 24 - 1), pytest.raises(BudgetError, match=r"resampling the image to the plan's spacing "
                                                 r"\(1, 1, 2 mm\) from its own \(3, 3, 3 mm\) would make 55,296"):
        segment_image(model, big, config, {"keep_largest": {}})


def test_prediction_refuses_voxels_far_coarser_than_the_plan_before_resampling(tmp_path):
    """An 8 KB NIfTI of 16 mm voxels sent to a 1 mm model: within the budget (256^3), but 4096 times more voxels
    than it holds, and nothing like the training images. At most 512-fold growth is accepted."""
    config = seg_config(target_spacing=(1.0, 1.0, 1.0))
    model = seg_model(config)
    at_limit = read_image(write_image(cube(2, 8.0), tmp_path / "at.nii.gz"))  # 8 mm -> 16^3: exactly 512-fold
    assert segment_image(model, at_limit, config, {"keep_largest": {}}).labels.shape == (2, 2, 2)
    over = Image(np.zeros((1, 2, 2, 2), np.float32), (8.0, 8.0, 8.3), (0.0,) * 3, identity_direction(3))  # 16x16x17
    with pytest.raises(DatasetError, match=r"far coarser than the model's.*544-fold \(at most 512-fold"):
        segment_image(model, over, config, {"keep_largest": {}})
    huge = read_image(write_image(cube(16, 16.0), tmp_path / "huge.nii.gz"))  # 256^3 on the plan: 4096-fold
    with pytest.raises(DatasetError, match=r"from its own \(16, 16, 16 mm\) would multiply its voxel count "
                                           r"4,096-fold"):  # the growth check, which runs before resampling
        segment_image(model, huge, config, {"keep_largest": {}})


# ---- classification resize ----------------------------------------------------------------------

def test_the_classification_resize_checks_the_source_it_converts_to_float():
    grey = Image(np.zeros((1, 64, 48), np.uint8), (1.0, 1.0), (0.0, 0.0), identity_direction(2))
    prep = Preprocessor(DataSection(input_size=(28, 28), channels=3, normalization="scale01",
                                    intensity_range=(0, 255)))
    with budget(3 * 64 * 48):  # grey repeated to the plan's three channels
        assert prep(grey).shape == (3, 28, 28)
    with budget(3 * 64 * 48 - 1), pytest.raises(BudgetError, match=r"converting the image to float for resizing "
                                                r"to \(28, 28\) would make 9,216 voxels \(3 x 64 x 48\)"):
        prep(grey)
