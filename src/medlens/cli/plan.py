"""``medlens plan DATA``: audit the data and write an editable plan.yaml with a reason per value."""

from __future__ import annotations

from pathlib import Path

from medlens.cli.train import SERIES_RULE_ARGUMENT, parse_duration

ARGUMENTS = [
    (["data"], {"help": "dataset: class folders, CSV manifest, MedMNIST .npz or name; for segmentation a Decathlon "
                        "folder, images/ + labels/, or a CSV with a mask column"}),
    (["--out"], {"type": Path, "default": Path("plan.yaml"), "help": "plan file to write (default: plan.yaml)"}),
    (["--time-budget"], {"type": parse_duration,
                         "help": "training time to plan for, e.g. 90s, 10m, 1h (default: classification 10m on CPU, "
                                 "30m on GPU; segmentation 30m / 60m)"}),
    (["--set"], {"dest": "overrides", "action": "append", "default": [], "metavar": "SECTION.KEY=VALUE",
                 "help": "override a planned value, e.g. --set model.name=densenet121_2d (repeatable)"}),
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
                             "help": "leave out files no reader opens instead of refusing the data; the plan "
                                     "records it (dataset.skip_unreadable: true), the card lists them"}),
    (["--devices"], {"type": int, "default": 1, "help": "plan for this many training processes per node"}),
    (["--num-nodes"], {"type": int, "default": 1, "help": "plan for this many nodes (machines)"}),
]


def run(args) -> int:
    from medlens.cli.train import skip_unreadable_requested, task_request
    from medlens.config import apply_overrides
    from medlens.data.dataset import (
        boxes_from_masks_requested,
        one_class_allowed,
        outside_root_allowed,
        series_rules_given,
        unreadable_skipped,
    )
    from medlens.engine.race import drop_overridden_rivals
    from medlens.engine.train import make_plan, write_plan
    from medlens.errors import ConfigError
    from medlens.tasks import task_for

    if args.devices < 1 or args.num_nodes < 1:
        raise ConfigError(f"--devices {args.devices} --num-nodes {args.num_nodes}: both must be at least 1")
    task, task_options = task_request(args)
    skip, overrides = skip_unreadable_requested(args)
    with outside_root_allowed(args.allow_outside_root), boxes_from_masks_requested(args.boxes_from_masks), \
            unreadable_skipped(skip), series_rules_given(args.series_rule), one_class_allowed(bool(args.normal)):
        config, reasons, _card, _dataset = make_plan(args.data, image_root=args.image_root,
                                                     time_budget_s=args.time_budget,
                                                     processes=args.devices * args.num_nodes, task=task,
                                                     task_options=task_options)
    config = apply_overrides(config, overrides)
    for key in (o.split("=", 1)[0].strip() for o in overrides):
        reasons[key] = "set on the command line"
    config = drop_overridden_rivals(config, [o.split("=", 1)[0] for o in overrides], reasons, print)
    task_for(config).check(config)
    write_plan(args.out, config, reasons, args.data)
    print(args.out.read_text(encoding="utf-8"), end="")
    print(f"plan written to {args.out}; edit it, then: medlens train {args.data} --plan {args.out}")
    return 0
