"""The model card: what a bundle's model is, how its input must be prepared, how well it did, and its limits.

Everything serving needs to rebuild the preprocessing is here and in the bundle's ``plan.yaml``
[timm ``pretrained_cfg``]; nothing comes from code defaults.
"""

from __future__ import annotations

from pathlib import Path

from medlens._files import read_json
from medlens.config import Config
from medlens.deploy.bundle import CARD_VERSION
from medlens.runs import RunFolder, now
from medlens.tasks import task_for


def model_card(run: RunFolder, config: Config, weights_sha256: str) -> dict:
    """The card of the run's model (JSON-ready)."""
    from medlens import __version__

    info, data = run.read_info(), config.data
    details = task_for(config).card_details(run, config)
    card = {
        "medlens_card": CARD_VERSION, "model_version": f"{run.root.name}-{weights_sha256[:12]}",
        "medlens_version": __version__,
        "created": now(), "task": config.dataset.task, "spatial_dims": config.dataset.spatial_dims,
        "class_names": list(config.dataset.class_names), "label_values": list(config.dataset.label_values),
        "model": {"name": config.model.name, "width": config.model.width, "members": config.model.members,
                  "weights_sha256": weights_sha256},
        "input": {"size": list(data.input_size), "channels": data.channels,
                  "target_spacing_mm": list(data.target_spacing) or None},
        "inputs": card_inputs(config),
        "preprocessing": {"normalization": data.normalization, "intensity_range": list(data.intensity_range),
                          "foreground_stats": list(data.foreground_stats),
                          "steps": details["steps"]},
        "calibration": details["calibration"],
        **({"ood_guard": details["ood_guard"]} if "ood_guard" in details else {}),
        "training_data": _training_data(run),
        "training": {"epochs_run": info.get("epochs_run"), "monitor": info.get("monitor"),
                     "best_validation_score": info.get("best_score"), "seconds": info.get("train_seconds")},
        "validation_metrics": read_json(run.validation),
        "metrics": _metrics(run, details["metrics"]),
        **({"federation": federation} if (federation := _federation(run, info)) else {}),
    }
    card["intended_use"] = intended_use(card)
    return card


def card_inputs(config: Config) -> dict:
    """What one case is, for clients and the web page's form.

    Returns:
        ``{"views": None | {"names": [...], "fusion": "views" | "channels", "may_be_missing": bool},
        "clinical": [{"name", "kind": "numeric", "unit"} | {"name", "kind": "categorical", "categories"}]}``:
        ``views`` is ``None`` for a model of one image; a view may be missing when views are encoded apart and
        training withheld them (``train.modality_dropout``); every clinical value may be missing.
    """
    from medlens.data.clinical import parse_categories, parse_units

    data, section = config.data, config.clinical
    views = None
    if len(data.views) > 1:
        views = {"names": list(data.views), "fusion": data.fusion,
                 "may_be_missing": data.fusion == "views" and config.train.modality_dropout > 0}
    units = parse_units(section)
    clinical = [{"name": c, "kind": "numeric", "unit": units.get(c)} for c in section.numeric]
    clinical += [{"name": c, "kind": "categorical", "categories": list(names)}
                 for c, names in parse_categories(section).items()]
    return {"views": views, "clinical": clinical}


def _training_data(run: RunFolder) -> dict:
    """Counts and the audit's fingerprint (a hash of every case's pixels) of the data the model learnt from."""
    card = read_json(run.card, {})
    dataset = card.get("dataset", {})
    return {"name": Path(str(dataset.get("source", ""))).name, "layout": dataset.get("layout"),
            "modality": dataset.get("modality"), "num_cases": dataset.get("num_cases"),
            "counts_by_split": card.get("counts", {}).get("by_split"), "fingerprint_sha256": card.get("fingerprint")}


def _federation(run: RunFolder, info: dict) -> dict | None:
    """How a federated model was trained (``None`` for any other): strategy, rounds, each site's share and, under
    differential privacy, the target and the (epsilon, delta) each site had spent after every round."""
    record = info.get("federation")
    if not record:
        return None
    card = {key: record.get(key) for key in ("strategy", "rounds", "local_epochs", "min_sites", "calibration")}
    card["sites"] = {name: {"rounds": site.get("rounds"), "training_cases": site.get("n_examples"),
                            "dp": site.get("dp")} for name, site in (record.get("sites") or {}).items()}
    if record.get("dp"):
        history = read_json(run.root / "federated" / "history.json", []) or []
        card["dp"] = {**record["dp"], "spent_by_round": [
            {"round": h.get("round"), "sites": {name: {"epsilon": m.get("dp_epsilon"), "delta": m.get("dp_delta")}
                                                for name, m in (h.get("sites") or {}).items()}} for h in history]}
    return card


def _metrics(run: RunFolder, chosen: dict) -> dict | None:
    """The task's headline figures with their 95% CIs from ``medlens evaluate`` (None when never evaluated)."""
    doc = read_json(run.metrics_json)
    if doc is None:
        return None
    return {"split": doc.get("split"), "n_cases": doc.get("n_cases"), "grouped_by": doc.get("grouped_by"), **chosen}


def intended_use(card: dict) -> str:
    data, names = card["training_data"], ", ".join(card["class_names"])
    size = "x".join(map(str, card["input"]["size"]))
    return (f"Research use only; not a medical device and not for diagnosis. {card['task']} "
            f"({card['spatial_dims']}D) over {names}, learnt from {data['num_cases']} cases of "
            f"'{data['name']}' ({data['modality'] or 'modality not recorded'}). Inputs are prepared as "
            f"'preprocessing' says (network input {size}, {card['input']['channels']} channel(s)); images unlike "
            "the training data (another modality, scanner, population or view) are outside what was validated, "
            "and the figures under 'metrics' do not hold for them." + _inputs_sentence(card.get("inputs"))
            + _guard_sentence(card.get("ood_guard")) + _federation_sentence(card.get("federation")))


def _federation_sentence(federation: dict | None) -> str:
    """How a federated model learnt, and its privacy guarantee ('' for a model trained in one place)."""
    if not federation:
        return ""
    sentence = (f" Trained by federated learning ({federation['strategy']}, {federation['rounds']} rounds) across "
                f"{len(federation['sites'])} sites whose images never left them.")
    dp = federation.get("dp")
    if dp:
        spent = ", ".join(f"{name} epsilon {site['dp']['epsilon']:.2f}" for name, site in federation["sites"].items()
                          if site.get("dp") and site["dp"].get("epsilon") is not None)
        sentence += (f" Each site trained with DP-SGD at target epsilon {dp['target_epsilon']} (delta "
                     f"{dp['delta']}); spent: {spent or 'not recorded'}.")
    return sentence


def _inputs_sentence(inputs: dict | None) -> str:
    """What a case of several inputs is made of ('' for a model of one image without clinical values)."""
    if not inputs or not (inputs.get("views") or inputs.get("clinical")):
        return ""
    parts = []
    if inputs.get("views"):
        views = inputs["views"]
        parts.append(f"the views {', '.join(views['names'])} ("
                     + ("any of them may be missing" if views["may_be_missing"] else "all needed") + ")")
    if inputs.get("clinical"):
        parts.append(f"the clinical values {', '.join(c['name'] for c in inputs['clinical'])} (each may be missing)")
    return (f" Each case is {' and '.join(parts)}; a prediction made without some of them says so under 'missing', "
            "and is less certain than one made with all.")


def _guard_sentence(guard: dict | None) -> str:
    """What the out-of-distribution guard adds to the intended use ('' for a task or model without one)."""
    if not guard or not guard.get("fitted"):
        return ""
    return (" Each prediction carries in_distribution, false for an image farther from the training images (in the "
            "network's features) than 95% of the validation images were ('ood_guard'); it catches images clearly "
            "unlike the training data, not every shift.")
