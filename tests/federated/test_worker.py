"""A site's warm worker (:mod:`medlens.federated.worker`): a real worker process answering the calls a ClientApp
hands it, the site's refusals kept as they are, and the ClientApp doing the work itself when no worker answers."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from medlens.errors import MedlensError
from medlens.federated import site, worker
from tests.federated.test_flower_runtime import write_site

pytestmark = pytest.mark.skipif(not worker.available(), reason="no Unix sockets on this platform")


@pytest.fixture()
def running(tmp_path):
    """A worker process and the node config that names it; stopped (and its folder removed) afterwards."""
    folder = worker.prepare()
    process = subprocess.Popen(worker.command(folder))
    yield {"name": "north", worker.NODE_KEY: str(folder)}, process, folder
    process.terminate()
    process.wait(timeout=30)
    assert not folder.exists()  # the worker removes its socket and key when it stops


def test_the_worker_answers_as_the_site_would_and_keeps_its_refusals(running, tmp_path):
    node, process, folder = running
    data = write_site(tmp_path / "north", "north", 0)
    here = site.summarise({"data": str(data), "name": "north"})
    there = worker.call({**node, "data": str(data)}, "summarise")
    assert there == here
    assert process.poll() is None  # served, and still there for the next message

    # a site that cannot take part says why, as in-process (the ClientApp sends the reason, redacted)
    with pytest.raises(FileNotFoundError):
        worker.call({**node, "data": str(tmp_path / "missing.csv")}, "summarise")
    (tmp_path / "empty.csv").write_text("image,label,patient_id\n")
    with pytest.raises(MedlensError):
        worker.call({**node, "data": str(tmp_path / "empty.csv")}, "summarise")
    with pytest.raises(RuntimeError, match="worker failed in open"):  # only the site's own calls are run
        worker.call(node, "open", "/etc/passwd")


def test_the_clientapp_does_the_work_itself_when_no_worker_answers(tmp_path, monkeypatch, capsys):
    data = write_site(tmp_path / "south", "south", 100)
    gone = tmp_path / "no-worker"
    gone.mkdir()
    (gone / "key").write_bytes(b"k" * 32)
    monkeypatch.setattr(worker, "WAIT_S", 0.2)
    node = {"name": "south", "data": str(data), worker.NODE_KEY: str(gone)}
    summary, split = worker.call(node, "summarise")
    assert summary == site.summarise(node)[0]
    assert "no warm worker" in capsys.readouterr().out


def test_a_connection_without_the_key_is_refused(running):
    from multiprocessing import AuthenticationError
    from multiprocessing.connection import Client

    node, process, folder = running
    deadline = time.monotonic() + 60
    while not (folder / "socket").exists():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    with pytest.raises((AuthenticationError, EOFError, OSError)):
        with Client(str(folder / "socket"), family="AF_UNIX", authkey=b"x" * 32) as connection:
            connection.send(("summarise", {"data": "/", "name": "x"}, (), {}))
            connection.recv()
    assert process.poll() is None  # and the worker goes on serving


def test_a_workers_folder_is_removed_with_the_process_that_made_it_even_if_the_worker_never_ran():
    made = subprocess.run([sys.executable, "-c", "from medlens.federated import worker; print(worker.prepare())"],
                          capture_output=True, text=True, check=True)
    folder = made.stdout.strip()
    assert folder and not Path(folder).exists()
