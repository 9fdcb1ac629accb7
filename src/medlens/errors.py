"""The few exceptions medlens raises for a user's mistake.

Every message says what was expected, what was found, where, and how to fix it. The CLI prints
the message of a :class:`MedlensError` without a traceback and exits with status 2.
"""

from __future__ import annotations


class MedlensError(Exception):
    """Base class of every error caused by input the user can fix."""


class ReadError(MedlensError):
    """A file could not be read as a medical image (corrupt, truncated, unsupported)."""


class DicomError(ReadError):
    """A DICOM file or series is inconsistent (mixed series, missing slices, uneven spacing)."""


class DatasetError(MedlensError):
    """A dataset folder, manifest or archive does not match any layout medlens understands."""


class ConfigError(MedlensError):
    """A configuration key or value is invalid."""


class DataMissingError(DatasetError, FileNotFoundError):
    """A data file is absent; the message says where it was looked for and how to get it."""


class BudgetError(MedlensError):
    """A step would make more than the work budget allows (see :mod:`medlens.budget`).

    Attributes:
        status: the HTTP status the service answers with (413: the input asks too much).
    """

    status = 413
