"""Run folders and bundles written before the task interface still load, predict, evaluate and export;
folders and bundles of a newer version are refused with a message naming the version."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from medlens.config import read_plan
from medlens.deploy import BundleError, Predictor, export_bundle
from medlens.errors import ConfigError


def as_written_before(run: Path, target: Path) -> Path:
    """A copy of ``run`` as medlens wrote it before the task interface: plan.yaml with every section and key
    (``segment.mirror_tta``, no ``train.momentum`` / ``train.processes``), no ``task`` in a classification's
    metrics.json, findings without ``blocks_training``."""
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("checkpoints", "tensorboard", "report_files"))
    config, _ = read_plan(target / "plan.yaml")
    raw = config.as_dict()
    for key in ("momentum", "processes"):
        raw["train"].pop(key)
    raw["segment"]["mirror_tta"] = raw["evaluate"].pop("tta")
    raw["evaluate"]["baseline"] = config.dataset.task != "segmentation"
    (target / "plan.yaml").write_text("# medlens plan (earlier version)\n" + yaml.safe_dump(raw, sort_keys=False))
    doc = json.loads((target / "metrics.json").read_text())
    if doc.get("task") != "segmentation":
        doc.pop("task", None)
    (target / "metrics.json").write_text(json.dumps(doc))
    card = json.loads((target / "card.json").read_text())
    for finding in card["findings"]:
        finding.pop("blocks_training", None)
    (target / "card.json").write_text(json.dumps(card))
    return target


def test_a_classification_run_of_an_earlier_version_evaluates_predicts_and_exports(cls_run, demo_dir, cli, tmp_path):
    old = as_written_before(cls_run.root, tmp_path / "old")
    assert "mirror_tta" in (old / "plan.yaml").read_text() and "momentum" not in (old / "plan.yaml").read_text()
    study = demo_dir / "new_studies" / "study_01.png"
    ours, theirs = Predictor.from_run(old).predict(study), Predictor.from_run(cls_run.root).predict(study)
    assert ours["probabilities"] == theirs["probabilities"] and ours["label"] == theirs["label"]
    result = cli("evaluate", old, "--bootstrap", "10", "--no-baseline")
    assert result.rc == 0, result.err
    assert json.loads((old / "metrics.json").read_text())["metrics"]["auc"]["value"] is not None
    bundle = export_bundle(old, tmp_path / "old.bundle", formats="none", log=lambda m: None)
    assert Predictor.from_bundle(bundle).predict(study)["probabilities"] == \
        Predictor.from_run(cls_run.root).predict(study)["probabilities"]


def test_a_segmentation_run_of_an_earlier_version_keeps_its_optimiser_and_mirroring(seg_run, demo_dir, tmp_path):
    old = as_written_before(seg_run.root, tmp_path / "old")
    config, _ = read_plan(old / "plan.yaml")
    assert config.train.momentum == 0.99 and config.evaluate.tta is False  # what the earlier version trained with
    source = demo_dir / "new_volumes" / "lesion_new.nii.gz"
    ours, theirs = Predictor.from_run(old).predict(source), Predictor.from_run(seg_run.root).predict(source)
    assert ours["voxels"] == theirs["voxels"]


def test_a_run_folder_of_a_newer_version_is_refused_naming_it(cls_run, tmp_path):
    new = tmp_path / "new"
    shutil.copytree(cls_run.root, new, ignore=shutil.ignore_patterns("checkpoints", "tensorboard", "report_files"))
    info = json.loads((new / "run.json").read_text())
    (new / "run.json").write_text(json.dumps({**info, "medlens_run_version": 7}))
    with pytest.raises(ConfigError, match=r"run folder version 7 is newer than this medlens reads \(version 1\); "
                                          r"upgrade medlens"):
        Predictor.from_run(new)


def test_a_bundle_of_a_newer_version_is_refused_naming_it(cls_run, tmp_path):
    bundle = export_bundle(cls_run.root, tmp_path / "b", formats="none", log=lambda m: None)
    card = json.loads((bundle / "card.json").read_text())
    (bundle / "card.json").write_text(json.dumps({**card, "medlens_card": 2}))
    sums = json.loads((bundle / "checksums.json").read_text())
    from medlens.deploy.bundle import sha256

    sums["files"]["card.json"] = sha256(bundle / "card.json")
    (bundle / "checksums.json").write_text(json.dumps(sums))
    with pytest.raises(BundleError, match=r"bundle version 2 \(card\.json medlens_card\) is newer than this medlens "
                                          r"reads \(version 1\)"):
        Predictor.from_bundle(bundle)
