"""The ``medlens`` console script: one subcommand per module, each a thin wrapper.

Heavy libraries are imported inside the subcommands so ``medlens --help`` answers at once.

Every command runs under one work budget (:mod:`medlens.budget`): ``medlens --max-voxels N COMMAND``
sets it, :data:`medlens.budget.CLI_BUDGET` otherwise. A refusal, a bad file and running out of memory
end in a one-line message and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

# subcommand -> (module, one-line help)
COMMANDS = {
    "plan": ("medlens.cli.plan", "audit a dataset and write an editable training plan (plan.yaml)"),
    "train": ("medlens.cli.train", "train a model (plans first unless --plan); resumable"),
    "pretrain": ("medlens.cli.pretrain", "learn an encoder from images alone (self-supervised), to fine-tune later"),
    "evaluate": ("medlens.cli.evaluate", "metrics with 95%% CIs, calibration and a baseline on the test split, "
                 "or on other data (--data)"),
    "predict": ("medlens.cli.predict", "predict new images with a trained run"),
    "export": ("medlens.cli.export", "write a deployable bundle: weights, model card, exports, checksums"),
    "serve": ("medlens.cli.serve", "serve a bundle or run over HTTP: /v1/predict, a web page, metrics; token auth"),
    "explain": ("medlens.cli.explain", "Grad-CAM heat maps of a trained run on images, with a sanity check"),
    "report": ("medlens.cli.report", "compare runs side by side in one HTML file (each run has RUN/report.html)"),
    "inspect": ("medlens.cli.inspect", "audit a dataset and write its card (counts, sizes, leakage, bad files)"),
    "split": ("medlens.cli.split", "make reproducible patient-level train/val/test splits"),
    "info": ("medlens.cli.info", "read one image (file or DICOM folder) and print its geometry"),
    "demo-data": ("medlens.cli.demo_data", "generate the embedded synthetic demo dataset"),
    "federate": ("medlens.cli.federate", "federated training on this machine: one site process per folder, then "
                 "federated vs local-only vs pooled"),
    "fl": ("medlens.cli.fl", "federated training across machines: `fl server` (coordinator), `fl site` (a hospital)"),
    "fetch": ("medlens.cli.fetch", "download a MedMNIST file or pretrained weights and verify its checksum"),
}


def build_parser() -> argparse.ArgumentParser:
    from medlens import __version__
    from medlens.budget import CLI_BUDGET

    parser = argparse.ArgumentParser(prog="medlens", description="Deep learning on medical images: audit, "
                                     "split, train, validate, explain and deploy.")
    parser.add_argument("--version", action="version", version=f"medlens {__version__}")
    # its own dest: a subcommand's --max-voxels (serve) must not overwrite the global one, or the reverse
    parser.add_argument("--max-voxels", dest="budget_max_voxels", type=voxel_count, default=None, metavar="N",
                        help="the most voxels (x channels) any one step may make from an input: decoding, "
                        f"resampling, overlays (default {CLI_BUDGET.max_voxels:,}); raise it where memory allows")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        # (argparse %-formats a help, not a description)
        command = sub.add_parser(name, help=help_text, description=help_text.replace("%%", "%"))
        command.set_defaults(_module=module)
        _add_arguments(name, module, command)
    return parser


def voxel_count(text: str) -> int:
    """``--max-voxels``: a positive whole number (``1073741824``, ``1_000_000`` or ``2e9``)."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of voxels such as 2000000000, found {text!r}") from None
    if not value.is_integer() or value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number of voxels, found {text!r}")
    return int(value)


def command_budget(max_voxels: int | None):
    """The work budget a command runs under: the CLI's, or ``--max-voxels`` with a hint that names it."""
    from medlens.budget import CLI_BUDGET, WorkBudget

    if max_voxels is None:
        return CLI_BUDGET
    return WorkBudget(max_voxels, hint=f"downsample the image, or raise `medlens --max-voxels` (now {max_voxels:,}) "
                      "if this machine has the memory")


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
    from medlens.budget import work_budget
    from medlens.errors import MedlensError

    try:
        # for this run only: main() called twice in one process (tests, notebooks) starts afresh each time
        with work_budget(command_budget(args.budget_max_voxels)):
            return import_module(args._module).run(args) or 0
    except (MedlensError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        return _fail(args.command, str(exc))
    except MemoryError:
        return _fail(args.command, _out_of_memory(args.command))
    except RecursionError:  # (before its base, RuntimeError) a parser following a crafted nesting to no end
        return _fail(args.command, f"an input is nested too deeply to read (recursion limit reached while running "
                     f"`medlens {args.command}`); the file is malformed or crafted: replace it or export it again")
    except RuntimeError as exc:
        if not _is_allocation_failure(exc):
            raise  # a bug: its traceback is what a report needs
        return _fail(args.command, _out_of_memory(args.command))
    except KeyboardInterrupt:
        print(f"medlens {args.command}: interrupted", file=sys.stderr)
        return 130


def _fail(command: str, message: str) -> int:
    print(f"medlens {command}: error: {message}", file=sys.stderr)
    return 2


def _out_of_memory(command: str) -> str:
    return (f"ran out of memory while running `medlens {command}`; lower --max-voxels (`medlens --max-voxels N "
            f"{command} ...`) so inputs this large are refused up front, or use a machine with more memory")


def _is_allocation_failure(exc: RuntimeError) -> bool:
    """PyTorch's out-of-memory: ``torch.OutOfMemoryError`` on a GPU, a plain RuntimeError from its CPU allocator."""
    torch = sys.modules.get("torch")  # never imported here only to ask: if it raised, it is loaded
    if torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    return "DefaultCPUAllocator: can't allocate memory" in str(exc)


if __name__ == "__main__":
    sys.exit(main())
