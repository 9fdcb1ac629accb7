"""``medlens train DATA``: plan (unless --plan), train, keep the best model, calibrate it."""

from __future__ import annotations

import argparse
import re
from pathlib import Path


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``1.5h`` -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration; use e.g. 90s, 10m or 1h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


#: ``--series-rule``, shared by the commands that open a dataset (inspect, split, plan, train)
SERIES_RULE_ARGUMENT = (["--series-rule"], {
    "action": "append", "default": [], "metavar": "NAME=REGEX",
    "help": "for a CSV whose study column names DICOM study folders: the series read as view NAME, the one whose "
            "'<Modality> <SeriesDescription>' matches REGEX (repeat per series; kept in the plan)"})

ARGUMENTS = [
    (["data"], {"nargs": "?", "help": "dataset (as for `medlens plan`); not needed with --resume"}),
    (["--plan"], {"type": Path, "help": "a plan from `medlens plan` (default: plan now)"}),
    (["--set"], {"dest": "overrides", "action": "append", "default": [], "metavar": "SECTION.KEY=VALUE",
                 "help": "override a plan value, e.g. --set train.max_epochs=30 (repeatable)"}),
    (["--time-budget"], {"type": parse_duration, "help": "training time limit, e.g. 90s, 10m (plans epochs to fit)"}),
    (["--out"], {"type": Path, "help": "run folder to create (default: runs/<dataset>); never overwritten"}),
    (["--resume"], {"type": Path, "metavar": "RUN", "help": "continue an interrupted run from its last checkpoint"}),
    (["--init-from"], {"type": Path, "metavar": "RUN_FILE_OR_NAME",
                       "help": "start from these weights: a run folder (a `medlens pretrain` run too), a downloaded "
                               "torchvision / timm / MedicalNet file, or a name from `medlens fetch weights`; "
                               "what matched and what was re-initialised (and why) is printed"}),
    (["--devices"], {"type": int, "default": 1, "help": "GPUs (or CPU processes with --strategy ddp) per node"}),
    (["--num-nodes"], {"type": int, "default": 1, "help": "machines taking part (each started by torchrun or SLURM's "
                                                          "srun with the same command); the plan shares every epoch "
                                                          "among devices x nodes processes"}),
    (["--strategy"], {"default": "auto", "choices": ["auto", "ddp", "ddp_spawn"],
                      "help": "distribution strategy (ddp: one process per device)"}),
    (["--image-root"], {"type": Path, "help": "folder a CSV's image paths are relative to"}),
    (["--task"], {"choices": ["anomaly"], "help": "train another task than the labels call for: anomaly (one-class, "
                                               "on the --normal class only; the other classes test it)"}),
    (["--normal"], {"action": "append", "default": [], "metavar": "CLASS",
                    "help": "--task anomaly: the class that is normal (repeatable)"}),
    (["--boxes-from-masks"], {"action": "store_true",
                              "help": "detection from a segmentation dataset: one box per connected component of "
                                      "each mask label"}),
    SERIES_RULE_ARGUMENT,
    (["--allow-outside-root"], {"action": "store_true",
                                "help": "follow CSV / dataset.json paths that leave the dataset's folder (or "
                                        "--image-root): ../.., absolute paths elsewhere, links pointing out "
                                        "(refused by default)"}),
    (["--skip-unreadable"], {"action": "store_true",
                             "help": "leave out files no reader opens (truncated, not an image) instead of refusing "
                                     "the data; they are printed and listed in the card and the report (plan key "
                                     "dataset.skip_unreadable)"}),
    (["--no-progress"], {"action": "store_true", "help": "no progress bar (logs only)"}),
]
SKIP_KEY = "dataset.skip_unreadable"


def skip_unreadable_requested(args) -> tuple[bool, list[str]]:
    """Whether the audit leaves unreadable files out, and the ``--set`` list recording it in the plan.

    ``--skip-unreadable``, else the last ``--set dataset.skip_unreadable=...``, else the ``--plan`` file's key
    (the audit runs before the plan's values are applied, so the command puts the choice in force around it).

    Returns:
        ``(skip, overrides)``: ``args.overrides``, plus ``dataset.skip_unreadable=true`` for the flag.
    """
    from medlens.engine.train import skip_requested

    if args.skip_unreadable:
        return True, [*args.overrides, f"{SKIP_KEY}=true"]
    return skip_requested(getattr(args, "plan", None), args.overrides), list(args.overrides)


def task_request(args) -> tuple[str | None, dict | None]:
    """``--task`` and its options (``--normal``) as ``make_plan``'s ``task, task_options``; the task's plan
    checks them (``--task anomaly`` without ``--normal`` says which classes there are)."""
    from medlens.errors import ConfigError

    if args.normal and not args.task:
        raise ConfigError(f"--normal {' '.join(args.normal)} names the normal class of a one-class run; add --task "
                          "anomaly (or leave --normal out to train a classifier)")
    return args.task, ({"normal": tuple(args.normal)} if args.normal else None)


def run(args) -> int:
    from medlens.data.dataset import (
        boxes_from_masks_requested,
        one_class_allowed,
        outside_root_allowed,
        series_rules_given,
        unreadable_skipped,
    )
    from medlens.engine.train import train

    if args.data is None and args.resume is None:
        from medlens.errors import ConfigError

        raise ConfigError("give a dataset to train on, or --resume RUN_FOLDER")
    task, task_options = task_request(args)
    skip, overrides = skip_unreadable_requested(args)
    with outside_root_allowed(args.allow_outside_root), boxes_from_masks_requested(args.boxes_from_masks), \
            unreadable_skipped(skip), series_rules_given(args.series_rule), one_class_allowed(bool(args.normal)):
        # the engine opens and audits the dataset, layers down
        run_folder = train(args.data, plan=args.plan, overrides=overrides, out=args.out, resume=args.resume,
                           time_budget_s=args.time_budget, init_from=args.init_from, devices=args.devices,
                           num_nodes=args.num_nodes, strategy=args.strategy, image_root=args.image_root,
                           progress_bar=not args.no_progress, task=task, task_options=task_options)
    import os

    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0:  # other DDP processes stay quiet
        print(f"trained: {run_folder.root}  (next: medlens evaluate {run_folder.root})")
    return 0
