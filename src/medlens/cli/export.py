"""``medlens export RUN --out model.bundle``: one folder (or .zip) with the model, its card and checksums."""

from __future__ import annotations

from pathlib import Path

ARGUMENTS = [
    (["run"], {"type": Path, "help": "a finished run folder from `medlens train`"}),
    (["--out"], {"type": Path, "required": True,
                 "help": "the bundle to write: a new folder, or a file ending in .zip"}),
    (["--format"], {"default": "both", "choices": ["torchscript", "onnx", "both", "none"],
                    "help": "exported networks beside the safetensors weights (default: both)"}),
]


def run(args) -> int:
    from medlens.deploy import export_bundle

    export_bundle(args.run, args.out, formats=args.format)
    return 0
