"""The pretraining task: an encoder learnt from images alone, to be fine-tuned by another run."""

from __future__ import annotations

from pathlib import Path

from medlens.config import Config
from medlens.errors import ConfigError
from medlens.tasks.base import EvaluateOptions, Evaluation, Explained, Fit, check_ignored, check_monitor

NOT_A_PREDICTOR = ("a pretraining run is an encoder, not a predictor; fine-tune it: "
                   "medlens train DATA --init-from RUN")


class PretrainingTask:
    """SimCLR on a registry classifier's encoder; see :mod:`.plan`, :mod:`.views`, :mod:`.module`, :mod:`.fit`,
    :mod:`.evaluate`, :mod:`.report`. Its runs are fine-tuned (``--init-from``), never deployed."""

    name = "pretraining"
    kinds = ("pretraining",)
    monitors = ("val_loss",)
    ignored = frozenset({"clinical", "model.norm", "model.view_encoder", "model.view_pooling", "train.modality_dropout",
                         "segment", "detect", "anomaly", "dataset.boxes_from_masks", "model.filters", "model.strides",
                         "model.kernels", "model.deep_supervision", "model.members", "model.dropout",
                         "data.target_spacing", "data.foreground_stats", "train.loss", "train.label_smoothing",
                         "train.sampler", "train.freeze_epochs", "train.finetune_lr_factor", "evaluate.tta",
                         "evaluate.baseline"})
    runs_exports = False
    dicom_kinds = ()  # an encoder answers nothing a PACS stores
    aggregate_calibration = None  # its calibration needs the validation cases themselves
    service_options = ()

    # ---- plan ----------------------------------------------------------------------------------------
    def plan(self, card, *, time_budget_s, device, processes=1, probe=True):
        from medlens.tasks.pretraining.plan import plan_pretraining

        return plan_pretraining(card, time_budget_s=time_budget_s, device=device, processes=processes, probe=probe)

    def for_other_data(self, config: Config, class_names: tuple[str, ...], where: str) -> Config:
        raise ConfigError("a pretraining run is an encoder, not a predictor: fine-tune it (medlens train DATA "
                          "--init-from RUN) and evaluate that run on the other data")

    def check(self, config: Config) -> None:
        """A registry classifier of the data's dimensionality, an input size with as many axes, a temperature
        and crop scale in range, and no key this task ignores."""
        from medlens.models import CLASSIFIERS, SEGMENTERS

        dims, name, p = config.dataset.spatial_dims, config.model.name, config.pretrain
        if name in SEGMENTERS:
            raise ConfigError(f"model.name={name} is not a classifier; pretraining learns a classifier's encoder "
                              f"({', '.join(CLASSIFIERS.names()[:4])}, ...)")
        CLASSIFIERS.get(name)  # an unknown name fails here, with a "did you mean"
        if not name.endswith(f"_{dims}d") or len(config.data.input_size) != dims:
            raise ConfigError(f"model.name={name} with data.input_size={list(config.data.input_size)} does not fit "
                              f"{dims}D data; use {name.rsplit('_', 1)[0]}_{dims}d and {dims} sizes")
        if not 0 < p.temperature <= 1 or not 0 < p.crop_scale <= 1 or p.projection_dim < 1:
            raise ConfigError(f"pretrain.temperature={p.temperature}, crop_scale={p.crop_scale}, projection_dim="
                              f"{p.projection_dim}: expected a temperature and a crop share in (0, 1] and a "
                              "projection of at least 1 (e.g. 0.1, 0.5, 128)")
        check_monitor(self, config)
        check_ignored(self, config)

    # ---- training ------------------------------------------------------------------------------------
    def build_model(self, config: Config):
        """The registry classifier whose encoder is learnt. Its head is a placeholder of one logit, never trained:
        no classifier has one output, so ``--init-from`` always re-initialises the head and says so."""
        from medlens.models import build_classifier

        return build_classifier(config.model.name, in_channels=config.data.channels,
                                num_classes=1,
                                input_size=tuple(config.data.input_size), width=config.model.width)

    def prepare_fit(self, config, dataset, cases, *, world_size, log) -> Fit:
        from medlens.tasks.pretraining.fit import prepare_fit

        return prepare_fit(self, config, dataset, cases, world_size=world_size, log=log)

    def finish(self, run, config, model, fit, log) -> str:
        from medlens.tasks.pretraining.fit import finish

        return finish(run, config, model, fit, log)

    # ---- evaluation and report -------------------------------------------------------------------------
    def evaluate(self, run, config, model, options: EvaluateOptions, log) -> Evaluation:
        from medlens.tasks.base import initial_model
        from medlens.tasks.pretraining.evaluate import evaluate_pretraining

        return evaluate_pretraining(run, config, model, initial_model(self, config), options, log)

    def report_sections(self, run, config, card, doc, evidence) -> list:
        from medlens.tasks.pretraining.report import pretraining_sections

        return pretraining_sections(run, doc)

    def compare_table(self, runs):
        from medlens.tasks.pretraining.report import compare_table

        return compare_table(runs)

    # ---- deployment: none; a pretraining run is fine-tuned, not deployed --------------------------------
    def card_details(self, run, config: Config) -> dict:
        from medlens._files import read_json
        from medlens.tasks.pretraining.fit import PRETRAIN_JSON

        summary = read_json(run.root / PRETRAIN_JSON, {})
        data = config.data
        return {"steps": [f"channels -> {data.channels}",
                          f"normalise: {data.normalization} {list(data.intensity_range) or ''}".strip(),
                          f"resize to {list(data.input_size)}", "encoder features (no prediction)"],
                "calibration": {},
                "metrics": {k: summary.get(k) for k in ("feature_size", "images_seen", "best_val_loss")}}

    def predict(self, predictor, image, *, heatmap, tta, probabilities, where) -> dict:
        raise ConfigError(NOT_A_PREDICTOR)

    def to_json(self, result, options, folder: Path) -> dict:
        raise ConfigError(NOT_A_PREDICTOR)

    def write_outputs(self, predictor, inputs, out, *, tta, probabilities, log) -> int:
        raise ConfigError(NOT_A_PREDICTOR)

    def exportable(self, model):
        raise ConfigError(NOT_A_PREDICTOR)

    # ---- explanations ----------------------------------------------------------------------------------
    def explain(self, model, config, calibration, image, *, method, class_name, where) -> Explained:
        raise ConfigError(NOT_A_PREDICTOR)

    def sanity(self, model, config, items, method) -> dict | None:
        return None
