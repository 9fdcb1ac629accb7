"""What each input is worth to a fused network: permutation importance of clinical columns, views withheld, and the
report sections that show them (with the sources table and the per-view gallery)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medlens.config import config_from_dict
from medlens.data.clinical import ClinicalEncoder, absent_vector
from medlens.data.prepared import SplitData
from medlens.models.fusion import build_fusion_classifier
from medlens.report.document import Report, render_html
from medlens.tasks.classification.evaluate import ClassificationEvidence
from medlens.tasks.classification.importance import column_slices, importance_lines, input_importance, score_name
from medlens.tasks.classification.report import classification_sections, gallery_section
from medlens.types import Case

SIZE = (8, 8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config(monitor: str = "val_auc", views=("front", "side")):
    return config_from_dict({"dataset": {"task": "binary", "class_names": ["negative", "positive"]},
                             "data": {"views": list(views), "fusion": "views", "input_size": list(SIZE)},
                             "train": {"monitor": monitor},
                             "clinical": {"numeric": ["marker", "age"], "categorical": ["site=A|B"]}})


def problem(n: int, seed: int) -> tuple[SplitData, ClinicalEncoder]:
    """Cases whose label is the sign of ``marker`` plus the front view's brightness, each alone half the story
    (``age``, ``site`` and the side view are noise); some cases lack ``marker``, one lacks its side view."""
    rng = np.random.default_rng(seed)
    marker, bright = rng.normal(size=n), rng.normal(size=n)
    labels = (marker + bright > 0).astype(np.int64)
    cases = [Case(case_id=f"c{i}", images=(), clinical={"marker": "" if i % 10 == 0 else f"{marker[i]:.3f}",
                                                         "age": f"{rng.uniform(30, 80):.0f}",
                                                         "site": str(rng.choice(["A", "B"]))})
             for i in range(n)]
    images = rng.normal(size=(n, 2, *SIZE)).astype(np.float32)
    images[:, 0] += bright[:, None, None]
    images[3, 1] = np.nan  # a case without its side view
    encoder = ClinicalEncoder.fit(config().clinical, cases)
    return SplitData("val", cases, images, labels, clinical=encoder.encode(cases)), encoder


class MarkerAndFront(nn.Module):
    """A hand-built network of the fused interface whose logit reads only ``marker``'s z-score and the front view."""

    def forward(self, x: torch.Tensor, clinical: torch.Tensor | None = None) -> torch.Tensor:
        front = torch.nan_to_num(x[:, 0], nan=0.0).mean(dim=(1, 2))
        score = clinical[:, 0] + front
        return torch.stack([-score, score], dim=1)


def test_column_slices_follow_the_encoders_feature_layout():
    _, encoder = problem(20, 0)
    slices = column_slices(encoder)
    names = encoder.feature_names()
    assert [names[s] for s in slices.values()] == [["marker", "marker missing"], ["age", "age missing"],
                                                   ["site=A", "site=B", "site missing"]]


def test_the_informative_column_and_view_rank_first_and_the_ignored_ones_drop_nothing():
    data, encoder = problem(120, 1)
    doc = input_importance(MarkerAndFront(), config(), data, encoder, repeats=4, seed=0)

    assert doc["split"] == "val" and doc["metric"] == "auc" and doc["n_cases"] == 120 and doc["baseline"] > 0.85
    assert [row["input"] for row in doc["clinical"]][0] == "marker"
    by_name = {row["input"]: row for row in doc["clinical"]}
    assert by_name["marker"]["drop"] > 0.05 + by_name["marker"]["std"]
    assert by_name["age"]["drop"] == 0 and by_name["site"]["drop"] == 0 and len(by_name["age"]["drops"]) == 4
    views = {row["input"]: row for row in doc["views"]}
    assert views["front"]["drop"] > 0.05 and views["side"]["drop"] == 0
    assert views["side"]["n_with_view"] == 119 and views["front"]["n_with_view"] == 120
    assert "marker" in importance_lines(doc)


def test_a_trained_fused_network_relies_on_the_planted_column_more_than_on_noise():
    train, encoder = problem(160, 2)
    torch.manual_seed(0)
    model = build_fusion_classifier("seedcnn_2d", in_channels=2, views=2, num_classes=2, input_size=SIZE, width=0.25,
                                    clinical_absent=absent_vector(config().clinical))
    x, c = torch.from_numpy(train.images), torch.from_numpy(train.clinical)  # the network reads NaN as missing
    y = torch.from_numpy(train.labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = nn.functional.cross_entropy(model(x, c), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    val, _ = problem(100, 3)
    val.clinical = encoder.encode(val.cases)

    doc = input_importance(model.eval(), config("val_accuracy"), val, encoder, repeats=3, seed=0)

    by_name = {row["input"]: row for row in doc["clinical"]}
    assert doc["metric"] == "accuracy"
    assert by_name["marker"]["drop"] > max(by_name["age"]["drop"], by_name["site"]["drop"]) + by_name["marker"]["std"]
    assert by_name["marker"]["drop"] > 0.05, doc


def test_the_score_follows_the_monitor():
    assert [score_name(config(m)) for m in ("val_auc", "val_loss", "val_accuracy", "val_qwk")] == \
        ["auc", "auc", "accuracy", "qwk"]


def metric(value: float) -> dict:
    return {"value": value, "ci_low": value - 0.05, "ci_high": value + 0.05}


def evidence(views=("front", "side")) -> ClassificationEvidence:
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    cams = rng.uniform(size=(4, 2, *SIZE)).astype(np.float32)
    cams[2, 1] = np.nan  # case 2 lacks its side view
    images = rng.normal(size=(4, 2, *SIZE)).astype(np.float32)
    gallery = [(i, images[i], cams[i]) for i in (2, 3, 1, 0)]
    return ClassificationEvidence(labels, probs, probs, ["a", "b", "c", "d"], gallery, views)


def test_the_gallery_shows_one_overlay_per_view_and_says_when_a_view_is_missing():
    section = gallery_section(evidence(), ["negative", "positive"])
    figures = [f for block in section.blocks if isinstance(block, list) for f in block]
    assert len(figures) == 7  # 4 cases x 2 views, less case c's missing side view
    captions = [f.caption for f in figures]
    assert any(c.startswith("c:") and "view front" in c and "no map: side missing" in c for c in captions)
    assert not any(c.startswith("c:") and "view side" in c for c in captions)
    assert len({f.name for f in figures}) == 7
    assert any("One map per view (front, side)" in b for b in section.blocks if isinstance(b, str))


def test_the_report_renders_the_sources_and_importance_sections():
    data, encoder = problem(60, 4)
    importance = input_importance(MarkerAndFront(), config(), data, encoder, repeats=2)
    doc = {"split": "test", "n_cases": 4, "grouped_by": "case", "tta": False,
           "metrics": {"threshold": 0.5, "bootstrap": {"n_boot": 10, "resampled": "case"},
                       **{k: metric(0.8) for k in ("accuracy", "balanced_accuracy", "auc")}, "per_class": {}},
           "medmnist_protocol": {"auc": 0.8, "acc": 0.7},
           "sources": {"rows": [{"source": "all inputs", "how": "the fused network", "accuracy": metric(0.81),
                                 "auc": metric(0.88), "balanced_accuracy": metric(0.8)},
                                {"source": "clinical values only", "how": "gradient boosting", "accuracy": metric(0.61),
                                 "auc": metric(0.66), "balanced_accuracy": metric(0.6)}]},
           "importance": importance}

    sections = classification_sections(doc, None, ["negative", "positive"], "cases.csv")
    keys = [s.key for s in sections]
    assert "sources" in keys and "importance" in keys
    page = render_html(Report("t", "s", sections))
    assert 'id="sources"' in page and "clinical values only" in page and "0.6600 [0.6100, 0.7100]" in page
    assert 'id="importance"' in page and "marker" in page and "view" in page and "data:image/png;base64" in page
    assert "Measured on the val split" in page


def test_importance_without_validation_cases_says_so():
    from medlens.tasks.classification.report import importance_section

    section = importance_section({"split": "val", "note": "no validation cases: importances not measured"})
    assert section.blocks == ["no validation cases: importances not measured"]


def test_undefined_importances_read_back_from_metrics_json_still_render():
    from medlens.runs import json_safe
    from medlens.tasks.classification.report import importance_section

    data, encoder = problem(30, 5)
    data.labels[:] = 1  # one class only: AUC and every drop are undefined
    doc = json_safe(input_importance(MarkerAndFront(), config(), data, encoder, repeats=2))
    assert doc["baseline"] is None and doc["clinical"][0]["drop"] is None
    page = render_html(Report("t", "s", [importance_section(doc)]))
    assert "n/a" in page and "data:image/png;base64" in page
