"""Reports a person would rather look at than read: one self-contained HTML file per run, and comparisons.

- :func:`write_report`: ``RUN/report.html`` + ``RUN/report.md``: dataset card and audit findings,
  the plan with its reasons, training curves, and after ``evaluate`` the metrics with 95% CIs,
  ROC / PR / confusion / reliability (classification) or per-case scores, box plots and contour
  overlays (segmentation), beside published figures when the data are a known benchmark.
- :func:`write_comparison`: several runs of one task side by side (``medlens report A B``).

Figures are matplotlib PNGs embedded as data URIs; nothing in the HTML refers to the network.
"""

from __future__ import annotations

from medlens.report.build import build_report, write_report
from medlens.report.classification import ClassificationEvidence
from medlens.report.compare import write_comparison
from medlens.report.segmentation import SegmentationEvidence

__all__ = ["ClassificationEvidence", "SegmentationEvidence", "build_report", "write_comparison", "write_report"]
