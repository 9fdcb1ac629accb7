"""A real Orthanc (with its DICOMweb plugin) for the PACS tests: started on free loopback ports with a
generated configuration, storage in a temporary folder, stopped at teardown.

``make pacs`` installs it (Debian packages ``orthanc`` and ``orthanc-dicomweb``); without it the tests that
need one are skipped with that hint. The system service is never used.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
AE_TITLE = "ORTHANC"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class OrthancServer:
    """A running Orthanc: ``url`` (REST), ``dicomweb`` (its DICOMweb root), ``dicom_port`` / ``ae_title`` (C-STORE)."""

    process: subprocess.Popen
    http_port: int
    dicom_port: int
    log: Path
    ae_title: str = AE_TITLE

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def get(self, path: str):
        import requests

        answer = requests.get(f"{self.url}{path}", timeout=10)
        answer.raise_for_status()
        return answer.json()

    def upload(self, paths) -> None:
        """Store DICOM files through the REST API (POST /instances)."""
        import requests

        for path in paths:
            requests.post(f"{self.url}/instances", data=Path(path).read_bytes(), timeout=10).raise_for_status()

    def modalities_of(self, study_uid: str) -> list[str]:
        """The Modality of each series Orthanc stores in the study."""
        import requests

        ids = requests.post(f"{self.url}/tools/lookup", data=study_uid, timeout=10).json()
        study = next((i["ID"] for i in ids if i["Type"] == "Study"), None)
        if study is None:
            return []
        return sorted(s["MainDicomTags"].get("Modality", "") for s in self.get(f"/studies/{study}/series"))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_orthanc(root: Path, *, dicomweb: bool = True, timeout_s: float = 30.0) -> OrthancServer:
    """Start Orthanc with storage under ``root`` and wait until ``GET /system`` answers.

    Skips the test when Orthanc (or its DICOMweb plugin) is not installed.
    """
    import requests

    if not Path(ORTHANC).exists() or (dicomweb and not DICOMWEB_PLUGIN.exists()):
        pytest.skip("Orthanc with its DICOMweb plugin is not installed; run `make pacs` (apt packages orthanc, "
                    "orthanc-dicomweb)")
    root.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config = {"Name": "medlens-test", "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
              "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": AE_TITLE, "RemoteAccessAllowed": False,
              "AuthenticationEnabled": False, "HttpServerThreads": 4, "ConcurrentJobs": 1,
              "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True, "SaveJobs": False,
              "Plugins": [str(DICOMWEB_PLUGIN)] if dicomweb else [],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    (root / "orthanc.json").write_text(json.dumps(config))
    log = root / "orthanc.log"
    with log.open("wb") as out:
        process = subprocess.Popen([ORTHANC, str(root / "orthanc.json")], stdout=out, stderr=subprocess.STDOUT,
                                   cwd=root)
    server = OrthancServer(process, http_port, dicom_port, log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"Orthanc exited with code {process.returncode}: {log.read_text()[-2000:]}")
        try:
            requests.get(f"{server.url}/system", timeout=1).raise_for_status()
            return server
        except requests.RequestException:
            time.sleep(0.1)
    server.stop()
    pytest.fail(f"Orthanc did not answer GET /system within {timeout_s:.0f} s: {log.read_text()[-2000:]}")
