"""A DICOM Comprehensive 3D SR (highdicom) holding a TID 1500 Measurement Report of one prediction.

- segmentation: one TID 1411 volumetric group per class, ``Volume`` (SCT 118565006) in ml = voxels x voxel
  volume (``Area`` in mm2 for a one-slice image), referencing its SEG segment when a SEG was written, else a
  TID 1501 group naming the structure;
- classification: one TID 1501 group per class (its finding type the class), ``Probability`` (DCM 122157, unit
  1) and the qualitative evaluation ``Presence of property`` (DCM 121052) = ``Present`` (DCM 121053) for the
  decided class(es), ``Absent`` (DCM 121054) for the others;
- detection: one TID 1410 planar group per box, a POLYLINE ``ImageRegion`` around the box on its centre slice,
  with its score as ``Probability``.

Class names map to codes as in :func:`~._common.class_concept`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from medlens.deploy.dicom._common import (
    MANUFACTURER,
    SERIES_NUMBERS,
    algorithm_version,
    class_concept,
    linkable,
    new_uid,
    quiet_highdicom,
    software_versions,
)
from medlens.errors import ConfigError

MILLILITER = ("mL", "UCUM", "milliliter")
PROBABILITY = ("122157", "DCM", "Probability")


def build_report(result: dict, source: Sequence, *, classes: Mapping[int, str] | None = None, segmentation=None):
    """The SR of one prediction on the series ``source``.

    Args:
        result: what ``Predictor.predict`` returned (``mask`` + ``voxels``, ``probabilities`` + ``label``, or
            ``boxes``).
        source: the series' pydicom datasets in the order of the image's last axis.
        classes: segmentation: ``{mask value: class name}`` of the foreground classes (segment k = k-th class).
        segmentation: the SEG written from the same result, which the volumes reference; ``None``: none written.

    Returns:
        A ``highdicom.sr.Comprehensive3DSR`` with new UIDs, patient and study copied from ``source``.

    Raises:
        ConfigError: ``result`` is none of the answers above.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.sr.AlgorithmIdentification(name=MANUFACTURER, version=algorithm_version(result.get("model_version")))
    groups = _groups(result, source, classes, segmentation, algorithm)
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=new_uid(), name=MANUFACTURER,
                                                       manufacturer_name=MANUFACTURER,
                                                       model_name=software_versions(None)[0])
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=codes.SCT.ImagingProcedure,
                                     imaging_measurements=groups)
    evidence = linkable(source) + ([segmentation] if segmentation is not None else [])
    with quiet_highdicom():
        return hd.sr.Comprehensive3DSR(
            evidence=evidence, content=report, series_instance_uid=new_uid(), series_number=SERIES_NUMBERS["sr"],
            sop_instance_uid=new_uid(), instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
            series_description="medlens measurements")


def _groups(result: dict, source: Sequence, classes, segmentation, algorithm) -> list:
    if "mask" in result:
        return volume_groups(result, source, classes or {}, segmentation, algorithm)
    if "boxes" in result:
        return box_groups(result["boxes"], source, algorithm)
    if "probabilities" in result and "label" in result:
        return finding_groups(result, algorithm)
    raise ConfigError("sr: this prediction holds no mask, class probabilities or boxes to report; DICOM SR is "
                      "written for segmentation, classification and detection models")


def structure_volume(mask, value: int) -> tuple[float, str]:
    """``(volume in ml, "ml")`` of the voxels of ``value`` in ``mask`` (an ``Image``): count x voxel volume;
    ``(area in mm2, "mm2")`` for a 2D mask."""
    count = int((np.asarray(mask.array) == value).sum())
    size = float(np.prod(mask.spacing_mm))
    return (count * size / 1000.0, "ml") if mask.spatial_dims == 3 else (count * size, "mm2")


def volume_groups(result: dict, source: Sequence, classes: Mapping[int, str], segmentation, algorithm) -> list:
    """One group per class: its volume (or area), referencing SEG segment k when ``segmentation`` is given."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    mask, groups = result["mask"], []
    for number, (value, name) in enumerate(classes.items(), start=1):
        amount, unit = structure_volume(mask, value)
        measurement = hd.sr.Measurement(
            name=codes.SCT.Volume if unit == "ml" else codes.SCT.Area, value=round(amount, 6),
            unit=hd.sr.CodedConcept(*MILLILITER) if unit == "ml" else codes.UCUM.SquareMillimeter,
            algorithm_id=algorithm)
        tracking = hd.sr.TrackingIdentifier(uid=new_uid(), identifier=name[:64])
        if segmentation is None:
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, finding_type=class_concept(name), measurements=[measurement]))
            continue
        segment = hd.sr.ReferencedSegment(
            sop_class_uid=segmentation.SOPClassUID, sop_instance_uid=segmentation.SOPInstanceUID,
            segment_number=number, source_series=hd.sr.SourceSeriesForSegmentation(source[0].SeriesInstanceUID))
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, referenced_segment=segment, finding_type=class_concept(name),
            measurements=[measurement]))
    return groups


def finding_groups(result: dict, algorithm) -> list:
    """One group per class: its probability, and Presence of property = Present for the decided class(es), else
    Absent."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    decided = {n for n in str(result["label"] or "").split(";") if n}
    groups = []
    for name, probability in result["probabilities"].items():
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=new_uid(), identifier=str(name)[:64]),
            finding_type=class_concept(str(name)),
            measurements=[hd.sr.Measurement(name=hd.sr.CodedConcept(*PROBABILITY), value=float(probability),
                                            unit=codes.UCUM.NoUnits, algorithm_id=algorithm)],
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(
                name=codes.DCM.PresenceOfProperty,
                value=codes.DCM.Present if name in decided else codes.DCM.Absent)]))
    return groups


def box_groups(boxes: list[dict], source: Sequence, algorithm) -> list:
    """One planar group per box: a closed POLYLINE around it (pixel corners, (0, 0) the top-left pixel's corner)
    on the slice through its centre, and its score."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    groups = []
    for k, box in enumerate(boxes, start=1):
        corners = np.asarray(box["box"], dtype=float)
        dims = len(corners) // 2
        x0, y0, x1, y1 = corners[0], corners[1], corners[dims], corners[dims + 1]
        z = 0 if dims == 2 else int(np.clip(np.floor((corners[2] + corners[5]) / 2), 0, len(source) - 1))
        ring = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=float)
        region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=ring,
                                   source_image=hd.sr.SourceImageForRegion(source[z].SOPClassUID,
                                                                           source[z].SOPInstanceUID))
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=new_uid(), identifier=f"{box['label']} {k}"[:64]),
            referenced_region=region, finding_type=class_concept(str(box["label"])),
            measurements=[hd.sr.Measurement(name=hd.sr.CodedConcept(*PROBABILITY), value=float(box["score"]),
                                            unit=codes.UCUM.NoUnits, algorithm_id=algorithm)]))
    return groups
