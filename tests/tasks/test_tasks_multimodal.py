"""Cases of several inputs: the plan's rules (fusion, clinical columns, sizes, modality dropout), the training
step's modality dropout, and an interaction of two views and a clinical value that only the fused model learns."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medlens.config import ClinicalSection, DataSection, ModelSection, TrainSection
from medlens.tasks.classification.inputs import view_presence, with_absent_views, withhold_inputs
from medlens.tasks.classification.plan_inputs import plan_clinical, plan_fusion, plan_views


def card(co_registered: bool, spacing_known: bool, names=("t1", "flair")) -> dict:
    return {"dataset": {"views": list(names)}, "images": {"spacing_known": spacing_known},
            "views": {"names": list(names), "co_registered": co_registered, "grid_note": "origins 12 mm apart",
                      "per_view": {n: {"channels": 1} for n in names}}}


def test_co_registered_volumes_are_stacked_as_channels():
    reasons = {}
    data = plan_views(card(True, True), DataSection(input_size=(64, 64, 64), channels=2), reasons)

    assert (data.fusion, data.views, data.channels, data.input_size) == ("channels", ("t1", "flair"), 2, (64, 64, 64))
    assert "co-registered" in reasons["data.fusion"]


@pytest.mark.parametrize(("co_registered", "spacing_known", "why"), [
    (False, True, "not co-registered (origins 12 mm apart)"), (True, False, "no patient geometry")])
def test_views_that_are_not_known_to_share_a_grid_are_encoded_apart(co_registered, spacing_known, why):
    reasons = {}
    data = plan_views(card(co_registered, spacing_known, ("axial", "coronal", "sagittal")),
                      DataSection(input_size=(128, 128), channels=3), reasons)

    assert (data.fusion, data.channels) == ("views", 1)
    assert data.input_size == (72, 72)  # three views cost about one 128 x 128 image
    assert why in reasons["data.fusion"] and "3 views" in reasons["data.input_size"]


def test_small_views_are_not_shrunk_below_64():
    data = plan_views(card(False, False), DataSection(input_size=(64, 64), channels=2), {})

    assert data.input_size == (64, 64)


def test_one_image_per_case_is_left_alone():
    data = DataSection(input_size=(28, 28))
    assert plan_views({"dataset": {}, "images": {}}, data, {}) is data


def test_clinical_columns_leave_out_leakage_identifiers_and_empty_ones():
    columns = {"Age": {"kind": "numeric", "present": 90, "auc": 0.6},
               "MMSE": {"kind": "numeric", "present": 90, "auc": 0.87},
               "Sex": {"kind": "categorical", "present": 90, "auc": 0.55, "categories": {"M": 40, "F": 50}},
               "ID": {"kind": "identifier", "present": 90},
               "Notes": {"kind": "empty", "present": 0},
               "Hand": {"kind": "categorical", "present": 90, "categories": {"R": 90}}}
    reasons = {}
    section = plan_clinical({"clinical": columns}, reasons)

    assert section.numeric == ("Age",) and section.categorical == ("Sex=F|M",)
    for name, why in [("MMSE", "AUC 0.87"), ("ID", "identifier"), ("Notes", "no value"), ("Hand", "one category")]:
        assert f"{name} (" in reasons["clinical.numeric"] and why in reasons["clinical.numeric"]


def test_no_clinical_column_gives_an_empty_section():
    assert plan_clinical({}, {}) == ClinicalSection()


@pytest.mark.parametrize(("cases", "kind", "encoder", "fusion"), [
    (150, "binary", "shared", "residual"), (150, "multilabel", "shared", "concat"), (700, "binary", "shared", "concat"),
    (3000, "binary", "separate", "film")])
def test_fusion_follows_the_data_size(cases, kind, encoder, fusion):
    data = DataSection(views=("a", "b"), fusion="views")
    reasons = {}
    model, train, clinical = plan_fusion(ModelSection(), TrainSection(), data, ClinicalSection(numeric=("Age",)),
                                         cases, reasons, kind=kind)

    assert (model.view_encoder, model.view_pooling, clinical.fusion) == (encoder, "concat", fusion)
    assert train.modality_dropout == pytest.approx(0.2)
    assert "3 inputs" in reasons["train.modality_dropout"]


def test_one_input_gets_no_modality_dropout():
    model, train, clinical = plan_fusion(ModelSection(), TrainSection(), DataSection(), ClinicalSection(), 100, {})

    assert train.modality_dropout == 0.0 and model == ModelSection()


def test_modality_dropout_keeps_a_view_and_withholds_clinical_records():
    present = torch.ones(2000, 3, dtype=torch.bool)
    present[:, 2] = False  # every case lacks its third view
    clinical, absent = torch.ones(2000, 4), torch.tensor([0.0, 1.0, 0.0, 1.0])
    kept, given = withhold_inputs(present, clinical, absent, 0.5, torch.Generator().manual_seed(0))

    assert kept.any(dim=1).all() and not kept[:, 2].any()  # one view always kept; a missing view stays missing
    assert 0.3 < (~kept[:, :2]).float().mean() < 0.45  # ~1/2, less the draws that would have emptied a case
    withheld = (given == absent).all(dim=1).float().mean()
    assert 0.45 < withheld < 0.55 and ((given == 1).all(dim=1) | (given == absent).all(dim=1)).all()


def test_a_withheld_view_is_all_nan_and_others_untouched():
    x = torch.rand(4, 6, 5, 5)  # 3 views of 2 channels
    present = torch.tensor([[True, False, True]] * 4)
    out = with_absent_views(x, present)

    assert torch.isnan(out[:, 2:4]).all() and torch.equal(out[:, :2], x[:, :2]) and torch.equal(out[:, 4:], x[:, 4:])
    assert view_presence(out, 3).tolist() == present.tolist()


@pytest.fixture(scope="module")
def interaction_run(tmp_path_factory):
    """A fused run on the parity of two views' blobs and a clinical marker (trained once, ~1 min on 2 cores)."""
    from medlens.cli import main
    from medlens.data.synthetic_views import write_interaction_set

    root = tmp_path_factory.mktemp("interaction")
    manifest = write_interaction_set(root / "data", cases=480, size=16)
    run = root / "run"
    assert main(["train", str(manifest), "--out", str(run), "--time-budget", "10m", "--no-progress",
                 "--set", "train.max_epochs=40", "--set", "train.patience=100", "--set", "model.name=seedcnn_2d",
                 "--set", "model.width=0.5"]) == 0
    assert main(["evaluate", str(run), "--bootstrap", "200"]) == 0
    return run


@pytest.mark.e2e
def test_only_the_fused_model_learns_an_interaction_of_two_views_and_a_clinical_value(interaction_run):
    plan = (interaction_run / "plan.yaml").read_text()
    assert "fusion: views" in plan and "numeric: [marker, age]" in plan and "categorical: [site=A|B]" in plan
    rows = {r["source"]: r["auc"]["value"] for r in json.loads((interaction_run / "metrics.json").read_text())
            ["sources"]["rows"]}

    assert rows["all inputs"] >= 0.9
    for alone in ("images only", "view front only", "view side only", "clinical values only"):
        assert abs(rows[alone] - 0.5) < 0.2, (alone, rows)


@pytest.mark.e2e
def test_a_fused_run_saves_its_clinical_encoder_and_writes_each_sources_answers(interaction_run):
    encoder = json.loads((interaction_run / "clinical.json").read_text())
    assert "marker" in json.dumps(encoder) and "site" in json.dumps(encoder)
    header = (interaction_run / "sources_test.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["case_id", "patient_id"] and "clinical values only" in header
    assert not (interaction_run / "ood_guard.safetensors").exists()
    assert np.isfinite(json.loads((interaction_run / "metrics.json").read_text())["metrics"]["auc"]["value"])


@pytest.mark.parametrize("encoder", ["shared", "separate"])
def test_a_one_image_run_seeds_every_view_encoder_of_a_fused_network(tmp_path, encoder):
    from medlens.models import build_classifier
    from medlens.models.fusion import build_fusion_classifier
    from medlens.models.weights import save_atomic, transfer_weights

    torch.manual_seed(0)
    single = build_classifier("seedcnn_2d", in_channels=1, num_classes=2, input_size=(16, 16), width=0.25)
    save_atomic(single.state_dict(), tmp_path / "weights.pt")
    fused = build_fusion_classifier("seedcnn_2d", in_channels=2, views=2, num_classes=3, input_size=(16, 16),
                                    width=0.25, encoder=encoder, clinical_absent=(0.0, 1.0))
    report = transfer_weights(fused, tmp_path / "weights.pt")

    for i in range(len(fused.encoders)):
        for name, value in single.backbone.state_dict().items():
            assert torch.equal(fused.encoders[i].state_dict()[name], value)
    assert report["loaded"] == len(single.backbone.state_dict()) * len(fused.encoders)


def test_a_downloaded_layout_is_refused_for_a_fused_network_with_what_to_do(tmp_path):
    from medlens.errors import ConfigError
    from medlens.models.fusion import build_fusion_classifier
    from medlens.models.weights import save_atomic, transfer_weights

    save_atomic({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "resnet.pt")
    fused = build_fusion_classifier("resnet18_2d", in_channels=2, views=2, num_classes=2, input_size=(32, 32),
                                    width=0.25)
    with pytest.raises(ConfigError, match="one-image run from it with --init-from"):
        transfer_weights(fused, tmp_path / "resnet.pt")


def test_a_plan_whose_view_the_manifest_lacks_is_refused(tmp_path):
    from medlens.config import Config, DatasetSection
    from medlens.data import open_dataset
    from medlens.data.prepared import check_plan_fits
    from medlens.data.synthetic_views import write_interaction_set
    from medlens.errors import ConfigError

    dataset = open_dataset(write_interaction_set(tmp_path, cases=8))
    config = Config(dataset=DatasetSection(source="cases.csv", class_names=dataset.class_names),
                    data=DataSection(views=("front", "top"), fusion="views"))
    with pytest.raises(ConfigError, match=r"takes the view\(s\) top, but the manifest has no image:top column "
                                          r"\(its views: front, side\)"):
        check_plan_fits(config, dataset)


def test_the_clinical_only_model_gives_every_class_a_column():
    from medlens.tasks.classification.sources import _fit_one

    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 3))
    labels = (features[:, 0] > 0).astype(int) + 2 * (features[:, 1] > 1)  # classes 0..3, 1 rare
    probs = _fit_one(features, labels, features[:5], 0, 5)  # class 4 never in training

    assert probs.shape == (5, 5) and np.allclose(probs.sum(axis=1), 1) and (probs[:, 4] == 0).all()
    assert np.array_equal(_fit_one(features, np.ones(60, dtype=int), features[:2], 0, 2), [[0, 1], [0, 1]])


def test_residual_fusion_starts_from_a_logistic_regression_of_the_training_clinical_values():
    from types import SimpleNamespace

    from sklearn.linear_model import LogisticRegression

    from medlens.config import Config, DatasetSection
    from medlens.tasks.classification.inputs import build_network, fit_clinical_logits

    rng = np.random.default_rng(0)
    values = rng.standard_normal((60, 3)).astype(np.float32)
    labels = (values[:, 0] + 0.5 * rng.standard_normal(60) > 0).astype(np.int64)
    clinical = ClinicalSection(numeric=("age",), fusion="residual")  # encodes as [z, missing]: 2 features
    config = Config(dataset=DatasetSection(class_names=("no", "yes")), clinical=clinical,
                    model=ModelSection(name="seedcnn_2d", width=0.25), data=DataSection(input_size=(8, 8)))
    network = build_network(config.model, config.data, 2, clinical)
    train = SimpleNamespace(clinical=values[:, :2], labels=labels)
    said = []
    fit_clinical_logits(network, config, train, said.append)

    with torch.no_grad():
        probs = torch.softmax(network(torch.zeros(60, 1, 8, 8), torch.from_numpy(values[:, :2])), dim=1).numpy()
    expected = LogisticRegression(C=1.0, max_iter=2000).fit(values[:, :2], labels).predict_proba(values[:, :2])
    assert np.allclose(probs, expected, atol=1e-5)
    assert "logistic regression on 60 training cases" in said[0]


@pytest.mark.parametrize("kind", ["multilabel", "ordinal"])
def test_residual_fusion_is_refused_where_a_case_has_no_single_class(kind):
    from medlens.config import Config, DatasetSection
    from medlens.errors import ConfigError
    from medlens.tasks import task_named

    config = Config(dataset=DatasetSection(task=kind, class_names=("a", "b", "c")),
                    clinical=ClinicalSection(numeric=("age",), fusion="residual"))
    with pytest.raises(ConfigError, match=f"this plan is for {kind} classification; use clinical.fusion=concat"):
        task_named("classification").check(config)
