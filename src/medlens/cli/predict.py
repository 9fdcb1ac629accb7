"""``medlens predict RUN FILE_OR_FOLDER...``: calibrated probabilities and the predicted class."""

from __future__ import annotations

from pathlib import Path

ARGUMENTS = [
    (["run"], {"type": Path, "help": "a run folder from `medlens train`"}),
    (["inputs"], {"type": Path, "nargs": "+", "help": "image files, DICOM series folders, or folders of images"}),
    (["--out"], {"type": Path, "help": "write predictions here (.csv, or .json); default: print only"}),
    (["--tta"], {"action": "store_true", "default": None, "help": "test-time augmentation (flips)"}),
]


def run(args) -> int:
    from medlens.engine.predict import predict_paths, write_predictions
    from medlens.engine.runs import open_run

    rows = predict_paths(args.run, args.inputs, tta=args.tta)
    names = list(open_run(args.run).read_config().dataset.class_names)
    for row in rows:
        if "error" in row:
            print(f"{row['path']}: error: {row['error']}")
        else:
            probs = "  ".join(f"{n}={p:.3f}" for n, p in row["probabilities"].items())
            print(f"{row['path']}: {row['predicted'] or '(none)'}  {probs}")
    if args.out:
        print(f"predictions written to {write_predictions(rows, args.out, names)}")
    failed = sum("error" in r for r in rows)
    if failed:
        print(f"{failed} of {len(rows)} input(s) could not be predicted")
    return 1 if failed else 0
