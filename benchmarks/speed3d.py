"""3D classifiers on a CPU: training volumes per second with each speed option, and test AUC at a fixed budget.

    python benchmarks/speed3d.py [--networks seedcnn_3d,acsresnet18_3d] [--widths 0.5,1] [--size 28]
                                 [--batch 32] [--options plain,cl,bf16,cl+bf16,compile] [--repeats 3]
    python benchmarks/speed3d.py --auc [--networks a,b] [--time-budget 5m] [--data FILE] [--runs-dir DIR]

1. Speed (default): one optimisation step (forward, cross-entropy, backward, AdamW) on random
   ``(batch, 1, size, size, size)`` volumes, the fastest of ``--repeats`` timed steps after two
   untimed ones (as the planner times a step), for each network x width x option set. An option set
   joins with ``+``: ``cl`` (weights and input in ``torch.channels_last_3d``, oneDNN's blocked
   layout), ``bf16`` (``torch.autocast("cpu", torch.bfloat16)`` around forward and loss; weights
   stay float32), ``compile`` (``torch.compile`` of the network; its compile time is printed apart).
   Prints volumes per second and the speed-up over ``plain``.
2. ``--auc``: for each network, ``medlens.engine.train.train`` on AdrenalMNIST3D with the default
   plan and ``--set model.name=NETWORK`` (the plan's width and epochs for the budget), then the
   official test split scored by the MedMNIST protocol, beside the published rows of
   ``../shared/REFERENCES.md`` (ResNet-18 + 3D / + ACS / + 2.5D). The machine should be quiet: other
   processes' load shrinks the epochs that fit the budget.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDLENS_DATA_DIR") or ROOT / ".." / "shared" / "datasets")
NETWORKS = ("seedcnn_3d", "resnet18_3d", "acsresnet18_3d", "r21dresnet18_3d", "slices25d_3d")
OPTIONS = ("plain", "cl", "bf16", "cl+bf16", "compile")
PUBLISHED = ("ResNet-18 + 2.5D", "ResNet-18 + 3D", "ResNet-18 + ACS")


def training_step(name: str, width: float, size: int, batch: int, options: set[str]):
    """A closure running one optimisation step of a fresh network, and the seconds spent compiling it."""
    import torch

    from medlens.models import build_classifier
    from medlens.models.speed import SpeedOptions

    torch.manual_seed(0)
    net = build_classifier(name, in_channels=1, num_classes=2, input_size=(size,) * 3, width=width)
    x, y = torch.randn(batch, 1, size, size, size), torch.randint(0, 2, (batch,))
    speed = SpeedOptions(channels_last="cl" in options, bf16="bf16" in options)  # what training uses
    net, x = speed.apply(net), speed.layout(x)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    forward = torch.compile(net) if "compile" in options else net

    def step():
        optimizer.zero_grad()
        with speed.autocast("cpu"):
            logits = forward(x)
        torch.nn.functional.cross_entropy(logits.float(), y).backward()
        optimizer.step()

    start = time.perf_counter()
    if "compile" in options:
        step()  # the first call compiles
    return step, time.perf_counter() - start


def fastest(step, repeats: int, warmup: int = 2) -> float:
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return min(times)


def speed(args) -> None:
    import torch

    print(f"== Training volumes/s, batch {args.batch}, {args.size}^3, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, oneDNN bf16 support: {torch.ops.mkldnn._is_mkldnn_bf16_supported()} ==")
    print(f"{'network':<17} {'width':>5} " + " ".join(f"{o:>14}" for o in args.options) + "   compile s")
    for name in args.networks:
        for width in args.widths:
            cells, base, compile_s = [], None, ""
            for option in args.options:
                step, spent = training_step(name, width, args.size, args.batch, set(option.split("+")))
                seconds = fastest(step, args.repeats)
                base = base or seconds
                cells.append(f"{args.batch / seconds:7.1f} x{base / seconds:4.2f}")
                if "compile" in option:
                    compile_s = f"{spent:.0f}"
            print(f"{name:<17} {width:5.2f} " + " ".join(f"{c:>14}" for c in cells) + f"   {compile_s}", flush=True)


def auc(args) -> None:
    from medlens.cli.train import parse_duration
    from medlens.engine.evaluate import evaluate_run
    from medlens.engine.train import train

    budget_s = parse_duration(args.time_budget)
    published = _published_rows(DATA.parent / "REFERENCES.md", "AdrenalMNIST3D")
    print(f"== AdrenalMNIST3D test AUC / ACC: default plan, model.name=NETWORK, epochs timed for it, "
          f"--time-budget {args.time_budget} ==")
    for name in args.networks:
        run = args.runs_dir / f"speed3d-{name}"
        start = time.perf_counter()
        epochs = planned_epochs(args.data, name, budget_s)
        train(args.data, out=run, time_budget_s=budget_s, progress_bar=False, log=lambda *a: None,
              overrides=[f"model.name={name}", f"train.max_epochs={epochs}", "train.race=[]"])
        wall = time.perf_counter() - start
        protocol = evaluate_run(run, n_bootstrap=200, log=lambda *a: None)["medmnist_protocol"]
        print(f"{name:<17} {protocol['auc']:.3f} / {protocol['acc']:.3f}   {epochs} epochs planned, {wall:.0f} s "
              f"({run})", flush=True)
    for method, pair in published.items():
        print(f"{method:<17} {pair[0]:.3f} / {pair[1]:.3f}   (published, MedMNIST v2)")


def planned_epochs(data: Path, name: str, budget_s: float) -> int:
    """The planner's epochs for ``name`` in place of its own network: its step timed here, the same rule."""
    import dataclasses

    from medlens.engine.train import make_plan
    from medlens.tasks.classification import plan

    config = make_plan(data, time_budget_s=budget_s, log=lambda *a: None)[0]
    model = dataclasses.replace(config.model, name=name)
    step_s = plan.time_training_step(model, config.data, config.dataset, config.train.batch_size, "cpu")
    epoch_s = max(_train_count(data) // config.train.batch_size, 1) * step_s * 1.15 + 0.5
    return int(min(max(0.85 * budget_s // epoch_s, 3), plan.MAX_EPOCHS))


def _train_count(data: Path) -> int:
    import numpy as np

    with np.load(data) as arrays:
        return len(arrays["train_labels"])


def _published_rows(path: Path, dataset: str) -> dict[str, tuple[float, float]]:
    """``{method: (auc, acc)}`` of the 3D table's rows in ``PUBLISHED`` for one dataset column."""
    import re

    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    header = next((line for line in lines if line.startswith("| Method | OrganMNIST3D")), None)
    if header is None:
        return {}
    column = [c.strip() for c in header.strip("|").split("|")].index(dataset)
    rows = {}
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] in PUBLISHED:
            numbers = re.findall(r"\d\.\d+", cells[column])
            rows[cells[0]] = (float(numbers[0]), float(numbers[1]))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", type=lambda s: s.split(","), default=list(NETWORKS))
    parser.add_argument("--widths", type=lambda s: [float(w) for w in s.split(",")], default=[0.5, 1.0])
    parser.add_argument("--options", type=lambda s: s.split(","), default=list(OPTIONS))
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=32, help="the plan's batch for 28^3 volumes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--auc", action="store_true", help="test AUC at a fixed budget instead of speed")
    parser.add_argument("--time-budget", default="5m")
    parser.add_argument("--data", type=Path, default=DATA / "medmnist" / "adrenalmnist3d.npz")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs-speed3d"))
    args = parser.parse_args(argv)
    auc(args) if args.auc else speed(args)


if __name__ == "__main__":
    main()
