"""Clinical values beside the images: manifest columns encoded into numbers with training statistics.

The plan's ``clinical`` section names the inputs: ``numeric`` columns (z-scored with the training mean and
standard deviation) and ``categorical`` columns with their categories (``"COLUMN=A|B|C"``, one-hot). Every
column also gets a missing-value flag, so a case without a value is still encoded (and predicted):

    numeric column      ->  [z-score (0 when missing), missing flag]
    categorical column  ->  [one-hot over its categories..., missing flag]

in the order numeric columns, then categorical columns, as the plan lists them. A numeric column whose values
lie on two scales a power of ten apart (a decimal point lost in some rows: 0.78 written 780) gets a
``clinical.rescale`` rule ``"COLUMN<LIMIT*FACTOR"`` (or ``>``): values below (above) LIMIT are multiplied by
FACTOR before anything else, in training and at prediction alike. The encoding of a record
with every value missing (:func:`absent_vector`) follows from the plan alone; the means and standard
deviations come from :meth:`ClinicalEncoder.fit` on the training cases only (or from the plan's
``clinical.standardise``, ``"COLUMN=MEAN,SD"``, where a federation pooled its sites' training statistics:
:meth:`ClinicalEncoder.moments`, :func:`standardise_entries`) and are saved as ``clinical.json`` in the run
folder (:meth:`ClinicalEncoder.to_dict`).

A value is missing when its cell is empty or holds a missing-value marker (``NA``, ``nan``, ``N/A``...:
:data:`~medlens.data.dataset.MISSING_VALUE_MARKERS`). Anything else that is not what the plan says (a word in
a numeric column, ``1,5`` with a decimal comma, a category the model was not trained with) is refused with
the case, the column and the value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from medlens.config import ClinicalSection
from medlens.data.dataset import MISSING_VALUE_MARKERS
from medlens.errors import ConfigError, DatasetError
from medlens.types import Case

CLINICAL_FILE = "clinical.json"  # the fitted encoder, in the run folder and the bundle
FORMAT_VERSION = 1
_DECIMAL_COMMA = re.compile(r"[+-]?\d+(,\d+)+")


def is_missing(value) -> bool:
    """Whether a cell (text) or a record value (text, number, ``None``) means "no value"."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() in MISSING_VALUE_MARKERS


def category_key(text: str) -> str:
    """What two spellings of one category share: ``"F"``, ``"f"`` and ``" f "`` -> ``"f"``; ``"Stage  II"`` ->
    ``"stage ii"``."""
    return " ".join(text.split()).casefold()


def as_number(value) -> float | None:
    """The finite number a cell or record value holds, or ``None`` (missing, or not a plain number)."""
    if isinstance(value, bool) or is_missing(value):
        return None
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def read_number(value, column: str, where: str) -> float | None:
    """A numeric column's value: a float, ``None`` when missing.

    Raises:
        DatasetError: the value is not a plain finite number (names ``where``, the column and the value).
    """
    if is_missing(value):
        return None
    number = as_number(value)
    if number is not None:
        return number
    text = str(value).strip()
    if _DECIMAL_COMMA.fullmatch(text):
        how = "write decimals with a dot (1.5, not 1,5) and numbers without thousands separators"
    else:
        how = ("write the number alone (its unit belongs in clinical.units), leave the cell empty when it is not "
               "known, or move the column to clinical.categorical if it holds categories")
    raise DatasetError(f"{where}: clinical column {column!r} holds {text!r}, which is not a number, but the plan "
                       f"reads {column!r} as numeric; {how}")


EXAMPLE_RECORD = '{"Age": 71, "M/F": "F"}'


def record_from_json(text: str) -> dict:
    """A clinical record ``{column: value}`` from JSON text (what ``medlens predict --clinical`` and the service's
    ``clinical`` field take).

    Raises:
        ValueError: not JSON, or not an object; the message says which, and gives an example.
    """
    import json

    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at character {exc.pos}); give an object such as "
                         f"{EXAMPLE_RECORD}") from None
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object {{column: value}} such as {EXAMPLE_RECORD}, got "
                         f"{type(record).__name__}")
    return record


def parse_categories(section: ClinicalSection) -> dict[str, tuple[str, ...]]:
    """``clinical.categorical`` entries ``"COLUMN=A|B|C"`` as ``{column: (A, B, C)}``, in the plan's order.

    Raises:
        ConfigError: an entry without ``=`` or without categories, an empty or repeated category, a column
            listed twice or also numeric.
    """
    categories: dict[str, tuple[str, ...]] = {}
    for entry in section.categorical:
        column, _, listed = str(entry).partition("=")
        column = column.strip()
        names = tuple(name.strip() for name in listed.split("|"))
        where = f"clinical.categorical entry {entry!r}"
        if not column or "=" not in str(entry) or not listed.strip():
            raise ConfigError(f"{where}: expected COLUMN=CATEGORY|CATEGORY..., e.g. 'M/F=F|M' or 'smoker=no|yes'")
        if "" in names or len(set(names)) < len(names):
            raise ConfigError(f"{where}: categories must be distinct and non-empty, found {list(names)}")
        if column in categories:
            raise ConfigError(f"{where}: column {column!r} is listed twice in clinical.categorical; keep one entry")
        if column in section.numeric:
            raise ConfigError(f"{where}: column {column!r} is also in clinical.numeric; a column is numeric or "
                              "categorical: remove it from one of them")
        categories[column] = names
    return categories


def parse_units(section: ClinicalSection) -> dict[str, str]:
    """``clinical.units`` entries ``"COLUMN=UNIT"`` as ``{column: unit}`` (numeric columns only).

    Raises:
        ConfigError: an entry without ``=`` or unit, or naming a column that is not in ``clinical.numeric``.
    """
    units: dict[str, str] = {}
    for entry in section.units:
        column, _, unit = str(entry).partition("=")
        column, unit = column.strip(), unit.strip()
        if not column or not unit:
            raise ConfigError(f"clinical.units entry {entry!r}: expected COLUMN=UNIT, e.g. 'Age=years'")
        if column not in section.numeric:
            raise ConfigError(f"clinical.units entry {entry!r}: {column!r} is not in clinical.numeric "
                              f"({', '.join(section.numeric) or 'empty'}); units describe numeric columns")
        units[column] = unit
    return units


_NUMBER = r"[0-9.eE+-]+"
_RESCALE = re.compile(rf"^\s*(?P<column>.+?)\s*(?P<side>[<>])\s*(?P<limit>{_NUMBER})\s*\*\s*(?P<factor>{_NUMBER})\s*$")


def parse_rescale(section: ClinicalSection) -> dict[str, tuple[str, float, float]]:
    """``clinical.rescale`` entries ``"COLUMN<LIMIT*FACTOR"`` as ``{column: ("<" | ">", limit, factor)}``.

    Raises:
        ConfigError: an entry not of that form, a column that is not in ``clinical.numeric`` or listed twice,
            a limit or factor that is not a positive number.
    """
    rules: dict[str, tuple[str, float, float]] = {}
    for entry in section.rescale:
        match = _RESCALE.match(str(entry))
        where = f"clinical.rescale entry {entry!r}"
        try:
            limit, factor = (float(match["limit"]), float(match["factor"])) if match else (0.0, 0.0)
        except ValueError:
            limit = factor = 0.0
        if not match or not (limit > 0 and factor > 0):
            raise ConfigError(f"{where}: expected COLUMN<LIMIT*FACTOR or COLUMN>LIMIT*FACTOR with positive numbers, "
                              "e.g. 'nWBV>10*0.001' (values above 10 multiplied by 0.001)")
        column = match["column"]
        if column not in section.numeric or column in rules:
            raise ConfigError(f"{where}: {column!r} must be a clinical.numeric column, with one rule")
        rules[column] = (match["side"], limit, factor)
    return rules


def parse_standardise(section: ClinicalSection) -> dict[str, tuple[float, float]]:
    """``clinical.standardise`` entries ``"COLUMN=MEAN,SD"`` as ``{column: (mean, sd)}``.

    Raises:
        ConfigError: an entry not of that form, a column that is not in ``clinical.numeric`` or listed twice, a
            standard deviation that is not positive.
    """
    fixed: dict[str, tuple[float, float]] = {}
    for entry in section.standardise:
        column, _, numbers = str(entry).rpartition("=")
        where = f"clinical.standardise entry {entry!r}"
        try:
            mean, sd = (float(n) for n in numbers.split(","))
        except ValueError:
            mean = sd = math.nan
        if not column or not (math.isfinite(mean) and sd > 0):
            raise ConfigError(f"{where}: expected COLUMN=MEAN,SD with a positive SD, e.g. 'Age=72.4,8.9'")
        if column not in section.numeric or column in fixed:
            raise ConfigError(f"{where}: {column!r} must be a clinical.numeric column, with one entry")
        fixed[column] = (mean, sd)
    return fixed


def standardise_entries(moments: Iterable[Mapping[str, tuple[float, float, float]]]) -> tuple[str, ...]:
    """``clinical.standardise`` entries from several training splits' moments (:meth:`ClinicalEncoder.moments`,
    e.g. one per federated site): the mean and standard deviation of all their values together, exactly as one
    training split holding them all would give (a column with no spread gets SD 1, as :meth:`ClinicalEncoder.fit`
    does).

    Raises:
        DatasetError: a column with no value in any of them.
    """
    totals: dict[str, np.ndarray] = {}
    for part in moments:
        for column, values in part.items():
            totals[column] = totals.get(column, np.zeros(3)) + np.asarray(values, dtype=np.float64)
    entries = []
    for column, (n, total, squares) in totals.items():
        if n <= 0:
            raise DatasetError(_no_value(column, 0))
        mean = total / n
        sd = math.sqrt(max(squares / n - mean * mean, 0.0))
        entries.append(f"{column}={mean:.6g},{sd if sd > 1e-12 * max(abs(mean), 1.0) else 1.0:.6g}")
    return tuple(entries)


def _check_numeric(section: ClinicalSection) -> tuple[str, ...]:
    numeric = tuple(str(c).strip() for c in section.numeric)
    if "" in numeric or len(set(numeric)) < len(numeric):
        raise ConfigError(f"clinical.numeric: column names must be distinct and non-empty, found {list(numeric)}")
    return numeric


def feature_count(section: ClinicalSection) -> int:
    """``F``: the length of one encoded record (2 per numeric column, categories + 1 per categorical one)."""
    return 2 * len(_check_numeric(section)) + sum(len(c) + 1 for c in parse_categories(section).values())


def absent_vector(section: ClinicalSection) -> np.ndarray:
    """The encoding ``(F,)`` float32 of a record with every value missing: z 0 / flag 1, one-hot 0 / flag 1."""
    parts = [np.array([0.0, 1.0]) for _ in _check_numeric(section)]
    parts += [np.r_[np.zeros(len(names)), 1.0] for names in parse_categories(section).values()]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


@dataclass
class ClinicalEncoder:
    """Encodes clinical records into ``(F,)`` float32 vectors with statistics of the training cases.

    Attributes:
        numeric: numeric columns, in the plan's order.
        means, stds: per numeric column, of the training values (a constant column gets std 1).
        categories: per categorical column, its categories (one-hot order), in the plan's order.
        units: unit per numeric column, where the plan gives one (for the model card and the web form).
        rescale: per numeric column on two scales, ``(side, limit, factor)`` (see :func:`parse_rescale`).
    """

    numeric: tuple[str, ...] = ()
    means: dict[str, float] = field(default_factory=dict)
    stds: dict[str, float] = field(default_factory=dict)
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    rescale: dict[str, tuple[str, float, float]] = field(default_factory=dict)

    @classmethod
    def fit(cls, section: ClinicalSection, cases: Iterable[Case]) -> ClinicalEncoder:
        """Learn the numeric columns' means and standard deviations from ``cases`` (the training cases only).

        Raises:
            ConfigError: a malformed ``clinical`` section.
            DatasetError: a column the plan names that the cases lack, a value that is not a number where the
                plan says numeric, a category the plan does not list, a column with no value in these cases.
        """
        numeric, categories, units = _check_numeric(section), parse_categories(section), parse_units(section)
        cases, fixed = list(cases), parse_standardise(section)
        encoder = cls(numeric, {}, {}, categories, units, parse_rescale(section))
        for column in numeric:
            values = [encoder._number(_cell(case, column), column, f"case {case.case_id}") for case in cases]
            known = np.array([v for v in values if v is not None], dtype=np.float64)
            if column in fixed:  # the plan's statistics (a federation's, pooled over its sites)
                encoder.means[column], encoder.stds[column] = fixed[column]
                continue
            if not known.size:
                raise DatasetError(_no_value(column, len(cases)))
            std = float(known.std())
            encoder.means[column], encoder.stds[column] = float(known.mean()), std if std > 0 else 1.0
        for column in categories:
            found = [encoder._category(_cell(case, column), column, f"case {case.case_id}") for case in cases]
            if all(f is None for f in found):
                raise DatasetError(_no_value(column, len(cases)))
        return encoder

    @classmethod
    def from_plan(cls, section: ClinicalSection) -> ClinicalEncoder:
        """The encoder a plan defines by itself: every numeric column in ``clinical.standardise``.

        Raises:
            ConfigError: a numeric column without fixed statistics (the encoder must be fitted on cases).
        """
        fixed = parse_standardise(section)
        unfixed = [c for c in _check_numeric(section) if c not in fixed]
        if unfixed:
            raise ConfigError(f"clinical.standardise has no statistics for {', '.join(map(repr, unfixed))}; the "
                              "encoder must be fitted on training cases (ClinicalEncoder.fit)")
        return cls(_check_numeric(section), {c: fixed[c][0] for c in fixed}, {c: fixed[c][1] for c in fixed},
                   parse_categories(section), parse_units(section), parse_rescale(section))

    @staticmethod
    def moments(section: ClinicalSection, cases: Iterable[Case]) -> dict[str, tuple[float, float, float]]:
        """``{numeric column: (count, sum, sum of squares)}`` of the cases' values after ``clinical.rescale``:
        aggregates from which :func:`standardise_entries` pools several training splits' statistics without any
        single value leaving its split.

        Raises:
            DatasetError: as :meth:`fit` (a missing column, a value that is not a number).
        """
        reader = ClinicalEncoder(_check_numeric(section), rescale=parse_rescale(section))
        cases, out = list(cases), {}
        for column in reader.numeric:
            values = [reader._number(_cell(case, column), column, f"case {case.case_id}") for case in cases]
            known = np.array([v for v in values if v is not None], dtype=np.float64)
            out[column] = (float(known.size), float(known.sum()), float((known * known).sum()))
        return out

    def feature_names(self) -> list[str]:
        """A name per encoded feature (``F``): ``Age``, ``Age missing``, ``M/F=F``, ``M/F=M``, ``M/F missing``."""
        names = [n for column in self.numeric for n in (column, f"{column} missing")]
        for column, categories in self.categories.items():
            names += [f"{column}={c}" for c in categories] + [f"{column} missing"]
        return names

    @property
    def columns(self) -> list[str]:
        """The input columns: numeric, then categorical."""
        return [*self.numeric, *self.categories]

    def encode(self, cases: Iterable[Case]) -> np.ndarray:
        """``(N, F)`` float32 encodings of the cases' ``clinical`` cells.

        Raises:
            DatasetError: a column the cases lack, a non-number in a numeric column, an unknown category.
        """
        rows = [self._encode(lambda column, c=case: _cell(c, column), f"case {case.case_id}") for case in cases]
        return np.stack(rows) if rows else np.zeros((0, len(self.feature_names())), np.float32)

    def encode_record(self, record: Mapping, where: str) -> np.ndarray:
        """``(F,)`` float32 encoding of one record ``{column: text or number}`` (a prediction's clinical values).

        A column the record leaves out, or gives as ``None``, ``""`` or a missing-value marker, is missing;
        keys that are not inputs are ignored.

        Raises:
            DatasetError: a non-number in a numeric column, an unknown category (names ``where``).
        """
        return self._encode(lambda column: record.get(column), where)

    def missing(self, record: Mapping) -> list[str]:
        """The input columns ``record`` gives no value for (what a prediction was made without)."""
        return [column for column in self.columns if self._is_absent(record.get(column), column)]

    def to_dict(self) -> dict:
        """JSON-ready: what :meth:`from_dict` reads back (``clinical.json``)."""
        return {"version": FORMAT_VERSION, "numeric": list(self.numeric),
                "means": dict(self.means), "stds": dict(self.stds),
                "categorical": {c: list(names) for c, names in self.categories.items()}, "units": dict(self.units),
                "rescale": {c: list(rule) for c, rule in self.rescale.items()}}

    @classmethod
    def from_dict(cls, raw: Mapping, where: str = CLINICAL_FILE) -> ClinicalEncoder:
        """The encoder :meth:`to_dict` wrote.

        Raises:
            ConfigError: not an encoder's dict (a key missing, a numeric column without statistics).
        """
        try:
            numeric = tuple(str(c) for c in raw["numeric"])
            means = {c: float(raw["means"][c]) for c in numeric}
            stds = {c: float(raw["stds"][c]) for c in numeric}
            categories = {str(c): tuple(str(n) for n in names) for c, names in raw["categorical"].items()}
            units = {str(c): str(u) for c, u in raw.get("units", {}).items()}
            rescale = {str(c): (str(side), float(limit), float(factor))
                       for c, (side, limit, factor) in raw.get("rescale", {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{where}: not a clinical encoder ({type(exc).__name__}: {exc}); expected keys numeric, "
                              "means, stds, categorical as medlens writes them; train the model again") from None
        return cls(numeric, means, stds, categories, units, rescale)

    def _encode(self, value_of, where: str) -> np.ndarray:
        """``(F,)`` float32 from ``value_of(column)``, the value of each input column."""
        out = []
        for column in self.numeric:
            number = self._number(value_of(column), column, where)
            out += [0.0, 1.0] if number is None else [(number - self.means[column]) / self.stds[column], 0.0]
        for column, categories in self.categories.items():
            category = self._category(value_of(column), column, where)
            out += [float(category == c) for c in categories] + [float(category is None)]
        return np.asarray(out, dtype=np.float32)

    def _number(self, value, column: str, where: str) -> float | None:
        """The cell's number (``None`` when missing), brought onto the column's one scale by its rescale rule."""
        number = read_number(value, column, where)
        if number is None or column not in self.rescale:
            return number
        side, limit, factor = self.rescale[column]
        return number * factor if (number < limit if side == "<" else number > limit) else number

    def _category(self, value, column: str, where: str) -> str | None:
        """The category ``value`` names (exactly, else ignoring case and spacing), ``None`` when missing.

        A listed category wins over a missing-value marker: a plan may list ``None`` as a category.
        """
        categories = self.categories[column]
        text = _as_text(value)
        if text in categories:
            return text
        if is_missing(value):
            return None
        folded = [c for c in categories if category_key(c) == category_key(text)]
        if len(folded) == 1:
            return folded[0]
        raise DatasetError(f"{where}: clinical column {column!r} holds {text!r}, a category the model was not trained "
                           f"with; known categories: {', '.join(categories)}. Write one of them, leave the value "
                           f"empty if it is not known, or add it to clinical.categorical ({column}=...|{text}) and "
                           "train again")

    def _is_absent(self, value, column: str) -> bool:
        if column in self.categories:
            return _as_text(value) not in self.categories[column] and is_missing(value)
        return is_missing(value)


def _as_text(value) -> str:
    """A record value as a category name: ``1`` and ``1.0`` read as ``"1"``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value).strip()


def _cell(case: Case, column: str) -> str:
    """A case's cell of ``column``; a column the manifest lacks is an error naming what it has."""
    if column not in case.clinical:
        have = ", ".join(case.clinical) or "none"
        raise DatasetError(f"case {case.case_id}: the plan's clinical column {column!r} is not in the manifest "
                           f"(its other columns: {have}); add the column, or remove {column!r} from the plan's "
                           "clinical section")
    return case.clinical[column]


def _no_value(column: str, n: int) -> str:
    return (f"clinical column {column!r} has no value in any of the {n} training case(s); it cannot be learnt "
            "from: fill it in, or remove it from the plan's clinical section")
