"""``medlens predict RUN_OR_BUNDLE FILE_OR_FOLDER...``: classes with calibrated probabilities, or masks."""

from __future__ import annotations

from pathlib import Path

ARGUMENTS = [
    (["run"], {"type": Path, "help": "a run folder from `medlens train`, or a bundle from `medlens export`"}),
    (["inputs"], {"type": Path, "nargs": "+", "help": "image files, DICOM series folders, or folders of images"}),
    (["--out"], {"type": Path, "help": "classification: write predictions here (.csv or .json; default: print "
                                       "only); segmentation: the folder for the masks (default: predictions/)"}),
    (["--tta"], {"action": "store_true", "default": None, "help": "test-time augmentation (flips / mirroring)"}),
    (["--probabilities"], {"action": "store_true", "help": "segmentation: also write class probability maps"}),
    (["--backend"], {"default": "torch", "choices": ["torch", "torchscript", "onnx"],
                     "help": "classification with a bundle: run its TorchScript or ONNX export (default: torch)"}),
]


def run(args) -> int:
    from medlens.deploy import Predictor

    predictor = Predictor.from_path(args.run, backend=args.backend)
    if predictor.task == "segmentation":
        return _segment(predictor, args)
    from medlens.deploy.files import classify_files
    from medlens.engine.predict import write_predictions

    rows = classify_files(predictor, args.inputs, tta=args.tta)
    _report(rows, lambda row: f"{row['path']}: {row['predicted'] or '(none)'}  "
                              + "  ".join(f"{n}={p:.3f}" for n, p in row["probabilities"].items()))
    if args.out:
        print(f"predictions written to {write_predictions(rows, args.out, predictor.class_names)}")
    return _failures(rows)


def _segment(predictor, args) -> int:
    from medlens.deploy.files import segment_files

    rows = segment_files(predictor, args.inputs, args.out or Path("predictions"), tta=args.tta,
                         probabilities=args.probabilities)
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
