"""``medlens info FILE``: read one image through medlens and print what it found."""

from __future__ import annotations

from pathlib import Path

ARGUMENTS = [
    (["path"], {"type": Path, "help": "an image file or a folder holding one DICOM series"}),
    (["--series"], {"help": "the series to read when the folder holds several: its SeriesInstanceUID, or its "
                               "number as the mixed-series message lists them"}),
]


def run(args) -> int:
    import numpy as np

    from medlens.io import read_image

    image = read_image(args.path, series_uid=args.series, allow_nan=True)
    a = image.array
    print(f"{args.path}")
    print(f"  format {image.meta.get('format')}, {image.spatial_dims}D, array (C, X, Y[, Z]) {a.shape} {a.dtype}")
    spacing = " x ".join(f"{s:.4g}" for s in image.spacing_mm)
    print(f"  spacing {spacing} mm" + ("" if image.spacing_known else " (not stored in the file; placeholder)"))
    print(f"  origin {tuple(round(o, 3) for o in image.origin_mm)} mm")
    print(f"  direction {tuple(round(d, 4) for d in image.direction)}")
    finite = a[np.isfinite(a)] if a.dtype.kind == "f" else a
    nonfinite = a.size - finite.size
    if finite.size:
        print(f"  intensity min {finite.min():.6g} max {finite.max():.6g} mean {finite.mean():.6g}")
    if nonfinite:
        print(f"  WARNING: {nonfinite} of {a.size} voxels are NaN or infinite")
    # header text (SeriesDescription, UIDs) is never printed: it can identify a patient
    shown = {k: v for k, v in image.meta.items() if k in ("modality", "num_slices", "slice_order", "pixel_type",
                                                           "skipped_files")}
    if shown:
        print("  " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    return 0
