"""``medlens evaluate RUN``: test-split metrics with 95% CIs, calibration, MedMNIST figures, baseline."""

from __future__ import annotations

from pathlib import Path

ARGUMENTS = [
    (["run"], {"type": Path, "help": "a run folder from `medlens train`"}),
    (["--split"], {"default": "test", "choices": ["test", "val"], "help": "split to evaluate (default: test)"}),
    (["--tta"], {"action": "store_true", "default": None, "help": "test-time augmentation (flips / mirroring)"}),
    (["--bootstrap"], {"type": int, "help": "bootstrap resamples for the CIs (default: from the plan, 1000)"}),
    (["--no-baseline"], {"action": "store_true", "help": "skip the k-nearest-neighbours baseline"}),
    (["--save-masks"], {"action": "store_true", "help": "segmentation: also write each predicted mask "
                                                        "(RUN/masks_<split>/)"}),
]


def run(args) -> int:
    from medlens.engine.evaluate import evaluate_run

    evaluate_run(args.run, split=args.split, tta=args.tta, n_bootstrap=args.bootstrap,
                 baseline=False if args.no_baseline else None, save_masks=args.save_masks)
    return 0
