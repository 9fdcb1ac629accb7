"""``medlens predict RUN FILE_OR_FOLDER...``: classes with calibrated probabilities, or masks."""

from __future__ import annotations

from pathlib import Path

ARGUMENTS = [
    (["run"], {"type": Path, "help": "a run folder from `medlens train`"}),
    (["inputs"], {"type": Path, "nargs": "+", "help": "image files, DICOM series folders, or folders of images"}),
    (["--out"], {"type": Path, "help": "classification: write predictions here (.csv or .json; default: print "
                                       "only); segmentation: the folder for the masks (default: predictions/)"}),
    (["--tta"], {"action": "store_true", "default": None, "help": "test-time augmentation (flips / mirroring)"}),
    (["--probabilities"], {"action": "store_true", "help": "segmentation: also write class probability maps"}),
]


def run(args) -> int:
    from medlens.engine.runs import open_run

    config = open_run(args.run).read_config()
    if config.dataset.task == "segmentation":
        return _segment(args)
    from medlens.engine.predict import predict_paths, write_predictions

    rows = predict_paths(args.run, args.inputs, tta=args.tta)
    _report(rows, lambda row: f"{row['path']}: {row['predicted'] or '(none)'}  "
                              + "  ".join(f"{n}={p:.3f}" for n, p in row["probabilities"].items()))
    if args.out:
        print(f"predictions written to {write_predictions(rows, args.out, list(config.dataset.class_names))}")
    return _failures(rows)


def _segment(args) -> int:
    from medlens.engine.segment_io import predict_segmentation

    out = args.out or Path("predictions")
    rows = predict_segmentation(args.run, args.inputs, out, tta=args.tta, probabilities=args.probabilities)
    _report(rows, lambda row: f"{row['path']} -> {row['mask']}  voxels: "
                              + "  ".join(f"{n}={v}" for n, v in row["voxels"].items()))
    return _failures(rows)


def _report(rows: list[dict], describe) -> None:
    """One line per input: ``describe(row)``, or the error that input met."""
    for row in rows:
        print(f"{row['path']}: error: {row['error']}" if "error" in row else describe(row))


def _failures(rows: list[dict]) -> int:
    failed = sum("error" in r for r in rows)
    if failed:
        print(f"{failed} of {len(rows)} input(s) could not be predicted")
    return 1 if failed else 0
