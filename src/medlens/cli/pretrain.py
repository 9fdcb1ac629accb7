"""``medlens pretrain DATA``: learn an encoder from the images alone (labels, if any, ignored), to fine-tune
with ``medlens train DATA --init-from RUN``.

DATA may be anything ``medlens train`` reads, and also images without labels: a folder of image files
(no class folders) or a CSV with an image column and no label column.
"""

from __future__ import annotations

from pathlib import Path

from medlens.cli.train import parse_duration

ARGUMENTS = [
    (["data"], {"nargs": "?", "help": "images: a folder (class folders or not), a CSV (a label column is optional), "
                                      "a MedMNIST .npz ...; not needed with --resume"}),
    (["--time-budget"], {"type": parse_duration, "help": "training time limit, e.g. 90s, 10m (plans epochs to fit)"}),
    (["--out"], {"type": Path, "help": "run folder to create (default: runs/<dataset>); never overwritten"}),
    (["--set"], {"dest": "overrides", "action": "append", "default": [], "metavar": "SECTION.KEY=VALUE",
                 "help": "override a plan value, e.g. --set pretrain.temperature=0.2 (repeatable)"}),
    (["--resume"], {"type": Path, "metavar": "RUN", "help": "continue an interrupted run from its last checkpoint"}),
    (["--image-root"], {"type": Path, "help": "folder a CSV's image paths are relative to"}),
    (["--no-progress"], {"action": "store_true", "help": "no progress bar (logs only)"}),
]


def run(args) -> int:
    from medlens.data.dataset import unlabelled_allowed
    from medlens.engine.train import train

    if args.data is None and args.resume is None:
        from medlens.errors import ConfigError

        raise ConfigError("give the images to pretrain on, or --resume RUN_FOLDER")
    with unlabelled_allowed():  # the engine opens the dataset, layers down
        run_folder = train(args.data, overrides=args.overrides, out=args.out, resume=args.resume,
                           time_budget_s=args.time_budget, image_root=args.image_root,
                           progress_bar=not args.no_progress, task="pretraining")
    print(f"pretrained: {run_folder.root}  (next: medlens train DATA --init-from {run_folder.root})")
    return 0
