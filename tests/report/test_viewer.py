"""medlens.report.viewer without a browser: volumes as NIfTI on the image's grid, box outlines, the size limit, and
the fallback when NiiVue is not installed."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from medlens.io import Image, read_image
from medlens.report import viewer
from medlens.tasks.segmentation.evaluate import CaseOverlay
from medlens.tasks.segmentation.report import viewer_section


def oblique_image(shape=(20, 16, 12)) -> Image:
    angle = np.deg2rad(20)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    array = np.arange(np.prod(shape), dtype=np.float32).reshape(1, *shape)
    return Image(array, (0.7, 0.8, 2.5), (-10.0, 5.0, 30.0), tuple(direction.ravel()))


def decoded(text: str, tmp_path, name: str) -> Image:
    path = tmp_path / f"{name}.nii.gz"
    path.write_bytes(base64.b64decode(text))
    return read_image(path)


def test_the_image_and_its_mask_travel_as_nifti_on_the_images_grid(tmp_path):
    image = oblique_image()
    mask = np.zeros(image.spatial_shape, dtype=np.int64)
    mask[3:7, 4:9, 2:5] = 2
    volumes = viewer.viewer_volumes(image, [viewer.mask_overlay(mask, {2: "tumour"})])
    grey, sent = decoded(volumes["image"]["nifti"], tmp_path, "image"), volumes["overlays"][0]
    label = decoded(sent["nifti"], tmp_path, "mask")
    assert volumes["step"] == 1 and volumes["shape"] == [20, 16, 12]
    for volume in (grey, label):
        assert volume.same_geometry(image)
    np.testing.assert_array_equal(grey.array, image.array)
    np.testing.assert_array_equal(label.array[0], mask)
    assert sent["kind"] == "label" and sent["names"] == {"2": "tumour"} and sent["colours"] == {"2": viewer.PALETTE[0]}


def test_a_large_volume_is_sent_on_every_nth_voxel_with_its_geometry(tmp_path):
    assert viewer.stride_for((512, 512, 200), viewer.SERVICE_MAX_VOXELS) == 2
    assert viewer.stride_for((48, 48, 32), viewer.REPORT_MAX_VOXELS) == 1
    image = oblique_image((40, 30, 20))
    heat = np.linspace(0, 2, 40 * 30 * 20).reshape(40, 30, 20)
    volumes = viewer.viewer_volumes(image, [viewer.heat_overlay(heat)], max_voxels=2999, quantize=True)
    step = volumes["step"]
    assert step == 3 and np.prod(volumes["shape"]) <= 2999
    grey, sent = decoded(volumes["image"]["nifti"], tmp_path, "image"), volumes["overlays"][0]
    assert grey.spatial_shape == (14, 10, 7) and grey.array.dtype == np.uint8
    np.testing.assert_allclose(grey.spacing_mm, np.array(image.spacing_mm) * step, rtol=1e-6)
    np.testing.assert_allclose(grey.origin_mm, image.origin_mm, atol=1e-4)
    np.testing.assert_allclose(grey.direction, image.direction, atol=1e-6)
    assert np.all(np.diff(grey.array[0, :, 0, 0].astype(int)) >= 0)  # the ramp kept its order in 8 bits
    heat_sent = decoded(sent["nifti"], tmp_path, "heat")
    assert sent["kind"] == "heat" and sent["threshold"] == viewer.HEAT_THRESHOLD
    assert heat_sent.array.max() == pytest.approx(1.0)  # clipped to [0, 1]


def test_boxes_become_outlines_of_their_class_value():
    boxes = [{"label": "nodule", "box": [2, 3, 1, 8, 9, 6], "score": 0.9},
             {"label": "mass", "box": [10.2, 0, 0, 14.8, 4, 3], "score": 0.5}]
    overlay = viewer.boxes_overlay(boxes, (16, 12, 8), ["mass", "nodule"])
    outline = overlay.array
    assert overlay.names == {1: "mass", 2: "nodule"} and overlay.kind == "label"
    assert outline[2, 3, 1] == 2 and outline[7, 8, 5] == 2 and outline[2, 6, 3] == 2  # corners and a face
    assert outline[4, 5, 3] == 0  # inside the box
    assert outline[8, 3, 1] == 0 and outline[1, 3, 1] == 0  # just outside
    assert outline[10, 0, 0] == 1 and outline[14, 3, 2] == 1
    assert set(np.unique(outline)) == {0, 1, 2}


def test_a_2d_image_is_refused_with_the_reason():
    flat = Image(np.zeros((1, 8, 8), np.float32), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="3D viewer shows 3D images"):
        viewer.viewer_volumes(flat)


def test_the_report_block_keeps_its_data_inside_its_script_elements():
    image = oblique_image((6, 6, 4))
    block = viewer.viewer_block({"image": {"nifti": "x"}, "overlays": [], "note": "</script><b>"}, "case-1", "a <case>")
    assert "</script><b>" not in block and "a &lt;case&gt;" in block
    data = block.split('id="case-1-volumes">')[1].split("</script>")[0]
    assert json.loads(data)["note"] == "</script><b>"
    if viewer.installed():
        scripts = viewer.viewer_scripts()
        assert scripts.count("<script data-medlens-viewer>") == 3 and scripts.count("</script") == 3
    assert image.spatial_dims == 3


def test_without_niivue_the_helpers_say_to_run_make_viewer(monkeypatch, tmp_path):
    monkeypatch.setattr(viewer, "NIIVUE_JS", tmp_path / "niivue.umd.js")  # as before `make viewer`
    assert not viewer.installed()
    with pytest.raises(FileNotFoundError, match="3D viewer not installed: run make viewer"):
        viewer.niivue_script()
    assert "3D viewer not installed: run make viewer" in viewer.fallback_html()
    image = oblique_image((8, 8, 6))
    mask = np.zeros(image.spatial_shape, np.int64)
    case = CaseOverlay("worst", "case_1", 0.5, image.array, mask, mask, image)
    section = viewer_section([case], {1: "lesion"})
    assert section.blocks == ["info: 3D viewer not installed: run make viewer to see these cases in 3D (the contour "
                              "figures stay)."]
    assert viewer_section([CaseOverlay("worst", "c", 0.5, image.array, mask, mask)], {1: "lesion"}) is None
