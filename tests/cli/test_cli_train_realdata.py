"""Real data in CI: a short PneumoniaMNIST training must reach test AUC >= 0.90 (official splits); its Grad-CAM
maps of official test images must pass the randomisation test, and its exported bundle must give the same
probabilities through TorchScript and ONNX Runtime (1e-4)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

DATA = Path(os.environ.get("MEDLENS_DATA_DIR") or Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets")
PNEUMONIA = DATA / "medmnist" / "pneumoniamnist.npz"


@pytest.mark.realdata
@pytest.mark.skipif(not PNEUMONIA.exists(), reason=f"{PNEUMONIA} not present (set MEDLENS_DATA_DIR)")
def test_short_pneumoniamnist_training_reaches_test_auc_090(cli, tmp_path):
    run = tmp_path / "pneumonia"
    result = cli("train", PNEUMONIA, "--out", run, "--time-budget", "90s", "--set", "train.max_epochs=2",
                 "--no-progress")
    assert result.rc == 0, result.err
    assert "leakage.duplicates" in result.out  # the audit warns about the official files' cross-split copies
    result = cli("evaluate", run, "--bootstrap", "200", "--no-baseline")
    assert result.rc == 0, result.err
    doc = json.loads((run / "metrics.json").read_text())
    assert doc["n_cases"] == 624
    assert doc["metrics"]["auc"]["value"] >= 0.90, doc["metrics"]["auc"]
    assert doc["medmnist_protocol"]["auc"] >= 0.90
    _explain_test_images(cli, run, tmp_path)
    _bundle_parity(cli, run, tmp_path)


def _bundle_parity(cli, run: Path, tmp_path: Path) -> None:
    """The exported bundle's TorchScript and ONNX networks give the trained model's probabilities (1e-4) on
    64 official test images, read as PNG files through the bundle's own preprocessing."""
    import numpy as np
    from PIL import Image as PILImage

    from medlens.deploy import Predictor

    assert cli("export", run, "--out", tmp_path / "model.bundle").rc == 0
    data = np.load(PNEUMONIA)
    folder = tmp_path / "parity"
    folder.mkdir()
    for i, image in enumerate(data["test_images"][:64]):
        PILImage.fromarray(image).save(folder / f"{i:03d}.png")
    bundle = tmp_path / "model.bundle"
    backends = {b: Predictor.from_bundle(bundle, backend=b) for b in ("torch", "torchscript", "onnx")}
    worst = 0.0
    for path in sorted(folder.iterdir()):
        results = {b: p.predict(path) for b, p in backends.items()}
        for b in ("torchscript", "onnx"):
            worst = max(worst, *(abs(results[b]["probabilities"][k] - v)
                                 for k, v in results["torch"]["probabilities"].items()))
            assert results[b]["label"] == results["torch"]["label"]
    assert worst <= 1e-4, worst


def _explain_test_images(cli, run: Path, tmp_path: Path) -> None:
    """Grad-CAM on six official test images: maps of the predicted class that pass the randomisation test."""
    import numpy as np
    from PIL import Image as PILImage

    data = np.load(PNEUMONIA)
    images, labels = data["test_images"], data["test_labels"].ravel()
    folder = tmp_path / "studies"
    folder.mkdir()
    for label in (0, 1):
        for i in np.flatnonzero(labels == label)[:3]:
            PILImage.fromarray(images[i]).save(folder / f"test_{i}.png")
    result = cli("explain", run, folder, "--out", tmp_path / "cams")
    assert result.rc == 0, result.err
    doc = json.loads((tmp_path / "cams" / "explanations.json").read_text())
    assert len(doc["inputs"]) == 6 and all(PILImage.open(r["overlay"]).size == (256, 256) for r in doc["inputs"])
    assert doc["sanity"]["passed"], doc["sanity"]["message"]  # requires mean Spearman rho < 0.5
