"""``medlens serve RUN --dicom AE@PORT``: a real ``medlens serve`` subprocess receives series from pynetdicom SCUs,
predicts in its worker processes and stores the results in a real Orthanc over C-STORE.

One server (settle time 1 s, two workers) and one Orthanc serve the module; its log is checked for patient
identifiers at the end.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.deploy.orthanc import free_port
from tests.deploy.pacs_data import leaks, study_uid, write_study

LAUNCH = "import sys; from medlens.cli import main; sys.exit(main())"
SENDER = "TESTSCU"


class ListeningService:
    """``medlens serve MODEL --dicom MEDLENS@PORT ...`` with its output in ``log``; ready once /healthz answers."""

    def __init__(self, model: Path, destination: str, log: Path):
        self.http_port, self.dicom_port, self.log = free_port(), free_port(), log
        command = [sys.executable, "-c", LAUNCH, "serve", str(model), "--port", str(self.http_port), "--workers", "2",
                   "--request-timeout-s", "60", "--dicom", f"MEDLENS@{self.dicom_port}", "--dicom-allow", SENDER,
                   "--dicom-destination", destination, "--dicom-settle-s", "1"]
        with open(log, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300  # the server and each worker import torch and load the model
        while time.monotonic() < deadline:
            assert self.process.poll() is None, log.read_text()[-3000:]
            try:
                health = httpx.get(f"http://127.0.0.1:{self.http_port}/healthz", timeout=2).json()
                if health.get("workers", {}).get("ready") == 2:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"medlens serve did not get ready within 300 s:\n{log.read_text()[-3000:]}")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, needle: str, count: int = 1, timeout_s: float = 120) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.text().count(needle) >= count:
                return self.text()
            assert self.process.poll() is None, self.text()[-3000:]
            time.sleep(0.2)
        raise AssertionError(f"{needle!r} x{count} not logged within {timeout_s:.0f} s:\n{self.text()[-3000:]}")

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return self.text()


def send_series(paths, port: int, *, calling: str = SENDER):
    """C-STORE every file in one association from ``calling`` (each answered Success); the association."""
    import pydicom
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    datasets = [pydicom.dcmread(p) for p in paths]
    for sop_class in {str(d.SOPClassUID) for d in datasets}:
        ae.add_requested_context(sop_class)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDLENS")
    if not assoc.is_established:
        return assoc
    statuses = [assoc.send_c_store(d).Status for d in datasets]
    assoc.release()
    assert statuses == [0] * len(datasets)
    return assoc


@pytest.fixture(scope="module")
def service(seg_run, orthanc, tmp_path_factory):
    server = ListeningService(seg_run.root, f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}",
                              tmp_path_factory.mktemp("serve") / "serve.log")
    yield server
    log = server.stop()
    assert not leaks(log), "a patient identifier reached the service log"


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("studies")
    made = {f"mr{k}": write_study(root / f"mr{k}", seed=20 + k) for k in range(3)}
    made["ct"] = write_study(root / "ct", seed=30, modality="CT", shape=(32, 32, 8))
    made["thin"] = write_study(root / "thin", seed=31, shape=(32, 32, 2))
    made["gap"] = [p for k, p in enumerate(write_study(root / "gap", seed=32, shape=(32, 32, 10))) if k != 4]
    return made


def test_three_series_at_once_are_predicted_and_stored_in_orthanc(service, orthanc, studies):
    senders = [threading.Thread(target=send_series, args=(studies[f"mr{k}"], service.dicom_port)) for k in range(3)]
    started = time.monotonic()
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    log = service.wait_for_log("result object(s) sent to ORTHANC@", count=3, timeout_s=180)
    elapsed = time.monotonic() - started
    for k in range(3):
        assert orthanc.modalities_of(study_uid(studies[f"mr{k}"])) == ["SEG", "SR"]  # in the source study
    assert "series 1 (MR, 32 slices): 2 result object(s) sent" in log
    print(f"3 series of 32 slices received, predicted and stored in {elapsed:.1f} s")


def test_an_unknown_ae_title_is_refused_at_association_a_known_one_may_echo(service, studies):
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    assoc = send_series(studies["mr0"][:1], service.dicom_port, calling="INTRUDER")
    assert assoc.is_rejected
    ae = AE(ae_title=SENDER)
    ae.add_requested_context(Verification)
    echo = ae.associate("127.0.0.1", service.dicom_port, ae_title="MEDLENS")
    assert echo.is_established and echo.send_c_echo().Status == 0
    echo.release()
    assert "association from AE title 'INTRUDER' refused" in service.wait_for_log("INTRUDER")


@pytest.mark.parametrize(("name", "reason"), [
    ("ct", "modality CT, the model was trained on MR"),
    ("thin", "the model is 3D and takes volumes of at least 3 slices")])
def test_a_series_matching_no_rule_is_logged_and_nothing_sent(service, orthanc, studies, name, reason):
    before = orthanc.get("/statistics")["CountInstances"]
    send_series(studies[name], service.dicom_port)
    log = service.wait_for_log(reason)
    assert f"not predicted: series 1 ({'CT' if name == 'ct' else 'MR'}, " in log and "nothing sent" in log
    time.sleep(0.5)
    assert orthanc.get("/statistics")["CountInstances"] == before
    assert orthanc.modalities_of(study_uid(studies[name])) == []


def test_an_unreadable_series_costs_a_worker_job_not_the_listener(service, orthanc, studies):
    """A series with a missing slice is refused by the reader in the worker: logged, nothing sent, and the
    listener takes the next series."""
    send_series(studies["gap"], service.dicom_port)
    log = service.wait_for_log("nothing sent, kept under")
    assert "series 1 (MR, 9 slices)" in log
    assert orthanc.modalities_of(study_uid(studies["gap"])) == []
    assert send_series(studies["mr1"][:1], service.dicom_port).is_released  # still listening, still storing
