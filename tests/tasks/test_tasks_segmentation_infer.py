"""Segmentation inference pieces: geometry round trip, post-processing, mirroring, output names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medlens.config import AugmentSection, Config, DataSection, DatasetSection, ModelSection, SegmentSection
from medlens.data.inputs import output_name
from medlens.io import Image, read_image, write_image
from medlens.models import build_segmenter
from medlens.models.sliding import mirror_sets, sliding_probs
from medlens.tasks.segmentation.infer import segment_image
from medlens.tasks.segmentation.postprocess import choose_postprocessing, keep_largest_component


def tiny_config(target_spacing=(1.0, 1.0, 2.0), label_values=(0, 1, 4)) -> Config:
    return Config(dataset=DatasetSection(task="segmentation", class_names=("background", "a", "b"),
                                         label_values=label_values, spatial_dims=3),
                  data=DataSection(input_size=(16, 16, 8), channels=1, normalization="zscore",
                                   target_spacing=target_spacing),
                  model=ModelSection(name="dynunet_3d", filters=(4, 8, 16), strides=((1, 1, 1), (2, 2, 2), (2, 2, 1)),
                                     kernels=((3, 3, 3),) * 3),
                  augment=AugmentSection(flip_axes=(0, 1, 2)), segment=SegmentSection(sw_batch_size=2))


def tiny_model(config: Config) -> torch.nn.Module:
    torch.manual_seed(0)
    m = config.model
    return build_segmenter(m.name, in_channels=1, num_classes=3, filters=m.filters, strides=m.strides,
                           kernels=m.kernels).eval()


def oblique_image() -> Image:
    angle = np.radians(30)
    direction = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    array = np.random.default_rng(0).normal(size=(1, 23, 19, 11)).astype(np.float32)
    return Image(array, (0.75, 1.3, 2.6), (-10.5, 3.25, 80.0), tuple(direction.ravel()))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_a_predicted_mask_round_trips_with_exactly_the_inputs_geometry(tmp_path, suffix):
    config = tiny_config()
    source = write_image(oblique_image(), tmp_path / f"scan{suffix}")
    image = read_image(source)
    result = segment_image(tiny_model(config), image, config, {"keep_largest": {}}, keep_probs=True)
    assert result.labels.shape == image.spatial_shape  # resampled to 1x1x2 mm and back
    assert set(np.unique(result.labels)) <= {0, 1, 4}  # indices mapped back to the mask values
    written = read_image(write_image(result.as_image(), tmp_path / output_name(source, "_seg")))
    assert written.spatial_shape == image.spatial_shape
    # NRRD stores spacing x direction as one matrix, so its spacing comes back within float rounding
    np.testing.assert_allclose(written.spacing_mm, image.spacing_mm, rtol=0, atol=1e-9)
    np.testing.assert_allclose(written.origin_mm, image.origin_mm, rtol=0, atol=1e-9)
    np.testing.assert_allclose(written.direction, image.direction, rtol=0, atol=1e-9)
    assert result.probs.shape == (3, *image.spatial_shape)
    np.testing.assert_allclose(result.probs.sum(0), 1.0, atol=1e-5)


def test_keep_largest_component_removes_the_smaller_islands_of_each_class_only():
    labels = np.zeros((10, 10, 4), dtype=np.uint8)
    labels[0:4, 0:4] = 1  # 64 voxels
    labels[7:9, 7:9] = 1  # 16 voxels: removed
    labels[0:2, 7:9, 0] = 2  # class 2, two islands but not chosen
    labels[5, 0, 0] = 2
    out = keep_largest_component(labels, [1])
    assert (out == 1).sum() == 64 and (out[7:9, 7:9] == 0).all()
    assert (out == 2).sum() == (labels == 2).sum()


def test_postprocessing_rules_always_and_never_skip_the_validation_comparison():
    config = tiny_config()
    for rule, expected in (("always", True), ("never", False)):
        ruled = Config(**{**config.__dict__, "segment": SegmentSection(keep_largest=rule)})
        chosen = choose_postprocessing(None, ruled, [])
        assert chosen["keep_largest"] == {"a": expected, "b": expected}


def test_mirroring_averages_every_flip_combination():
    assert mirror_sets((0, 1)) == [(), (0,), (1,), (0, 1)]
    assert len(mirror_sets((0, 1, 2))) == 8
    config = tiny_config()
    model = tiny_model(config)
    x = torch.randn(1, 1, 20, 18, 9)
    plain = sliding_probs(model, x, config)
    mirrored = sliding_probs(model, x, config, mirror=True)
    assert plain.shape == mirrored.shape == (1, 3, 20, 18, 9)
    flipped = sliding_probs(model, x.flip(2), config, mirror=True).flip(2)
    torch.testing.assert_close(mirrored, flipped, atol=1e-5, rtol=1e-4)  # mirroring makes it flip-equivariant


def test_output_names_keep_writable_suffixes_and_turn_the_rest_into_nifti(tmp_path):
    for name, expected in (("scan.nii.gz", "scan_seg.nii.gz"), ("scan.nrrd", "scan_seg.nrrd"),
                           ("slice.dcm", "slice_seg.nii.gz")):
        path = tmp_path / name
        path.write_bytes(b"")
        assert output_name(path, "_seg") == expected
    series = tmp_path / "series_001"
    series.mkdir()
    assert output_name(series, "_seg") == "series_001_seg.nii.gz"
    assert output_name(Path(tmp_path / "scan.nrrd"), "_probs", ".nii.gz") == "scan_probs.nii.gz"
