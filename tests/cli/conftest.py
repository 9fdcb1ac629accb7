"""Fixtures for the in-process CLI tests: ``cli(...)`` runs ``medlens.cli.main`` and captures its output."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from medlens.cli import main
from medlens.data import medmnist
from medlens.io import Image, identity_direction, write_image


@pytest.fixture
def cli(capsys):
    """``cli("inspect", DATA, ...)`` -> namespace(rc, out, err)."""

    def run(*argv) -> SimpleNamespace:
        rc = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return SimpleNamespace(rc=rc, out=captured.out, err=captured.err)

    return run


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The demo dataset (seed 0), written once; tests must not modify it."""
    from medlens.data.synthetic import write_demo_data

    return write_demo_data(tmp_path_factory.mktemp("cli-demo") / "demo")


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
