"""Near-identical 2D images: one picture saved twice, resized, recompressed or re-exported.

Exact duplicates (same pixels) are found by hash in :mod:`medlens.data.audit`. Sets gathered from
several sources also hold copies that differ in every pixel: in BUSI (and BreastMNIST, made from it)
`medlens inspect` finds 104 groups (234 of its 780 images), mostly one ultrasound frame exported twice,
which no hash finds, and which land in training and test alike unless the split keeps them together.

Each 2D image is reduced to a 32 x 32 grey thumbnail (Pillow's antialiased bilinear), centred and
scaled to unit length; two images whose thumbnails correlate at :data:`NEAR` or above are near
duplicates. The threshold was chosen by looking at pairs of the shared sets once, in a throwaway
script (no project command prints these): PneumoniaMNIST's closest pair that is not an exact copy
correlated 0.979 (chest X-rays of different patients look alike at this scale), and BUSI's pairs from
0.975 up were, by eye, one frame exported twice; 0.99 leaves a margin on the X-ray side and still
finds most of BUSI's pairs (other frames of one lesion, about 0.95-0.97, are not taken: patients are
what a patient column is for). Correlation ignores brightness and contrast, so a copy with other
window settings is found too. 3D volumes are compared by hash only.

Thumbnails cannot tell copies apart from images that are all alike at that scale (one phantom or one
template imaged again and again, synthetic sets): where the median image's fifth nearest neighbour
(copies come in twos and threes, so it is no copy) already correlates at :data:`ALIKE`, nothing is
grouped, and the card's ``near_duplicate_search`` says why. Measured: BUSI 0.805, BreastMNIST 0.835,
PneumoniaMNIST 0.879; the demo's synthetic radiographs 0.986.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from medlens.data.dataset import Dataset, Finding

THUMB = 32  # thumbnail side, pixels
NEAR = 0.99  # thumbnail correlation from which two images are near duplicates
MAX_CASES = 20_000  # above this many 2D images the all-pairs search (N^2 x 1024 multiply-adds) is skipped
ALIKE = 0.97  # median correlation with the RANK-th nearest image from which the images are too alike to search
RANK = 5
MAX_GROUP = 10  # a group larger than this (and than MAX_SHARE of the images) is images alike, not copies
MAX_SHARE = 0.02
BLOCK = 1024  # thumbnails compared at a time


SOURCE_SIDE = 512  # a thumbnail is made from at most this many pixels a side (strided), whatever the image's size


def thumbnail(array: np.ndarray) -> np.ndarray | None:
    """``(THUMB * THUMB,)`` float16 unit vector of a 2D image ``(C, X, Y)`` (channels averaged, centred); ``None``
    for a volume or a flat image."""
    from PIL import Image as PILImage

    if array.ndim != 3 or min(array.shape[1:]) < 2:
        return None
    # every k-th pixel down to at most SOURCE_SIDE a side first (a view): a float copy of a 12000 x 12000 image
    # would take more memory than the image itself
    steps = [max(1, -(-side // SOURCE_SIDE)) for side in array.shape[1:]]
    grey = np.ascontiguousarray(array[:, ::steps[0], ::steps[1]].mean(axis=0, dtype=np.float32))
    small = np.asarray(PILImage.fromarray(grey, mode="F").resize((THUMB, THUMB), PILImage.BILINEAR), np.float32)
    vector = small.ravel() - small.mean()
    norm = float(np.linalg.norm(vector))
    return (vector / norm).astype(np.float16) if norm > 1e-6 * THUMB * THUMB else None


def near_duplicate_groups(ids: list[str], thumbs: list[np.ndarray | None], hashes: list[str]
                          ) -> tuple[list[list[str]], list[Finding], str]:
    """Groups of near-identical images (at least one pair in each not an exact copy), warnings on groups too
    large to be copies, and what was searched.

    Args:
        ids, thumbs, hashes: per case, its id, :func:`thumbnail` and pixel hash.

    Returns:
        (sorted groups of case ids, ``duplicates.near_skipped`` warnings, the search in words).
    """
    present = [i for i, t in enumerate(thumbs) if t is not None]
    if len(present) < 2:
        return [], [], "not searched: fewer than two 2D images"
    if len(present) > MAX_CASES:
        return [], [], f"not searched: {len(present)} 2D images, more than {MAX_CASES}"
    vectors = np.stack([thumbs[i] for i in present]).astype(np.float32)
    pairs, neighbour = _pairs(vectors)
    median = float(np.median(neighbour))
    if median >= ALIKE:
        return [], [], (f"not searched: the {len(present)} 2D images are all alike at thumbnail scale (the median "
                        f"image's {_ordinal(RANK)} nearest neighbour correlates {median:.3f}, >= {ALIKE})")
    components = _components(len(present), pairs)
    limit = max(MAX_GROUP, int(MAX_SHARE * len(present)))
    groups, alike = [], []
    for members in components:
        names = [ids[present[m]] for m in members]
        if len(members) > limit:
            alike.append(names)
        elif len({hashes[present[m]] for m in members}) > 1:
            groups.append(sorted(names))
    notes = [Finding("warning", "duplicates.near_skipped", f"{len(group)} images are all alike at thumbnail scale "
                     f"(e.g. {', '.join(group[:3])}): too many to be copies of one picture, so they were not kept "
                     "together in the splits (exact duplicates still are)", group) for group in alike]
    searched = (f"{len(present)} 2D images, thumbnail correlation >= {NEAR} (median {_ordinal(RANK)} nearest "
                f"neighbour {median:.3f})")
    return sorted(groups, key=lambda g: g[0]), notes, searched


def near_duplicate_findings(dataset: Dataset, groups: list[list[str]], views) -> list[Finding]:
    """``duplicates.near`` (warning), ``leakage.near_duplicates`` where a dataset's own splits or a splits file
    put one group in two splits, ``label.near_conflict`` where a group carries two labels."""
    if not groups:
        return []
    n = sum(len(g) for g in groups)
    findings = [Finding("warning", "duplicates.near", f"{len(groups)} group(s) of near-identical images ({n} cases: "
                        f"one picture resized, recompressed or re-exported), e.g. {', '.join(groups[0][:3])}; the "
                        "splits medlens makes keep each group in one split. Remove the copies if they are not "
                        "meant to be there", [cid for g in groups for cid in g])]
    for name, view in views:
        if crossing := across_splits(groups, view):
            findings.append(Finding("warning", "leakage.near_duplicates", f"{name}: {len(crossing)} group(s) of "
                                    f"near-identical images sit in more than one split (e.g. "
                                    f"{', '.join(crossing[0][:3])}); the test figures may be optimistic",
                                    [cid for g in crossing for cid in g]))
    if conflicting := mixed_labels(dataset, groups):
        findings.append(Finding("warning", "label.near_conflict", f"{len(conflicting)} group(s) of near-identical "
                                f"images carry different labels (e.g. {', '.join(conflicting[0][:3])}); check which "
                                "label is right", [cid for g in conflicting for cid in g]))
    return findings


def across_splits(groups: list[list[str]], view: dict[str, str]) -> list[list[str]]:
    """The groups (of exact or near duplicates) whose cases ``view`` (case id -> split) puts in several splits."""
    return [g for g in groups if len({view[c] for c in g if c in view}) > 1]


def mixed_labels(dataset: Dataset, groups: list[list[str]]) -> list[list[str]]:
    """The groups whose cases carry more than one label (none for segmentation, whose label is a mask)."""
    if dataset.task.label_form == "mask":
        return []
    label_of = {c.case_id: c.label for c in dataset.cases}
    return [g for g in groups if len({label_of.get(c) for c in g}) > 1]


def _pairs(vectors: np.ndarray) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Index pairs ``i < j`` of rows of ``vectors`` ``(N, D)`` (unit length) whose dot product is at least NEAR,
    and each row's dot product with its RANK-th nearest other row (or its farthest, in fewer rows) ``(N,)``."""
    pairs, neighbour = [], np.empty(len(vectors), np.float32)
    rank = min(RANK, len(vectors) - 1)
    for start in range(0, len(vectors), BLOCK):
        similarity = vectors[start:start + BLOCK] @ vectors.T
        block = np.arange(len(similarity))
        similarity[block, block + start] = -2.0  # not its own neighbour
        neighbour[start:start + BLOCK] = np.partition(similarity, -rank, axis=1)[:, -rank]
        rows, cols = np.nonzero(similarity >= NEAR)
        rows += start
        keep = cols > rows
        pairs += zip(rows[keep].tolist(), cols[keep].tolist())
    return pairs, neighbour


def _ordinal(n: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")


def _components(n: int, pairs: list[tuple[int, int]]) -> list[list[int]]:
    """Connected components (of two or more) of the graph on ``range(n)`` with edges ``pairs`` (union-find)."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        parent[find(a)] = find(b)
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        members[find(i)].append(i)
    return [m for m in members.values() if len(m) > 1]
