"""The modality audit: for a dataset of named views (``meta["views"]``), what each view holds and whether they align.

``card["views"]`` answers, per view: how many cases have it (and which lack it), its shapes, spacings, channels
and intensities (mean, std, 1st and 99th percentiles over a sample of voxels); and for the views together
whether every case's views share one grid (``co_registered``: same shape, spacing, origin and direction), else
how far apart the grids are (the largest origin distance in mm and spacing ratio). The plan stacks co-registered
views as channels and encodes the others apart (:mod:`medlens.tasks.classification.plan_inputs`).

Images are read for at most :data:`MAX_CASES` cases spread over the dataset; presence is counted on every case.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from medlens.data.dataset import Dataset, Finding
from medlens.data.views import grids_overlap, read_view, stack_views
from medlens.io import Image
from medlens.types import Case

MAX_CASES = 200  # cases whose views are read for intensities and grids
SAMPLES_PER_VIEW = 2048  # voxels drawn per view and case for the intensity statistics
EXAMPLES = 5  # case ids listed per view that lacks cases


def read_for_audit(dataset: Dataset, case: Case) -> Image:
    """The image the audit describes for ``case``: its views stacked when they share one grid, else the first view.

    Views on different grids (axial, coronal and sagittal pictures) have no single image; the first stands for
    the case in the dataset-wide statistics (duplicates, sizes), each view is described in ``card["views"]``.
    """
    if len(case.views) < 2 or len(case.views) != len(case.images):
        return dataset.load_image(case)
    images = [read_view(dataset, case, name) for name in case.views]
    if all(images[0].same_geometry(other) for other in images[1:]):
        return stack_views(images, list(case.views), where=f"case {case.case_id}")
    return images[0]


def view_summary(dataset: Dataset, *, max_cases: int = MAX_CASES) -> tuple[dict, list[Finding]]:
    """``card["views"]`` and its findings (``views.incomplete``, ``views.grid``) for a dataset with named views.

    Returns:
        The summary (``names``, ``cases_read``, ``per_view``, ``co_registered``, ``grids``, ``grid_note``) and
        the findings.
    """
    names = [str(n) for n in dataset.meta.get("views") or ()]
    sample = _spread(dataset.cases, max_cases)
    records: dict[str, list[Image]] = {name: [] for name in names}
    samples: dict[str, list[np.ndarray]] = {name: [] for name in names}
    grids = _GridDifferences()
    rng = np.random.default_rng(0)
    for case in sample:
        geometries = []
        for name in names:
            image = _read_or_none(dataset, case, name)
            if image is not None:
                geometries.append(_geometry_only(image))
                records[name].append(geometries[-1])
                samples[name].append(_draw(image.array, rng))
        grids.add(case.case_id, geometries)
    per_view = {name: _describe_view(dataset, name, records[name], samples[name]) for name in names}
    summary = {"names": names, "cases_read": len(sample), "per_view": per_view, **grids.as_dict()}
    return summary, _incomplete_findings(dataset, names, per_view) + grids.findings(names)


def _read_or_none(dataset: Dataset, case: Case, name: str) -> Image | None:
    try:
        return read_view(dataset, case, name)
    except Exception:  # noqa: BLE001 - an unreadable file is the main audit's finding; here it is just not described
        return None


def _geometry_only(image: Image) -> Image:
    """The image's geometry with a one-voxel array: the audit keeps no copy of the pixels."""
    return Image(np.zeros((image.channels,) + (1,) * image.spatial_dims, np.uint8), image.spacing_mm, image.origin_mm,
                 image.direction, image.spacing_known, meta={"shape": image.spatial_shape})


def _spread(cases: list[Case], count: int) -> list[Case]:
    if len(cases) <= count:
        return list(cases)
    return [cases[i] for i in np.linspace(0, len(cases) - 1, count).round().astype(int)]


def _draw(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    flat = array.reshape(-1)
    picked = flat if flat.size <= SAMPLES_PER_VIEW else flat[rng.integers(0, flat.size, SAMPLES_PER_VIEW)]
    return picked.astype(np.float64)


def _describe_view(dataset: Dataset, name: str, images: list[Image], samples: list[np.ndarray]) -> dict:
    lacking = [c.case_id for c in dataset.cases if name not in c.views]
    entry: dict = {"cases": len(dataset.cases) - len(lacking), "missing": len(lacking),
                   "missing_cases": lacking[:EXAMPLES], "read": len(images)}
    if not images:
        return entry
    shapes = [im.meta["shape"] for im in images]
    entry["channels"] = Counter(im.channels for im in images).most_common(1)[0][0]
    entry["shape"] = _axes(shapes)
    entry["distinct_shapes"] = len(set(shapes))
    entry["spacing_known"] = all(im.spacing_known for im in images)
    if entry["spacing_known"]:
        entry["spacing_mm"] = _axes([im.spacing_mm for im in images])
    values = np.concatenate(samples)
    finite = values[np.isfinite(values)]
    if finite.size:
        p1, p99 = np.percentile(finite, [1, 99])
        entry["intensity"] = {"mean": float(finite.mean()), "std": float(finite.std()), "p1": float(p1),
                              "p99": float(p99)}
    return entry


def _axes(rows) -> dict:
    """Per axis ``{min, median, max}`` of ``rows`` (shapes or spacings)."""
    dims = max(len(r) for r in rows)
    out = {}
    for a in range(dims):
        column = np.asarray([r[a] for r in rows if len(r) > a], dtype=np.float64)
        out[f"axis{a}"] = {"min": float(column.min()), "median": float(np.median(column)), "max": float(column.max())}
    return out


class _GridDifferences:
    """Whether each case's views share the first present view's grid, and by how much they miss it."""

    def __init__(self) -> None:
        self.cases = 0  # cases with at least two views read
        self.apart: list[str] = []  # cases whose views are on different grids
        self.shapes_differ = 0
        self.not_overlapping: list[str] = []  # cases with a view that does not overlap the first in space
        self.geometry = True  # every view read carries patient geometry
        self.max_origin_mm = 0.0
        self.max_spacing_ratio = 1.0

    def add(self, case_id: str, images: list[Image]) -> None:
        if len(images) < 2:
            return
        self.cases += 1
        first = images[0]
        self.geometry &= all(im.spacing_known for im in images)
        differing = [im for im in images[1:] if not _same_grid(first, im)]
        if not differing:
            return
        self.apart.append(case_id)
        self.shapes_differ += any(im.meta["shape"] != first.meta["shape"] for im in differing)
        for other in differing:
            self.max_origin_mm = max(self.max_origin_mm, float(np.linalg.norm(np.subtract(other.origin_mm,
                                                                                          first.origin_mm))))
            ratios = np.asarray(other.spacing_mm) / np.asarray(first.spacing_mm)
            self.max_spacing_ratio = max(self.max_spacing_ratio, float(np.max(np.maximum(ratios, 1 / ratios))))
            if first.spacing_known and other.spacing_known and not grids_overlap(_sized(first), _sized(other)):
                self.not_overlapping.append(case_id)

    def as_dict(self) -> dict:
        grids = {"cases_compared": self.cases, "cases_apart": len(self.apart), "examples": self.apart[:EXAMPLES],
                 "shapes_differ": self.shapes_differ, "max_origin_distance_mm": round(self.max_origin_mm, 3),
                 "max_spacing_ratio": round(self.max_spacing_ratio, 3),
                 "not_overlapping": sorted(set(self.not_overlapping))[:EXAMPLES]}
        return {"co_registered": self.cases > 0 and not self.apart, "grids": grids, "grid_note": self.note()}

    def note(self) -> str:
        if not self.cases:
            return "no case has two views read"
        if not self.apart:
            return f"the views of all {self.cases} case(s) compared share one grid"
        what = [f"{len(self.apart)} of {self.cases} case(s) have views on different grids (e.g. {self.apart[0]})"]
        if self.shapes_differ:
            what.append(f"different shapes in {self.shapes_differ}")
        if self.geometry:
            what.append(f"origins up to {self.max_origin_mm:.1f} mm apart, spacings up to "
                        f"{self.max_spacing_ratio:.2f} times each other")
        else:
            what.append("the files carry no patient geometry")
        return "; ".join(what)

    def findings(self, names: list[str]) -> list[Finding]:
        if not self.apart:
            return []
        views = ", ".join(names)
        if not self.geometry:
            return [Finding("info", "views.grid", f"the views ({views}) are not on one grid ({self.note()}): the plan "
                            "will resize, normalise and encode each view apart (data.fusion: views)", self.apart)]
        far = (f"; in {len(set(self.not_overlapping))} case(s) (e.g. {self.not_overlapping[0]}) a view does not even "
               "overlap the first one in space" if self.not_overlapping else "")
        return [Finding("warning", "views.grid", f"the views ({views}) are not co-registered ({self.note()}){far}: the "
                        "plan will encode each view apart (data.fusion: views). To stack them as channels, register "
                        "them onto one grid, or set data.fusion: channels to resample each onto the first view's grid",
                        self.apart)]


def _same_grid(first: Image, other: Image) -> bool:
    return (first.meta["shape"] == other.meta["shape"] and first.spacing_known == other.spacing_known
            and np.allclose(first.spacing_mm, other.spacing_mm, atol=1e-3)
            and np.allclose(first.origin_mm, other.origin_mm, atol=1e-3)
            and np.allclose(first.direction, other.direction, atol=1e-4))


def _sized(image: Image) -> Image:
    """A geometry-only image given its real shape back (a zero-stride view: no pixels are allocated)."""
    array = np.broadcast_to(np.zeros((1,) * (image.spatial_dims + 1), np.uint8), (1, *image.meta["shape"]))
    return Image(array, image.spacing_mm, image.origin_mm, image.direction, image.spacing_known)


def _incomplete_findings(dataset: Dataset, names: list[str], per_view: dict) -> list[Finding]:
    lacking = {name: entry for name, entry in per_view.items() if entry["missing"]}
    if not lacking:
        return []
    said = "; ".join(f"{name} missing in {e['missing']} (e.g. {', '.join(e['missing_cases'][:3])})"
                     for name, e in lacking.items())
    cases = sorted({c.case_id for c in dataset.cases if any(n not in c.views for n in lacking)})
    return [Finding("warning", "views.incomplete", f"{len(cases)} of {len(dataset.cases)} case(s) lack a view: {said}. "
                    "Encoded apart (data.fusion: views) such a case is trained and predicted with the view left "
                    "empty; stacked as channels it is refused: add the image or leave the case out", cases)]
