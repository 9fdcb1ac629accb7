"""``medlens fetch weights NAME`` and ``--init-from NAME``: download, verify (SHA-256 or torch.hub's prefix in the
file name), refuse a mismatch leaving nothing behind, and say which file to put where when offline. Every
download here is a ``file://`` address: nothing leaves the machine."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from medlens._download import Checksum
from medlens.errors import ConfigError
from medlens.models import build_classifier
from medlens.models.pretrained import KNOWN_WEIGHTS, KnownWeights, fetch_weights, weights_dir
from medlens.models.weights import transfer_weights


def weights_file(path: Path, width: float = 0.25) -> Path:
    """A resnet18 file in torchvision's layout (MONAI's names, no shortcut bias, a 1000-class ``fc``)."""
    torch.manual_seed(0)
    model = build_classifier("resnet18_2d", in_channels=3, num_classes=2, input_size=(64, 64), width=width)
    state = {k.removeprefix("backbone."): v for k, v in model.state_dict().items()
             if k.startswith("backbone.") and not k.endswith("downsample.0.bias")}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**state, "fc.weight": torch.zeros(1000, model.num_features), "fc.bias": torch.zeros(1000)}, path)
    return path


@pytest.fixture
def tiny_entry(tmp_path, monkeypatch):
    """``entry(prefix)``: a known name ``tiny-resnet18`` for a local file, checked by its SHA-256 or its prefix."""
    source = weights_file(tmp_path / "mirror" / "tiny.pth")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()

    def entry(prefix: bool) -> Path:
        checksum = Checksum("sha256", digest[:8] if prefix else digest, prefix=prefix)
        file = f"tiny-{digest[:8]}.pth"
        monkeypatch.setitem(KNOWN_WEIGHTS, "tiny-resnet18", KnownWeights("tiny-resnet18", file, "resnet18_2d", None,
                                                                         checksum, "a test page"))
        return source

    return entry


@pytest.mark.parametrize("prefix", [False, True], ids=["sha256", "hub-prefix"])
def test_fetch_weights_downloads_and_verifies_the_file(cli, tmp_path, tiny_entry, prefix):
    source = tiny_entry(prefix)

    result = cli("fetch", "weights", "tiny-resnet18", "--root", tmp_path / "w", "--url", source.as_uri())

    assert result.rc == 0, result.err
    [fetched] = list((tmp_path / "w").iterdir())  # no partial file beside it
    assert fetched.read_bytes() == source.read_bytes()
    assert result.out.startswith(f"{fetched} (SHA-256 ") and "verified" in result.out
    assert "--init-from tiny-resnet18 --set model.name=resnet18_2d" in result.out


def test_a_file_already_fetched_and_verified_is_kept(tmp_path, tiny_entry):
    source = tiny_entry(prefix=True)
    first = fetch_weights("tiny-resnet18", tmp_path / "w", url=source.as_uri())

    again = fetch_weights("tiny-resnet18", tmp_path / "w", url=(tmp_path / "nothing-here").as_uri())

    assert again == first


def test_a_file_with_another_hash_is_refused_and_deleted(cli, tmp_path):
    impostor = weights_file(tmp_path / "mirror" / "resnet18.pth")

    result = cli("fetch", "weights", "resnet18-imagenet", "--root", tmp_path / "w", "--url", impostor.as_uri())

    assert result.rc == 2 and "Traceback" not in result.err
    assert "has SHA-256 " in result.err and "expected f37072fd... (the published prefix)" in result.err
    assert "the file was deleted" in result.err
    assert list((tmp_path / "w").iterdir()) == []


def test_offline_the_error_says_which_file_to_put_where(cli, tmp_path):
    result = cli("fetch", "weights", "densenet121-imagenet", "--root", tmp_path / "w",
                 "--url", (tmp_path / "unreachable.pth").as_uri())

    assert result.rc == 2
    assert f"put it at {tmp_path / 'w' / 'densenet121-a639ec97.pth'}" in result.err
    assert list((tmp_path / "w").iterdir()) == []


def test_medicalnet_files_are_manual_downloads_with_their_page(cli, tmp_path):
    result = cli("fetch", "weights", "medicalnet-resnet18", "--root", tmp_path / "w")

    assert result.rc == 2
    assert "has no published checksum" in result.err
    assert "https://huggingface.co/TencentMedicalNet/MedicalNet-Resnet18" in result.err
    assert f"put it at {tmp_path / 'w' / 'resnet_18_23dataset.pth'}" in result.err


def test_an_unknown_weights_name_lists_the_known_ones(cli, tmp_path):
    result = cli("fetch", "weights", "resnet19-imagenet", "--root", tmp_path)

    assert result.rc == 2 and "no known weights named 'resnet19-imagenet'" in result.err
    assert "resnet18-imagenet (resnet18_2d)" in result.err and "medicalnet-resnet50 (resnet50_3d)" in result.err


# --- --init-from NAME ------------------------------------------------------------------------------


def test_init_from_a_known_name_that_is_not_fetched_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLENS_DATA_DIR", str(tmp_path))
    model = build_classifier("resnet18_2d", in_channels=1, num_classes=2, input_size=(64, 64), width=0.25)

    with pytest.raises(ConfigError, match="run `medlens fetch weights resnet18-imagenet`, or .offline. download "
                                          "https://download.pytorch.org/models/resnet18-f37072fd.pth elsewhere"):
        transfer_weights(model, "resnet18-imagenet")
    with pytest.raises(ConfigError, match=f"put it at {tmp_path / 'weights' / 'resnet18-f37072fd.pth'}"):
        transfer_weights(model, "resnet18-imagenet")


def test_init_from_a_known_name_uses_the_fetched_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLENS_DATA_DIR", str(tmp_path))
    weights_file(weights_dir() / "resnet18-f37072fd.pth")
    model = build_classifier("resnet18_2d", in_channels=1, num_classes=2, input_size=(64, 64), width=0.25)

    report = transfer_weights(model, "resnet18-imagenet")

    assert report["source"] == str(tmp_path / "weights" / "resnet18-f37072fd.pth")
    assert report["layout"] == "torchvision/timm ResNet-18 (2D, ImageNet)"
    assert report["reinitialised"] == ["head.fc.bias", "head.fc.weight"]
