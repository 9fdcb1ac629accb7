"""The PACS node's pieces that need no model and no peer: addresses, options, series rules, the spool's clock."""

from __future__ import annotations

import time

import numpy as np
import pytest

from medlens.deploy.pacs.dicomweb import StudyAddress, is_dicomweb
from medlens.deploy.pacs.listener import SeriesSpool, listener_config, parse_allow, parse_listen
from medlens.deploy.pacs.rules import SeriesRules, SeriesSummary, dicom_modalities, summarise
from medlens.deploy.pacs.send import Destination
from medlens.errors import ConfigError


def test_dicomweb_addresses_map_to_http_and_https():
    address = StudyAddress.parse("dicomweb://127.0.0.1:8042/dicom-web/studies/1.2.3/series/4.5")
    assert address == StudyAddress("http://127.0.0.1:8042/dicom-web", "1.2.3", "4.5")
    assert StudyAddress.parse("dicomwebs://pacs.example/wado/rs/studies/1.2").base_url == "https://pacs.example/wado/rs"
    assert is_dicomweb("DICOMweb://h/studies/1") and not is_dicomweb("scan/dicom")
    with pytest.raises(ConfigError, match="expected dicomweb://HOST"):
        StudyAddress.parse("dicomweb://127.0.0.1:8042/dicom-web/1.2.3")


def test_destinations():
    assert Destination.parse("ORTHANC@127.0.0.1:4242") == Destination("ORTHANC", "127.0.0.1", 4242)
    assert Destination.parse("https://pacs/dicom-web/").url == "https://pacs/dicom-web"
    assert Destination.parse("dicomweb://pacs:8042/dicom-web").url == "http://pacs:8042/dicom-web"
    for bad in ("ORTHANC@host", "A_TITLE_LONGER_THAN_16@h:104", "ftp://pacs", "X@h:70000"):
        with pytest.raises(ConfigError, match="expected AE_TITLE@HOST:PORT"):
            Destination.parse(bad)


def test_listener_options_are_checked_before_anything_starts():
    assert parse_listen("MEDLENS@11112") == ("MEDLENS", 11112)
    assert parse_allow("CT1, MR2") == ("CT1", "MR2")
    with pytest.raises(ConfigError, match="AE_TITLE@PORT"):
        parse_listen("MEDLENS:11112")
    with pytest.raises(ConfigError, match="--dicom-allow '\\*'"):  # no silent "accept anyone"
        listener_config(listen="M@104", allow=None, destination="P@h:104", outputs=None, settle_s=5, host="h")
    with pytest.raises(ConfigError, match="--dicom-destination"):
        listener_config(listen="M@104", allow="CT1", destination=None, outputs=None, settle_s=5, host="h")
    with pytest.raises(ConfigError, match="add --dicom"):
        listener_config(listen=None, allow="CT1", destination=None, outputs=None, settle_s=5, host="h")
    config = listener_config(listen="M@104", allow="*", destination="P@h:104", outputs="seg", settle_s=2, host="h")
    assert config.allow == ("*",) and config.kinds == ("seg",) and config.settle_s == 2


def test_rules_name_the_reason_and_never_the_uid():
    rules = SeriesRules(("MR",), 3)
    assert rules.refusal(SeriesSummary(4, "MR", 20, 0)) is None
    assert "modality CT, the model was trained on MR" in rules.refusal(SeriesSummary(4, "CT", 20, 0))
    assert "at least 3 slices" in rules.refusal(SeriesSummary(4, "MR", 2, 0))
    assert "no image instances (1 other object(s))" in rules.refusal(SeriesSummary(None, "", 0, 1))
    assert "single images" in SeriesRules((), 2).refusal(SeriesSummary(1, "DX", 30, 0))
    assert SeriesRules((), 2).refusal(SeriesSummary(1, "DX", 1, 0)) is None
    # before a DICOMweb pull: the series search's modality alone
    assert rules.modality_refusal(3, "CT") == "series 3: modality CT, the model was trained on MR"
    assert rules.modality_refusal(3, "MR") is None and SeriesRules((), 3).modality_refusal(3, "CT") is None


def test_training_modalities_as_dicom_codes():
    assert dicom_modalities(["MRI"]) == ("MR",) and dicom_modalities("CT") == ("CT",)
    assert dicom_modalities("Chest X-Ray") == ("CR", "DX", "DR")
    assert dicom_modalities(["CT", "PET"]) == dicom_modalities("retina photo") == dicom_modalities(None) == ()


def test_summary_reads_headers_only(make_image):
    written = make_image.dicom_series("s", np.zeros((8, 8, 4)), modality="MR", rescale_intercept=0.0)
    summary = summarise(written.path)
    assert (summary.modality, summary.slices, summary.number) == ("MR", 4, 1)
    assert summary.describe() == "series 1 (MR, 4 slices)"


def test_a_series_completes_after_its_settle_time_or_soon_after_release(tmp_path):
    spool = SeriesSpool(tmp_path, settle_s=0.3)
    a = spool.folder_for("1.2.3", association=1)
    b = spool.folder_for("1.2.4", association=2)
    assert spool.folder_for("1.2.3", association=1) == a and a != b and "1.2.3" not in a.name
    assert spool.complete() == []
    spool.released(2)
    time.sleep(0.35)
    assert sorted(spool.complete()) == sorted([a, b])  # a: settled; b: released
    assert spool.complete() == []
    assert spool.folder_for("1.2.3", association=3) != a  # a late instance starts a new series folder


def test_a_series_past_the_work_budget_is_refused_and_dropped(tmp_path):
    spool = SeriesSpool(tmp_path, settle_s=0.01, max_voxels=1000)
    folder = spool.folder_for("1.2.3", association=1, voxels=600)
    assert folder is not None and folder.is_dir()
    assert spool.folder_for("1.2.3", association=1, voxels=600) is None  # 1200 > 1000
    assert not folder.exists() and spool.folder_for("1.2.3", association=1, voxels=1) is None
    time.sleep(0.02)
    assert spool.complete() == []  # never predicted
