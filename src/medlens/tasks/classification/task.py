"""The classification task: one label per image (binary, multi-class, ordinal) or several (multi-label)."""

from __future__ import annotations

from pathlib import Path

from medlens._files import read_json
from medlens.config import Config
from medlens.errors import ConfigError
from medlens.tasks.base import EvaluateOptions, Evaluation, Explained, Fit, check_ignored, check_monitor, same_classes
from medlens.tasks.classification.aggregates import AGGREGATES
from medlens.tasks.classification.plan import KINDS

HEADLINE = ("accuracy", "balanced_accuracy", "auc")  # the model card's figures


class ClassificationTask:
    """Classifiers from the registry (or ensembles of them) on preprocessed whole images; see :mod:`.plan`,
    :mod:`.module`, :mod:`.evaluate`, :mod:`.report`, :mod:`.outputs`."""

    name = "classification"
    kinds = KINDS
    monitors = ("val_auc", "val_loss", "val_accuracy", "val_qwk")  # val_qwk: ordinal grades only
    ignored = frozenset({"detect", "pretrain", "anomaly", "dataset.boxes_from_masks",
                         "segment", "model.filters", "model.strides", "model.kernels", "model.deep_supervision",
                         "data.target_spacing", "data.foreground_stats"})
    runs_exports = True
    dicom_kinds = ("sr", "capture")  # the finding with its probability; the heat-map overlay
    aggregate_calibration = AGGREGATES  # temperature and threshold from validation aggregates (fl server)
    service_options = ("heatmap",)

    # ---- plan ----------------------------------------------------------------------------------------
    def plan(self, card, *, time_budget_s, device, processes=1, probe=True):
        from medlens.tasks.classification.plan import plan_classification

        return plan_classification(card, time_budget_s=time_budget_s, device=device, processes=processes, probe=probe)

    def for_other_data(self, config: Config, class_names: tuple[str, ...], where: str) -> Config:
        return same_classes(config, class_names, where)

    def check(self, config: Config) -> None:
        """A registry classifier of the data's dimensionality, an input size with as many axes, a
        classification loss for these labels, and no key this task ignores."""
        from medlens.models import CLASSIFIERS, SEGMENTERS
        from medlens.tasks.losses import check_loss

        dims, name = config.dataset.spatial_dims, config.model.name
        if name in SEGMENTERS:
            raise ConfigError(f"model.name={name} is a segmentation network; this plan is for "
                              f"{config.dataset.task} classification ({', '.join(CLASSIFIERS.names()[:4])}, ...)")
        CLASSIFIERS.get(name)  # an unknown name fails here, with a "did you mean"
        if not name.endswith(f"_{dims}d"):
            raise ConfigError(f"model.name={name} does not take {dims}D data (input {list(config.data.input_size)}); "
                              f"use {name.rsplit('_', 1)[0]}_{dims}d")
        if len(config.data.input_size) != dims:
            raise ConfigError(f"data.input_size={list(config.data.input_size)} has {len(config.data.input_size)} "
                              f"axes but the data are {dims}D")
        if config.model.members < 1:
            raise ConfigError(f"model.members={config.model.members}: give 1 (one network) or more (an ensemble)")
        if config.clinical.fusion == "residual" and config.dataset.task not in ("binary", "multiclass"):
            raise ConfigError(f"clinical.fusion=residual starts from a logistic regression of one class per case, "
                              f"and this plan is for {config.dataset.task} classification; use clinical.fusion="
                              "concat (or film)")
        check_loss(config.train.loss, "multilabel" if config.dataset.task == "multilabel" else "index")
        check_monitor(self, config)
        if config.train.monitor == "val_qwk" and config.dataset.task != "ordinal":
            raise ConfigError(f"train.monitor=val_qwk: kappa is logged for ordinal grades, and this plan is for "
                              f"{config.dataset.task} classification; use val_auc (or set dataset.task=ordinal if the "
                              "classes are ordered grades)")
        check_ignored(self, config)

    # ---- training ------------------------------------------------------------------------------------
    def build_model(self, config: Config):
        """A registry classifier (a fusion network when a case has several inputs: views encoded apart, clinical
        values), or an :class:`~medlens.models.Ensemble` of ``model.members`` of them."""
        from medlens.models import Ensemble
        from medlens.tasks.classification.inputs import build_network

        m = config.model
        if m.members < 1:
            raise ConfigError(f"model.members={m.members}: give 1 (one network) or more (an ensemble)")
        members = [build_network(m, config.data, len(config.dataset.class_names), config.clinical)
                   for _ in range(m.members)]
        return members[0] if m.members == 1 else Ensemble(members)

    def prepare_fit(self, config, dataset, cases, *, world_size, log) -> Fit:
        from medlens.tasks.classification.fit import prepare_fit

        return prepare_fit(self, config, dataset, cases, world_size=world_size, log=log)

    def finish(self, run, config, model, fit, log) -> str:
        from medlens.tasks.classification.fit import finish

        return finish(run, config, model, fit, log)

    # ---- evaluation and report -------------------------------------------------------------------------
    def evaluate(self, run, config, model, options: EvaluateOptions, log) -> Evaluation:
        from medlens.tasks.classification.evaluate import evaluate_classification

        return evaluate_classification(run, config, model, options, log)

    def report_sections(self, run, config, card, doc, evidence) -> list:
        from medlens.tasks.classification.ood import describe_guard
        from medlens.tasks.classification.report import classification_sections, guard_section

        sections = classification_sections(doc, evidence, list(config.dataset.class_names), config.dataset.source)
        return [*sections, guard_section(describe_guard(run.ood_guard))]

    def compare_table(self, runs):
        from medlens.tasks.classification.report import compare_table

        return compare_table(runs)

    # ---- deployment ------------------------------------------------------------------------------------
    def card_details(self, run, config: Config) -> dict:
        """Preprocessing, calibration and headline metrics, and how the out-of-distribution guard was fitted."""
        from medlens.tasks.classification.ood import describe_guard

        data = config.data
        c = run.read_calibration()
        doc = read_json(run.metrics_json)
        metrics = doc.get("metrics", {}) if doc else {}
        return {"steps": [f"channels -> {data.channels}",
                          f"normalise: {data.normalization} {list(data.intensity_range) or ''}".strip(),
                          f"resize to {list(data.input_size)}", "softmax / sigmoid of logits / temperature"],
                "calibration": {"temperature": c["temperature"], "threshold": c["threshold"],
                                "threshold_rule": c.get("threshold_rule"), "fitted_on": c.get("fitted_on")},
                "metrics": {k: metrics.get(k) for k in HEADLINE}, "ood_guard": describe_guard(run.ood_guard)}

    def predict(self, predictor, image, *, heatmap, tta, probabilities, where) -> dict:
        from medlens.tasks.classification.outputs import predict

        return predict(predictor, image, heatmap=heatmap, tta=tta, where=where)

    def to_json(self, result, options, folder: Path) -> dict:
        from medlens.tasks.classification.outputs import to_json

        return to_json(result, options, folder)

    def write_outputs(self, predictor, inputs, out, *, tta, probabilities, log) -> int:
        from medlens.tasks.classification.outputs import write_outputs

        if probabilities:
            raise ConfigError("--probabilities writes segmentation probability maps; a classification run already "
                              "prints every class's probability (and --out writes them)")
        return write_outputs(predictor, inputs, out, tta=tta, log=log)

    def exportable(self, model):
        return model

    # ---- explanations ----------------------------------------------------------------------------------
    def explain(self, model, config, calibration, image, *, method, class_name, where) -> Explained:
        from medlens.tasks.classification.explain import explain_image

        return explain_image(model, config, calibration, image, method=method, class_name=class_name, where=where)

    def sanity(self, model, config, items, method) -> dict | None:
        from medlens.tasks.base import initial_model
        from medlens.tasks.classification.explain import randomisation_test

        return randomisation_test(model, initial_model(self, config), items, method) if items else None
