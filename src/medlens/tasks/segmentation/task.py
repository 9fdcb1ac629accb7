"""The segmentation task: a label map per image, 2D or 3D, after nnU-Net's rules."""

from __future__ import annotations

from pathlib import Path

from medlens._files import read_json
from medlens.config import Config
from medlens.errors import ConfigError
from medlens.tasks.base import EvaluateOptions, Evaluation, Explained, Fit, check_ignored, check_monitor, same_classes
from medlens.tasks.segmentation.plan import KINDS


class SegmentationTask:
    """Segmentation networks from the registry trained on patches, validated and applied by sliding windows;
    see :mod:`.plan`, :mod:`.module`, :mod:`.evaluate`, :mod:`.report`, :mod:`.outputs`."""

    name = "segmentation"
    kinds = KINDS
    monitors = ("val_dice",)
    ignored = frozenset({"clinical", "model.view_encoder", "model.view_pooling", "train.modality_dropout",
                         "detect", "pretrain", "anomaly", "dataset.boxes_from_masks",
                         "model.width", "model.members", "train.sampler", "train.label_smoothing",
                         "train.freeze_epochs", "train.finetune_lr_factor", "evaluate.baseline"})
    runs_exports = False
    dicom_kinds = ("seg", "rtstruct", "sr")  # a mask: as SEG or structure set, its volumes in a report
    aggregate_calibration = None  # its calibration needs the validation cases themselves
    service_options = ("mask",)

    # ---- plan ----------------------------------------------------------------------------------------
    def plan(self, card, *, time_budget_s, device, processes=1, probe=True):
        from medlens.tasks.segmentation.plan import plan_segmentation

        return plan_segmentation(card, time_budget_s=time_budget_s, device=device, processes=processes, probe=probe)

    def for_other_data(self, config: Config, class_names: tuple[str, ...], where: str) -> Config:
        return same_classes(config, class_names, where)

    def check(self, config: Config) -> None:
        """A segmentation network of the data's dimensionality whose patch every level divides evenly, one
        label value per class, a segmentation loss, and no key this task ignores."""
        from medlens.models import SEGMENTERS, patch_multiple
        from medlens.tasks.losses import check_loss

        dims, name, patch = config.dataset.spatial_dims, config.model.name, tuple(config.data.input_size)
        if name not in SEGMENTERS:
            raise ConfigError(f"model.name={name} is not a segmentation network; use one of "
                              f"{', '.join(n for n in SEGMENTERS.names() if n.endswith(f'_{dims}d'))}")
        if not name.endswith(f"_{dims}d") or len(patch) != dims:
            raise ConfigError(f"model.name={name} with patch data.input_size={list(patch)} does not fit {dims}D "
                              f"data; use {name.rsplit('_', 1)[0]}_{dims}d and a {dims}-axis patch")
        multiple = patch_multiple(name, config.model.strides)
        if any(p % m for p, m in zip(patch, multiple)):
            raise ConfigError(f"data.input_size={list(patch)}: {name} with these strides needs every patch side to "
                              f"be a multiple of {list(multiple)}; e.g. "
                              f"{[-(-p // m) * m for p, m in zip(patch, multiple)]}")
        if len(config.dataset.label_values) != len(config.dataset.class_names):
            raise ConfigError(f"dataset.label_values {list(config.dataset.label_values)} and dataset.class_names "
                              f"{list(config.dataset.class_names)} need one entry per class")
        check_loss(config.train.loss, "mask")
        check_monitor(self, config)
        check_ignored(self, config)

    # ---- training ------------------------------------------------------------------------------------
    def build_model(self, config: Config):
        from medlens.models import build_segmenter
        from medlens.models.norms import with_norm

        m = config.model
        return with_norm(build_segmenter(m.name, in_channels=config.data.channels,
                                         num_classes=len(config.dataset.class_names), filters=m.filters,
                                         strides=m.strides, kernels=m.kernels, deep_supervision=m.deep_supervision,
                                         dropout=m.dropout, input_size=config.data.input_size), m.norm)

    def prepare_fit(self, config, dataset, cases, *, world_size, log) -> Fit:
        from medlens.tasks.segmentation.fit import prepare_fit

        return prepare_fit(self, config, dataset, cases, world_size=world_size, log=log)

    def finish(self, run, config, model, fit, log) -> str:
        from medlens.tasks.segmentation.fit import finish

        return finish(run, config, model, fit, log)

    # ---- evaluation and report -------------------------------------------------------------------------
    def evaluate(self, run, config, model, options: EvaluateOptions, log) -> Evaluation:
        from medlens.tasks.segmentation.evaluate import evaluate_segmentation

        return evaluate_segmentation(run, config, model, options, log)

    def report_sections(self, run, config, card, doc, evidence) -> list:
        from medlens.tasks.segmentation.report import segmentation_sections

        return segmentation_sections(run, doc, card, config, evidence)

    def compare_table(self, runs):
        from medlens.tasks.segmentation.report import compare_table

        return compare_table(runs)

    # ---- deployment ------------------------------------------------------------------------------------
    def card_details(self, run, config: Config) -> dict:
        data = config.data
        doc = read_json(run.metrics_json)
        return {"steps": [f"resample to {list(data.target_spacing) or 'the native'} mm (images linear, masks nearest)",
                          f"normalise: {data.normalization}", f"sliding window of {list(data.input_size)} voxels, "
                          f"overlap {config.segment.overlap}, Gaussian blending",
                          "probabilities back to the input grid"],
                "calibration": None, "metrics": doc.get("metrics", {}) if doc else {}}

    def predict(self, predictor, image, *, heatmap, tta, probabilities, where) -> dict:
        from medlens.tasks.segmentation.outputs import predict

        return predict(predictor, image, tta=tta, probabilities=probabilities, where=where)

    def to_json(self, result, options, folder: Path) -> dict:
        from medlens.tasks.segmentation.outputs import to_json

        return to_json(result, options, folder)

    def write_outputs(self, predictor, inputs, out, *, tta, probabilities, log) -> int:
        from medlens.tasks.segmentation.outputs import write_outputs

        return write_outputs(predictor, inputs, out, tta=tta, probabilities=probabilities, log=log)

    def exportable(self, model):
        return model

    # ---- explanations ----------------------------------------------------------------------------------
    def explain(self, model, config, calibration, image, *, method, class_name, where) -> Explained:
        from medlens.tasks.segmentation.explain import explain_region

        return explain_region(model, config, image, method=method, class_name=class_name, where=where)

    def sanity(self, model, config, items, method) -> dict | None:
        return None  # the randomisation test compares class maps of whole images; regions have no such baseline
