"""The deployable bundle: one folder (or zip) holding the model and everything needed to use it.

    model.bundle/
      card.json           the model card: task, classes, input, preprocessing, calibration, data, metrics, limits
      plan.yaml           the run's resolved configuration: the whole preprocessing pipeline, no code defaults
      calibration.json    temperature and decision threshold (classification)
      postprocess.json    keep-largest-component per class (segmentation)
      ood_guard.safetensors  the out-of-distribution guard (classification; absent for runs made before it)
      clinical.json       the clinical encoder fitted on the training cases (a model with clinical inputs)
      model.safetensors   the weights (a tensor format: loading it never runs code)
      model.ts, model.onnx   TorchScript / ONNX exports, when asked for
      checksums.json      SHA-256 of every other file; a bundle that does not match is refused

``export_bundle(run, out)`` writes it from a finished run (into a staging folder, moved into place
at the end, so a failed export leaves nothing behind); ``open_bundle(path)`` verifies the checksums
before anything is read.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from medlens._files import read_json, write_json_atomic
from medlens.errors import ConfigError, MedlensError

Format = Literal["torchscript", "onnx", "both", "none"]
CHECKSUMS = "checksums.json"
WEIGHTS = "model.safetensors"
MAX_BUNDLE_ZIP_BYTES = 4 << 30  # an archive that unpacks to more is not a medlens bundle
CARD_VERSION = 1  # card.json's medlens_card: the layout of a bundle this medlens writes and reads


class BundleError(MedlensError):
    """A bundle is incomplete, altered (checksum mismatch) or not a medlens bundle."""


@dataclass(frozen=True)
class Bundle:
    """A verified bundle folder and its model card."""

    root: Path
    card: dict

    def file(self, name: str) -> Path:
        return self.root / name

    def read_json(self, name: str, default: dict | None = None) -> dict | None:
        return read_json(self.root / name, default)


def export_bundle(run_path, out: Path, *, formats: Format = "both", log=print) -> Path:
    """Write the bundle of the finished run at ``run_path`` to ``out`` (a folder, or a ``.zip`` archive).

    Raises:
        ConfigError: the run did not finish, ``out`` already exists, an unknown format, or ``run_path`` is an
            evaluation folder of other data (``medlens evaluate RUN --data``).
    """
    from medlens.runs import open_run

    out = Path(out)
    if out.exists():
        raise ConfigError(f"{out} already exists; choose another --out (a bundle is never overwritten)")
    if formats not in ("torchscript", "onnx", "both", "none"):
        raise ConfigError(f"--format {formats}: choose torchscript, onnx, both or none")
    run = open_run(run_path)
    if source := (run.read_info().get("external") or {}).get("run"):  # its card describes the other data
        raise ConfigError(f"{run.root} is an evaluation of {source} on other data (medlens evaluate --data); export "
                          f"the run itself: medlens export {source}")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        folder = staging / "bundle"
        folder.mkdir()
        _write_contents(run, folder, formats, log)
        if out.suffix == ".zip":
            _zip_folder(folder, staging / "bundle.zip")
            (staging / "bundle.zip").rename(out)
        else:
            folder.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"bundle written to {out}")
    return out


def _write_contents(run, folder: Path, formats: Format, log) -> None:
    from safetensors.torch import save_model

    from medlens.deploy.card import model_card
    from medlens.tasks import load_model

    config = run.read_config()
    model = load_model(run, config)
    save_model(model, str(folder / WEIGHTS))  # de-duplicates tensors a network shares (DynUNet's skip layers)
    shutil.copyfile(run.plan, folder / "plan.yaml")
    for source in (run.calibration, run.postprocess, run.ood_guard, run.clinical):
        if source.exists():
            shutil.copyfile(source, folder / source.name)
    _write_exports(model, config, folder, formats, log)
    write_json_atomic(folder / "card.json", model_card(run, config, sha256(folder / WEIGHTS)))
    sums = {p.name: sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}
    write_json_atomic(folder / CHECKSUMS, {"algorithm": "sha256", "files": sums})


def _write_exports(model, config, folder: Path, formats: Format, log) -> None:
    if formats == "none":
        return
    from medlens.data.views import input_channels
    from medlens.deploy.export import export_onnx, export_torchscript
    from medlens.tasks import task_for

    model = task_for(config).exportable(model)
    if _drops_clinical(model, config):
        log(f"not exported ({formats}): an ensemble of {config.model.members} networks with clinical inputs exports "
            "with the image input only, and would ignore the clinical values; the bundle runs through PyTorch")
        return
    example = torch.zeros(1, input_channels(config.data), *config.data.input_size)  # V * C for views encoded apart
    if formats in ("torchscript", "both"):
        export_torchscript(model, example, folder / "model.ts")
        log("exported TorchScript: model.ts")
    if formats in ("onnx", "both"):
        export_onnx(model, example, folder / "model.onnx")
        log("exported ONNX: model.onnx")


def _drops_clinical(model, config) -> bool:
    """Whether an export of ``model`` would lose the plan's clinical inputs: the exporter gives a network a clinical
    input from its ``clinical_absent``, which a fusion network has and an :class:`~medlens.models.Ensemble` lacks."""
    from medlens.tasks.classification.inputs import has_clinical

    absent = getattr(model, "clinical_absent", None)
    return has_clinical(config.clinical) and not (isinstance(absent, torch.Tensor) and absent.numel() > 0)


def _zip_folder(folder: Path, target: Path) -> None:
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, arcname=path.name)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_bundle(path) -> bool:
    """A folder with ``checksums.json``, or a ``.zip`` file (checked when opened)."""
    path = Path(path)
    return (path / CHECKSUMS).is_file() or (path.is_file() and path.suffix == ".zip")


def open_bundle(path, *, unpack_to: Path | None = None) -> Bundle:
    """A bundle folder (or ``.zip``, unpacked into ``unpack_to``), every file checked against checksums.json.

    Raises:
        BundleError: missing checksums, a missing, extra or altered file, or an unsafe archive.
    """
    root = Path(path)
    if not root.exists():
        raise BundleError(f"{root}: no such bundle; make one with `medlens export RUN --out {root}`")
    if root.is_file():
        if unpack_to is None:
            raise BundleError(f"{root}: a zipped bundle needs a folder to unpack into")
        root = _unpack(root, Path(unpack_to))
    listed = root / CHECKSUMS
    if not listed.is_file():
        raise BundleError(f"{root}: no {CHECKSUMS}; this is not a medlens bundle (make one with "
                          "`medlens export RUN --out model.bundle`)")
    expected = json.loads(listed.read_text(encoding="utf-8")).get("files", {})
    present = {p.name for p in root.iterdir() if p.is_file() and p.name != CHECKSUMS}
    if present != set(expected):
        raise BundleError(f"{root}: files {sorted(present ^ set(expected))} are missing or not listed in "
                          f"{CHECKSUMS}; the bundle was altered, so it is refused: export it again")
    for name, digest in expected.items():
        if sha256(root / name) != digest:
            raise BundleError(f"{root}: {name} does not match its checksum; the bundle was altered or damaged, "
                              "so it is refused: export it again from the run")
    card = json.loads((root / "card.json").read_text(encoding="utf-8"))
    version = card.get("medlens_card", 1)
    if not isinstance(version, int) or version > CARD_VERSION:
        raise BundleError(f"{root}: bundle version {version!r} (card.json medlens_card) is newer than this medlens "
                          f"reads (version {CARD_VERSION}); upgrade medlens to serve it")
    return Bundle(root, card)


def _unpack(archive: Path, target: Path) -> Path:
    """Flat, size-capped extraction: a bundle zip holds plain files and no folders."""
    if not zipfile.is_zipfile(archive):
        raise BundleError(f"{archive}: neither a bundle folder nor a zip archive of one")
    with zipfile.ZipFile(archive) as z:
        members = z.infolist()
        if sum(m.file_size for m in members) > MAX_BUNDLE_ZIP_BYTES:
            raise BundleError(f"{archive}: unpacks to more than {MAX_BUNDLE_ZIP_BYTES >> 30} GiB; not a medlens bundle")
        for m in members:
            if m.is_dir() or "/" in m.filename or "\\" in m.filename or m.filename.startswith("."):
                raise BundleError(f"{archive}: entry {m.filename!r} is not a plain bundle file; refused")
        target.mkdir(parents=True, exist_ok=True)
        for m in members:
            (target / m.filename).write_bytes(z.read(m))
    return target


def load_weights(model: torch.nn.Module, bundle: Bundle) -> torch.nn.Module:
    """Fill ``model`` with the bundle's safetensors weights (no unpickling); every tensor must match.

    Raises:
        BundleError: the weights do not fit the network the plan describes.
    """
    from safetensors.torch import load_model

    try:
        load_model(model, str(bundle.file(WEIGHTS)), strict=True, device="cpu")
    except RuntimeError as exc:
        raise BundleError(f"{bundle.root}: {WEIGHTS} does not fit the network in plan.yaml "
                          f"({str(exc).splitlines()[0][:200]}); export the bundle again") from None
    return model
