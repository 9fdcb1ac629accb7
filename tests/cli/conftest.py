"""Fixtures for the in-process CLI tests: ``cli(...)`` runs ``medlens.cli.main`` and captures its output."""

from __future__ import annotations

import copy
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from medlens.data import medmnist
from medlens.io import Image, identity_direction, write_image


def write_png(path: Path, seed: int) -> Path:
    rows_cols = np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)
    return write_image(Image(rows_cols.T[None], (1.0, 1.0), (0.0, 0.0), identity_direction(2)), path)


@pytest.fixture
def png():
    """``png(path, seed)``: an 8 x 8 grey PNG whose pixels depend only on ``seed``."""
    return write_png


@pytest.fixture
def medmnist_md5(monkeypatch):
    """``patch(name, md5)``: pretend the official MD5 of ``name`` (every size) is ``md5``."""

    def patch(name: str, md5: str) -> None:
        info = copy.deepcopy(medmnist.medmnist_info())
        for entry in info[name]["files"].values():
            entry["md5"] = md5
        monkeypatch.setattr(medmnist, "medmnist_info", lambda: info)

    return patch


@pytest.fixture
def kill_and_resume(tmp_path):
    """``check(args, column, lines)``: ``medlens train *args`` once whole and once SIGKILLed as soon as its
    metrics.csv holds ``lines`` lines, then resumed; asserts the same weights and the same ``(epoch, column)``
    rows in metrics.csv. Runs with one thread so both runs compute identically."""

    def check(args: list, column: str, lines: int) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "medlens.cli", *map(str, args)]
        whole, killed = tmp_path / "whole", tmp_path / "killed"
        assert subprocess.run([*command, "--out", str(whole)], capture_output=True, env=env).returncode == 0
        victim = subprocess.Popen([*command, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        metrics, deadline = killed / "metrics.csv", time.time() + 180
        while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= lines):
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        assert json.loads((killed / "run.json").read_text())["status"] == "running"
        resumed = subprocess.run([sys.executable, "-m", "medlens.cli", "train", "--resume", str(killed),
                                  "--no-progress"], capture_output=True, text=True, env=env)
        assert resumed.returncode == 0, resumed.stderr
        weights = [torch.load(run / "weights.pt", weights_only=True) for run in (whole, killed)]
        assert all(torch.allclose(weights[0][k].float(), weights[1][k].float(), atol=1e-5) for k in weights[0])
        rows = [[(r["epoch"], r[column]) for r in csv.DictReader(open(run / "metrics.csv"))] for run in (whole, killed)]
        assert rows[0] == rows[1]

    return check
