"""``medlens report RUN [RUN ...]``: runs of one task side by side in one self-contained HTML file.

Each run's own report is ``RUN/report.html``, written by ``train`` and ``evaluate``.
"""

from __future__ import annotations

from pathlib import Path

ARGUMENTS = [
    (["runs"], {"type": Path, "nargs": "+", "help": "run folders from `medlens train` (one task)"}),
    (["--out"], {"type": Path, "default": Path("compare.html"), "help": "HTML file to write (default: compare.html)"}),
]


def run(args) -> int:
    from medlens.engine.compare import compare_runs

    compare_runs(args.runs, args.out)
    return 0
