"""``medlens evaluate RUN``: test-split metrics with 95% CIs, calibration, MedMNIST figures, baseline; with
``--data OTHER``, every case of other data scored by the run's model (:mod:`medlens.engine.external`)."""

from __future__ import annotations

from pathlib import Path

ARGUMENTS = [
    (["run"], {"type": Path, "help": "a run folder from `medlens train`"}),
    (["--split"], {"choices": ["test", "val"], "help": "split to evaluate (default: test)"}),
    (["--data"], {"type": Path, "help": "other data to score with the run's model (another hospital's, a later "
                                        "year's), every case of it; same classes as the run"}),
    (["--out"], {"type": Path, "help": "with --data: the evaluation folder (default RUN/external/NAME)"}),
    (["--image-root"], {"type": Path, "help": "with --data: the folder a CSV's paths are relative to"}),
    (["--allow-outside-root"], {"action": "store_true", "default": None,
                                "help": "with --data: let a CSV's paths leave its folder"}),
    (["--tta"], {"action": "store_true", "default": None, "help": "test-time augmentation (flips / mirroring)"}),
    (["--bootstrap"], {"type": int, "help": "bootstrap resamples for the CIs (default: from the plan, 1000)"}),
    (["--no-baseline"], {"action": "store_true", "help": "skip the k-nearest-neighbours baseline"}),
    (["--save-masks"], {"action": "store_true", "help": "segmentation: also write each predicted mask "
                                                        "(RUN/masks_<split>/)"}),
]


def run(args) -> int:
    from medlens.errors import ConfigError

    if args.data is None:
        if args.out or args.image_root or args.allow_outside_root:
            raise ConfigError("--out, --image-root and --allow-outside-root go with --data (other data to evaluate "
                              "on); a run's own splits are evaluated in the run folder")
        from medlens.engine.evaluate import evaluate_run

        evaluate_run(args.run, split=args.split or "test", tta=args.tta, n_bootstrap=args.bootstrap,
                     baseline=False if args.no_baseline else None, save_masks=args.save_masks)
        return 0
    if args.split or args.save_masks:
        raise ConfigError(f"--data scores every case of {args.data}; --split and --save-masks choose within the "
                          "run's own data: leave them out")
    from medlens.engine.external import evaluate_external

    evaluate_external(args.run, args.data, out=args.out, image_root=args.image_root,
                      allow_outside_root=args.allow_outside_root, tta=args.tta, n_bootstrap=args.bootstrap)
    return 0
