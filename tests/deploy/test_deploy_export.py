"""TorchScript / ONNX export: every registered network gives PyTorch's logits through every runner.

Parity is checked at batch sizes 1 and 3 on random inputs (max abs difference < 1e-4), and a batch
of 3 must equal three single calls (the batch axis is free). Scalable classifiers are built at
width 0.25: the exported graph has the same operators at every width, and the files stay small.
The default run exports ONNX with the TorchScript-based exporter (1 s) for every network and with
the dynamo exporter (what ``exporter="auto"`` ships) for the cheap ones; the rest is ``slow``.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from medlens.deploy import export
from medlens.deploy.export import (
    OnnxRunner,
    TorchRunner,
    TorchScriptRunner,
    export_onnx,
    export_torchscript,
    load_runner,
)
from medlens.errors import ConfigError
from medlens.models import CLASSIFIERS, Ensemble, build_classifier
from medlens.models.classifiers import FIXED_WIDTH_FAMILIES
from medlens.models.segmenters import build_segmenter

TOLERANCE = 1e-4
NUM_CLASSES = 3
HEAVY_3D = ("resnet18", "resnet34", "resnet50", "densenet121")  # MONAI nets: 16^3, as in tests/models


def classifier_case(name: str) -> tuple[int, tuple[int, ...]]:
    family, dims = name.rsplit("_", 1)
    if dims == "2d":
        return 1, (28, 28)
    return 1, (16, 16, 16) if family in HEAVY_3D else (28, 28, 28)


CLASSIFIER_CASES = {name: classifier_case(name) for name in CLASSIFIERS.names()}
SEGMENTER_CASES = {"dynunet_3d": (1, (16, 16, 16)), "unet_2d": (1, (16, 16)), "vnet_3d": (1, (16, 16, 16))}
NAMES = sorted(CLASSIFIER_CASES) + sorted(SEGMENTER_CASES)
# the dynamo exporter takes 2-20 s per network here; these are the cheap ones, one of each kind
DYNAMO_DEFAULT = ("seedcnn_2d", "resnet18_2d", "seedcnn_3d", "unet_2d", "dynunet_3d")

DATA = Path(os.environ.get("MEDLENS_DATA_DIR") or Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.cache
def built(name: str) -> tuple[nn.Module, torch.Tensor]:
    """A seeded eval-mode network and its ``(1, C, *spatial)`` example."""
    torch.manual_seed(0)
    if name in SEGMENTER_CASES:
        in_channels, patch = SEGMENTER_CASES[name]
        dims = len(patch)
        model = build_segmenter(name, in_channels=in_channels, num_classes=NUM_CLASSES, filters=(4, 8, 16),
                                strides=((1,) * dims,) + ((2,) * dims,) * 2, kernels=((3,) * dims,) * 3)
    else:
        in_channels, patch = CLASSIFIER_CASES[name]
        width = 1.0 if name.rsplit("_", 1)[0] in FIXED_WIDTH_FAMILIES else 0.25
        model = build_classifier(name, in_channels=in_channels, num_classes=NUM_CLASSES, input_size=patch,
                                 width=width)
    return model.eval(), torch.zeros(1, in_channels, *patch)


def random_images(example: torch.Tensor, batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, *example.shape[1:])).astype(np.float32)


def assert_parity(model: nn.Module, example: torch.Tensor, runners: dict) -> None:
    """Every runner matches PyTorch at batch 1 and 3, and a batch of 3 equals three single calls."""
    reference = TorchRunner(model)
    for batch, seed in ((1, 1), (3, 2)):
        images = random_images(example, batch, seed)
        expected = reference(images)
        assert expected.shape[0] == batch and expected.shape[1] == NUM_CLASSES
        for kind, runner in runners.items():
            got = runner(images)
            assert got.dtype == np.float32 and got.shape == expected.shape, kind
            assert np.abs(got - expected).max() < TOLERANCE, f"{kind}, batch {batch}"
    for kind, runner in runners.items():
        singles = np.concatenate([runner(images[i:i + 1]) for i in range(3)])
        assert np.abs(runner(images) - singles).max() < TOLERANCE, kind


@pytest.mark.e2e  # every registered network exported twice: minutes, so out of `make check`
@pytest.mark.parametrize("name", NAMES)
def test_torchscript_and_onnx_give_pytorch_logits(name, tmp_path):
    model, example = built(name)

    runners = {"torchscript": TorchScriptRunner(export_torchscript(model, example, tmp_path / "model.ts")),
               "onnx": OnnxRunner(export_onnx(model, example, tmp_path / "model.onnx", exporter="torchscript"))}

    assert_parity(model, example, runners)
    assert runners["torchscript"].input_shape == runners["onnx"].input_shape == tuple(example.shape[1:])


@pytest.mark.e2e
@pytest.mark.parametrize("name", [n if n in DYNAMO_DEFAULT else pytest.param(n, marks=pytest.mark.slow)
                                  for n in NAMES])
def test_dynamo_onnx_export_gives_pytorch_logits(name, tmp_path, caplog):
    model, example = built(name)

    with caplog.at_level(logging.WARNING, logger=export.__name__):
        path = export_onnx(model, example, tmp_path / "model.onnx")  # auto: dynamo first

    assert not [r for r in caplog.records if "trying the next one" in r.message], "auto fell back"
    assert_parity(model, example, {"onnx": OnnxRunner(path)})


def test_the_set_of_networks_is_the_registry():
    assert set(CLASSIFIER_CASES) == set(CLASSIFIERS.names()) and len(CLASSIFIER_CASES) == 20


def test_files_are_single_and_leave_no_temporary_behind(tmp_path):
    model, example = built("seedcnn_2d")

    ts = export_torchscript(model, example, tmp_path / "out" / "model.ts")
    path = export_onnx(model, example, tmp_path / "out" / "model.onnx", exporter="torchscript")

    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.onnx", "model.ts"]
    proto = onnx.load(str(path), load_external_data=False)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert [i.name for i in proto.graph.input] == ["image"] and [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert ts.stat().st_size > 0


def test_opset_is_the_one_asked_for(tmp_path):
    model, example = built("seedcnn_2d")
    path = export_onnx(model, example, tmp_path / "model.onnx", opset=17, exporter="torchscript")
    assert {o.domain: o.version for o in onnx.load(str(path)).opset_import}[""] == 17


def test_auto_falls_back_to_the_torchscript_exporter(tmp_path, monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("dynamo is broken here")

    monkeypatch.setitem(export._ONNX_EXPORTERS, "dynamo", broken)
    model, example = built("seedcnn_2d")

    with caplog.at_level(logging.WARNING, logger=export.__name__):
        path = export_onnx(model, example, tmp_path / "model.onnx")

    assert "dynamo exporter failed for `seedcnn_2d`" in caplog.text and "dynamo is broken here" in caplog.text
    assert_parity(model, example, {"onnx": OnnxRunner(path)})
    with pytest.raises(RuntimeError, match="ONNX export of `seedcnn_2d` failed:\n  dynamo exporter: .*broken"):
        export_onnx(model, example, tmp_path / "explicit.onnx", exporter="dynamo")  # no fallback when asked
    assert not (tmp_path / "explicit.onnx").exists()


class BakedBatch(nn.Module):
    """``int(x.shape[0])`` becomes a constant when traced: the traced file only takes batch 1."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(int(x.shape[0]), -1))


class NumpyBatch(BakedBatch):
    """The same, and not scriptable either (TorchScript cannot compile a NumPy call)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(int(np.int64(x.shape[0])), -1))


def test_a_trace_that_bakes_the_batch_size_is_scripted_instead(tmp_path):
    model, example = BakedBatch().eval(), torch.zeros(1, 1, 4, 4)

    runner = TorchScriptRunner(export_torchscript(model, example, tmp_path / "model.ts"))

    images = random_images(example, 3, 0)
    assert np.abs(runner(images) - TorchRunner(model)(images)).max() < TOLERANCE


def test_exports_that_do_not_match_pytorch_are_refused(tmp_path):
    model, example = NumpyBatch().eval(), torch.zeros(1, 1, 4, 4)

    traced_then_scripted = r"`NumpyBatch` failed:\n  torch.jit.trace: a batch of 2 fails: .*\n  torch.jit.script: "
    with pytest.raises(RuntimeError, match=traced_then_scripted):
        export_torchscript(model, example, tmp_path / "model.ts")
    with pytest.raises(RuntimeError, match="ONNX export of `NumpyBatch` failed:\n  torchscript exporter: "):
        export_onnx(model, example, tmp_path / "model.onnx", exporter="torchscript")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("exporter", [export_torchscript, export_onnx])
def test_bad_models_and_examples_are_refused_with_a_fix(exporter, tmp_path):
    model, example = built("seedcnn_2d")
    cases = [
        (copy.deepcopy(model).train(), example, r"`seedcnn_2d` is in training mode.*call model.eval\(\)"),
        (model, torch.zeros(2, 1, 28, 28), r"must be float32 \(1, C, H, W\).*got torch.float32 \(2, 1, 28, 28\)"),
        (model, torch.zeros(1, 28, 28), r"\(1, C, H, W\) or \(1, C, D, H, W\).*torch.zeros\(1, C, \*input_size\)"),
        (model, torch.zeros(1, 1, 28, 28, dtype=torch.float64), "must be float32.*got torch.float64"),
        (model, torch.zeros(1, 1, 32, 32), r"built for inputs \(C, \*spatial\) = \(1, 28, 28\).*torch.zeros\(1, 1, 28"),
        (model, torch.zeros(1, 1, 28, 28, device="meta"), r"from the CPU, found devices \['cpu', 'meta'\]"),
        (model, np.zeros((1, 1, 28, 28), np.float32), "must be a torch.Tensor, got ndarray"),
        ("seedcnn_2d", example, "expected a torch.nn.Module to export, got str"),
    ]
    for bad_model, bad_example, message in cases:
        with pytest.raises(ConfigError, match=message):
            exporter(bad_model, bad_example, tmp_path / "model.out")
    assert list(tmp_path.iterdir()) == []


def test_onnx_refusals_name_the_option(tmp_path, monkeypatch):
    model, example = built("seedcnn_2d")
    with pytest.raises(ConfigError, match="exporter='legacy' for `seedcnn_2d`: choose auto, dynamo or torchscript"):
        export_onnx(model, example, tmp_path / "model.onnx", exporter="legacy")
    monkeypatch.setattr(export, "PROTOBUF_LIMIT", 1000)
    with pytest.raises(ConfigError, match=r"above the 2 GiB a single file can hold; use the TorchScript export"):
        export_onnx(model, example, tmp_path / "model.onnx", exporter="torchscript")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def exported_seedcnn(tmp_path_factory) -> dict:
    """seedcnn_2d as a model and as the two exported files."""
    folder = tmp_path_factory.mktemp("seedcnn")
    model, example = built("seedcnn_2d")
    return {"torch": model, "torchscript": export_torchscript(model, example, folder / "model.ts"),
            "onnx": export_onnx(model, example, folder / "model.onnx", exporter="torchscript")}


@pytest.mark.parametrize("kind", ["torch", "torchscript", "onnx"])
def test_runners_refuse_images_they_cannot_take(kind, exported_seedcnn):
    runner = load_runner(kind, exported_seedcnn[kind])
    cases = [(np.zeros((2, 1, 28, 28), np.uint8), r"float32 NumPy array \(B, C, \*spatial\), got uint8.*\[0, 1\]"),
             (torch.zeros(2, 1, 28, 28), "got Tensor"),
             (np.zeros((2, 1, 32, 32), np.float32), r"takes images \(B, 1, 28, 28\), got \(2, 1, 32, 32\)"),
             (np.zeros((2, 28, 28), np.float32), r"takes images \(B, 1, 28, 28\), got \(2, 28, 28\)")]
    for images, message in cases:
        with pytest.raises(ConfigError, match=message):
            runner(images)
    assert runner(np.zeros((2, 1, 28, 28), np.float64)).shape == (2, NUM_CLASSES)  # float64 is converted


def test_load_runner_mistakes_and_a_missing_file(tmp_path):
    model, _ = built("seedcnn_2d")
    with pytest.raises(ConfigError, match="runner 'tensorrt': choose torch, torchscript or onnx"):
        load_runner("tensorrt", tmp_path / "model.onnx")
    with pytest.raises(ConfigError, match="runner onnx reads an exported file, got a model; use export_onnx"):
        load_runner("onnx", model)
    with pytest.raises(ConfigError, match="runner torch needs a torch.nn.Module, got PosixPath"):
        load_runner("torch", tmp_path / "model.ts")
    with pytest.raises(FileNotFoundError, match=r"no exported network at .*model.onnx; write it with"):
        load_runner("onnx", tmp_path / "model.onnx")


def test_onnx_runtime_uses_torch_thread_count_and_the_cpu(exported_seedcnn):
    runner = OnnxRunner(exported_seedcnn["onnx"])
    assert runner.session.get_providers() == ["CPUExecutionProvider"]
    assert runner.session.get_session_options().intra_op_num_threads == torch.get_num_threads() == 1


@pytest.mark.realdata
def test_pneumoniamnist_test_images_give_the_same_logits_through_every_runner(tmp_path):
    path = DATA / "medmnist" / "pneumoniamnist.npz"
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    with np.load(path) as data:
        raw = data["test_images"][:64]
    assert raw.dtype == np.uint8 and raw.shape == (64, 28, 28)
    images = (raw.astype(np.float32) / 255.0)[:, None]
    torch.manual_seed(0)
    model = build_classifier("resnet18_2d", in_channels=1, num_classes=2, input_size=(28, 28), width=0.25).eval()
    example = torch.zeros(1, 1, 28, 28)

    expected = TorchRunner(model)(images)
    runners = {"torchscript": TorchScriptRunner(export_torchscript(model, example, tmp_path / "model.ts")),
               "onnx": OnnxRunner(export_onnx(model, example, tmp_path / "model.onnx"))}

    assert expected.shape == (64, 2) and np.ptp(expected[:, 1] - expected[:, 0]) > 1e-3  # images differ
    for kind, runner in runners.items():
        got = runner(images)
        assert np.abs(got - expected).max() < TOLERANCE, kind
        assert (got.argmax(1) == expected.argmax(1)).all(), kind


@pytest.mark.e2e
def test_an_ensemble_exports_as_one_graph(tmp_path):
    torch.manual_seed(0)
    members = [build_classifier("resnet18_2d", in_channels=1, num_classes=NUM_CLASSES, input_size=(28, 28), width=0.25)
               for _ in range(3)]
    model, example = Ensemble(members).eval(), torch.zeros(1, 1, 28, 28)

    runners = {"torchscript": TorchScriptRunner(export_torchscript(model, example, tmp_path / "model.ts")),
               "onnx": OnnxRunner(export_onnx(model, example, tmp_path / "model.onnx", exporter="torchscript"))}

    assert_parity(model, example, runners)


# --- fusion networks: several views, and clinical values as a second input ---------------------------

CLINICAL_ABSENT = (0.0, 1.0, 0.0, 0.0, 1.0)


def fusion_network(clinical_absent: tuple[float, ...], **options) -> tuple[nn.Module, torch.Tensor]:
    """A seeded eval-mode 3-view seedcnn_2d fusion network (2 channels a view) and its example."""
    from medlens.models import build_fusion_classifier

    torch.manual_seed(0)
    model = build_fusion_classifier("seedcnn_2d", in_channels=6, views=3, num_classes=NUM_CLASSES, input_size=(16, 16),
                                    width=0.25, clinical_absent=clinical_absent, **options)
    return model.eval(), torch.zeros(1, 6, 16, 16)


def fusion_inputs(batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(batch, 6, 16, 16)`` whose first case lacks view 1 (all NaN), and clinical values."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, 6, 16, 16)).astype(np.float32)
    images[0, 2:4] = np.nan
    return images, rng.standard_normal((batch, len(CLINICAL_ABSENT))).astype(np.float32)


@pytest.mark.parametrize("options", [{"encoder": "shared", "pooling": "concat", "clinical_fusion": "concat"},
                                     {"encoder": "separate", "pooling": "attention", "clinical_fusion": "film"},
                                     {"encoder": "shared", "pooling": "concat", "clinical_fusion": "residual"}])
def test_a_fusion_network_with_clinical_inputs_exports_with_two_inputs(options, tmp_path):
    model, example = fusion_network(CLINICAL_ABSENT, **options)
    if options["clinical_fusion"] == "film":  # FiLM starts as the identity; make the clinical values matter
        torch.nn.init.normal_(model.film.weight, std=0.5)
    if options["clinical_fusion"] == "residual":  # zero head and regression until trained; give both values
        torch.nn.init.normal_(model.head.fc.weight, std=0.5)
        model.set_clinical_logits(torch.randn(model.num_classes, len(CLINICAL_ABSENT)), torch.randn(model.num_classes))

    onnx_path = export_onnx(model, example, tmp_path / "model.onnx", exporter="torchscript")
    runners = {"torchscript": TorchScriptRunner(export_torchscript(model, example, tmp_path / "model.ts")),
               "onnx": OnnxRunner(onnx_path)}

    graph = onnx.load(str(onnx_path)).graph
    assert [i.name for i in graph.input] == ["image", "clinical"]
    assert [i.type.tensor_type.shape.dim[0].dim_param for i in graph.input] == ["batch", "batch"]
    reference = TorchRunner(model)
    for batch, seed in ((1, 1), (3, 2)):
        images, clinical = fusion_inputs(batch, seed)
        expected, all_missing = reference(images, clinical), reference(images)
        assert np.isfinite(expected).all() and np.abs(expected - all_missing).max() > 1e-3
        with torch.no_grad():
            assert np.abs(all_missing - model(torch.from_numpy(images)).numpy()).max() < TOLERANCE
        for kind, runner in runners.items():
            assert np.array_equal(runner.clinical_absent, np.asarray(CLINICAL_ABSENT, np.float32)), kind
            assert np.abs(runner(images, clinical) - expected).max() < TOLERANCE, f"{kind}, batch {batch}"
            assert np.abs(runner(images) - all_missing).max() < TOLERANCE, f"{kind}, batch {batch}, no clinical"
    for kind, runner in runners.items():
        singles = np.concatenate([runner(images[i:i + 1], clinical[i:i + 1]) for i in range(3)])
        assert np.abs(runner(images, clinical) - singles).max() < TOLERANCE, kind


@pytest.mark.e2e  # the dynamo exporter: 5 s
def test_the_dynamo_exporter_takes_both_inputs(tmp_path, caplog):
    model, example = fusion_network(CLINICAL_ABSENT, encoder="separate", pooling="attention")

    with caplog.at_level(logging.WARNING, logger=export.__name__):
        runner = OnnxRunner(export_onnx(model, example, tmp_path / "model.onnx"))  # auto: dynamo first

    assert not [r for r in caplog.records if "trying the next one" in r.message], "auto fell back"
    images, clinical = fusion_inputs(3, 4)
    assert np.abs(runner(images, clinical) - TorchRunner(model)(images, clinical)).max() < TOLERANCE
    assert [i.name for i in runner.session.get_inputs()] == ["image", "clinical"]


@pytest.mark.parametrize("kind", ["torch", "torchscript", "onnx"])
def test_runners_of_a_two_input_network_refuse_clinical_values_they_cannot_take(kind, tmp_path):
    model, example = fusion_network(CLINICAL_ABSENT)
    exported = {"torch": model, "torchscript": export_torchscript(model, example, tmp_path / "model.ts"),
                "onnx": export_onnx(model, example, tmp_path / "model.onnx", exporter="torchscript")}[kind]
    runner = load_runner(kind, exported)
    images, clinical = fusion_inputs(2, 5)
    cases = [(clinical[:, :4], r"clinical values as float32 \(2, 5\), one row per image, got float32 \(2, 4\)"),
             (clinical[:1], r"got float32 \(1, 5\); encode them with the run's clinical encoder"),
             (clinical.astype(np.int64), "got int64"),
             (torch.from_numpy(clinical), "got Tensor")]
    for bad, message in cases:
        with pytest.raises(ConfigError, match=message):
            runner(images, bad)
    assert runner(images, clinical.astype(np.float64)).shape == (2, NUM_CLASSES)  # float64 is converted


def test_a_fusion_network_without_clinical_inputs_exports_like_any_classifier(tmp_path):
    model, example = fusion_network((), encoder="separate", pooling="attention")

    onnx_path = export_onnx(model, example, tmp_path / "model.onnx", exporter="torchscript")
    runners = {"torchscript": TorchScriptRunner(export_torchscript(model, example, tmp_path / "model.ts")),
               "onnx": OnnxRunner(onnx_path)}

    assert_parity(model, example, runners)
    proto = onnx.load(str(onnx_path))
    assert [i.name for i in proto.graph.input] == ["image"] and not proto.metadata_props
    images, _ = fusion_inputs(3, 6)  # a missing view travels through the exported graph too
    expected = TorchRunner(model)(images)
    for kind, runner in runners.items():
        assert runner.clinical_absent is None and runner.input_shape == (6, 16, 16), kind
        assert np.isfinite(expected).all() and np.abs(runner(images) - expected).max() < TOLERANCE, kind
        with pytest.raises(ConfigError, match=r"takes no clinical values .*pass the images only"):
            runner(images, np.zeros((3, 5), np.float32))
