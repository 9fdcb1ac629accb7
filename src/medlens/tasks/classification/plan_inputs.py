"""Plan rules for cases of several inputs: how views are fused, which clinical columns go in, and how.

Each rule reads what the audit measured (``card["views"]``, ``card["clinical"]``) and writes its reason:
co-registered volumes become channels of one image (early fusion), views that are not co-registered get an
encoder input each and their features are fused; clinical columns are standardised / one-hot encoded, and a
column that alone separates the classes too well (``clinical.leakage``) is left out.
"""

from __future__ import annotations

from dataclasses import replace

from medlens.config import ClinicalSection, DataSection, ModelSection, TrainSection

LEAKAGE_AUC = 0.85  # a clinical column alone above this on the labelled cases is leakage (the audit's warning)
MAX_CATEGORIES = 20  # a categorical column with more is left out (one-hot would outgrow the data)
SHARED_ENCODER_BELOW = 2000  # training cases: fewer share one encoder across views
FILM_FROM = 1000  # training cases: from this many, clinical values condition the image features (FiLM)
RESIDUAL_BELOW = 500  # training cases: fewer start from a regression of the clinical values (residual fusion)
MODALITY_DROPOUT = 0.2  # chance each input is withheld from a training case, when a case has several
MIN_VIEW_SIDE = 64  # views are not shrunk below this many pixels per axis


def plan_views(card: dict, data: DataSection, reasons: dict) -> DataSection:
    """``data`` with ``views`` and ``fusion`` for a dataset of named views (unchanged for one image per case).

    Co-registered volumes (one grid, real patient geometry) are stacked as channels; anything else (views of
    different planes, 2D pictures whose files carry no geometry) is encoded view by view.
    """
    views = card.get("views") or {}
    names = tuple(views.get("names") or card["dataset"].get("views") or ())
    if len(names) < 2:
        return data
    reasons["data.views"] = f"{len(names)} image inputs per case ({', '.join(names)})"
    geometry = bool(card["images"].get("spacing_known"))
    if views.get("co_registered") and geometry:
        reasons["data.fusion"] = ("the views share one grid in patient space (co-registered): stacked as channels of "
                                  "one image (early fusion)")
        reasons["data.channels"] = f"{data.channels} channels: the views stacked"
        return replace(data, views=names, fusion="channels")
    why = ("their files carry no patient geometry (2D pictures), so they cannot be known to be co-registered"
           if not geometry else f"they are not co-registered ({views.get('grid_note') or 'their grids differ'})")
    reasons["data.fusion"] = f"each view is resized, normalised and encoded on its own, features fused: {why}"
    per_view = max(1, data.channels // len(names)) if data.channels % len(names) == 0 else data.channels
    channels = _view_channels(views, names) or per_view
    reasons["data.channels"] = f"{channels} channel(s) per view"
    return replace(data, views=names, fusion="views", channels=channels,
                   input_size=_view_size(data.input_size, len(names), reasons))


def _view_size(size: tuple[int, ...], views: int, reasons: dict) -> tuple[int, ...]:
    """``size`` shrunk so that ``views`` views of a case cost about what one image of ``size`` does (never below
    :data:`MIN_VIEW_SIDE`, and never enlarged): the budget buys the same number of epochs."""
    scale = views ** (-1 / len(size))
    shrunk = tuple(max(min(s, MIN_VIEW_SIDE), min(s, 8 * round(s * scale / 8))) for s in size)
    if shrunk != tuple(size):
        reasons["data.input_size"] = (f"{'x'.join(map(str, shrunk))} per view: {views} views of a case cost about "
                                      f"one {'x'.join(map(str, size))} image ({reasons.get('data.input_size', '')})")
    return shrunk


def _view_channels(views: dict, names: tuple[str, ...]) -> int | None:
    """The most common channel count of the views, when the audit measured it per view."""
    counts = [int(c) for n in names for c in [(views.get("per_view", {}).get(n) or {}).get("channels")] if c]
    return max(set(counts), key=counts.count) if counts else None


def plan_clinical(card: dict, reasons: dict) -> ClinicalSection:
    """The clinical columns that go in (numeric with units when known, categorical with their categories).

    Left out, each with its reason in ``clinical.numeric`` / ``clinical.categorical``: identifiers, columns with no
    value, numbers written with decimal commas, a federation's columns that some site lacks or reads as another kind,
    categorical columns with more than
    :data:`MAX_CATEGORIES` categories, and leakage (a column whose values alone separate the classes with AUC above
    :data:`LEAKAGE_AUC`).
    """
    from medlens.data.audit_clinical import scale_rule

    columns = card.get("clinical") or {}
    numeric, categorical, left_out, rescale = [], [], [], []
    for name, info in columns.items():
        kind, auc = info.get("kind"), info.get("auc")
        if kind == "identifier":
            left_out.append(f"{name} (an identifier)")
        elif info.get("present", 1) == 0 or kind == "empty":
            left_out.append(f"{name} (no value)")
        elif info.get("decimal_comma"):
            left_out.append(f"{name} (numbers written with a decimal comma: write them with a point)")
        elif auc is not None and auc > LEAKAGE_AUC:
            left_out.append(f"{name} (alone it separates the classes with AUC {auc:.2f}: a score that defines the "
                            "label is leakage, not a feature)")
        elif kind == "numeric":
            numeric.append(name)
            if info.get("scales") and (rule := scale_rule(name, info["scales"])):
                rescale.append(rule)
        elif kind == "categorical":
            categories = _categories(info)
            if max(len(categories), int(info.get("distinct") or 0)) > MAX_CATEGORIES:
                left_out.append(f"{name} ({max(len(categories), int(info.get('distinct') or 0))} categories; more "
                                f"than {MAX_CATEGORIES})")
            elif len(categories) >= 2:
                categorical.append(f"{name}={'|'.join(categories)}")
            else:
                left_out.append(f"{name} (one category)")
        elif info.get("why"):  # a federation's column that not every site can give alike
            left_out.append(f"{name} ({info['why']})")
    if not numeric and not categorical:
        if left_out:
            reasons["clinical.numeric"] = f"no clinical input; left out: {'; '.join(left_out)}"
        return ClinicalSection()
    note = f"; left out: {'; '.join(left_out)}" if left_out else ""
    reasons["clinical.numeric"] = (f"{len(numeric)} numeric column(s), z-scored with the training split's mean and "
                                   f"standard deviation, a missing value with an indicator{note}")
    reasons["clinical.units"] = "units are not in the manifest: add COLUMN=UNIT entries for the model card and form"
    reasons["clinical.categorical"] = (f"{len(categorical)} categorical column(s), one-hot over the categories seen; "
                                       "an unseen category at prediction is refused")
    if rescale:
        reasons["clinical.rescale"] = ("values on two scales a power of ten apart (a decimal point lost in some rows: "
                                       "the audit's clinical.scale warning): the fewer are brought onto the other "
                                       "scale before the z-score, at prediction too")
    return ClinicalSection(numeric=tuple(numeric), categorical=tuple(categorical), rescale=tuple(rescale))


def _categories(info: dict) -> list[str]:
    values = info.get("categories") or info.get("counts") or []
    return sorted(map(str, values.keys() if isinstance(values, dict) else values))


def plan_fusion(model: ModelSection, train: TrainSection, data: DataSection, clinical: ClinicalSection,
                train_cases: int, reasons: dict, *, kind: str = "binary",
                ) -> tuple[ModelSection, TrainSection, ClinicalSection]:
    """How views share an encoder and are pooled, how clinical values meet the image features (``kind``: the
    dataset's task), and the modality dropout that lets a case missing an input still be predicted."""
    views = len(data.views) if data.fusion == "views" else 1
    clinical_in = bool(clinical.numeric or clinical.categorical)
    if views > 1:
        shared = train_cases < SHARED_ENCODER_BELOW
        model = replace(model, view_encoder="shared" if shared else "separate",
                        view_pooling="concat" if views <= 4 else "attention")
        reasons["model.view_encoder"] = (
            f"one encoder for every view: {train_cases} training cases are few for {views} encoders, and each "
            "view then trains the same filters" if shared else
            f"one encoder per view: {train_cases} training cases are enough for each view to learn its own filters")
        reasons["model.view_pooling"] = (
            "view features concatenated (with a presence flag per view): the head sees which view said what"
            if views <= 4 else f"attention pooling over {views} views: weights learnt per case, missing views masked")
    if clinical_in:
        clinical = replace(clinical, fusion=_clinical_fusion(train_cases, kind, reasons))
    if views > 1 or clinical_in:
        sources = views + int(clinical_in)
        train = replace(train, modality_dropout=MODALITY_DROPOUT)
        reasons["train.modality_dropout"] = (f"each of the {sources} inputs is withheld from a training case with "
                                             f"chance {MODALITY_DROPOUT} (one view is always kept), so a case "
                                             "missing a view or its clinical values can still be predicted")
    return model, train, clinical


def _clinical_fusion(train_cases: int, kind: str, reasons: dict) -> str:
    if train_cases >= FILM_FROM:
        reasons["clinical.fusion"] = (f"FiLM: the clinical values scale and shift the image features ({train_cases} "
                                      "training cases are enough to learn the conditioning; DAFT, Pölsterl et al. "
                                      "2021)")
        return "film"
    if train_cases < RESIDUAL_BELOW and kind in ("binary", "multiclass"):
        reasons["clinical.fusion"] = (
            f"residual: a logistic regression of the clinical values, fitted on the {train_cases} training cases, "
            "gives the starting logits, and the images (beside the clinical values) learn what it leaves: with "
            f"fewer than {RESIDUAL_BELOW} cases an image network learns little, and it should not drown what a "
            "linear model of the clinical values knows (OASIS-1, 150 training subjects: pooled AUC 0.783 against "
            "0.484 concatenated; the benchmarks page)")
        return "residual"
    reasons["clinical.fusion"] = (f"concatenated beside the image features: {train_cases} training cases are few "
                                  f"for a conditioning network (FiLM from {FILM_FROM})")
    return "concat"
