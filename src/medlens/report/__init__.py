"""Reports a person would rather look at than read, rendered from evidence they are handed.

- :func:`write_report`: ``RUN/report.html`` + ``RUN/report.md``: dataset card and audit findings,
  the plan with its reasons, training curves, then the evaluation sections the run's task made
  (metrics with 95% CIs and figures), beside published figures when the data are a known benchmark.
- :func:`write_comparison`: several runs of one task side by side (``medlens report A B``).
- :mod:`~medlens.report.document` (``Report``, ``Section``, ``Table``, ``Figure``) and
  :mod:`~medlens.report.plots`: what task packages build their sections from.

Figures are matplotlib PNGs embedded as data URIs; nothing in the HTML refers to the network, and
nothing here runs a model.
"""

from __future__ import annotations

from medlens.report.build import build_report, write_report
from medlens.report.compare import write_comparison

__all__ = ["build_report", "write_comparison", "write_report"]
