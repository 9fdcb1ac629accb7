"""Synthetic-data factories shared by every test: tiny images written to ``tmp_path``.

Each image is written with the format's own library (SimpleITK, Pillow, NumPy, pydicom through
``medlens.io.dicom_write``), never with medlens' writer, so the readers are checked against
what another program wrote. A factory returns a :class:`Written` record saying what a reader
should give back: the array in medlens' ``(C, X, Y[, Z])`` order and the geometry.

>>> def test_nifti(make_image):
...     written = make_image("nii.gz")           # float32 volume with an oblique direction
...     image = read_image(written.path)
...     np.testing.assert_array_equal(image.array, written.array)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest


@dataclass(frozen=True)
class Written:
    """What was written, in the form a medlens reader should return it.

    Attributes:
        kind: the factory kind that wrote it (``"nii.gz"``, ``"png16"``, ``"dicom_series"``...).
        path: the file, or the folder of a DICOM series.
        array: expected ``Image.array``, ``(C, X, Y)`` or ``(C, X, Y, Z)``.
        spacing_mm, origin_mm, direction: expected geometry (direction flattened row-major).
        spacing_known: whether the format stores a spacing.
        dtype: expected array dtype; ``None`` where the reading library picks it (DICOM after rescale).
        value_atol: tolerance on voxel values (lossy JPEG), 0 for exact formats.
        geometry_atol: tolerance on geometry (NIfTI stores it as float32).
        files: the slice files of a DICOM series, in slice order.
    """

    kind: str
    path: Path
    array: np.ndarray
    spacing_mm: tuple[float, ...]
    origin_mm: tuple[float, ...]
    direction: tuple[float, ...]
    spacing_known: bool = True
    dtype: np.dtype | None = None
    value_atol: float = 0.0
    geometry_atol: float = 0.0
    files: tuple[Path, ...] = ()


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """An orthonormal 3x3 direction matrix: rotations about x, then y, then z (radians)."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def rotation_2d(angle: float) -> np.ndarray:
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


IDENTITY_3D = tuple(np.eye(3).ravel())
IDENTITY_2D = tuple(np.eye(2).ravel())
FLIP_XY_3D = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # LPS <-> RAS, common in NRRD/NIfTI
OBLIQUE_3D = tuple(rotation(0.3, -0.2, 0.5).ravel())
OBLIQUE_3D_B = tuple(rotation(-0.15, 0.4, -0.25).ravel())
ROTATED_2D = tuple(rotation_2d(0.4).ravel())


def random_array(shape: tuple[int, ...], dtype, seed: int = 0, low: float | None = None,
                 high: float | None = None) -> np.ndarray:
    """Reproducible values spread over the dtype's range, so swapped axes or a lost sign show."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        low = -1000.0 if low is None else low
        high = 1000.0 if high is None else high
        return rng.uniform(low, high, size=shape).astype(dtype)
    info = np.iinfo(dtype)
    low = info.min if low is None else low
    high = info.max if high is None else high
    return rng.integers(low, high, size=shape, endpoint=True).astype(dtype)


def to_numpy_order(array: np.ndarray) -> np.ndarray:
    """``(C, X, Y[, Z])`` -> NumPy/SimpleITK order: ``(Y, X)``, ``(Z, Y, X)``, or channels last."""
    spatial_reversed = tuple(range(array.ndim - 1, 0, -1))
    reversed_axes = array.transpose(0, *spatial_reversed)
    return np.ascontiguousarray(reversed_axes[0] if array.shape[0] == 1 else np.moveaxis(reversed_axes, 0, -1))


def to_medlens_npy_layout(array: np.ndarray) -> np.ndarray:
    """``(C, X, Y[, Z])`` -> the layout medlens reads from NumPy files: ``(Y, X)``, ``(Y, X, 3)``,
    ``(Z, Y, X)`` or ``(C, Z, Y, X)`` (see ``medlens.io.arrays``)."""
    if array.ndim == 4 and array.shape[0] > 1:
        return np.ascontiguousarray(array.transpose(0, 3, 2, 1))
    return to_numpy_order(array)


def write_sitk(path: Path, array: np.ndarray, spacing_mm, origin_mm, direction, *, compress: bool = False) -> Path:
    """Write ``(C, X, Y[, Z])`` with SimpleITK (vector pixels when C > 1)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(to_numpy_order(array), isVector=array.shape[0] > 1)
    image.SetSpacing(tuple(float(s) for s in spacing_mm))
    image.SetOrigin(tuple(float(o) for o in origin_mm))
    image.SetDirection(tuple(float(d) for d in direction))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=compress)
    return path


def write_pillow(path: Path, array: np.ndarray, **save_kwargs) -> Path:
    """Write ``(1|3, X, Y)`` with Pillow; the format follows the suffix unless ``format=`` is given."""
    from PIL import Image as PILImage

    pixels = to_numpy_order(array)  # (H, W) or (H, W, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(pixels).save(path, **save_kwargs)
    return path


class ImageFactory:
    """Writes synthetic images under one folder; ``factory(kind)`` writes a ready-made example.

    The lower-level methods take any array in medlens' ``(C, X, Y[, Z])`` order and return a
    :class:`Written`; tests that need a particular image (a mask, a NaN, a long series) use them.
    """

    # The helpers, reachable from the fixture (test modules should not import conftest).
    random_array = staticmethod(random_array)
    rotation = staticmethod(rotation)
    IDENTITY_2D, IDENTITY_3D, FLIP_XY_3D = IDENTITY_2D, IDENTITY_3D, FLIP_XY_3D
    OBLIQUE_3D, OBLIQUE_3D_B, ROTATED_2D = OBLIQUE_3D, OBLIQUE_3D_B, ROTATED_2D

    def __init__(self, root: Path):
        self.root = Path(root)
        self._builders = {
            "nii": self._nii, "nii.gz": self._nii_gz, "mha": self._mha, "mha_vector": self._mha_vector,
            "mhd": self._mhd, "nrrd": self._nrrd, "nii_2d": self._nii_2d,
            "png8": self._png8, "png16": self._png16, "png_rgb": self._png_rgb, "jpeg": self._jpeg,
            "tiff": self._tiff, "tiff_float": self._tiff_float, "bmp": self._bmp, "gif": self._gif,
            "npy": self._npy, "npz": self._npz, "dicom_series": self._dicom_series, "dicom_file": self._dicom_file,
        }

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self._builders)

    def __call__(self, kind: str, name: str | None = None) -> Written:
        if kind not in self._builders:
            raise KeyError(f"unknown image kind {kind!r}; known: {', '.join(self._builders)}")
        return self._builders[kind](name or f"{kind.replace('.', '_')}_image")

    def in_memory(self, name: str):
        """A :class:`medlens.io.Image` not yet on disk, for writer tests.

        ``oblique_volume`` int16 (1, 5, 6, 7); ``vector_volume`` float32 (3, 5, 6, 7), both oblique;
        ``rotated_slice`` uint8 (1, 5, 6) and ``rgb_slice`` uint8 (3, 5, 6), both with a rotated 2D direction.
        """
        from medlens.io import Image

        images = {
            "oblique_volume": lambda: Image(random_array((1, 5, 6, 7), np.int16, seed=20), (0.7, 0.9, 2.5),
                                            (-12.5, 30.25, 7.0), OBLIQUE_3D),
            "vector_volume": lambda: Image(random_array((3, 5, 6, 7), np.float32, seed=21), (0.5, 0.75, 3.0),
                                           (100.0, -20.0, 0.125), OBLIQUE_3D_B),
            "rotated_slice": lambda: Image(random_array((1, 5, 6), np.uint8, seed=22), (0.3, 0.45), (-3.5, 8.25),
                                           ROTATED_2D),
            "rgb_slice": lambda: Image(random_array((3, 5, 6), np.uint8, seed=23), (0.3, 0.45), (-3.5, 8.25),
                                       ROTATED_2D),
        }
        if name not in images:
            raise KeyError(f"unknown in-memory image {name!r}; known: {', '.join(images)}")
        return images[name]()

    # --- general writers -------------------------------------------------------------------------

    def itk(self, filename: str, array: np.ndarray, *, spacing_mm, origin_mm, direction, kind: str = "itk",
            compress: bool = False) -> Written:
        path = write_sitk(self.root / filename, array, spacing_mm, origin_mm, direction, compress=compress)
        nifti = filename.endswith((".nii", ".nii.gz"))
        return Written(kind, path, array, tuple(spacing_mm), tuple(origin_mm), tuple(direction), dtype=array.dtype,
                       geometry_atol=1e-6 if nifti else 1e-12)

    def raster(self, filename: str, array: np.ndarray, *, kind: str = "raster", value_atol: float = 0.0,
               **save_kwargs) -> Written:
        path = write_pillow(self.root / filename, array, **save_kwargs)
        return Written(kind, path, array, (1.0, 1.0), (0.0, 0.0), IDENTITY_2D, spacing_known=False,
                       dtype=array.dtype, value_atol=value_atol)

    def npy(self, filename: str, array: np.ndarray, *, kind: str = "npy") -> Written:
        """Save ``(C, X, Y[, Z])`` in the row-major layout medlens reads back (:func:`to_medlens_npy_layout`)."""
        path = self.root / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, to_medlens_npy_layout(array))
        return self._unknown_geometry(kind, path, array)

    def npz(self, filename: str, array: np.ndarray, *, key: str = "image", kind: str = "npz", **extra) -> Written:
        path = self.root / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **{key: to_medlens_npy_layout(array)}, **extra)
        return self._unknown_geometry(kind, path, array)

    def dicom_series(self, folder: str, volume_xyz: np.ndarray, *, spacing_mm=(0.7, 0.8, 2.5),
                     origin_mm=(-10.0, 20.0, 30.0), kind: str = "dicom_series", **kwargs) -> Written:
        """A DICOM series (one file per slice) of ``volume_xyz`` in output units (HU for CT)."""
        from medlens.io.dicom_write import write_dicom_series

        files = write_dicom_series(volume_xyz, self.root / folder, spacing_mm=spacing_mm, origin_mm=origin_mm, **kwargs)
        return Written(kind, self.root / folder, np.asarray(volume_xyz)[None], tuple(spacing_mm), tuple(origin_mm),
                       IDENTITY_3D, files=tuple(files))

    # --- ready-made examples -------------------------------------------------------------------

    def _nii(self, name: str) -> Written:
        array = random_array((1, 6, 5, 4), np.int16, seed=1)
        return self.itk(f"{name}.nii", array, kind="nii", spacing_mm=(0.8, 0.9, 2.5), origin_mm=(-12.5, 30.25, 7.0),
                        direction=FLIP_XY_3D)

    def _nii_gz(self, name: str) -> Written:
        array = random_array((1, 6, 5, 4), np.float32, seed=2)
        return self.itk(f"{name}.nii.gz", array, kind="nii.gz", spacing_mm=(0.7, 0.9, 2.5),
                        origin_mm=(-120.5, 33.25, -7.0), direction=OBLIQUE_3D, compress=True)

    def _mha(self, name: str) -> Written:
        array = random_array((1, 6, 5, 4), np.uint16, seed=3)
        return self.itk(f"{name}.mha", array, kind="mha", spacing_mm=(0.6, 1.1, 3.3), origin_mm=(5.5, -60.0, 12.125),
                        direction=OBLIQUE_3D_B, compress=True)

    def _mha_vector(self, name: str) -> Written:
        array = random_array((3, 6, 5, 4), np.float32, seed=4)
        return self.itk(f"{name}.mha", array, kind="mha_vector", spacing_mm=(0.5, 0.75, 2.0),
                        origin_mm=(1.0, 2.0, 3.0), direction=OBLIQUE_3D)

    def _mhd(self, name: str) -> Written:
        array = random_array((1, 6, 5, 4), np.uint8, seed=5)
        return self.itk(f"{name}.mhd", array, kind="mhd", spacing_mm=(1.5, 1.25, 3.0), origin_mm=(100.0, -50.0, 0.5),
                        direction=IDENTITY_3D)

    def _nrrd(self, name: str) -> Written:
        array = random_array((1, 6, 5, 4), np.int16, seed=6)
        return self.itk(f"{name}.nrrd", array, kind="nrrd", spacing_mm=(0.78125, 0.78125, 6.5),
                        origin_mm=(-99.6, 99.6, -78.0), direction=FLIP_XY_3D, compress=True)

    def _nii_2d(self, name: str) -> Written:
        array = random_array((1, 6, 4), np.float32, seed=7)
        return self.itk(f"{name}.nii.gz", array, kind="nii_2d", spacing_mm=(0.3, 0.45), origin_mm=(-3.5, 8.25),
                        direction=ROTATED_2D, compress=True)

    def _png8(self, name: str) -> Written:
        return self.raster(f"{name}.png", random_array((1, 6, 4), np.uint8, seed=8), kind="png8")

    def _png16(self, name: str) -> Written:
        return self.raster(f"{name}.png", random_array((1, 6, 4), np.uint16, seed=9, low=256), kind="png16")

    def _png_rgb(self, name: str) -> Written:
        return self.raster(f"{name}.png", random_array((3, 6, 4), np.uint8, seed=10), kind="png_rgb")

    def _jpeg(self, name: str) -> Written:
        # JPEG is lossy; 8x8 blocks of one grey level (its DCT block size) survive almost exactly.
        blocks = np.array([[30, 90, 150], [200, 60, 120]], dtype=np.uint8)  # (Y blocks, X blocks)
        array = np.kron(blocks, np.ones((8, 8), dtype=np.uint8)).T[None]  # (1, X=24, Y=16)
        return self.raster(f"{name}.jpg", array, kind="jpeg", value_atol=2, quality=100)

    def _tiff(self, name: str) -> Written:
        return self.raster(f"{name}.tif", random_array((3, 6, 4), np.uint8, seed=11), kind="tiff")

    def _tiff_float(self, name: str) -> Written:
        return self.raster(f"{name}.tif", random_array((1, 6, 4), np.float32, seed=12), kind="tiff_float")

    def _bmp(self, name: str) -> Written:
        return self.raster(f"{name}.bmp", random_array((1, 6, 4), np.uint8, seed=13), kind="bmp")

    def _gif(self, name: str) -> Written:
        from PIL import Image as PILImage

        array = random_array((1, 6, 4), np.uint8, seed=14)
        path = self.root / f"{name}.gif"
        path.parent.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(to_numpy_order(array)).convert("P").save(path)  # grey palette, like DRIVE masks
        return Written("gif", path, array, (1.0, 1.0), (0.0, 0.0), IDENTITY_2D, spacing_known=False, dtype=array.dtype)

    def _npy(self, name: str) -> Written:
        return self.npy(f"{name}.npy", random_array((1, 6, 5, 4), np.float32, seed=15))

    def _npz(self, name: str) -> Written:
        return self.npz(f"{name}.npz", random_array((1, 6, 4), np.uint8, seed=16), label=np.array(3))

    def _dicom_series(self, name: str) -> Written:
        volume = random_array((6, 5, 8), np.int16, seed=17, low=-1024, high=3000)
        volume[0, 0, 0] = -1000  # air, in HU
        return self.dicom_series(name, volume, patient_id="SYNTH-PATIENT-0042")

    def _dicom_file(self, name: str) -> Written:
        slice_xy = random_array((6, 5, 1), np.uint16, seed=18, high=4095)
        series = self.dicom_series(name, slice_xy, spacing_mm=(0.7, 0.8, 3.0), origin_mm=(-10.0, 20.0, 30.0),
                                   modality="MR", rescale_intercept=0.0, patient_id="SYNTH-PATIENT-0042",
                                   uid_seed="single-file")
        return Written("dicom_file", series.files[0], slice_xy[..., 0][None], (0.7, 0.8), (-10.0, 20.0), IDENTITY_2D,
                       dtype=np.dtype(np.uint16), files=series.files)

    @staticmethod
    def _unknown_geometry(kind: str, path: Path, array: np.ndarray) -> Written:
        dims = array.ndim - 1
        return Written(kind, path, array, (1.0,) * dims, (0.0,) * dims, tuple(np.eye(dims).ravel()),
                       spacing_known=False, dtype=array.dtype)


@pytest.fixture
def make_image(tmp_path: Path) -> ImageFactory:
    """Factory writing synthetic images under ``tmp_path / "images"``; see :class:`ImageFactory`."""
    return ImageFactory(tmp_path / "images")


def blob_volume(rng: np.random.Generator, lesion: bool, direction=None, spacing=(1.0, 1.0, 2.0)):
    """A 20 x 20 x 12 ``Image`` of noise around 100; a lesion adds a bright ball at a random place."""
    from medlens.io import Image

    array = rng.normal(100, 10, (20, 20, 12)).astype(np.float32)
    if lesion:
        cx, cy, cz = rng.integers(5, 15), rng.integers(5, 15), rng.integers(3, 9)
        x, y, z = np.mgrid[0:20, 0:20, 0:12]
        array += 120 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (2 * (z - cz)) ** 2) / 8)
    return Image(array[None], spacing, (10.0, -5.0, 3.0), direction or tuple(np.eye(3).ravel()))


@pytest.fixture(scope="session")
def make_blob_volume():
    """``make_blob_volume(rng, lesion, direction=None, spacing=(1, 1, 2))``: see :func:`blob_volume`."""
    return blob_volume


@pytest.fixture(scope="session")
def blob_run_3d(tmp_path_factory) -> Path:
    """A short 3D classification run (class folders of NIfTI volumes: normal / lesion), trained once."""
    from medlens.cli import main
    from medlens.io import write_image

    root = tmp_path_factory.mktemp("blob3d")
    rng = np.random.default_rng(0)
    for i in range(48):
        label = ("normal", "lesion")[i % 2]
        write_image(blob_volume(rng, label == "lesion"), root / "data" / label / f"case_{i:02d}.nii.gz")
    out = root / "run"
    assert main(["train", str(root / "data"), "--out", str(out), "--set", "train.max_epochs=3", "--set",
                 "train.patience=50", "--no-progress"]) == 0
    return out


# ---- the demo data and the demo runs: made once per session, shared by every test that reads them ---------

#: fixtures that train (or stand on a trained model): a test using one is end-to-end (`e2e`), out of `make check`
TRAINED_FIXTURES = {"cls_run", "seg_run", "seg_bundle", "det_run", "det_bundle", "blob_run_3d", "blob_model",
                    "kill_and_resume", "predictor", "fused_run"}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if TRAINED_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


#: the default plan (an ensemble on the demo data), cut to 3 epochs
CLS_FAST = ("--set", "train.max_epochs=3", "--set", "train.patience=50", "--no-progress")
#: the default segmentation plan, cut to 2 epochs of 60 patch batches (enough for Dice >= 0.8 on the demo lesions)
SEG_FAST = ("--set", "train.max_epochs=2", "--set", "segment.iterations_per_epoch=60", "--set", "train.patience=50",
            "--no-progress")


#: the default detection plan on the demo smears, cut to 10 epochs (mAP@0.5 about 0.9 on their test split)
DET_FAST = ("--set", "train.max_epochs=10", "--set", "train.patience=50", "--no-progress")


@dataclass(frozen=True)
class DemoRun:
    """A run trained and evaluated once per session. Tests read it and never change it: one that needs to
    change a run copies it first (``shutil.copytree(run.root, tmp_path / ...)``).

    Attributes:
        root: the run folder. train_out / eval_out: what ``medlens train`` / ``medlens evaluate`` printed.
        report_after_train / markdown_after_train: ``report.html`` / ``report.md`` as training left them.
    """

    root: Path
    train_out: str
    report_after_train: str
    markdown_after_train: str
    eval_out: str


def medlens_in_process(*argv) -> str:
    """``medlens ARGV`` in this process; what it printed (the test fails on a non-zero exit)."""
    import contextlib
    import io

    from medlens.cli import main

    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main([str(a) for a in argv]) == 0, printed.getvalue()[-2000:]
    return printed.getvalue()


def train_then_evaluate(data: Path, out: Path, train: tuple, evaluate: tuple) -> DemoRun:
    train_out = medlens_in_process("train", data, "--out", out, *train)
    html, md = (out / "report.html").read_text(), (out / "report.md").read_text()
    return DemoRun(out, train_out, html, md, medlens_in_process("evaluate", out, *evaluate))


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The demo dataset (seed 0), written once; tests must not modify it."""
    from medlens.data.synthetic import write_demo_data

    return write_demo_data(tmp_path_factory.mktemp("demo") / "demo")


@pytest.fixture(scope="session")
def cls_run(tmp_path_factory, demo_dir) -> DemoRun:
    """The demo classifier: the default plan (an ensemble) for 3 epochs, evaluated with 50 bootstrap resamples."""
    return train_then_evaluate(demo_dir / "classification.csv", tmp_path_factory.mktemp("cls") / "run", CLS_FAST,
                               ("--bootstrap", "50"))


@pytest.fixture(scope="session")
def seg_run(tmp_path_factory, demo_dir) -> DemoRun:
    """The demo segmenter (3D lesions: 7 train, 2 val, 3 test volumes), evaluated with its masks saved."""
    return train_then_evaluate(demo_dir / "segmentation", tmp_path_factory.mktemp("seg") / "run", SEG_FAST,
                               ("--bootstrap", "200", "--save-masks"))


@pytest.fixture(scope="session")
def seg_bundle(seg_run, tmp_path_factory) -> Path:
    """The demo segmenter exported as a bundle (no TorchScript / ONNX: segmentation runs through PyTorch)."""
    from medlens.deploy import export_bundle

    return export_bundle(seg_run.root, tmp_path_factory.mktemp("seg-bundle") / "seg.bundle", formats="none",
                         log=lambda m: None)


@pytest.fixture(scope="session")
def det_run(tmp_path_factory, demo_dir) -> DemoRun:
    """The demo detector (2D smears with cells and spots, a CSV box manifest), evaluated with 200 resamples."""
    return train_then_evaluate(demo_dir / "detection.csv", tmp_path_factory.mktemp("det") / "run", DET_FAST,
                               ("--bootstrap", "200"))


@pytest.fixture(scope="session")
def det_bundle(det_run, tmp_path_factory) -> Path:
    """The demo detector as a bundle with its TorchScript and ONNX heads (parity checked on export)."""
    from medlens.deploy import export_bundle

    return export_bundle(det_run.root, tmp_path_factory.mktemp("det-bundle") / "det.bundle", formats="both",
                         log=lambda m: None)


@pytest.fixture
def cli(capsys):
    """``cli("inspect", DATA, ...)`` -> namespace(rc, out, err): ``medlens ARGV`` run in this process."""
    from types import SimpleNamespace

    from medlens.cli import main

    def run(*argv) -> SimpleNamespace:
        rc = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return SimpleNamespace(rc=rc, out=captured.out, err=captured.err)

    return run


@pytest.fixture(scope="session")
def playwright_driver():
    """One playwright driver for the session (tests/chromium.py); skips when chromium is missing."""
    from tests.chromium import driver

    with driver() as playwright:
        yield playwright


@pytest.fixture(scope="session")
def browser(playwright_driver):
    """Headless Debian chromium (never `playwright install`), WebGL off."""
    from tests.chromium import QUIET_ARGS, launch

    with launch(playwright_driver, ["--disable-gpu", *QUIET_ARGS]) as launched:
        yield launched


@pytest.fixture(scope="session")
def gl_browser(playwright_driver):
    """Headless chromium with WebGL2 on SwiftShader, for the 3D viewer (NiiVue)."""
    from tests.chromium import GL_ARGS, launch

    with launch(playwright_driver, GL_ARGS) as launched:
        yield launched


@pytest.fixture
def open_watched(browser):
    """``open_watched(url, allowed=(prefixes...), viewport=(w, h))`` -> (page, errors): the page loaded, and
    every console error, page error and request to an address outside ``allowed`` it raised."""
    from tests.chromium import open_page

    def open_watched_page(url: str, allowed: tuple[str, ...], viewport=(1200, 820)):
        return open_page(browser, url, allowed, viewport)

    return open_watched_page

# ---- a tiny fused run (two views and two clinical columns), shared by the deploy and CLI tests of issue 16 --------

FUSED_VIEWS = ("axial", "coronal")
def write_cases(root: Path, n: int = 40) -> Path:
    """``root/cases.csv``: ``subject, image:axial, image:coronal, Age, M/F, label``; the dementia cases have a bright
    square in both views, so the views carry the label."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        label = i % 2
        row = {"subject": f"s{i:02d}"}
        for v, view in enumerate(FUSED_VIEWS):
            pixels = rng.integers(0, 80, (16, 16)).astype(np.uint8)
            if label:
                pixels[4:12, 4:12] += 120 if v == 0 else 60
            (root / view).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / view / f"s{i:02d}.png")
            row[f"image:{view}"] = f"{view}/s{i:02d}.png"
        row.update({"Age": str(60 + int(rng.integers(0, 20))), "M/F": "FM"[int(rng.integers(0, 2))],
                    "label": ["normal", "dementia"][label]})
        rows.append(row)
    import csv

    with open(root / "cases.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root / "cases.csv"


#: a fused run cut to two epochs of one small network (Age in years, for the card and the form)
FUSED_TRAIN = ("--set", "train.max_epochs=2", "--set", "train.patience=50", "--set", "model.name=seedcnn_2d",
               "--set", "model.members=1", "--set", "clinical.units=[Age=years]", "--no-progress")


@pytest.fixture(scope="session")
def fused_cases(tmp_path_factory) -> Path:
    """``cases.csv`` of :func:`write_cases` (40 cases) in a session folder."""
    return write_cases(tmp_path_factory.mktemp("mm-data"))


@pytest.fixture(scope="session")
def fused_run(fused_cases, tmp_path_factory) -> Path:
    """A fused classification run on :func:`fused_cases`, trained once per session."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # its own small network only: left at 1, every later test in the session ran on one
    try:
        out = tmp_path_factory.mktemp("mm-run") / "run"
        medlens_in_process("train", fused_cases, "--out", out, *FUSED_TRAIN)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of many small networks: on a shared 2-core machine two OpenMP threads that
    spin at every barrier can make a forward/backward 50x slower as soon as other processes are busy."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
