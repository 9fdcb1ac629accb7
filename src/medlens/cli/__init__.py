"""The ``medlens`` console script: one subcommand per module, each a thin wrapper.

Heavy libraries are imported inside the subcommands so ``medlens --help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

# subcommand -> (module, one-line help)
COMMANDS = {
    "plan": ("medlens.cli.plan", "audit a dataset and write an editable training plan (plan.yaml)"),
    "train": ("medlens.cli.train", "train a model (plans first unless --plan); resumable"),
    "evaluate": ("medlens.cli.evaluate", "metrics with 95%% CIs, calibration and a baseline on the test split"),
    "predict": ("medlens.cli.predict", "predict new images with a trained run"),
    "export": ("medlens.cli.export", "write a deployable bundle: weights, model card, exports, checksums"),
    "serve": ("medlens.cli.serve", "serve a bundle or run over HTTP: /v1/predict, a web page, metrics; token auth"),
    "explain": ("medlens.cli.explain", "Grad-CAM heat maps of a trained run on images, with a sanity check"),
    "report": ("medlens.cli.report", "compare runs side by side in one HTML file (each run has RUN/report.html)"),
    "inspect": ("medlens.cli.inspect", "audit a dataset and write its card (counts, sizes, leakage, bad files)"),
    "split": ("medlens.cli.split", "make reproducible patient-level train/val/test splits"),
    "info": ("medlens.cli.info", "read one image (file or DICOM folder) and print its geometry"),
    "demo-data": ("medlens.cli.demo_data", "generate the embedded synthetic demo dataset"),
    "fetch": ("medlens.cli.fetch", "download an official MedMNIST file and check its MD5"),
}


def build_parser() -> argparse.ArgumentParser:
    from medlens import __version__

    parser = argparse.ArgumentParser(prog="medlens", description="Deep learning on medical images: audit, "
                                     "split, train, validate, explain and deploy.")
    parser.add_argument("--version", action="version", version=f"medlens {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(_module=module)
        _add_arguments(name, module, command)
    return parser


def _add_arguments(name: str, module: str, command: argparse.ArgumentParser) -> None:
    # Each module declares its arguments in ARGUMENTS without importing heavy dependencies.
    for flags, options in import_module(module).ARGUMENTS:
        command.add_argument(*flags, **options)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from medlens.errors import MedlensError

    try:
        return import_module(args._module).run(args) or 0
    except (MedlensError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print(f"medlens {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"medlens {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
