"""The anomaly task: one-class detection trained on normal cases of class-labelled data."""

from __future__ import annotations

from pathlib import Path

from medlens._files import read_json
from medlens.config import Config
from medlens.errors import ConfigError
from medlens.tasks.base import EvaluateOptions, Evaluation, Explained, Fit, check_ignored, check_monitor

HEADLINE = ("auroc", "auprc", "sensitivity", "specificity")  # the model card's figures
AUTOENCODER_CHANNELS = (16, 32, 64)


class AnomalyTask:
    """A Gaussian of feature statistics (with the nearest normal image) or PatchCore on a registry encoder, or
    MONAI's AutoEncoder; see :mod:`.plan`, :mod:`.fit`, :mod:`.evaluate`, :mod:`.outputs`. Trained with
    ``medlens train DATA --task anomaly --normal CLASS``."""

    name = "anomaly"
    kinds = ()  # no data are anomaly data by themselves: class-labelled data train it when asked (--task anomaly)
    monitors = ("val_loss",)
    ignored = frozenset({"clinical", "model.norm", "model.view_encoder", "model.view_pooling", "train.modality_dropout",
                         "segment", "detect", "dataset.boxes_from_masks", "data.target_spacing",
                         "data.foreground_stats", "model.filters", "model.strides", "model.kernels",
                         "model.deep_supervision", "model.members", "model.dropout", "train.loss",
                         "train.label_smoothing", "train.sampler", "train.freeze_epochs", "train.finetune_lr_factor",
                         "train.ema_fraction", "evaluate.tta", "evaluate.baseline"})
    runs_exports = True
    dicom_kinds = ("capture",)  # the anomaly map overlay
    aggregate_calibration = None  # its calibration needs the validation cases themselves
    service_options = ("heatmap", "map")

    # ---- plan ----------------------------------------------------------------------------------------
    def plan(self, card, *, time_budget_s, device, processes=1, probe=True, normal=()):
        from medlens.tasks.anomaly.plan import plan_anomaly

        return plan_anomaly(card, time_budget_s=time_budget_s, device=device, processes=processes, probe=probe,
                            normal=tuple(normal))

    def for_other_data(self, config: Config, class_names: tuple[str, ...], where: str) -> Config:
        """Other data hold the normal class(es) and any others, which are all abnormal: a model fitted on normal
        images alone is scored on data that has abnormal ones too."""
        from dataclasses import replace

        from medlens.errors import DatasetError

        if not any(name in class_names for name in config.anomaly.normal):
            raise DatasetError(f"{where}: none of its classes ({', '.join(class_names) or 'none'}) is the run's normal "
                               f"class ({', '.join(config.anomaly.normal)}); name the normal images' folder or label "
                               "as the training data did, and every other class counts as abnormal")
        return replace(config, dataset=replace(config.dataset, class_names=tuple(class_names)))

    def check(self, config: Config) -> None:
        """Normal classes of the data, a network for the method, a memory, a false-positive rate in [0, 1)."""
        a, names = config.anomaly, list(config.dataset.class_names)
        if not a.normal or any(n not in names for n in a.normal):
            raise ConfigError(f"anomaly.normal={list(a.normal)}: name the normal class(es) among {', '.join(names)} "
                              "(--normal CLASS)")
        if not 0 <= a.fpr < 1:
            raise ConfigError(f"anomaly.fpr={a.fpr}: the share of normal cases allowed above the threshold must be "
                              "in [0, 1); e.g. 0.05")
        if a.method == "patchcore" and (a.memory_size < 1 or a.neighbours < 1 or a.neighbours > a.memory_size):
            raise ConfigError(f"anomaly.memory_size={a.memory_size}, anomaly.neighbours={a.neighbours}: patchcore "
                              "needs a memory of at least 1 vector and 1 <= neighbours <= memory_size; re-plan")
        if len(config.data.input_size) != config.dataset.spatial_dims:
            raise ConfigError(f"data.input_size={list(config.data.input_size)} has {len(config.data.input_size)} "
                              f"axes but the data are {config.dataset.spatial_dims}D")
        self.build_model(config)  # a network that does not fit the method or the input fails here, saying why
        check_monitor(self, config)
        check_ignored(self, config)

    # ---- training ------------------------------------------------------------------------------------
    def build_model(self, config: Config):
        """Gaussian (encoder + per-stage Gaussians, + a memory of normal images for gaussian_knn), PatchCore
        (encoder + memory) or the autoencoder."""
        from medlens.tasks.anomaly.gaussian import GaussianModel
        from medlens.tasks.anomaly.models import AutoencoderModel, PatchCoreModel, autoencoder_levels

        dims, name, size = config.dataset.spatial_dims, config.model.name, tuple(config.data.input_size)
        if config.anomaly.method == "autoencoder":
            levels = autoencoder_levels(size)
            if name != f"autoencoder_{dims}d" or not levels:
                raise ConfigError(f"anomaly.method=autoencoder builds MONAI's AutoEncoder: set model.name="
                                  f"autoencoder_{dims}d and a data.input_size divisible by 2 on every axis "
                                  f"(found {name}, {list(size)})")
            channels = tuple(max(4, int(c * config.model.width)) for c in AUTOENCODER_CHANNELS[:levels])
            return AutoencoderModel(name=name, in_channels=config.data.channels, input_size=size, channels=channels)
        from medlens.models import build_classifier

        if not name.endswith(f"_{dims}d"):
            raise ConfigError(f"model.name={name} does not take {dims}D data; use {name.rsplit('_', 1)[0]}_{dims}d")
        classifier = build_classifier(name, in_channels=config.data.channels,
                                      num_classes=max(len(config.dataset.class_names), 1), input_size=size,
                                      width=config.model.width)
        if config.anomaly.method in ("gaussian", "gaussian_knn"):
            knn = config.anomaly.method == "gaussian_knn"
            return GaussianModel(classifier, memory_size=max(config.anomaly.memory_size, 1) if knn else 0)
        return PatchCoreModel(classifier, memory_size=max(config.anomaly.memory_size, 1),
                              neighbours=config.anomaly.neighbours)

    def prepare_fit(self, config, dataset, cases, *, world_size, log) -> Fit:
        from medlens.tasks.anomaly.fit import prepare_fit

        return prepare_fit(self, config, dataset, cases, world_size=world_size, log=log)

    def finish(self, run, config, model, fit, log) -> str:
        from medlens.tasks.anomaly.fit import finish

        return finish(run, config, model, fit, log)

    # ---- evaluation and report -------------------------------------------------------------------------
    def evaluate(self, run, config, model, options: EvaluateOptions, log) -> Evaluation:
        from medlens.tasks.anomaly.evaluate import evaluate_anomaly

        return evaluate_anomaly(run, config, model, options, log)

    def report_sections(self, run, config, card, doc, evidence) -> list:
        from medlens.tasks.anomaly.report import anomaly_sections

        return anomaly_sections(doc, evidence)

    def compare_table(self, runs):
        from medlens.tasks.anomaly.report import compare_table

        return compare_table(runs)

    # ---- deployment ------------------------------------------------------------------------------------
    def card_details(self, run, config: Config) -> dict:
        data, a = config.data, config.anomaly
        c = run.read_calibration()
        metrics = (read_json(run.metrics_json) or {}).get("metrics", {})
        return {"steps": [f"channels -> {data.channels}",
                          f"normalise: {data.normalization} {list(data.intensity_range) or ''}".strip(),
                          f"resize to {list(data.input_size)}",
                          f"anomaly map ({a.method}); score = its maximum; anomalous above the threshold"],
                "calibration": {"threshold": c.get("threshold"), "threshold_rule": c.get("threshold_rule"),
                                "fitted_on": c.get("fitted_on"), "normal_above": c.get("normal_above"),
                                "normal": list(a.normal), "method": a.method},
                "metrics": {k: metrics.get(k) for k in HEADLINE}}

    def predict(self, predictor, image, *, heatmap, tta, probabilities, where) -> dict:
        from medlens.tasks.anomaly.outputs import predict

        if tta or probabilities:
            raise ConfigError("--tta and --probabilities do not apply to anomaly models (the map is returned "
                              "with --heatmap, and written for 3D models by `medlens predict --out`)")
        return predict(predictor, image, heatmap=heatmap, where=where)

    def to_json(self, result, options, folder: Path) -> dict:
        from medlens.tasks.anomaly.outputs import to_json

        return to_json(result, options, folder)

    def write_outputs(self, predictor, inputs, out, *, tta, probabilities, log) -> int:
        from medlens.tasks.anomaly.outputs import write_outputs

        if tta or probabilities:
            raise ConfigError("--tta and --probabilities do not apply to anomaly models; --out writes the scores "
                              "(and, for 3D models, the anomaly maps)")
        return write_outputs(predictor, inputs, out, log=log)

    def exportable(self, model):
        """The whole network: images in, anomaly maps ``(B, 1, *input_size)`` out (the memory bank included)."""
        return model

    # ---- explanations ----------------------------------------------------------------------------------
    def explain(self, model, config, calibration, image, *, method, class_name, where) -> Explained:
        from medlens.tasks.anomaly.explain import explain_image

        return explain_image(model, config, calibration, image, where=where)

    def sanity(self, model, config, items, method) -> dict | None:
        return None
