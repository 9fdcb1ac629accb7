"""``medlens split DATA``: reproducible, stratified, patient-grouped splits written to a file."""

from __future__ import annotations

import json
from pathlib import Path

from medlens.cli.train import SERIES_RULE_ARGUMENT

ARGUMENTS = [
    (["data"], {"help": "dataset (as for `medlens inspect`)"}),
    (["--out"], {"type": Path, "help": "splits file to write (default: ./<dataset>.splits.json)"}),
    (["--folds"], {"type": int, "default": 1, "help": "1 = one train/val split; k > 1 = k-fold cross-validation"}),
    (["--val-fraction"], {"type": float, "default": 0.2, "help": "validation share when --folds 1 (default 0.2)"}),
    (["--test-fraction"], {"type": float, "default": 0.2,
                           "help": "test share when the dataset fixes no test split (default 0.2)"}),
    (["--seed"], {"type": int, "default": 0, "help": "random seed (same seed, same splits)"}),
    (["--card"], {"type": Path, "help": "a card from `medlens inspect` of this dataset (default: audit it now): its "
                                        "groups of identical images are kept in one split, and the files it "
                                        "skipped (inspect --skip-unreadable) left out"}),
    (["--image-root"], {"type": Path, "help": "folder a CSV's image paths are relative to"}),
    (["--boxes-from-masks"], {"action": "store_true",
                              "help": "detection from a segmentation dataset: one box per connected component of "
                                      "each mask label"}),
    SERIES_RULE_ARGUMENT,
    (["--allow-outside-root"], {"action": "store_true",
                                "help": "follow CSV / dataset.json paths that leave the dataset's folder (or "
                                        "--image-root): ../.., absolute paths elsewhere, links pointing out "
                                        "(refused by default)"}),
]


def run(args) -> int:
    from medlens._files import write_json_atomic
    from medlens.data import open_dataset
    from medlens.data.prepared import kept_together
    from medlens.data.splits import make_splits, summarize_splits

    dataset = open_dataset(args.data, image_root=args.image_root, allow_outside_root=args.allow_outside_root,
                           boxes_from_masks=args.boxes_from_masks, series_rules=args.series_rule)
    card = read_card(args.card) if args.card else _audit(dataset)
    skipped = [entry["case"] for entry in card.get("skipped", [])]
    splits = make_splits(dataset, folds=args.folds, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                         seed=args.seed, duplicates=kept_together(card), skipped=skipped)
    name = Path(args.data).name.removesuffix(".npz").removesuffix(".csv") or "dataset"
    out = write_json_atomic(args.out or Path.cwd() / f"{name}.splits.json", splits)
    print(f"{dataset.root}: test from {splits['sources']['test']}, validation from {splits['sources']['val']}, "
          f"grouped by {splits['grouped_by']}, seed {splits['seed']}; {len(card['duplicates'])} group(s) of "
          "identical images kept together"
          + (f", {len(card['near_duplicates'])} of near-identical ones" if card.get("near_duplicates") else "")
          + (f", {len(skipped)} skipped file(s) left out" if skipped else ""))
    print("\n".join(summarize_splits(dataset, splits)))
    print(f"splits written to {out}")
    return 0


def read_card(path: Path) -> dict:
    """A card from ``medlens inspect`` (its ``duplicates``, and ``skipped`` when it has one).

    Raises:
        DatasetError: not a readable card.
    """
    from medlens.errors import DatasetError

    try:
        card = json.loads(Path(path).read_text())
        if not isinstance(card["duplicates"], list):
            raise TypeError("'duplicates' is not a list")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: not a dataset card ({exc}); make one with `medlens inspect`") from None
    return card


def _audit(dataset) -> dict:
    """The audit of ``dataset`` (every image is read once, to find identical ones)."""
    from medlens.data.audit import inspect_dataset

    print(f"auditing {len(dataset.cases)} case(s) to keep identical images in one split (--card CARD reuses "
          "`medlens inspect`'s card)", flush=True)
    return inspect_dataset(dataset)
