"""The embedded demo dataset: deterministic synthetic studies written in real formats.

``write_demo_data(out)`` writes:

- ``classification/<normal|lesion>/p###_s#.png``: 2D chest-like radiographs (64 x 64, 8-bit).
  A *lesion* image has a bright round opacity inside a lung field; a *normal* one does not.
  Two studies per patient; ``classification.csv`` lists them with their ``patient_id``.
- ``segmentation/``: Decathlon layout (``dataset.json``, ``imagesTr/``, ``labelsTr/``), 3D
  MR-like NIfTI volumes (48 x 48 x 32, 0.8 x 0.8 x 1.5 mm) with a lesion mask (label 1).
- ``new_volumes/``: one fresh lesion volume on another grid (oblique direction, 0.7 x 0.7 x 1.9 mm)
  for ``medlens predict`` on a segmentation run; its true mask is in ``new_volumes/truth/``.
- ``dicom/series_001/``: one CT series (64 x 64 x 20, HU, proper geometry tags).
- ``new_dicom/lesion_series/``: one fresh lesion volume as an MR DICOM series (48 x 48 x 32, 0.8 x 0.8 x 1.5 mm)
  for ``medlens predict --dicom`` (SEG / RTSTRUCT / SR answers); its true mask is in ``new_dicom/truth.nii.gz``.
- ``detection/``: 2D smear-like images (96 x 96, 8-bit) with bright round ``cell`` and small dark
  ``spot`` objects, and ``detection.csv``, a box manifest (one row per box, empty coordinates for an
  image without objects). The segmentation lesions are a 3D detection set with ``--boxes-from-masks``.

The findings are visible and learnable: a small CNN separates the classes and a U-Net finds
the lesions. The same seed writes the same pixels.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from medlens.errors import MedlensError
from medlens.io import Image, identity_direction, write_image

MARKER = ".medlens-demo"


def write_demo_data(out: str | Path, *, seed: int = 0, patients: int = 80, volumes: int = 12,
                    smears: int = 80) -> Path:
    """Write the demo dataset into ``out`` (replacing an earlier demo there, nothing else).

    Raises:
        MedlensError: ``out`` exists, is not empty and is not an earlier demo folder.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise MedlensError(f"{out} exists and holds files that are not medlens demo data; choose an empty or new "
                           "folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        rng = np.random.default_rng(seed)
        _write_classification(staging, rng, patients)
        _write_new_studies(staging / "new_studies", np.random.default_rng(seed + 1))
        _write_segmentation(staging / "segmentation", rng, volumes)
        _write_new_volume(staging / "new_volumes", np.random.default_rng(seed + 2))
        _write_dicom(staging / "dicom" / "series_001", rng)
        _write_lesion_series(staging / "new_dicom", np.random.default_rng(seed + 4))
        _write_detection(staging, np.random.default_rng(seed + 3), smears)
        (staging / MARKER).write_text(f"medlens demo data, seed {seed}\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def chest_image(rng: np.random.Generator, lesion: bool, size: int = 64) -> np.ndarray:
    """A chest-radiograph-like image ``(size, size)`` uint8 (rows, columns)."""
    y, x = np.mgrid[0:size, 0:size] / size
    cx, cy = 0.5 + rng.normal(0, 0.02), 0.5 + rng.normal(0, 0.02)
    body = ((x - cx) / 0.42) ** 2 + ((y - cy) / 0.47) ** 2 < 1
    image = np.where(body, 150.0, 20.0)
    lungs = []
    for side in (-1, 1):
        lx, ly = cx + side * 0.17, cy - 0.03
        lung = ((x - lx) / 0.12) ** 2 + ((y - ly) / 0.3) ** 2 < 1
        image[lung] = 65
        lungs.append((lx, ly))
    if lesion:
        lx, ly = lungs[rng.integers(2)]
        bx, by = lx + rng.uniform(-0.05, 0.05), ly + rng.uniform(-0.15, 0.15)
        radius = rng.uniform(0.035, 0.06)
        image += 85 * np.exp(-(((x - bx) ** 2 + (y - by) ** 2) / (2 * radius**2)))
    image += rng.normal(0, 9, image.shape)
    return np.clip(_blur(image), 0, 255).astype(np.uint8)


def _blur(image: np.ndarray) -> np.ndarray:
    padded = np.pad(image, 1, mode="edge")
    return sum(padded[i : i + image.shape[0], j : j + image.shape[1]] for i in range(3) for j in range(3)) / 9


def _write_classification(root: Path, rng: np.random.Generator, patients: int) -> None:
    rows = []
    for p in range(patients):
        label = "lesion" if rng.random() < 0.45 else "normal"
        for s in range(2):
            pixels = chest_image(rng, lesion=label == "lesion")
            rel = Path("classification") / label / f"p{p:03d}_s{s}.png"
            image = Image(pixels.T[None], (0.6, 0.6), (0.0, 0.0), identity_direction(2))
            write_image(image, root / rel)
            rows.append({"image": rel.as_posix(), "label": label, "patient_id": f"P{p:03d}"})
    with open(root / "classification.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "label", "patient_id"])
        writer.writeheader()
        writer.writerows(rows)


def _write_new_studies(folder: Path, rng: np.random.Generator, count: int = 4) -> None:
    """Studies outside the dataset, for trying ``medlens predict``; ``answers.csv`` holds their truth."""
    rows = []
    for k in range(count):
        label = "lesion" if k % 2 == 0 else "normal"
        image = Image(chest_image(rng, lesion=label == "lesion").T[None], (0.6, 0.6), (0.0, 0.0), identity_direction(2))
        write_image(image, folder / f"study_{k + 1:02d}.png")
        rows.append(f"study_{k + 1:02d}.png,{label}")
    (folder / "answers.csv").write_text("image,label\n" + "\n".join(rows) + "\n")


def lesion_volume(rng: np.random.Generator, shape=(48, 48, 32), spacing=(0.8, 0.8, 1.5)):
    """An MR-like volume ``(X, Y, Z)`` float32 and its lesion mask uint8 (1 = lesion)."""
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij"), axis=-1)
    extent = np.array(shape) * np.array(spacing)
    centre = extent / 2 + rng.normal(0, 1.5, 3)
    organ = (((grid - centre) / (extent * np.array([0.35, 0.3, 0.35]))) ** 2).sum(-1) < 1
    lesion_centre = centre + rng.uniform(-0.12, 0.12, 3) * extent
    radius_mm = rng.uniform(4.0, 7.0)
    mask = (np.linalg.norm(grid - lesion_centre, axis=-1) < radius_mm) & organ
    volume = 100 + 200 * organ + 250 * mask + rng.normal(0, 20, shape)
    return volume.astype(np.float32), mask.astype(np.uint8)


def _write_segmentation(root: Path, rng: np.random.Generator, volumes: int) -> None:
    spacing, origin = (0.8, 0.8, 1.5), (-19.2, -19.2, -24.0)
    training = []
    for i in range(volumes):
        volume, mask = lesion_volume(rng, spacing=spacing)
        name = f"lesion_{i:03d}.nii.gz"
        write_image(Image(volume[None], spacing, origin, identity_direction(3)), root / "imagesTr" / name)
        write_image(Image(mask[None], spacing, origin, identity_direction(3)), root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    spec = {"name": "medlens-demo-lesions", "description": "synthetic MR-like volumes with one lesion each",
            "tensorImageSize": "3D", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "lesion"},
            "numTraining": volumes, "numTest": 0, "training": training, "test": []}
    (root / "dataset.json").write_text(json.dumps(spec, indent=2))


def _write_new_volume(folder: Path, rng: np.random.Generator) -> None:
    spacing, angle = (0.7, 0.7, 1.9), np.radians(20)
    volume, mask = lesion_volume(rng, shape=(54, 54, 26), spacing=spacing)
    direction = (np.cos(angle), -np.sin(angle), 0.0, np.sin(angle), np.cos(angle), 0.0, 0.0, 0.0, 1.0)
    origin = (12.5, -40.25, 7.0)
    write_image(Image(volume[None], spacing, origin, direction), folder / "lesion_new.nii.gz")
    write_image(Image(mask[None], spacing, origin, direction), folder / "truth" / "lesion_new.nii.gz")


def _write_lesion_series(folder: Path, rng: np.random.Generator) -> None:
    from medlens.io.dicom_write import write_dicom_series

    spacing, origin = (0.8, 0.8, 1.5), (-19.2, -19.2, -24.0)
    volume, mask = lesion_volume(rng, spacing=spacing)
    write_dicom_series(np.clip(volume, 0, None), folder / "lesion_series", spacing_mm=spacing, origin_mm=origin,
                       modality="MR", patient_id="DEMO002", uid_seed="medlens-demo-lesion", rescale_intercept=0.0,
                       series_description="medlens demo lesion")
    write_image(Image(mask[None], spacing, origin, identity_direction(3)), folder / "truth.nii.gz")


def _write_dicom(folder: Path, rng: np.random.Generator) -> None:
    from medlens.io.dicom_write import write_dicom_series

    shape, spacing = (64, 64, 20), (0.7, 0.7, 2.5)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"), axis=-1)
    r = np.hypot(grid[..., 0] / 0.9, grid[..., 1] / 0.75)
    hu = np.full(shape, -1000.0)
    hu[r < 1] = 40
    hu[(r > 0.88) & (r < 1)] = 700  # ribs
    for side in (-1, 1):
        hu[np.hypot((grid[..., 0] - side * 0.4) / 0.3, grid[..., 1] / 0.5) < 1] = -800
    hu += rng.normal(0, 10, shape)
    write_dicom_series(np.clip(hu, -1024, 3000), folder, spacing_mm=spacing, origin_mm=(-22.4, -22.4, -25.0),
                       patient_id="DEMO001", uid_seed="medlens-demo")


DETECTION_CLASSES = ("cell", "spot")


def smear_image(rng: np.random.Generator, size: int = 96) -> tuple[np.ndarray, list[tuple[float, ...]], list[str]]:
    """A ``(size, size)`` uint8 image (axis 0 = x) with 0-4 objects, their corner boxes and class names.

    ``cell``: a bright disk of radius 9-13 pixels; ``spot``: a dark disk of radius 6-8. Objects do not overlap.
    """
    x, y = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    image = 90 + 12 * _blur(rng.normal(0, 1, (size, size)))
    boxes, labels, centres = [], [], []
    for _ in range(int(rng.integers(0, 5))):
        name = DETECTION_CLASSES[int(rng.random() < 0.4)]
        radius = rng.uniform(9, 13) if name == "cell" else rng.uniform(6, 8)
        cx, cy = rng.uniform(radius + 1, size - radius - 1, 2)
        if any(np.hypot(cx - a, cy - b) < radius + r + 3 for a, b, r in centres):
            continue
        centres.append((cx, cy, radius))
        disk = np.hypot(x - cx, y - cy) <= radius
        image[disk] += rng.uniform(80, 120) if name == "cell" else -rng.uniform(55, 70)
        boxes.append((float(np.floor(cx - radius)), float(np.floor(cy - radius)), float(np.ceil(cx + radius)),
                      float(np.ceil(cy + radius))))
        labels.append(name)
    return np.clip(image, 0, 255).astype(np.uint8), boxes, labels


def _write_detection(root: Path, rng: np.random.Generator, images: int) -> None:
    rows = []
    for i in range(images):
        pixels, boxes, labels = smear_image(rng)
        rel = Path("detection") / f"smear_{i:03d}.png"
        write_image(Image(pixels[None], (1.0, 1.0), (0.0, 0.0), identity_direction(2), spacing_known=False),
                    root / rel)
        common = {"image": rel.as_posix(), "patient_id": f"S{i // 2:03d}"}
        if not boxes:
            rows.append({**common, "x_min": "", "y_min": "", "x_max": "", "y_max": "", "label": ""})
        for box, label in zip(boxes, labels):
            rows.append({**common, **dict(zip(("x_min", "y_min", "x_max", "y_max"), box)), "label": label})
    with open(root / "detection.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "x_min", "y_min", "x_max", "y_max", "label", "patient_id"])
        writer.writeheader()
        writer.writerows(rows)
