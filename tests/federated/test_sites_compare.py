"""Sites for trying federated training on one machine, and the federated / local-only / pooled comparison."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from medlens.errors import ConfigError, DatasetError
from medlens.federated.sites import dirichlet_sites, read_sites, split_sites_even

DATA = Path(os.environ.get("MEDLENS_DATA_DIR") or Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets")
PNEUMONIA = DATA / "medmnist" / "pneumoniamnist.npz"


def write_class_folders(root: Path, per_split=(("train", 60), ("val", 15), ("test", 15)), classes=("a", "b", "c"))\
        -> Path:
    """``root/<split>/<class>/<i>.png``: 8 x 8 images, every one different (its number in its pixels)."""
    from PIL import Image

    number = 0
    for split, n in per_split:
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = np.zeros((8, 8), np.uint8)
                pixels.flat[:3] = (number // 65536, number // 256 % 256, number % 256)
                Image.fromarray(pixels).save(root / split / name / f"{i:03d}.png")
                number += 1
    return root


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_rows(csv_path: Path) -> list[dict]:
    with open(csv_path, newline="") as f:
        return [{**row, "path": csv_path.parent / row["image"]} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return write_class_folders(tmp_path_factory.mktemp("cls") / "data")


def test_a_dirichlet_draw_puts_every_case_in_one_site_and_keeps_its_split(source, tmp_path):
    sites = dirichlet_sites(source, 3, 0.5, seed=4, out_dir=tmp_path / "sites", min_per_class=1)
    truth = {digest(p): (p.parent.parent.name, p.parent.name) for p in source.rglob("*.png")}
    seen = []
    for name, manifest in sites.sources.items():
        for row in manifest_rows(manifest):
            split, label = truth[digest(row["path"])]
            assert (row["split"], row["label"]) == (split, label), f"{name}: {row['image']}"
            seen.append(digest(row["path"]))
    assert sorted(seen) == sorted(truth), "each case in exactly one site"
    pooled = manifest_rows(sites.pooled)
    assert sorted(digest(r["path"]) for r in pooled) == sorted(truth)
    assert sum(r["split"] == "test" for r in pooled) == 45  # the whole test split, pooled
    for counts in (s["counts"] for s in sites.doc["sites"].values()):
        assert all(counts[split].get(c, 0) >= 1 for split in ("train", "val", "test") for c in "abc")


def test_the_same_seed_draws_the_same_sites_and_another_seed_others(source, tmp_path):
    first = dirichlet_sites(source, 3, 0.5, seed=1, out_dir=tmp_path / "one", min_per_class=1)
    again = dirichlet_sites(source, 3, 0.5, seed=1, out_dir=tmp_path / "two", min_per_class=1)
    other = dirichlet_sites(source, 3, 0.5, seed=2, out_dir=tmp_path / "three", min_per_class=1)
    lists = lambda s: [[r["image"] for r in manifest_rows(m)] for m in s.sources.values()]  # noqa: E731
    assert lists(first) == lists(again)
    assert first.doc["shares"] == again.doc["shares"] and first.doc["shares"] != other.doc["shares"]
    assert lists(first) != lists(other)
    assert read_sites(tmp_path / "one").doc == first.doc
    stamp = (tmp_path / "one" / "site_1.csv").stat().st_mtime_ns
    assert dirichlet_sites(source, 3, 0.5, seed=1, out_dir=tmp_path / "one", min_per_class=1).doc == first.doc
    assert (tmp_path / "one" / "site_1.csv").stat().st_mtime_ns == stamp, "the same draw is reused, not rewritten"


def label_skew(sites) -> float:
    """Mean total-variation distance between each site's training label distribution and the pooled one."""
    counts = np.array([[s["counts"]["train"].get(c, 0) for c in "abc"] for s in sites.doc["sites"].values()], float)
    pooled = counts.sum(axis=0) / counts.sum()
    return float(np.mean(0.5 * np.abs(counts / counts.sum(axis=1, keepdims=True) - pooled).sum(axis=1)))


def test_a_small_alpha_skews_the_sites_label_balance_and_a_large_one_does_not(source, tmp_path):
    skews = {alpha: np.mean([label_skew(dirichlet_sites(source, 3, alpha, seed=s, out_dir=tmp_path / f"{alpha}-{s}",
                                                        min_per_class=1)) for s in range(3)])
             for alpha in (0.3, 100.0)}
    assert skews[100.0] < 0.1 < skews[0.3], skews


def test_bad_requests_are_refused_saying_why(source, tmp_path):
    with pytest.raises(ConfigError, match="at least 2 sites"):
        dirichlet_sites(source, 1, 0.5, seed=0, out_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match="concentration must be > 0"):
        dirichlet_sites(source, 3, 0.0, seed=0, out_dir=tmp_path / "a")
    with pytest.raises(DatasetError, match="none gave each of 40 sites"):
        dirichlet_sites(source, 40, 0.5, seed=0, out_dir=tmp_path / "a", min_per_class=1, max_draws=5)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="already holds other files"):
        dirichlet_sites(source, 3, 0.5, seed=0, out_dir=tmp_path / "busy", min_per_class=1)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """``images/`` + ``labels/``: 15 small 3D volumes with a two-label mask each."""
    from medlens.io import Image, identity_direction, write_image

    root = tmp_path_factory.mktemp("seg") / "pairs"
    rng = np.random.default_rng(0)
    for i in range(15):
        image = rng.normal(size=(1, 8, 8, 6)).astype(np.float32)
        mask = np.zeros((1, 8, 8, 6), np.uint8)
        mask[0, 2:4, 2:5, 1:4], mask[0, 5:7, 4:7, 2:5] = 1, 2
        for folder, array in (("images", image), ("labels", mask)):
            write_image(Image(array, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), identity_direction(3)),
                        root / folder / f"case_{i:02d}.nii.gz")
    return root


def test_an_even_split_deals_whole_patients_into_sites_each_with_train_val_test(pairs, tmp_path):
    sites = split_sites_even(pairs, 3, seed=0, out_dir=tmp_path / "sites")
    from medlens.data import open_dataset

    seen = []
    for manifest in sites.sources.values():
        dataset = open_dataset(manifest)
        assert dataset.task.value == "segmentation" and len(dataset.cases) == 5
        assert {c.split.value for c in dataset.cases} == {"train", "val", "test"}
        seen += [digest(c.images[0]) + digest(c.mask) for c in dataset.cases]
    truth = [digest(p) + digest(pairs / "labels" / p.name) for p in sorted((pairs / "images").iterdir())]
    assert sorted(seen) == sorted(truth)
    assert split_sites_even(pairs, 3, seed=1, out_dir=tmp_path / "other").doc["sites"] == sites.doc["sites"]
    assert [manifest_rows(m) for m in sites.sources.values()] != \
        [manifest_rows(m) for m in read_sites(tmp_path / "other").sources.values()]
    with pytest.raises(DatasetError, match="use at most 5 sites"):
        split_sites_even(pairs, 6, seed=0, out_dir=tmp_path / "many")


@pytest.mark.realdata
@pytest.mark.skipif(not PNEUMONIA.exists(), reason=f"{PNEUMONIA} not present (set MEDLENS_DATA_DIR)")
def test_pneumoniamnist_in_four_dirichlet_sites_divides_the_official_splits(tmp_path):
    sites = dirichlet_sites(PNEUMONIA, 4, 0.5, seed=0, out_dir=tmp_path / "sites")
    counts = [s["counts"] for s in sites.doc["sites"].values()]
    for split, official in (("train", 4708), ("val", 524), ("test", 624)):
        assert sum(sum(c[split].values()) for c in counts) == official
        assert all(min(c[split].values()) >= 2 and len(c[split]) == 2 for c in counts), "both classes everywhere"
    shares = np.array(sites.doc["shares"])
    assert np.allclose(shares.sum(axis=1), 1.0)
    assert shares.max() > 0.5, "Dirichlet(0.5): some site holds most of a class"
    assert json.loads((tmp_path / "sites" / "sites.json").read_text())["alpha"] == 0.5


# ---- compare_sites -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compared(tmp_path_factory, one_torch_thread):
    """Two Dirichlet sites of the demo radiographs; a stand-in federated run trained by the ordinary engine on
    the pooled sites (1 epoch), with a federation.yaml of 1 round x 1 local epoch; then compare_sites."""
    from medlens.data.synthetic import write_demo_data
    from medlens.engine.train import train
    from medlens.federated.compare import compare_sites
    from medlens.federated.plan import FederationPlan, write_federation

    root = tmp_path_factory.mktemp("compare")
    demo = write_demo_data(root / "demo", patients=24)
    sites = dirichlet_sites(demo / "classification.csv", 2, 1.0, seed=0, out_dir=root / "sites", min_per_class=1)
    short = ["train.max_epochs=1", "model.members=1", "train.patience=50"]
    fed = train(sites.pooled, out=root / "fed", overrides=short, progress_bar=False, log=lambda *a: None)
    write_federation(fed.root / "federation.yaml", FederationPlan(strategy="fedavg", rounds=1, local_epochs=1))
    printed = []
    doc = compare_sites(fed.root, sites.sources, n_bootstrap=100, log=printed.append)
    return sites, fed.root, doc, "\n".join(printed)


@pytest.mark.e2e
def test_compare_scores_every_model_on_every_sites_test_split_with_cis(compared):
    sites, run, doc, printed = compared
    with open(run / "federated" / "comparison.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    models = {"federated", "local site_1", "local site_2", "pooled"}
    assert {(r["model"], r["test"], r["metric"]) for r in rows} == \
        {(m, t, k) for m in models for t in ("site_1", "site_2", "all sites") for k in ("auc", "balanced_accuracy")}
    for row in rows:
        assert float(row["ci_low"]) <= float(row["value"]) <= float(row["ci_high"]), row
    tests = {name: sum(s["counts"]["test"].values()) for name, s in sites.doc["sites"].items()}
    assert doc["tests"] == {**tests, "all sites": sum(tests.values())}
    assert {r["n_cases"] for r in rows if r["test"] == "site_1"} == {str(tests["site_1"])}
    assert json.loads((run / "federated" / "comparison.json").read_text())["summary"].keys() == {"auc",
                                                                                                  "balanced_accuracy"}
    assert "local (this site)" in printed and "all sites (" in printed and "[" in printed


@pytest.mark.e2e
def test_compare_trains_local_and_pooled_models_on_training_splits_only_with_the_same_budget(compared):
    sites, run, doc, _ = compared
    work = run / "federated" / "compare"
    for folder in ("local_site_1", "local_site_2", "pooled"):
        info = json.loads((work / folder / "run.json").read_text())
        assert info["status"] == "finished" and info["epochs_run"] == doc["budget"]["epochs"] == 1
    pooled = json.loads((work / "pooled" / "splits.json").read_text())
    local = json.loads((work / "local_site_1" / "splits.json").read_text())
    assert len(pooled["test"]) == doc["tests"]["all sites"] and len(local["test"]) == doc["tests"]["site_1"]
    trained = {Path(r["image"]).name for r in csv.DictReader(open(work / "pooled.csv")) if r["split"] != "test"}
    tested = {Path(r["image"]).name for m in sites.sources.values() for r in manifest_rows(m) if r["split"] == "test"}
    assert trained and not trained & tested
    # the stand-in federated run trained the pooled sites with the same plan and seed: the pooled model is the same
    value = {(r["model"], r["test"], r["metric"]): r["value"] for r in doc["rows"]}
    for test in ("site_1", "site_2", "all sites"):
        assert value["pooled", test, "auc"] == pytest.approx(value["federated", test, "auc"], abs=1e-9)


@pytest.mark.e2e
def test_compare_refuses_a_run_that_is_not_federated(compared, tmp_path):
    from medlens.federated.compare import compare_sites

    sites, run, _, _ = compared
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("plan.yaml", "run.json", "weights.pt"):
        (plain / name).write_bytes((run / name).read_bytes())
    with pytest.raises(ConfigError, match="no federation.yaml"):
        compare_sites(plain, sites.sources)
    with pytest.raises(ConfigError, match="at least two sites"):
        compare_sites(run, [sites.sources["site_1"]])


def test_balanced_accuracy_compared_is_at_the_threshold_the_model_predicts_with():
    from medlens.federated.compare import headline

    figure = {"value": 0.9, "ci_low": 0.8, "ci_high": 0.95}
    doc = {"metrics": {"auc": figure, "balanced_accuracy": {**figure, "value": 0.6}},  # the 0.5 rule
           "metrics_youden": {"balanced_accuracy": {**figure, "value": 0.85}}}  # the calibrated threshold
    assert headline(doc)["balanced_accuracy"]["value"] == 0.85
    del doc["metrics_youden"]  # several classes: the argmax
    assert headline(doc)["balanced_accuracy"]["value"] == 0.6
