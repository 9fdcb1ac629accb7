"""The heat-map overlay (Grad-CAM, or an anomaly map) as a DICOM Secondary Capture image in the source's study."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from medlens.deploy.dicom._common import MANUFACTURER, SERIES_NUMBERS, linkable, new_uid, quiet_highdicom

# patient axes (LPS: +x left, +y posterior, +z head) named as PatientOrientation letters
_LETTERS = (("R", "L"), ("A", "P"), ("F", "H"))


def build_capture(overlay_png: bytes, source: Sequence, *, model_version: str | None = None):
    """An RGB ``highdicom.sc.SCImage`` of ``overlay_png`` (the predictor's ``heatmap_png``) in ``source``'s study.

    The overlay's first (or only) panel is drawn as the series' slices are (rows down the image's Y, columns
    along its X), so PatientOrientation is the series' row / column directions; a 3D overlay's other two panels
    (coronal, sagittal) sit beside it.

    Args:
        overlay_png: PNG bytes ``(H, W)`` RGB or RGBA.
        source: the series' pydicom datasets (patient, study and orientation come from the first).

    Returns:
        The SCImage: pixels ``(H, W, 3)`` uint8, new series and SOP instance UIDs.
    """
    import highdicom as hd
    from PIL import Image as PILImage

    from medlens.deploy.dicom._common import software_versions

    rgb = np.asarray(PILImage.open(io.BytesIO(overlay_png)).convert("RGB"), dtype=np.uint8)
    first = linkable(source[:1])[0]
    with quiet_highdicom():
        capture = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=first, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system="PATIENT", series_instance_uid=new_uid(), series_number=SERIES_NUMBERS["capture"],
            sop_instance_uid=new_uid(), instance_number=1, manufacturer=MANUFACTURER,
            patient_orientation=patient_orientation(first), series_description="medlens heat map")
    capture.Laterality = first.get("Laterality", "")  # Type 2C that dciodvfy asks for: the source's, or empty
    capture.SoftwareVersions = list(software_versions(model_version))
    capture.ImageComments = "medlens heat map overlay; not for diagnosis on its own"
    return capture


def patient_orientation(dataset) -> tuple[str, str]:
    """PatientOrientation ``(along a row, down a column)`` from ImageOrientationPatient: the main axis of each
    direction (highdicom takes one letter each; an oblique series is named by its nearest axes); else the
    source's own PatientOrientation (a radiograph's), its first letters; ``("L", "P")`` (axial) when it has
    neither."""
    given = [str(v).strip()[:1] for v in dataset.get("PatientOrientation") or []]
    if "ImageOrientationPatient" not in dataset and len(given) == 2 and all(v in "LRAPHF" and v for v in given):
        return given[0], given[1]
    cosines = [float(v) for v in getattr(dataset, "ImageOrientationPatient", None) or (1, 0, 0, 0, 1, 0)]
    return _letters(cosines[:3]), _letters(cosines[3:])


def _letters(vector: Sequence[float]) -> str:
    axis = int(np.argmax(np.abs(vector)))
    return _LETTERS[axis][vector[axis] > 0]
