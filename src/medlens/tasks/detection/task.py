"""The detection task: labelled boxes per image, 2D or 3D, with MONAI's RetinaNet."""

from __future__ import annotations

from pathlib import Path

from medlens._files import read_json
from medlens.config import Config
from medlens.errors import ConfigError
from medlens.tasks.base import EvaluateOptions, Evaluation, Explained, Fit, check_ignored, check_monitor, same_classes
from medlens.tasks.detection.plan import KINDS


def build_network(config: Config):
    """The detector the plan describes, with its post-processing (score threshold, per-class NMS, box limit)."""
    from medlens.models.detectors import build_detector, set_postprocessing

    m, d = config.model, config.detect
    net = build_detector(m.name, in_channels=config.data.channels, num_classes=len(config.dataset.class_names),
                         filters=m.filters, base_anchors=d.anchors, returned_layers=d.returned_layers,
                         fpn_channels=d.fpn_channels)
    set_postprocessing(net, score_threshold=d.score_threshold, nms_iou=d.nms_iou, max_detections=d.max_detections)
    return net


class DetectionTask:
    """RetinaNet trained on patches with boxes, validated by COCO mAP, applied whole or by sliding windows;
    see :mod:`.plan`, :mod:`.prepare`, :mod:`.module`, :mod:`.evaluate`, :mod:`.outputs`."""

    name = "detection"
    kinds = KINDS
    monitors = ("val_map", "val_map50")
    ignored = frozenset({"clinical", "model.norm", "model.view_encoder", "model.view_pooling", "train.modality_dropout",
                         "segment", "pretrain", "anomaly", "model.width", "model.members", "model.strides",
                         "model.kernels",
                         "model.deep_supervision", "train.sampler", "train.label_smoothing", "train.loss",
                         "train.freeze_epochs", "train.finetune_lr_factor", "evaluate.baseline", "evaluate.tta",
                         "augment.rotate_deg", "augment.scale", "augment.translate", "augment.gamma",
                         "augment.elastic", "dataset.label_values"})
    runs_exports = False
    dicom_kinds = ("sr",)  # boxes as planar regions with their scores
    aggregate_calibration = None  # its calibration needs the validation cases themselves
    service_options = ("overlay",)

    # ---- plan ----------------------------------------------------------------------------------------
    def plan(self, card, *, time_budget_s, device, processes=1, probe=True):
        from medlens.tasks.detection.plan import plan_detection

        return plan_detection(card, time_budget_s=time_budget_s, device=device, processes=processes, probe=probe)

    def for_other_data(self, config: Config, class_names: tuple[str, ...], where: str) -> Config:
        return same_classes(config, class_names, where)

    def check(self, config: Config) -> None:
        """A detector of the data's dimensionality, a patch the network divides, anchors of D sides, sane
        post-processing, and no key this task ignores."""
        from medlens.models.detectors import DETECTORS, network_multiple

        dims, name, patch, d = config.dataset.spatial_dims, config.model.name, tuple(config.data.input_size), \
            config.detect
        if name not in DETECTORS or not name.endswith(f"_{dims}d") or len(patch) != dims:
            raise ConfigError(f"model.name={name} with patch data.input_size={list(patch)} does not fit {dims}D "
                              f"detection; use retinanet_{dims}d and a {dims}-axis patch")
        multiple = network_multiple(dims, d.returned_layers)
        if any(p % m for p, m in zip(patch, multiple)):
            raise ConfigError(f"data.input_size={list(patch)}: with detect.returned_layers={list(d.returned_layers)} "
                              f"every side must be a multiple of {multiple[0]}; e.g. "
                              f"{[-(-p // m) * m for p, m in zip(patch, multiple)]}")
        if not d.anchors or any(len(a) != dims or min(a) <= 0 for a in d.anchors):
            raise ConfigError(f"detect.anchors={[list(a) for a in d.anchors]}: give anchor shapes of {dims} positive "
                              "sides (voxels of the network input), e.g. [[16, 16], [20, 12], [12, 20]]")
        if not (0 < d.nms_iou <= 1 and 0 <= d.score_threshold < 1 and d.max_detections >= 1 and 0 < d.froc_iou <= 1):
            raise ConfigError(f"detect.nms_iou={d.nms_iou} and detect.froc_iou={d.froc_iou} must lie in (0, 1], "
                              f"detect.score_threshold={d.score_threshold} in [0, 1), "
                              f"detect.max_detections={d.max_detections} >= 1; fix the plan or --set")
        check_monitor(self, config)
        check_ignored(self, config)

    # ---- training ------------------------------------------------------------------------------------
    def build_model(self, config: Config):
        return build_network(config)

    def prepare_fit(self, config, dataset, cases, *, world_size, log) -> Fit:
        from medlens.tasks.detection.fit import prepare_fit

        return prepare_fit(self, config, dataset, cases, world_size=world_size, log=log)

    def finish(self, run, config, model, fit, log) -> str:
        from medlens.tasks.detection.fit import finish

        return finish(run, config, model, fit, log)

    # ---- evaluation and report -------------------------------------------------------------------------
    def evaluate(self, run, config, model, options: EvaluateOptions, log) -> Evaluation:
        from medlens.tasks.detection.evaluate import evaluate_detection

        return evaluate_detection(run, config, model, options, log)

    def report_sections(self, run, config, card, doc, evidence) -> list:
        from medlens.tasks.detection.report import detection_sections

        return detection_sections(run, doc, card, config, evidence)

    def compare_table(self, runs):
        from medlens.tasks.detection.report import compare_table

        return compare_table(runs)

    # ---- deployment ------------------------------------------------------------------------------------
    def card_details(self, run, config: Config) -> dict:
        data, d = config.data, config.detect
        doc = read_json(run.metrics_json)
        post = run.read_postprocess()
        return {"steps": [f"resample to {list(data.target_spacing)} mm (a pixel without spacing counts as 1 mm)",
                          f"normalise: {data.normalization}",
                          f"RetinaNet on the whole image, or sliding windows of {list(data.input_size)} voxels",
                          f"per-class non-maximum suppression at IoU {d.nms_iou}, boxes scored >= {d.score_threshold}, "
                          f"at most {d.max_detections} per image", "boxes back to the input's voxel grid"],
                "calibration": post or None, "metrics": doc.get("metrics", {}) if doc else {}}

    def predict(self, predictor, image, *, heatmap, tta, probabilities, where) -> dict:
        from medlens.tasks.detection.outputs import predict

        return predict(predictor, image, where=where)

    def to_json(self, result, options, folder: Path) -> dict:
        from medlens.tasks.detection.outputs import to_json

        return to_json(result, options, folder)

    def write_outputs(self, predictor, inputs, out, *, tta, probabilities, log) -> int:
        from medlens.tasks.detection.outputs import write_outputs

        return write_outputs(predictor, inputs, out, log=log)

    def exportable(self, model):
        from medlens.models.detectors import DetectorHeads

        return DetectorHeads(model).eval()  # anchors, box decoding and non-maximum suppression stay in Python

    # ---- explanations ----------------------------------------------------------------------------------
    def explain(self, model, config, calibration, image, *, method, class_name, where) -> Explained:
        from medlens.tasks.detection.explain import explain_detection

        return explain_detection(model, config, image, class_name=class_name, where=where)

    def sanity(self, model, config, items, method) -> dict | None:
        return None  # the randomisation test compares classifiers' class maps; a score map has no such baseline
