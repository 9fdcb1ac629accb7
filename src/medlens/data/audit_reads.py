"""What reading the images said: unreadable files (refused, or skipped), and the readers' notes.

- ``image.unreadable`` (blocks training) or, with ``skip_unreadable``, ``image.skipped`` (a warning; the
  card's ``skipped`` lists each file, relative to the dataset, with its reason);
- ``image.misnamed`` / ``image.alpha`` / ``image.orientation``: files read other than their name or pixels
  say (a PNG named ``.jpg`` read by its content, an alpha channel removed, an EXIF orientation applied),
  one warning per kind naming the files.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import TYPE_CHECKING

from medlens.data.dataset import Dataset, Finding

if TYPE_CHECKING:
    from medlens.data.audit import CaseStats

SHOWN = 5  # files a finding's message names (its case list has them all)


def unreadable_findings(unreadable: list[dict]) -> list[Finding]:
    """``image.unreadable`` (blocks training), naming the files and the way round; ``image.nan`` among them."""
    if not unreadable:
        return []
    nan = [u["case"] for u in unreadable if "NaN" in u["error"]]
    others = _named([u["case"] for u in unreadable[1:]])
    findings = [Finding.blocking("image.unreadable", f"{len(unreadable)} case(s) could not be read: "
                        f"{unreadable[0]['error']}" + (f"; also {others}" if others else "") + ". Fix or remove "
                        "them, or train without them: --skip-unreadable (plan key dataset.skip_unreadable: true)",
                        [u["case"] for u in unreadable])]
    if nan:
        findings.append(Finding("error", "image.nan", f"{len(nan)} case(s) hold NaN or infinite voxels", nan))
    return findings


def skipped_findings(unreadable: list[dict]) -> list[Finding]:
    """``image.skipped``: the unreadable files training leaves out (a warning, named like ``image.unreadable``)."""
    return [Finding("warning", "image.skipped", f"{len(unreadable)} unreadable case(s) left out of training "
                    f"(skip_unreadable): {unreadable[0]['error']}"
                    + (f"; also {others}" if (others := _named([u['case'] for u in unreadable[1:]])) else "")
                    + "; the card's 'skipped' lists each with its reason", [u["case"] for u in unreadable])]


def _named(case_ids: list[str]) -> str:
    """The first :data:`SHOWN` case ids, and how many more."""
    more = f" and {len(case_ids) - SHOWN} more" if len(case_ids) > SHOWN else ""
    return ", ".join(case_ids[:SHOWN]) + more


def skipped_entries(dataset: Dataset, unreadable: list[dict]) -> list[dict]:
    """``{"case", "path", "reason"}`` per skipped case, the path (also in the reason) relative to the dataset."""
    base = dataset.root if dataset.root.is_dir() else dataset.root.parent
    entries = []
    for u in unreadable:
        relative = os.path.relpath(u["path"], base)
        entries.append({"case": u["case"], "path": relative, "reason": u["error"].replace(u["path"], relative)})
    return entries


def skipped_rows(card: dict) -> list[list[str]]:
    """``[path, reason]`` per file the audit left out of training (``card["skipped"]``), for the report's table."""
    return [[entry["path"], entry["reason"]] for entry in card.get("skipped", [])]


NOTE_HEADLINES = {
    "image.misnamed": "file(s) hold another image format than their suffix says; each was read by its content",
    "image.alpha": "image(s) have an alpha channel, removed on reading (dropped where every pixel is opaque, "
                   "else the image flattened onto black)",
    "image.orientation": "photo(s) are stored turned or mirrored with an EXIF orientation, applied on reading (as "
                         "viewers show them)",
    "mask.grey_rgb": "mask(s) are grey images stored as RGB, read as one channel",
    "mask.lossy": "mask(s) are black-and-white JPEGs whose compression left grey edges, thresholded to 0 / 255 (save "
                  "masks as PNG)",
    "labels.overlap": "DICOM label object(s) have overlapping structures; the later structure took each shared voxel",
    "labels.clipped": "structure set(s) have contours reaching past the image, clipped to it",
    "labels.frame_of_reference": "structure set(s) name another frame of reference than their series; contours "
                                 "were placed on the referenced slices",
    "labels.resampled": "DICOM SEG(s) lie on another grid than their series, resampled onto it (nearest neighbour)",
    "labels.dropped": "DICOM label object(s) hold structures not asked for, left out",
    "labels.empty_roi": "structure set(s) have an ROI without contours (read as absent)",
    "labels.not_closed": "structure set(s) have POINT or OPEN_PLANAR contours, which enclose no area and were skipped",
}


def read_note_findings(stats: list[CaseStats]) -> list[Finding]:
    """One warning per kind of reader note (:data:`NOTE_HEADLINES`), naming the first files and what was done."""
    by_code: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for s in stats:
        for note in s.read_notes:
            by_code[note["code"]].append((s.case_id, note["message"]))
    findings = []
    for code, notes in sorted(by_code.items()):
        named = "; ".join(m if m.startswith(case) else f"{case}: {m}" for case, m in notes[:SHOWN])
        more = f"; and {len(notes) - SHOWN} more" if len(notes) > SHOWN else ""
        headline = NOTE_HEADLINES.get(code, "file(s) were read with a note")
        findings.append(Finding("warning", code, f"{len(notes)} {headline}: {named}{more}",
                                [case for case, _ in notes]))
    return findings
