"""A DICOM Segmentation (highdicom) of a predicted mask, on the series it was predicted from.

One segment per foreground class, in the order of the dataset's classes (segment k = the k-th class, whatever
its mask value), each with coded meaning (see :func:`~._common.structure_codes`) and medlens with the model's
version as the algorithm. BINARY segmentation (the type every viewer and dciodvfy know); a class the model
did not find keeps its segment, with no frames.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from medlens.deploy.dicom._common import (
    MANUFACTURER,
    SERIES_NUMBERS,
    algorithm_version,
    labels_frames,
    linkable,
    new_uid,
    quiet_highdicom,
    software_versions,
    structure_codes,
)


def build_segmentation(mask, classes: Mapping[int, str], source: Sequence, *, model_version: str | None = None,
                       where: str = "series"):
    """The SEG of ``mask`` referencing ``source``.

    Args:
        mask: an ``Image`` ``(1, X, Y, Z)`` of mask values on the series' grid (``(1, X, Y)`` for one slice).
        classes: ``{mask value: class name}`` of the foreground classes.
        source: the series' pydicom datasets in the order of the mask's last axis (``series_datasets``).
        model_version: the model card's version, recorded with the algorithm.

    Returns:
        A ``highdicom.seg.Segmentation``: frames ``(slices with a segment, rows, columns)``, new series and SOP
        instance UIDs, patient and study copied from ``source``.

    Raises:
        MedlensError: the mask is not on the series' grid.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    first = source[0]
    frames = labels_frames(mask, len(source), int(first.Rows), int(first.Columns), where)
    numbered = np.zeros(frames.shape, dtype=np.uint8 if len(classes) < 256 else np.uint16)
    for number, value in enumerate(classes, start=1):
        numbered[frames == value] = number
    algorithm = hd.AlgorithmIdentificationSequence(name=MANUFACTURER, family=codes.DCM.ArtificialIntelligence,
                                                   version=algorithm_version(model_version))
    segments = [_segment(number, name, algorithm) for number, name in enumerate(classes.values(), start=1)]
    with quiet_highdicom():
        return hd.seg.Segmentation(
            source_images=linkable(source), pixel_array=numbered, segment_descriptions=segments,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY, series_instance_uid=new_uid(),
            series_number=SERIES_NUMBERS["seg"], sop_instance_uid=new_uid(), instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name="medlens predict", software_versions=software_versions(model_version),
            device_serial_number="0", series_description="medlens segmentation", content_label="MEDLENS",
            content_description="Segmentation predicted by medlens")


def _segment(number: int, name: str, algorithm):
    import highdicom as hd

    category, kind = structure_codes(name)
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=name[:64], segmented_property_category=category,
        segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm, tracking_uid=new_uid(), tracking_id=name[:64])
