"""plan_detection: from a detection card's box statistics to grid, pyramid, anchors and patch; the task's checks.

Cards are built by hand, laid out like :func:`medlens.data.audit.inspect_dataset` and
:func:`medlens.data.audit_boxes.box_summary` write them, with only what the planner reads. The network
is never timed (``probe=False``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from medlens.config import Config, DataSection, DatasetSection, DetectSection, ModelSection
from medlens.errors import ConfigError, DatasetError
from medlens.models.detectors import network_multiple
from medlens.tasks.detection.plan import GRID_VOXELS, MIN_OBJECT, plan_detection, time_detection_step
from medlens.tasks.detection.task import DetectionTask


def sizes(p25, p50=None, p95=None) -> dict:
    """``size_vox`` of one class: per axis the percentiles, from three per-axis side lists (p5 = p25 / 2,
    p75 = (p50 + p95) / 2)."""
    p50 = p50 or p25
    p95 = p95 or p50
    return {f"axis{a}": {"min": p25[a] / 3, "p5": p25[a] / 2, "p25": p25[a], "p50": p50[a], "median": p50[a],
                         "p75": (p50[a] + p95[a]) / 2, "p95": p95[a], "max": p95[a] * 1.2}
            for a in range(len(p25))}


def card(classes: dict, *, shape=(640, 480), spacing=None, channels=3) -> dict:
    """A detection dataset's card; ``classes``: name -> ``size_vox`` (or ``None`` for a class without a box);
    ``spacing=None`` is a PNG's (unknown)."""
    dims = len(shape)
    axes = lambda values: {f"axis{a}": {"min": v, "p10": v, "median": v, "max": v}  # noqa: E731
                           for a, v in enumerate(values)}
    images = {"shape": axes(shape), "distinct_shapes": 1, "channels": {str(channels): 40},
              "dtypes": {"uint8": 40}, "spacing_known": spacing is not None}
    if spacing is not None:
        images["spacing_mm"] = axes(spacing)
    per_class = {name: ({"boxes": 50, "images": 30, "size_vox": size} if size else {"boxes": 0, "images": 0})
                 for name, size in classes.items()}
    return {"dataset": {"source": "/data/cells", "layout": "coco", "task": "detection", "spatial_dims": dims,
                        "task_label": f"detection {dims}D", "class_names": list(classes), "num_cases": 40,
                        "num_readable": 40, "modality": None, "meta": {}},
            "images": images,
            "boxes": {"boxes_per_image": {"mean": 2.0, "min": 0, "max": 5, "images_without_boxes": 3,
                                          "total": 80},
                      "per_class": per_class,
                      "problems": {"outside": 0, "far_outside": 0, "degenerate": 0, "duplicates": 0,
                                   "annotated": 80}},
            "fingerprint": "f00d"}


def plan(c: dict, device: str = "cpu") -> Config:
    config, reasons = plan_detection(c, device=device, probe=False)
    assert set(reasons) >= {"data.target_spacing", "data.input_size", "detect.anchors", "detect.returned_layers"}
    return config


def grid_sides(config: Config, c: dict, sides) -> np.ndarray:
    """``sides`` (original voxels) on the planned grid."""
    dims = config.dataset.spatial_dims
    images = c["images"]
    spacing = [images["spacing_mm"][f"axis{a}"]["median"] if images["spacing_known"] else 1.0 for a in range(dims)]
    return np.asarray(sides) * np.asarray(spacing) / np.asarray(config.data.target_spacing)


# ---- the grid ----------------------------------------------------------------------------------------------


def test_a_large_image_is_coarsened_no_further_than_the_small_objects_allow():
    c = card({"rbc": sizes((16, 16), (40, 40), (60, 60)), "wbc": sizes((60, 50), (80, 80), (120, 110))})
    config = plan(c)

    small = grid_sides(config, c, (16, 16))
    assert small.min() >= MIN_OBJECT - 1e-3
    assert small.min() < MIN_OBJECT + 0.1  # the budget would coarsen further: the small objects stop it
    assert config.data.target_spacing[0] > 1.0  # a PNG pixel counts as 1 mm; the image was coarsened


def test_the_pixel_budget_sets_the_grid_when_the_objects_are_large():
    c = card({"wbc": sizes((80, 80), (100, 100), (150, 150))}, shape=(1280, 960))
    config = plan(c)
    grid = np.asarray([1280, 960]) / np.asarray(config.data.target_spacing)
    assert grid.prod() == pytest.approx(320 * 256, rel=0.01)
    assert grid_sides(config, c, (80, 80)).min() > MIN_OBJECT


def test_an_image_within_the_budget_keeps_its_spacing():
    c = card({"nodule": sizes((20, 20, 14))}, shape=(64, 64, 32), spacing=(0.7, 0.7, 2.5), channels=1)
    config = plan(c)
    assert config.data.target_spacing == (0.7, 0.7, 2.5)
    assert config.dataset.spatial_dims == 3 and config.model.name == "retinanet_3d"


def test_objects_below_the_minimum_are_enlarged_at_most_twice():
    c = card({"dot": sizes((8, 10))}, shape=(100, 100))
    assert grid_sides(plan(c), c, (8, 10)).min() == pytest.approx(MIN_OBJECT, abs=1e-3)
    c = card({"dot": sizes((4, 10))}, shape=(100, 100))
    assert plan(c).data.target_spacing == (0.5, 0.5)


def test_the_smallest_class_is_the_one_kept_visible():
    c = card({"big": sizes((40, 40)), "tiny": sizes((14, 13))}, shape=(1600, 1200))
    config = plan(c)
    assert grid_sides(config, c, (14, 13)).min() == pytest.approx(MIN_OBJECT, abs=1e-3)


def test_an_image_over_the_budget_is_never_planned_finer_than_it_is():
    c = card({"nodule": sizes((4, 4, 3), (8, 8, 6), (20, 20, 15))}, shape=(512, 512, 300), spacing=(0.7, 0.7, 1.0),
             channels=1)
    config = plan(c)
    grid = np.asarray([512, 512, 300]) * np.asarray([0.7, 0.7, 1.0]) / np.asarray(config.data.target_spacing)
    assert grid.prod() <= 512 * 512 * 300
    assert 512 * 512 * 300 > GRID_VOXELS[("cpu", 3)]


# ---- pyramid, anchors, patch -------------------------------------------------------------------------------


def test_a_wider_size_range_gets_more_pyramid_levels():
    narrow = plan(card({"a": sizes((16, 16), (20, 20), (30, 30))}))
    wide = plan(card({"a": sizes((16, 16), (60, 60), (400, 400))}))
    assert len(wide.detect.returned_layers) > len(narrow.detect.returned_layers)
    assert wide.detect.returned_layers[0] == narrow.detect.returned_layers[0]


def test_large_small_objects_start_the_pyramid_one_stride_coarser():
    fine = plan(card({"a": sizes((16, 16))}, shape=(200, 200)))
    coarse = plan(card({"a": sizes((40, 40))}, shape=(200, 200)))
    assert fine.detect.returned_layers[0] == 1 and coarse.detect.returned_layers[0] == 2


@pytest.mark.parametrize("shape, p25, spacing", [
    ((640, 480), (16, 24), None),
    ((128, 128, 48), (12, 12, 6), (0.8, 0.8, 2.0)),
])
def test_anchors_have_one_side_per_axis_and_the_patch_fits_the_network(shape, p25, spacing):
    p50 = tuple(2 * s for s in p25)
    config = plan(card({"a": sizes(p25, p50)}, shape=shape, spacing=spacing))
    dims = len(shape)

    assert len(config.detect.anchors) == 3
    assert all(len(a) == dims and min(a) > 0 for a in config.detect.anchors)
    multiple = network_multiple(dims, config.detect.returned_layers)
    assert all(p % m == 0 and p >= m for p, m in zip(config.data.input_size, multiple))
    assert config.model.name == f"retinanet_{dims}d"
    assert len(config.model.filters) >= max(config.detect.returned_layers)


def test_anchors_follow_the_aspect_of_elongated_boxes():
    config = plan(card({"a": sizes((16, 48), (32, 48), (40, 48))}, shape=(300, 300)))
    ratios = sorted(a[0] / a[1] for a in config.detect.anchors)
    assert ratios[0] < ratios[-1] and ratios[-1] <= 1.0


# ---- the task's checks on the plan -------------------------------------------------------------------------


def changed(config: Config, section: str, **values) -> Config:
    return dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **values)})


@pytest.fixture(scope="module")
def planned() -> Config:
    return plan(card({"rbc": sizes((16, 16), (30, 30), (60, 60))}))


def test_the_task_accepts_its_plan(planned):
    DetectionTask().check(planned)


def test_the_task_refuses_a_patch_the_network_does_not_divide(planned):
    patch = list(planned.data.input_size)
    patch[0] += 1
    with pytest.raises(ConfigError, match="every side must be a multiple of"):
        DetectionTask().check(changed(planned, "data", input_size=tuple(patch)))


def test_the_task_refuses_anchors_of_the_wrong_dimension(planned):
    with pytest.raises(ConfigError, match="anchor shapes of 2 positive sides"):
        DetectionTask().check(changed(planned, "detect", anchors=((16.0, 16.0, 16.0),)))


def test_the_task_refuses_a_3d_model_on_2d_data(planned):
    with pytest.raises(ConfigError, match="use retinanet_2d"):
        DetectionTask().check(changed(planned, "model", name="retinanet_3d"))


def test_the_task_refuses_a_key_it_ignores(planned):
    with pytest.raises(ConfigError, match="train.loss='focal' does nothing for detection runs"):
        DetectionTask().check(changed(planned, "train", loss="focal"))


@pytest.mark.parametrize("values", [{"nms_iou": 0.0}, {"froc_iou": 1.5}, {"score_threshold": 1.0},
                                    {"max_detections": 0}])
def test_the_task_refuses_postprocessing_out_of_range(planned, values):
    with pytest.raises(ConfigError, match="must lie in"):
        DetectionTask().check(changed(planned, "detect", **values))


# ---- cards the planner refuses -----------------------------------------------------------------------------


def test_a_card_without_boxes_is_refused():
    with pytest.raises(DatasetError, match="no image has a box"):
        plan_detection(card({"rbc": None, "wbc": None}), probe=False)
    no_section = card({"rbc": None})
    del no_section["boxes"]
    with pytest.raises(DatasetError, match="no image has a box"):
        plan_detection(no_section, probe=False)


def test_a_card_of_another_task_is_refused():
    other = card({"rbc": sizes((16, 16))})
    other["dataset"]["task"] = "segmentation"
    with pytest.raises(DatasetError, match="not images with boxes"):
        plan_detection(other, probe=False)


def test_the_probe_times_a_training_step_and_a_forward_pass():
    dataset = DatasetSection(task="detection", class_names=("a", "b"), spatial_dims=2)
    data = DataSection(input_size=(32, 32), channels=1)
    detect = DetectSection(anchors=((8.0, 8.0),), returned_layers=(1,), fpn_channels=8)
    step_s, forward_s = time_detection_step(ModelSection(name="retinanet_2d", filters=(4,)), data, detect, dataset,
                                            batch=2, device="cpu", repeats=1, warmup=0)
    assert 0 < forward_s < 10 and 0 < step_s < 10
