"""``medlens plan DATA``: audit the data and write an editable plan.yaml with a reason per value."""

from __future__ import annotations

from pathlib import Path

from medlens.cli.train import parse_duration

ARGUMENTS = [
    (["data"], {"help": "dataset: class folders, CSV manifest, MedMNIST .npz or name; for segmentation a Decathlon "
                        "folder, images/ + labels/, or a CSV with a mask column"}),
    (["--out"], {"type": Path, "default": Path("plan.yaml"), "help": "plan file to write (default: plan.yaml)"}),
    (["--time-budget"], {"type": parse_duration, "help": "training time to plan for, e.g. 90s, 10m, 1h "
                                                          "(default: classification 10m on CPU, 30m on GPU; segmentation 30m / 60m)"}),
    (["--set"], {"dest": "overrides", "action": "append", "default": [], "metavar": "SECTION.KEY=VALUE",
                 "help": "override a planned value, e.g. --set model.name=densenet121_2d (repeatable)"}),
    (["--image-root"], {"type": Path, "help": "folder a CSV's image paths are relative to"}),
]


def run(args) -> int:
    from medlens._files import write_text_atomic
    from medlens.config import apply_overrides, render_plan
    from medlens.engine.train import make_plan, plan_header

    config, reasons, _card, _dataset = make_plan(args.data, image_root=args.image_root, time_budget_s=args.time_budget)
    config = apply_overrides(config, args.overrides)
    for key in (o.split("=", 1)[0].strip() for o in args.overrides):
        reasons[key] = "set on the command line"
    text = render_plan(config, reasons, plan_header(args.data))
    write_text_atomic(args.out, text)
    print(text, end="")
    print(f"plan written to {args.out}; edit it, then: medlens train {args.data} --plan {args.out}")
    return 0
