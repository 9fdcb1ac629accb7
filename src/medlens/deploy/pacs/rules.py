"""Which series a bundle takes: the modality it was trained on (when the card says), 2D or 3D, enough slices;
and, for a model of several series (``dataset.series_rules``), which studies: one series per rule.

>>> rules = SeriesRules.of(predictor)
>>> rules.refusal(summarise(folder))       # None: take it; else why not, e.g. "modality CT, the model takes MR"
>>> StudyRules.of(predictor).pick(study)   # ({"t1": folder, "flair": folder}, None, log name), or ({}, why, ...)

Reasons name the series by number, modality and slice count only (never a UID, a description or a patient).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# names datasets give their images (Decathlon's dataset.json, MedMNIST's info) -> the DICOM Modality (PS3.3 C.7.3.1.1.1)
MODALITY_NAMES = {"ct": "CT", "mr": "MR", "mri": "MR", "t1": "MR", "t1w": "MR", "t1gd": "MR", "t2": "MR",
                  "t2w": "MR", "flair": "MR", "adc": "MR", "dwi": "MR", "pet": "PT", "pt": "PT", "us": "US",
                  "ultrasound": "US", "cr": "CR", "dx": "DX", "x-ray": "DX", "xray": "DX", "chest x-ray": "DX",
                  "mg": "MG", "mammography": "MG", "nm": "NM", "xa": "XA"}
# projection radiography: one modality in the training data stands for all three in a PACS
_RADIOGRAPHY = ("CR", "DX", "DR")
MIN_SLICES_3D = 3  # a 3D network on fewer slices than this sees a plane, not a volume


@dataclass(frozen=True)
class SeriesSummary:
    """What the rules look at in a received series (read from its headers).

    Attributes:
        number: the SeriesNumber (``None`` when absent), for log lines.
        modality: the Modality of its first image instance ('' when absent).
        slices: image instances (frames of a multi-frame instance count one each).
        skipped: files that are not images (SR, SEG, presentation states...) or not DICOM.
    """

    number: int | None
    modality: str
    slices: int
    skipped: int

    def describe(self) -> str:
        """``series 3 (MR, 12 slices)``: no UID, description or patient."""
        number = f"series {self.number}" if self.number is not None else "a series without a number"
        return f"{number} ({self.modality or 'no modality'}, {self.slices} slice{'s' * (self.slices != 1)})"


@dataclass(frozen=True)
class SeriesRules:
    """The series a model takes.

    Attributes:
        modalities: DICOM Modality values taken; empty: any (the training data's modality is unknown).
        spatial_dims: 3: a volume of at least ``min_slices`` slices; 2: a single image.
        min_slices: fewest slices of a series a 3D model takes.
    """

    modalities: tuple[str, ...]
    spatial_dims: int
    min_slices: int = MIN_SLICES_3D

    @classmethod
    def of(cls, predictor) -> SeriesRules:
        """The rules of ``predictor``'s model, from its card (training data modality, spatial dims)."""
        card = getattr(predictor, "card", {}) or {}
        dims = int(card.get("spatial_dims") or predictor.config.dataset.spatial_dims)
        return cls(dicom_modalities(card.get("training_data", {}).get("modality")), dims)

    def describe(self) -> str:
        """One line for the startup message."""
        what = "/".join(self.modalities) if self.modalities else "any modality (the card names none)"
        shape = f"volumes of at least {self.min_slices} slices" if self.spatial_dims == 3 else "single images"
        return f"{what}, {shape}"

    def refusal(self, series: SeriesSummary) -> str | None:
        """Why ``series`` is not taken (``None``: it is)."""
        if series.slices == 0:
            return (f"{series.describe()} holds no image instances ({series.skipped} other object(s)); the model "
                    "predicts on images")
        if self.modalities and series.modality not in self.modalities:
            return self._wrong_modality(series.describe(), series.modality)
        if self.spatial_dims == 3 and series.slices < self.min_slices:
            return (f"{series.describe()}: the model is 3D and takes volumes of at least {self.min_slices} slices")
        if self.spatial_dims == 2 and series.slices != 1:
            return f"{series.describe()}: the model is 2D and takes single images; send one image per series"
        return None


    def modality_refusal(self, number: int | None, modality: str) -> str | None:
        """Why a series of this Modality is not taken, from a series search before its instances are fetched."""
        if not self.modalities or modality in self.modalities:
            return None
        return self._wrong_modality(f"series {number}" if number is not None else "a series without a number", modality)

    def _wrong_modality(self, series: str, modality: str) -> str:
        return f"{series}: modality {modality or 'absent'}, the model was trained on {'/'.join(self.modalities)}"


@dataclass(frozen=True)
class StudyRules:
    """The studies a model of several series takes (its plan's ``dataset.series_rules``): each rule must pick
    exactly one series of a received study, and each picked series must pass the model's :class:`SeriesRules`.

    Attributes:
        series_rules: ``NAME=REGEX`` texts, matched against each series' ``"<Modality> <SeriesDescription>"``.
        series: what each picked series must be (modality, slices).
    """

    series_rules: tuple[str, ...]
    series: SeriesRules

    @classmethod
    def of(cls, predictor) -> StudyRules | None:
        """The model's study rules; ``None`` for a model of one series (it takes series, not studies)."""
        rules = tuple(predictor.config.dataset.series_rules or ())
        return cls(rules, SeriesRules.of(predictor)) if rules else None

    def describe(self) -> str:
        """One line for the startup message."""
        return (f"studies, one series for each of the rules {', '.join(self.series_rules)} "
                f"({self.series.describe()})")

    def pick(self, study_folder: Path) -> tuple[dict[str, Path], str | None, str]:
        """``({view: series folder}, None, log name)`` for a study the model takes, else ``({}, why not, log
        name)``. The reason and the log name (``a study (t1: series 2 (MR, 4 slices), ...)``) name rules and series
        by number, modality and slice count, never a description.

        Raises:
            DatasetError: no subfolder of ``study_folder`` holds a DICOM series.
        """
        from medlens.data.series import list_series, picked_or_problems

        series = list_series(study_folder)
        picked, problems = picked_or_problems(series, self.series_rules)
        if problems:
            return {}, f"a study of {len(series)} series: {'; '.join(problems)}", "a study"
        summaries = {name: summarise(folder) for name, folder in picked.items()}  # headers read once per series
        what = "a study (" + ", ".join(f"{name}: {s.describe()}" for name, s in summaries.items()) + ")"
        for name, summary in summaries.items():
            if reason := self.series.refusal(summary):
                return {}, f"{reason} (view {name})", what
        return picked, None, what


def dicom_modalities(names) -> tuple[str, ...]:
    """DICOM Modality values for a card's ``training_data.modality`` (a name or a list of channel names).

    Unknown names give ``()`` (any modality): a rule the card cannot support is not invented.
    """
    if not names:
        return ()
    names = [names] if isinstance(names, str) else list(names)
    codes = {MODALITY_NAMES.get(str(n).strip().lower()) for n in names}
    if None in codes or len(codes) != 1:  # an unknown name, or channels of several modalities (not one series)
        return ()
    code = codes.pop()
    return _RADIOGRAPHY if code in _RADIOGRAPHY else (code,)


def summarise(folder: Path) -> SeriesSummary:
    """A :class:`SeriesSummary` of the files under ``folder`` (headers only, no pixels)."""
    from medlens.io.dicom import scan_folder

    series, skipped = scan_folder(Path(folder))
    headers = [h for group in series.values() for h in group]
    if not headers:
        return SeriesSummary(None, "", 0, len(skipped))
    number = _series_number(headers[0].path)
    return SeriesSummary(number, str(headers[0].modality or ""), len(headers), len(skipped))


def _series_number(path: Path) -> int | None:
    import pydicom

    from medlens.io.dicom_checks import quiet_pydicom

    with quiet_pydicom():
        value = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesNumber"]).get("SeriesNumber")
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
