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
    failed = predictor.task.write_outputs(predictor, args.inputs, args.out, tta=args.tta,
                                          probabilities=args.probabilities, log=print)
    return 1 if failed else 0
