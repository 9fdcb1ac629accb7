"""Config: defaults, conversion and validation of raw dicts, ``--set`` overrides, plan files with reasons."""

from __future__ import annotations

import dataclasses

import pytest

from medlens.config import (
    AugmentSection,
    Config,
    DataSection,
    DatasetSection,
    ModelSection,
    TrainSection,
    apply_overrides,
    config_from_dict,
    read_plan,
    render_plan,
)
from medlens.errors import ConfigError

# ---- defaults -----------------------------------------------------------------------------------

def test_defaults():
    config = Config()

    assert config.data.input_size == (28, 28) and config.data.channels == 1
    assert config.data.normalization == "zscore" and config.data.intensity_range == ()
    assert config.model.name == "resnet18_2d" and config.model.width == 1.0
    assert config.train.max_epochs == 30 and config.train.batch_size == 64 and config.train.lr == 1e-3
    assert config.train.loss == "ce" and config.train.sampler == "shuffle" and config.train.schedule == "cosine"
    assert config.augment == AugmentSection() and not config.augment.flip_axes
    assert config.evaluate.n_bootstrap == 1000 and config.evaluate.tta is False and config.evaluate.baseline is False


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().train.max_epochs = 3  # type: ignore[misc]


def test_as_dict_turns_tuples_into_lists():
    plain = Config(dataset=DatasetSection(class_names=("a", "b"))).as_dict()

    assert list(plain) == ["dataset", "data", "model", "augment", "train", "segment", "detect", "pretrain", "anomaly",
                           "clinical", "evaluate"]
    assert plain["data"]["input_size"] == [28, 28]
    assert plain["dataset"]["class_names"] == ["a", "b"]
    assert plain["train"]["max_epochs"] == 30


def test_empty_dict_and_empty_section_keep_defaults():
    assert config_from_dict({}) == Config()
    assert config_from_dict({"train": None, "data": {}}) == Config()


# ---- conversion -------------------------------------------------------------------------------

def test_lists_become_tuples():
    config = config_from_dict({"data": {"input_size": [32, 48], "intensity_range": [0, 255]},
                               "dataset": {"class_names": ["normal", "lesion"]},
                               "augment": {"flip_axes": [0, 1]}})

    assert config.data.input_size == (32, 48) and isinstance(config.data.input_size, tuple)
    assert config.data.intensity_range == (0.0, 255.0)
    assert all(isinstance(v, float) for v in config.data.intensity_range)
    assert config.dataset.class_names == ("normal", "lesion")
    assert config.augment.flip_axes == (0, 1)


def test_a_scalar_for_a_tuple_field_becomes_a_one_tuple():
    assert config_from_dict({"augment": {"flip_axes": 1}}).augment.flip_axes == (1,)


def test_ints_become_floats_where_annotated_float():
    config = config_from_dict({"train": {"lr": 1, "time_budget_s": 120}, "model": {"width": 2}})

    assert config.train.lr == 1.0 and type(config.train.lr) is float
    assert config.train.time_budget_s == 120.0 and type(config.train.time_budget_s) is float
    assert config.model.width == 2.0 and type(config.model.width) is float


def test_numeric_strings_are_converted():
    # PyYAML reads "1e-3" (no dot) as a string; it must still become a float
    config = config_from_dict({"train": {"lr": "1e-3", "max_epochs": "7"}})

    assert config.train.lr == pytest.approx(0.001)
    assert config.train.max_epochs == 7 and type(config.train.max_epochs) is int


def test_whole_float_is_accepted_for_an_int_field():
    assert config_from_dict({"train": {"max_epochs": 5.0}}).train.max_epochs == 5


@pytest.mark.parametrize(("text", "expected"), [("true", True), ("True", True), ("yes", True),
                                                ("false", False), ("NO", False), (True, True), (False, False)])
def test_bool_strings(text, expected):
    assert config_from_dict({"evaluate": {"tta": text}}).evaluate.tta is expected


@pytest.mark.parametrize("value", ["maybe", 1, 0, "1"])
def test_bool_field_refuses_non_bools(value):
    with pytest.raises(ConfigError, match=r"evaluate\.tta: expected bool"):
        config_from_dict({"evaluate": {"tta": value}})


@pytest.mark.parametrize("value", [2.5, True, False, "2.5", "many", None])
def test_int_field_refuses_fractions_bools_and_words(value):
    with pytest.raises(ConfigError, match=r"config: train\.max_epochs: expected int, found"):
        config_from_dict({"train": {"max_epochs": value}})


def test_float_field_refuses_words():
    with pytest.raises(ConfigError, match=r"train\.lr: expected float, found 'fast'"):
        config_from_dict({"train": {"lr": "fast"}})


def test_float_field_refuses_bools():
    with pytest.raises(ConfigError, match=r"train\.lr: expected float"):
        config_from_dict({"train": {"lr": True}})


def test_tuple_items_are_checked():
    with pytest.raises(ConfigError, match=r"data\.input_size: expected int, found 2\.5"):
        config_from_dict({"data": {"input_size": [28, 2.5]}})


def test_literal_accepts_a_choice():
    assert config_from_dict({"train": {"loss": "focal"}}).train.loss == "focal"


def test_literal_refuses_with_the_choices_listed():
    with pytest.raises(ConfigError, match=r"train\.optimizer: 'adam' is not one of adamw, sgd"):
        config_from_dict({"train": {"optimizer": "adam"}})


def test_literal_refusal_suggests_the_closest_choice():
    with pytest.raises(ConfigError, match=r"'zscor' is not one of scale01, zscore, ct_window, ct_foreground, none; "
                                          r"did you mean `zscore`\?"):
        config_from_dict({"data": {"normalization": "zscor"}})


# ---- unknown names ----------------------------------------------------------------------------

def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"config: train: unknown key `max_epoch`; did you mean `max_epochs`\?"):
        config_from_dict({"train": {"max_epoch": 5}})


def test_unknown_key_without_a_close_match_has_no_suggestion():
    with pytest.raises(ConfigError, match=r"unknown key `zzz`$"):
        config_from_dict({"train": {"zzz": 5}})


def test_unknown_section_suggests_and_lists_sections():
    with pytest.raises(ConfigError, match=r"unknown section `trian`; did you mean `train`\?; sections are "
                                          r"dataset, data, model, augment, train, segment, detect, pretrain, "
                                          r"anomaly, clinical, evaluate"):
        config_from_dict({"trian": {"max_epochs": 5}})


def test_where_names_the_file():
    with pytest.raises(ConfigError, match=r"^plan\.yaml: model: unknown key `widht`; did you mean `width`\?"):
        config_from_dict({"model": {"widht": 0.5}}, where="plan.yaml")


def test_non_mapping_top_level_and_section_are_refused():
    with pytest.raises(ConfigError, match=r"expected a mapping of sections \(dataset, data, .*\), found list"):
        config_from_dict([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"section `train` must be a mapping of keys, found 5"):
        config_from_dict({"train": 5})


# ---- --set overrides --------------------------------------------------------------------------

def test_overrides_convert_their_values():
    config = apply_overrides(Config(), ["train.max_epochs=5", "data.input_size=[32, 32]", "evaluate.tta=true",
                                        "train.weight_decay=1e-3", "model.name=seedcnn_2d"])

    assert config.train.max_epochs == 5
    assert config.data.input_size == (32, 32)
    assert config.evaluate.tta is True
    assert config.train.weight_decay == pytest.approx(0.001)  # YAML reads 1e-3 as a string
    assert config.model.name == "seedcnn_2d"


def test_overrides_keep_other_values_and_apply_in_order():
    base = Config(train=TrainSection(batch_size=16), data=DataSection(input_size=(64, 64)))

    config = apply_overrides(base, ["train.max_epochs=5", "train.max_epochs=9"])

    assert config.train.max_epochs == 9
    assert config.train.batch_size == 16 and config.data.input_size == (64, 64)
    assert base.train.max_epochs == 30  # the original is untouched


def test_override_spaces_around_the_key_are_ignored():
    assert apply_overrides(Config(), [" train.max_epochs =3"]).train.max_epochs == 3


def test_override_with_no_overrides_is_identity():
    config = Config(model=ModelSection(width=0.5))
    assert apply_overrides(config, []) == config


@pytest.mark.parametrize("text", ["train.max_epochs", "max_epochs=5", "=5", "train"])
def test_malformed_set_strings(text):
    with pytest.raises(ConfigError, match=r"expected SECTION\.KEY=VALUE, e\.g\. train\.max_epochs=30"):
        apply_overrides(Config(), [text])


def test_override_unknown_key_suggests():
    with pytest.raises(ConfigError, match=r"--set train: unknown key `max_epoch`; did you mean `max_epochs`\?"):
        apply_overrides(Config(), ["train.max_epoch=5"])


def test_override_unknown_section_suggests():
    with pytest.raises(ConfigError, match=r"--set: unknown section `trian`; did you mean `train`\?"):
        apply_overrides(Config(), ["trian.max_epochs=5"])


def test_override_bad_value_is_refused():
    with pytest.raises(ConfigError, match=r"train\.max_epochs: expected int, found 2\.5"):
        apply_overrides(Config(), ["train.max_epochs=2.5"])
    with pytest.raises(ConfigError, match=r"train\.optimizer: 'adam' is not one of adamw, sgd"):
        apply_overrides(Config(), ["train.optimizer=adam"])


def test_override_yes_no_class_names_are_not_turned_into_booleans():
    try:
        config = apply_overrides(Config(), ["dataset.class_names=[no, yes]"])
    except ConfigError:
        return  # refusing is fine too
    assert config.dataset.class_names == ("no", "yes")


def test_override_value_that_is_not_yaml_is_kept_as_text():
    assert apply_overrides(Config(), ["model.name=[abc"]).model.name == "[abc"


# ---- plan files -------------------------------------------------------------------------------

def planned_config() -> Config:
    return Config(
        dataset=DatasetSection(source="/data/chest.csv", layout="manifest", task="multiclass",
                               class_names=("no", "yes", "maybe"), spatial_dims=2, modality="CR"),
        data=DataSection(input_size=(64, 48), channels=3, normalization="scale01", intensity_range=(0.0, 255.0)),
        model=ModelSection(name="seedcnn_2d", width=0.25, dropout=0.1),
        augment=AugmentSection(flip_axes=(0, 1), rotate_deg=15.0, probability=0.7),
        train=TrainSection(max_epochs=24, lr=3e-4, weight_decay=1e-8, loss="weighted_ce", time_budget_s=120.0),
    )


def test_render_plan_writes_reasons_as_comments():
    text = render_plan(planned_config(), {"train.max_epochs": "4.1 s per epoch measured"}, header="made by test")

    lines = text.splitlines()
    assert lines[0] == "# made by test"
    assert "dataset:" in lines and "evaluate:" in lines
    (epochs,) = [line for line in lines if line.startswith("  max_epochs:")]
    assert epochs.startswith("  max_epochs: 24 ")
    assert epochs.endswith(" # 4.1 s per epoch measured")
    assert "  input_size: [64, 48]" in lines
    assert "  class_names: ['no', 'yes', maybe]" in lines  # quoted: YAML 1.1 would read no/yes as bools
    assert "..." not in text


def test_plan_round_trip(tmp_path):
    config = planned_config()
    reasons = {"train.max_epochs": "4.1 s per epoch measured here; 24 epochs fit the 120 s budget",
               "data.normalization": "8-bit images: fixed scaling 0..255 -> [0, 1]",
               "model.name": "small network",
               "augment.flip_axes": "left-right mirroring (axis 0)"}
    path = tmp_path / "plan.yaml"
    path.write_text(render_plan(config, reasons, header="plan for a test\nedit freely"), encoding="utf-8")

    loaded, loaded_reasons = read_plan(path)

    assert loaded == config
    assert loaded_reasons == reasons


def test_plan_round_trip_of_defaults_without_reasons(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(render_plan(Config(), {}), encoding="utf-8")

    assert read_plan(path) == (Config(), {})


def test_plan_value_with_hash_does_not_invent_a_reason(tmp_path):
    config = Config(dataset=DatasetSection(source="scans # 2"))
    path = tmp_path / "plan.yaml"
    path.write_text(render_plan(config, {"dataset.layout": "from the folder"}), encoding="utf-8")

    loaded, reasons = read_plan(path)

    assert loaded == config
    assert reasons == {"dataset.layout": "from the folder"}


def test_edited_plan_is_validated(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(render_plan(Config(), {}).replace("max_epochs: 30", "max_epoch: 30"), encoding="utf-8")

    with pytest.raises(ConfigError, match=r"plan\.yaml: train: unknown key `max_epoch`; did you mean `max_epochs`"):
        read_plan(path)


def test_missing_or_broken_plan_file(tmp_path):
    with pytest.raises(ConfigError, match=r"absent\.yaml: not a readable plan .*medlens plan DATA"):
        read_plan(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [1, 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not a readable plan"):
        read_plan(broken)
