"""Read throughput of medlens.io.read_image against SimpleITK called directly on the same files.

    python benchmarks/io.py [--data-dir DIR] [--repeats N] [--synthetic] [--profile]

Two datasets, each read in full per timed pass:
  * NIfTI: every file of DATA/seg3d/Task04_Hippocampus/imagesTr (260 cases);
    SimpleITK path: sitk.ReadImage + sitk.GetArrayFromImage.
  * DICOM: the 5 series folders of DATA/dicom/brain_tumor_progression_PGBM-003 (one case per series);
    SimpleITK path: ImageSeriesReader.GetGDCMSeriesFileNames(folder) + Execute + GetArrayFromImage.

Each path is warmed up once (which also checks that both return the same pixels), then timed
``--repeats`` times with the two paths interleaved (A B, B A, ...) to spread drift and cache
effects evenly. The ratio is medlens' best time over SimpleITK's best time; the target is <= 1.10.
``--synthetic`` writes a NIfTI folder and DICOM series of similar size to a temporary folder, so the
benchmark runs without the shared data. Exit status: 0 all PASS; 1 a FAIL, or the two paths disagree
on the pixels; 2 data not found.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medlens.io import read_image

REPO = Path(__file__).resolve().parents[1]
NIFTI_SUBDIR = "seg3d/Task04_Hippocampus/imagesTr"
DICOM_SUBDIR = "dicom/brain_tumor_progression_PGBM-003"
TARGET_RATIO = 1.10


@dataclass
class Dataset:
    name: str
    cases: list[Path]
    read_sitk: Callable[[Path], np.ndarray]


def sitk_read_file(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def sitk_read_series(folder: Path) -> np.ndarray:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute())


def medlens_read(path: Path) -> np.ndarray:
    return read_image(path).array


def default_data_dir() -> Path:
    return Path(os.environ.get("MEDLENS_DATA_DIR") or REPO.parent / "shared" / "datasets")


def shared_datasets(data_dir: Path) -> list[Dataset]:
    """The two default datasets; exits with status 2, saying where it looked, when they are missing."""
    nifti_dir, dicom_dir = data_dir / NIFTI_SUBDIR, data_dir / DICOM_SUBDIR
    missing = [p for p in (nifti_dir, dicom_dir) if not p.is_dir()]
    if missing:
        looked = "\n  ".join(str(p) for p in missing)
        print(f"benchmarks/io.py: data not found; looked for:\n  {looked}\n"
              "Pass --data-dir DIR (or set MEDLENS_DATA_DIR), or run with --synthetic.", file=sys.stderr)
        sys.exit(2)
    nifti = sorted(nifti_dir.glob("*.nii.gz"))
    series = sorted(p for p in dicom_dir.iterdir() if p.is_dir())
    return [Dataset(f"NIfTI {NIFTI_SUBDIR}", nifti, sitk_read_file),
            Dataset(f"DICOM {DICOM_SUBDIR}", series, sitk_read_series)]


def synthetic_datasets(root: Path, nifti_cases: int = 100, dicom_cases: int = 5) -> list[Dataset]:
    """NIfTI volumes the size of the Hippocampus crops and MR series the size of PGBM-003's."""
    from medlens.io.dicom_write import write_dicom_series

    rng = np.random.default_rng(0)
    nifti_dir = root / "nifti"
    nifti_dir.mkdir(parents=True)
    for k in range(nifti_cases):
        volume = sitk.GetImageFromArray(rng.uniform(0, 1000, size=(36, 50, 35)).astype(np.float32))
        volume.SetSpacing((1.0, 1.0, 1.0))
        sitk.WriteImage(volume, str(nifti_dir / f"case_{k:03d}.nii.gz"), useCompression=True)
    series = []
    for k in range(dicom_cases):
        volume_xyz = rng.integers(0, 2000, size=(280, 320, 22))
        series.append(root / "dicom" / f"series_{k}")
        write_dicom_series(volume_xyz, series[-1], spacing_mm=(0.6875, 0.6875, 6.5), modality="MR",
                           rescale_intercept=0.0, uid_seed=f"bench-{k}")
    return [Dataset(f"NIfTI synthetic ({nifti_cases} x 35x50x36 float32)", sorted(nifti_dir.iterdir()),
                    sitk_read_file),
            Dataset(f"DICOM synthetic ({dicom_cases} series x 22 slices 280x320)", series, sitk_read_series)]


def check_same_pixels(dataset: Dataset) -> None:
    """Warm-up pass for both paths; the arrays must agree (medlens is (C, X, Y, Z), SimpleITK (Z, Y, X))."""
    for case in dataset.cases:
        ours, theirs = medlens_read(case), dataset.read_sitk(case)
        if not np.array_equal(ours[0], theirs.T):
            sys.exit(f"benchmarks/io.py: medlens and SimpleITK disagree on the pixels of {case}")


def time_pass(read: Callable[[Path], np.ndarray], cases: list[Path]) -> float:
    gc.collect()
    start = time.perf_counter()
    for case in cases:
        read(case)
    return time.perf_counter() - start


def benchmark(dataset: Dataset, repeats: int) -> dict:
    check_same_pixels(dataset)
    paths = {"sitk": dataset.read_sitk, "medlens": medlens_read}
    times: dict[str, list[float]] = {"sitk": [], "medlens": []}
    for r in range(repeats):
        order = ("sitk", "medlens") if r % 2 == 0 else ("medlens", "sitk")
        for name in order:
            times[name].append(time_pass(paths[name], dataset.cases))
    best = {name: min(t) for name, t in times.items()}
    median = {name: statistics.median(t) for name, t in times.items()}
    return {"dataset": dataset.name, "cases": len(dataset.cases), "best": best, "median": median,
            "ratio": best["medlens"] / best["sitk"], "ratio_median": median["medlens"] / median["sitk"]}


def print_table(results: list[dict], repeats: int) -> None:
    header = f"{'dataset':<58} {'cases':>5} {'SimpleITK/s':>12} {'medlens/s':>10} {'ratio':>6} {'(median)':>8}  result"
    print(f"read throughput, best of {repeats} interleaved passes (ratio = medlens time / SimpleITK time, "
          f"target <= {TARGET_RATIO:.2f})")
    print(header)
    print("-" * len(header))
    for r in results:
        verdict = "PASS" if r["ratio"] <= TARGET_RATIO else "FAIL"
        print(f"{r['dataset']:<58} {r['cases']:>5} {r['cases'] / r['best']['sitk']:>12.1f} "
              f"{r['cases'] / r['best']['medlens']:>10.1f} {r['ratio']:>6.3f} {r['ratio_median']:>8.3f}  {verdict}")


def profile(dataset: Dataset, top: int = 15) -> None:
    """Where medlens spends a pass over ``dataset``, by cumulative time."""
    profiler = cProfile.Profile()
    profiler.enable()
    for case in dataset.cases:
        medlens_read(case)
    profiler.disable()
    print(f"\ncProfile of medlens on {dataset.name} (cumulative, top {top}):")
    pstats.Stats(profiler, stream=sys.stdout).strip_dirs().sort_stats("cumulative").print_stats(top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="the shared datasets folder (default: $MEDLENS_DATA_DIR or <repo>/../shared/datasets)")
    parser.add_argument("--repeats", type=int, default=10, help="timed passes per path (default 10)")
    parser.add_argument("--synthetic", action="store_true", help="generate the data in a temporary folder instead")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of the medlens path")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    with tempfile.TemporaryDirectory(prefix="medlens-bench-") as tmp:
        if args.synthetic:
            datasets = synthetic_datasets(Path(tmp))
        else:
            datasets = shared_datasets(args.data_dir or default_data_dir())
        results = [benchmark(dataset, args.repeats) for dataset in datasets]
        print_table(results, args.repeats)
        if args.profile:
            for dataset in datasets:
                profile(dataset)
    return 0 if all(r["ratio"] <= TARGET_RATIO for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
