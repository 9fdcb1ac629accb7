"""Fixtures of the corpus tests: the corpus itself, and the demo classifier exported as a bundle."""

from __future__ import annotations

from pathlib import Path

import pytest

from adversarial.corpus import Case, build_corpus


@pytest.fixture(scope="session")
def corpus() -> list[Case]:
    """Every case of the adversarial corpus (built in a few seconds, held in memory)."""
    return build_corpus()


@pytest.fixture(scope="session")
def cls_bundle(cls_run, tmp_path_factory) -> Path:
    """The demo classifier exported as a bundle (PyTorch weights only), as `medlens export --format none` writes it."""
    from medlens.deploy import export_bundle

    return export_bundle(cls_run.root, tmp_path_factory.mktemp("cls-bundle") / "cls.bundle", formats="none",
                         log=lambda m: None)
