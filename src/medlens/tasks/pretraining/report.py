"""The report's pretraining part: what the encoder saw and learnt (``pretrain.json``), and the probe."""

from __future__ import annotations

from medlens._files import read_json
from medlens.report.document import Section, Table, num, with_ci
from medlens.tasks.pretraining.fit import PRETRAIN_JSON

PROBE = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"))


def pretraining_sections(run, doc: dict) -> list[Section]:
    """The encoder's summary and, where the data have labels, the k-NN probe of metrics.json (``doc``)."""
    summary = read_json(run.root / PRETRAIN_JSON, {})
    section = Section("Pretrained encoder", key="pretraining")
    if summary:
        rows = [[label, str(summary.get(key))] for key, label in (
            ("method", "method"), ("network", "network"), ("feature_size", "features per image"),
            ("train_images", "training images"), ("images_seen", "images seen"), ("epochs", "epochs"),
            ("final_train_loss", "final training loss (NT-Xent)"), ("final_val_loss", "final validation loss"),
            ("best_val_loss", "best validation loss (the weights kept)"))]
        section.table(Table(["", "value"], rows, key="pretrain-summary", caption="from pretrain.json; the loss "
                            "curves are in Training above"))
    section.text(f"Fine-tune it: `medlens train DATA --init-from {run.root}` (the head is re-initialised).")
    probe = Section(f"k-NN probe ({doc.get('split', 'test')} split)", key="probe")
    if "note" in doc or "random_init" not in doc:
        return [section, probe.text(doc.get("note", "not evaluated"))]
    probe.text(f"{doc['n_cases']} images classified by their {doc['metrics']['k']} nearest training images in the "
               f"frozen encoder's feature space (cosine); 95% CIs from bootstrap resamples of {doc['grouped_by']}s. "
               "The same probe on the network's random initialisation shows what pretraining added.")
    rows = [[label, with_ci(doc["metrics"][key]), with_ci(doc["random_init"][key])] for key, label in PROBE]
    probe.table(Table(["metric", "pretrained encoder [95% CI]", "random initialisation [95% CI]"], rows,
                      key="probe-metrics", caption="k-nearest-neighbours probe on frozen features"))
    return [section, probe]


def compare_table(runs: list) -> Table:
    """``medlens report A B``: each run's probe accuracy (``runs`` as ``[(label, run, config)]``)."""
    from medlens.report.compare import NOT_EVALUATED

    rows = []
    for label, run, config in runs:
        doc = read_json(run.metrics_json, {})
        summary = read_json(run.root / PRETRAIN_JSON, {})
        probe = doc.get("metrics", {}).get("accuracy") if doc else None
        cell = with_ci(probe) if probe else ("no labels to probe" if doc else NOT_EVALUATED)
        rows.append([label, config.model.name, str(summary.get("images_seen", "")),
                     num(summary.get("best_val_loss")), cell])
    return Table(["run", "model", "images seen", "best val loss", "k-NN probe accuracy [95% CI]"], rows,
                 key="compare", caption="pretraining runs: pretrain.json and the probe of metrics.json")
