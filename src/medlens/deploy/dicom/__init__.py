"""DICOM results: a prediction on a DICOM series written back as SEG, RTSTRUCT, SR and Secondary Capture objects.

>>> result = predictor.predict(series_folder, heatmap=False)
>>> write_results(predictor, series_folder, result, out_dir, ("seg", "sr"))     # [out_dir/seg.dcm, out_dir/sr.dcm]
>>> dciodvfy_errors(out_dir / "seg.dcm")                                         # [] when the object is valid
"""

from __future__ import annotations

from medlens.deploy.dicom.results import DICOM_KINDS, check_kinds, parse_kinds, write_results
from medlens.deploy.dicom.verify import dciodvfy_errors

__all__ = ["DICOM_KINDS", "check_kinds", "dciodvfy_errors", "parse_kinds", "write_results"]
