"""The bundle (export, checksums, card) and the Predictor over it, on every format the readers take."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from medlens.deploy import BundleError, Predictor, export_bundle, open_bundle
from medlens.errors import ConfigError
from medlens.io import Image, read_image, write_image
from medlens.io.dicom_write import write_dicom_series


@pytest.fixture(scope="module")
def demo(demo_dir) -> Path:
    return demo_dir


@pytest.fixture(scope="module")
def run_2d(cls_run) -> Path:
    """The session's demo classifier, evaluated (the card carries the test metrics); read only."""
    return cls_run.root


@pytest.fixture(scope="module")
def bundle_2d(run_2d, tmp_path_factory) -> Path:
    return export_bundle(run_2d, tmp_path_factory.mktemp("bundle") / "model.bundle", formats="none", log=lambda m: None)


def test_a_bundle_holds_weights_card_plan_and_a_checksum_of_every_file(bundle_2d, run_2d):
    names = sorted(p.name for p in bundle_2d.iterdir())
    assert names == ["calibration.json", "card.json", "checksums.json", "model.safetensors", "ood_guard.safetensors",
                     "plan.yaml"]
    sums = json.loads((bundle_2d / "checksums.json").read_text())
    assert sums["algorithm"] == "sha256" and sorted(sums["files"]) == [n for n in names if n != "checksums.json"]
    card = open_bundle(bundle_2d).card
    calibration = json.loads((run_2d / "calibration.json").read_text())
    dataset_card = json.loads((run_2d / "card.json").read_text())
    assert card["task"] == "binary" and card["class_names"] == ["normal", "lesion"]
    assert card["input"] == {"size": [64, 64], "channels": 1, "target_spacing_mm": None}
    assert card["preprocessing"]["normalization"] == "scale01"
    assert card["calibration"]["temperature"] == calibration["temperature"]
    assert card["calibration"]["threshold"] == calibration["threshold"]
    assert card["training_data"]["fingerprint_sha256"] == dataset_card["fingerprint"]
    assert card["metrics"]["split"] == "test" and {"value", "ci_low", "ci_high"} <= set(card["metrics"]["auc"])
    validation = card["validation_metrics"]
    assert validation["split"] == "val" and validation["n_cases"] == len(json.loads(
        (run_2d / "splits.json").read_text())["folds"][0]["val"])
    assert validation["auc"]["ci_low"] <= validation["auc"]["value"] <= validation["auc"]["ci_high"]
    assert card["medlens_version"] and card["model_version"].startswith("run-")
    assert "not a medical device" in card["intended_use"]


def test_the_bundle_predicts_exactly_what_the_run_predicts(bundle_2d, run_2d, demo):
    from_run, from_bundle = Predictor.from_run(run_2d), Predictor.from_bundle(bundle_2d)
    for study in sorted((demo / "new_studies").glob("*.png")):
        a, b = from_run.predict(study), from_bundle.predict(study)
        assert a["label"] == b["label"] and a["probabilities"] == b["probabilities"]
        assert b["model_version"] == open_bundle(bundle_2d).card["model_version"]
        assert b["confidence"] == b["probabilities"][b["label"]]


def test_heatmap_is_a_png_overlay_of_the_input(bundle_2d, demo):
    result = Predictor.from_bundle(bundle_2d).predict(demo / "new_studies" / "study_01.png", heatmap=True)
    png = PILImage.open(io.BytesIO(result["heatmap_png"]))
    assert png.format == "PNG" and png.size == (256, 256) and result["explained_class"] == result["label"]


def test_a_zipped_bundle_opens_like_the_folder(run_2d, tmp_path, demo):
    archive = export_bundle(run_2d, tmp_path / "model.zip", formats="none", log=lambda m: None)
    assert zipfile.is_zipfile(archive)
    study = demo / "new_studies" / "study_02.png"
    assert Predictor.from_path(archive).predict(study)["probabilities"] == Predictor.from_run(run_2d).predict(
        study)["probabilities"]


@pytest.mark.parametrize("damage", ["alter", "add", "remove"])
def test_an_altered_bundle_is_refused(bundle_2d, tmp_path, damage):
    copy = Path(shutil.copytree(bundle_2d, tmp_path / "copy"))
    if damage == "alter":  # e.g. weights swapped for a pickle that would run code
        torch.save({"x": torch.zeros(1)}, copy / "model.safetensors")
        message = "model.safetensors does not match its checksum"
    elif damage == "add":
        (copy / "extra.py").write_text("print('hi')")
        message = r"files \['extra.py'\] are missing or not listed"
    else:
        (copy / "plan.yaml").unlink()
        message = r"files \['plan.yaml'\] are missing or not listed"
    with pytest.raises(BundleError, match=message):
        Predictor.from_bundle(copy)


def test_unsafe_archives_and_other_folders_are_refused(run_2d, tmp_path):
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as z:
        z.writestr("../card.json", "{}")
    with pytest.raises(BundleError, match=r"entry '../card.json' is not a plain bundle file"):
        Predictor.from_bundle(tmp_path / "evil.zip")
    with pytest.raises(BundleError, match="no checksums.json; this is not a medlens bundle"):
        open_bundle(run_2d)
    with pytest.raises(ConfigError, match="already exists; choose another --out"):
        export_bundle(run_2d, run_2d, formats="none")


def test_export_and_predict_through_the_cli(cli, run_2d, demo, tmp_path):
    assert cli("export", run_2d, "--out", tmp_path / "b", "--format", "none").rc == 0
    result = cli("predict", tmp_path / "b", demo / "new_studies", "--out", tmp_path / "p.csv")
    assert result.rc == 0 and result.out.count("study_0") == 4
    (tmp_path / "b" / "card.json").write_text("{}")
    refused = cli("predict", tmp_path / "b", demo / "new_studies")
    assert refused.rc == 2 and "card.json does not match its checksum" in refused.err


def test_the_predictor_reads_every_2d_format_alike(bundle_2d, demo, tmp_path):
    """The same pixels as PNG, NIfTI, MHA, NRRD, NumPy and an in-memory array give the same probabilities."""
    source = read_image(demo / "new_studies" / "study_03.png")
    predictor = Predictor.from_bundle(bundle_2d)
    expected = predictor.predict(source)["probabilities"]
    for suffix in (".png", ".nii.gz", ".mha", ".nrrd"):
        path = write_image(source, tmp_path / f"copy{suffix}")
        assert predictor.predict(path)["probabilities"] == expected, suffix
    np.save(tmp_path / "copy.npy", source.array[0].T)  # row-major (rows, cols), as the npy reader expects
    assert predictor.predict(tmp_path / "copy.npy")["probabilities"] == expected
    assert predictor.predict(source.array)["probabilities"] == expected


def test_the_predictor_reads_every_3d_format_alike(blob_run_3d, make_blob_volume, tmp_path):
    """NIfTI, MHA, NRRD and a DICOM series of the same volume give the same prediction and heat map size."""
    volume = make_blob_volume(np.random.default_rng(3), True)
    bundle = export_bundle(blob_run_3d, tmp_path / "b3", formats="none", log=lambda m: None)
    predictor = Predictor.from_bundle(bundle)
    rounded = Image(np.round(volume.array), volume.spacing_mm, volume.origin_mm, volume.direction)
    expected = predictor.predict(rounded)["probabilities"]
    for suffix in (".nii.gz", ".mha", ".nrrd"):
        assert predictor.predict(write_image(rounded, tmp_path / f"v{suffix}"))["probabilities"] == expected
    write_dicom_series(rounded.array[0], tmp_path / "dicom", spacing_mm=rounded.spacing_mm,
                       origin_mm=rounded.origin_mm, rescale_intercept=0.0, modality="MR")
    result = predictor.predict(tmp_path / "dicom", heatmap=True)
    assert result["probabilities"] == pytest.approx(expected, abs=1e-5)
    assert PILImage.open(io.BytesIO(result["heatmap_png"])).size[0] > 256  # three slices side by side
    with zipfile.ZipFile(tmp_path / "series.zip", "w") as archive:
        for path in sorted((tmp_path / "dicom").iterdir()):
            archive.write(path, arcname=f"study/{path.name}")
    assert predictor.predict(tmp_path / "series.zip")["probabilities"] == result["probabilities"]


def test_a_segmentation_bundle_writes_masks_on_the_input_grid(cli, demo, seg_run, seg_bundle, tmp_path):
    run, bundle = seg_run.root, seg_bundle
    source = demo / "new_volumes" / "lesion_new.nii.gz"
    ours, theirs = Predictor.from_bundle(bundle).predict(source), Predictor.from_run(run).predict(source)
    assert ours["task"] == "segmentation" and ours["voxels"] == theirs["voxels"]
    original = read_image(source)
    assert ours["mask"].spatial_shape == original.spatial_shape
    np.testing.assert_allclose(ours["mask"].direction, original.direction)
    result = cli("predict", bundle, source, "--out", tmp_path / "masks")
    assert result.rc == 0 and (tmp_path / "masks" / "lesion_new_seg.nii.gz").exists()


def test_torchscript_and_onnx_backends_match_pytorch_within_1e_4(run_2d, demo, tmp_path):
    bundle = export_bundle(run_2d, tmp_path / "both", formats="both", log=lambda m: None)
    assert {"model.ts", "model.onnx"} <= {p.name for p in bundle.iterdir()}
    backends = {name: Predictor.from_bundle(bundle, backend=name) for name in ("torch", "torchscript", "onnx")}
    for study in sorted((demo / "new_studies").glob("*.png")):
        results = {name: p.predict(study) for name, p in backends.items()}
        for name in ("torchscript", "onnx"):
            assert results[name]["label"] == results["torch"]["label"]
            for k, v in results["torch"]["probabilities"].items():
                assert abs(results[name]["probabilities"][k] - v) <= 1e-4, (name, study.name)
    with pytest.raises(ConfigError, match="a run folder holds PyTorch weights only"):
        Predictor.from_run(run_2d, backend="onnx")
