"""A detection bundle: exported heads with parity, the Predictor, and ``POST /v1/predict`` answering with boxes."""

from __future__ import annotations

import json

import numpy as np


def test_the_bundle_carries_the_detector_and_its_exported_heads(det_bundle):
    names = {p.name for p in det_bundle.iterdir()}
    assert {"model.safetensors", "model.ts", "model.onnx", "postprocess.json", "card.json"} <= names
    card = json.loads((det_bundle / "card.json").read_text())
    assert "non-maximum suppression" in json.dumps(card) and card["task"] == "detection"


def test_the_exported_onnx_heads_match_the_pytorch_network(det_bundle):
    import torch

    from medlens.deploy import Predictor
    from medlens.deploy.export import load_runner

    predictor = Predictor.from_bundle(det_bundle)
    heads = predictor.task.exportable(predictor.model).eval()
    x = np.random.default_rng(0).normal(size=(1, 1, *predictor.config.data.input_size)).astype(np.float32)
    with torch.no_grad():
        expected = heads(torch.from_numpy(x)).numpy()
    got = load_runner("onnx", det_bundle / "model.onnx")(x)
    np.testing.assert_allclose(got, expected, atol=1e-3, rtol=1e-3)


def test_the_service_answers_with_boxes_and_an_overlay(det_bundle, demo_dir, serve):
    import httpx

    from medlens.deploy import Predictor

    server = serve(Predictor.from_bundle(det_bundle))
    image = sorted((demo_dir / "detection").glob("*.png"))[0]
    with open(image, "rb") as f:
        answer = httpx.post(f"{server.url}/v1/predict", files={"file": (image.name, f, "image/png")},
                            data={"overlay": "true"}, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["task"] == "detection" and isinstance(body["boxes"], list)
    assert 0 < body["display_threshold"] < 1 and body["overlay_png"]
    for box in body["boxes"]:
        assert set(box) >= {"label", "score", "box"}
    refused = httpx.post(f"{server.url}/v1/predict", files={"file": (image.name, image.read_bytes(), "image/png")},
                         data={"mask": "true"}, timeout=60)
    assert refused.status_code == 400 and "overlay=true" in refused.text
