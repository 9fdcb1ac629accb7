"""Split one dataset into sites, to try federated training on one machine.

Two ways, both seeded (the same seed and data write the same sites):

- :func:`dirichlet_sites` (class-labelled data, e.g. a MedMNIST ``.npz``): for each class, site shares
  ``p ~ Dirichlet(alpha, ..., alpha)`` are drawn and the class's cases are dealt out in those shares, the
  usual label-skew partition of federated benchmarks (Yurochkin et al. 2019; Li et al., NIID-Bench, ICDE
  2022). Small ``alpha`` gives sites with very different label balance, large ``alpha`` nearly equal ones.
  The same shares divide the train, val and test splits (the dataset's official ones, or medlens' own
  split when it has none), so every site has its own test split and together they hold the whole test split.
  A draw that leaves a site with fewer than ``min_per_class`` cases of a class in a split is redrawn (as
  NIID-Bench does), so each site can train, validate and compute an AUC on its own.
- :func:`split_sites_even` (segmentation, or any data): patients shuffled and dealt into ``n_sites`` sites of
  near-equal size; within each site the dataset's fixed splits are kept, else whole patients are drawn for
  test and val.

Both write ``OUT/site_1.csv`` ... ``OUT/site_K.csv`` (CSV manifests with a ``split`` column, the site's
images under ``OUT/site_k/``: hard links of the source files, or PNGs written from an array archive),
``OUT/pooled.csv`` (every site's rows with their splits: its test split is all test cases pooled) and
``OUT/sites.json`` (how the sites were drawn, their counts per split and class). A site's data is its CSV:
``medlens train OUT/site_1.csv`` or a federated site process opens it like any manifest. Writing is
atomic (a staging folder renamed into place); an ``OUT`` already holding the same draw is reused.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medlens._files import read_json, write_json_atomic
from medlens.data import open_dataset
from medlens.data.splits import make_splits
from medlens.errors import ConfigError, DatasetError
from medlens.io import write_image
from medlens.types import Case

SITES_VERSION = 1
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sites:
    """Sites written by :func:`dirichlet_sites` / :func:`split_sites_even`.

    Attributes:
        root: the output folder.
        sources: ``{site name: its CSV manifest}``, in site order.
        pooled: the manifest of all sites' rows (its test split: every site's test cases).
        doc: ``sites.json``: the draw (seed, alpha, shares) and ``counts[site][split][class]``.
    """

    root: Path
    sources: dict[str, Path]
    pooled: Path
    doc: dict


def dirichlet_sites(dataset_source, n_sites: int, alpha: float, seed: int, out_dir, *, min_per_class: int = 2,
                    max_draws: int = 1000) -> Sites:
    """Divide a class-labelled dataset into ``n_sites`` sites by a seeded Dirichlet(``alpha``) draw over labels.

    Args:
        dataset_source: anything :func:`~medlens.data.open_dataset` opens with one class per case (a MedMNIST
            ``.npz`` or its name, class folders, a CSV manifest).
        n_sites: number of sites ``K`` (>= 2).
        alpha: Dirichlet concentration (> 0); 0.5 is strongly skewed, 100 nearly even.
        seed: the same seed and data give the same sites.
        out_dir: where the sites are written (see the module docstring).
        min_per_class: the least number of cases of each class each site gets in each split.
        max_draws: draws tried before giving up.

    Returns:
        The :class:`Sites`.

    Raises:
        ConfigError: ``n_sites`` < 2 or ``alpha`` <= 0.
        DatasetError: data without one class per case, or no draw of ``max_draws`` gives every site
            ``min_per_class`` cases per class and split (too few cases for that many sites).
    """
    _check_counts(n_sites, alpha)
    params = {"kind": "dirichlet", "source": str(dataset_source), "n_sites": n_sites, "alpha": float(alpha),
              "seed": seed, "min_per_class": min_per_class}
    if (cached := _cached(Path(out_dir), params)) is not None:
        return cached
    dataset = open_dataset(dataset_source)
    if dataset.task.label_form != "class":
        raise DatasetError(f"{dataset_source}: a Dirichlet split over labels needs one class per case; this is "
                           f"{dataset.task.value} data. Use split_sites_even for it")
    by_split = _official_splits(dataset, seed)
    shares, members, draws = _draw(dataset, by_split, n_sites, alpha, seed, min_per_class, max_draws)
    params |= {"draws": draws, "shares": np.round(shares, 6).tolist(), "class_names": list(dataset.class_names)}
    return _write_sites(Path(out_dir), dataset, members, params)


def split_sites_even(dataset_source, n_sites: int, seed: int, out_dir, *, test_fraction: float = 0.2,
                     val_fraction: float = 0.2) -> Sites:
    """Divide a dataset (e.g. Hippocampus) by patient into ``n_sites`` sites of near-equal size.

    Args:
        dataset_source: anything :func:`~medlens.data.open_dataset` opens (a Decathlon folder, image/mask pairs,
            a manifest...).
        n_sites: number of sites ``K`` (>= 2).
        seed: the same seed and data give the same sites.
        out_dir: where the sites are written.
        test_fraction, val_fraction: shares of each site's patients drawn for its test and validation splits,
            when the dataset fixes no splits (at least one patient each).

    Raises:
        ConfigError: ``n_sites`` < 2, or fractions outside (0, 1).
        DatasetError: fewer than 3 patients per site.
    """
    _check_counts(n_sites, 1.0)
    if not (0 < test_fraction < 1 and 0 < val_fraction < 1 and test_fraction + val_fraction < 1):
        raise ConfigError(f"test_fraction={test_fraction}, val_fraction={val_fraction}: each must lie in (0, 1) "
                          "and together below 1; use e.g. 0.2 and 0.2")
    params = {"kind": "even", "source": str(dataset_source), "n_sites": n_sites, "seed": seed,
              "test_fraction": test_fraction, "val_fraction": val_fraction}
    if (cached := _cached(Path(out_dir), params)) is not None:
        return cached
    dataset = open_dataset(dataset_source)
    patients = _patients(dataset.cases)
    if len(patients) < 3 * n_sites:
        raise DatasetError(f"{dataset_source}: {len(patients)} patients cannot make {n_sites} sites with a train, "
                           f"val and test patient each; use at most {len(patients) // 3} sites")
    rng = np.random.default_rng(seed)
    order = [list(patients)[i] for i in rng.permutation(len(patients))]
    members = [_site_splits([c for p in chunk for c in patients[p]], rng, test_fraction, val_fraction)
               for chunk in np.array_split(np.asarray(order, dtype=object), n_sites)]
    params["class_names"] = list(dataset.class_names)
    return _write_sites(Path(out_dir), dataset, members, params)


def _check_counts(n_sites: int, alpha: float) -> None:
    if int(n_sites) != n_sites or n_sites < 2:
        raise ConfigError(f"n_sites={n_sites!r}: federated training needs at least 2 sites")
    if not alpha > 0:
        raise ConfigError(f"alpha={alpha!r}: the Dirichlet concentration must be > 0 (0.5: skewed, 100: even)")


def _official_splits(dataset, seed: int) -> dict[str, list[Case]]:
    """The dataset's own train / val / test (MedMNIST's official ones), else medlens' split with ``seed``."""
    splits = make_splits(dataset, seed=seed)
    by_id = {c.case_id: c for c in dataset.cases}
    fold = splits["folds"][0]
    return {"train": [by_id[i] for i in fold["train"]], "val": [by_id[i] for i in fold["val"]],
            "test": [by_id[i] for i in splits["test"]]}


def _draw(dataset, by_split: dict, n_sites: int, alpha: float, seed: int, least: int, max_draws: int):
    """``(shares (C, K), members [site][split] -> cases, draws)``: the first draw giving every site ``least``
    cases of each class in each split."""
    rng = np.random.default_rng(seed)
    classes = range(len(dataset.class_names))
    for draw in range(1, max_draws + 1):
        shares = rng.dirichlet([alpha] * n_sites, size=len(dataset.class_names))
        members = [{s: [] for s in SPLITS} for _ in range(n_sites)]
        fits = True
        for split in SPLITS:
            for c in classes:
                cases = [case for case in by_split[split] if case.label == c]
                cases = [cases[i] for i in rng.permutation(len(cases))]
                cuts = np.rint(np.cumsum(shares[c])[:-1] * len(cases)).astype(int)
                for site, part in enumerate(np.split(np.asarray(cases, dtype=object), cuts)):
                    members[site][split] += list(part)
                    fits &= len(part) >= least
        if fits:
            return shares, members, draw
    raise DatasetError(f"{dataset.root}: in {max_draws} Dirichlet({alpha}) draws none gave each of {n_sites} sites "
                       f"{least} case(s) of every class in every split; use fewer sites, a larger alpha or a "
                       "smaller min_per_class")


def _patients(cases: list[Case]) -> dict[str, list[Case]]:
    patients: dict[str, list[Case]] = {}
    for case in cases:
        patients.setdefault(case.patient_id or case.case_id, []).append(case)
    return patients


def _site_splits(cases: list[Case], rng, test_fraction: float, val_fraction: float) -> dict[str, list[Case]]:
    """A site's fixed splits if every case has one, else whole patients drawn for test and val."""
    if all(c.split is not None for c in cases):
        return {s: [c for c in cases if c.split.value == s] for s in SPLITS}
    patients = list(_patients(cases).values())
    order = rng.permutation(len(patients))
    n_test = max(1, round(test_fraction * len(patients)))
    n_val = max(1, round(val_fraction * len(patients)))
    chosen = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    return {s: [c for i in chosen[s] for c in patients[i]] for s in SPLITS}


def _cached(out: Path, params: dict) -> Sites | None:
    """The sites already in ``out`` when they were drawn with ``params``; ``None`` when ``out`` is new.

    Raises:
        DatasetError: ``out`` holds something else.
    """
    if not out.exists() or not any(out.iterdir()):
        return None
    doc = read_json(out / "sites.json")
    if doc and all(doc.get(k) == v for k, v in params.items()):
        return Sites(out, {n: out / s["source"] for n, s in doc["sites"].items()}, out / doc["pooled"], doc)
    raise DatasetError(f"{out} already holds other files (or sites drawn otherwise); choose an empty or new folder")


def _write_sites(out: Path, dataset, members: list[dict], params: dict) -> Sites:
    """Write each site's files and manifest, the pooled manifest and ``sites.json`` into ``out``, atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        doc = {"medlens_sites_version": SITES_VERSION, **params, "pooled": "pooled.csv", "sites": {}}
        pooled = []
        for k, splits in enumerate(members, start=1):
            name = f"site_{k}"
            rows = _site_rows(staging, name, dataset, splits)
            _write_manifest(staging / f"{name}.csv", rows)
            pooled += rows
            doc["sites"][name] = {"source": f"{name}.csv", "counts": _counts(rows)}
        _write_manifest(staging / "pooled.csv", pooled)
        write_json_atomic(staging / "sites.json", doc)
        if out.exists():
            out.rmdir()  # empty: _cached refused a folder holding anything
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Sites(out, {n: out / s["source"] for n, s in doc["sites"].items()}, out / "pooled.csv", doc)


def _site_rows(staging: Path, name: str, dataset, splits: dict[str, list[Case]]) -> list[dict]:
    """One manifest row per case, its files placed under ``staging/name`` (paths relative to ``staging``, where
    the site's manifest lies)."""
    rows = []
    for split in SPLITS:
        for case in splits[split]:
            if len(case.images) != 1:
                raise DatasetError(f"{dataset.root}: case {case.case_id} has {len(case.images)} images; the site "
                                   "splitter writes one image per case")
            stem = f"{name}/{split}/{_safe(case.case_id)}"
            row = {"image": _place_image(staging, stem, dataset, case), "split": split}
            if case.mask is not None:
                row["mask"] = _link(case.mask, staging, f"{name}/{split}/masks/{_safe(case.case_id)}")
            else:
                row["label"] = dataset.class_names[case.label]
            if case.patient_id:
                row["patient_id"] = case.patient_id
            rows.append(row)
    return rows


def _place_image(folder: Path, stem: str, dataset, case: Case) -> str:
    """The case's image at ``folder/stem``: a hard link (or copy) of its file, or a PNG of an archive's array."""
    source = Path(case.images[0])
    if source.is_file() and case.index is None:
        return _link(source, folder, stem)
    target = folder / f"{stem}.png"
    write_image(dataset.load_image(case), target)
    return target.relative_to(folder).as_posix()


def _link(source: Path, folder: Path, stem: str) -> str:
    suffix = "".join(source.suffixes[-2:]) if source.name.endswith(".nii.gz") else source.suffix
    target = folder / f"{stem}{suffix}"
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed: a copy
        shutil.copy2(source, target)
    return target.relative_to(folder).as_posix()


def _safe(case_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in case_id)


def _write_manifest(path: Path, rows: list[dict]) -> None:
    columns = [c for c in ("image", "label", "mask", "patient_id", "split") if any(c in r for r in rows)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")


def _counts(rows: list[dict]) -> dict[str, dict[str, int]]:
    """``{split: {class (or "cases"): n}}``."""
    counts: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
    for row in rows:
        key = row.get("label", "cases")
        counts[row["split"]][key] = counts[row["split"]].get(key, 0) + 1
    return counts


def read_sites(out_dir) -> Sites:
    """The :class:`Sites` written earlier into ``out_dir``.

    Raises:
        DatasetError: no ``sites.json`` there.
    """
    out = Path(out_dir)
    doc = read_json(out / "sites.json")
    if not doc:
        raise DatasetError(f"{out}: no sites.json; write sites with dirichlet_sites or split_sites_even")
    return Sites(out, {n: out / s["source"] for n, s in doc["sites"].items()}, out / doc["pooled"], doc)

