"""Fixtures for the deployment tests: the demo classifier's Predictor, and a live service on loopback."""

from __future__ import annotations

import socket
import threading
import time

import pytest


@pytest.fixture(scope="session")
def predictor(cls_run):
    """The Predictor of the session's demo classifier (a 2D binary ensemble on the demo CSV)."""
    from medlens.deploy import Predictor

    return Predictor.from_run(cls_run.root)


class LiveServer:
    """uvicorn serving ``app`` in a background thread on a free 127.0.0.1 port.

    Args:
        limits: ``None`` for a plain uvicorn configuration; else the keyword arguments of
            :func:`medlens.deploy.service.server_config` (``medlens serve``'s deadlines and caps).
    """

    def __init__(self, app, limits: dict | None = None):
        import uvicorn

        from medlens.deploy.service import server_config

        # IPPROTO_TCP so asyncio sets TCP_NODELAY, as when uvicorn binds itself (else ~40 ms per response)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        self.address = sock.getsockname()
        self.url = f"http://127.0.0.1:{self.address[1]}"
        config = (uvicorn.Config(app, log_config=None, access_log=False, lifespan="off") if limits is None
                  else server_config(app, **limits))
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start within 20 s")
            time.sleep(0.02)

    def get(self, path: str = "/healthz"):
        import httpx

        return httpx.get(f"{self.url}{path}", timeout=10)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def live(predictor):
    """``live(**create_app_options)`` -> a started LiveServer; all are stopped after the module."""
    from medlens.deploy.service import create_app

    servers = []

    def start(**options) -> LiveServer:
        servers.append(LiveServer(create_app(predictor, **options)))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def serve():
    """``serve(predictor, **create_app_options)`` -> a started LiveServer for any predictor; stopped after the
    module."""
    from medlens.deploy.service import create_app

    servers = []

    def start(predictor, **options) -> LiveServer:
        servers.append(LiveServer(create_app(predictor, **options)))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def limited(predictor):
    """``limited(**server_config_options)`` -> a started LiveServer with `medlens serve`'s deadlines and caps."""
    from medlens.deploy.service import create_app

    servers = []

    def start(**limits) -> LiveServer:
        servers.append(LiveServer(create_app(predictor), limits))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """A real Orthanc with its DICOMweb plugin on free localhost ports (tests/deploy/orthanc.py), one per module."""
    from tests.deploy.orthanc import start_orthanc

    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()
