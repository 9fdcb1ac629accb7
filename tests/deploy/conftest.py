"""Fixtures for the deployment tests: a short real training run, its Predictor, and a live service on loopback."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

FAST = ["--set", "train.max_epochs=3", "--set", "train.patience=50", "--no-progress"]


@pytest.fixture(scope="session")
def deploy_demo(tmp_path_factory) -> Path:
    """The demo dataset (seed 0), written once; tests must not modify it."""
    from medlens.data.synthetic import write_demo_data

    return write_demo_data(tmp_path_factory.mktemp("deploy-demo") / "demo")


@pytest.fixture(scope="session")
def cls_run_folder(tmp_path_factory, deploy_demo) -> Path:
    """A 2D binary classifier trained for 3 epochs on the demo CSV (about 30 s)."""
    from medlens.cli import main

    out = tmp_path_factory.mktemp("deploy-train") / "run"
    assert main(["train", str(deploy_demo / "classification.csv"), "--out", str(out), *FAST]) == 0
    return out


@pytest.fixture(scope="session")
def predictor(cls_run_folder):
    from medlens.deploy import Predictor

    return Predictor.from_run(cls_run_folder)


class LiveServer:
    """uvicorn serving ``app`` in a background thread on a free 127.0.0.1 port."""

    def __init__(self, app):
        import uvicorn

        # IPPROTO_TCP so asyncio sets TCP_NODELAY, as when uvicorn binds itself (else ~40 ms per response)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start within 20 s")
            time.sleep(0.02)

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
