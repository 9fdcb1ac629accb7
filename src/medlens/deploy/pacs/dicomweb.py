"""``medlens predict MODEL dicomweb://HOST[:PORT]/PATH/studies/STUDY_UID[/series/SERIES_UID] [--push]``.

The study's series are pulled over WADO-RS (dicomweb-client) into a temporary folder, one folder per series;
each series the model's rules take is predicted and its DICOM results written under ``--out``; with ``--push``
they are stored back into the same server over STOW-RS, all in one request, and only when every series
predicted. ``dicomweb://`` is plain HTTP, ``dicomwebs://`` HTTPS (``http(s)://`` URLs are taken as they are).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from medlens.deploy.pacs.send import SendError, http_url
from medlens.errors import MedlensError

SCHEMES = ("dicomweb://", "dicomwebs://")
_ADDRESS = re.compile(r"^(?P<base>https?://[^/\s]+(?:/[^\s]*?)?)/studies/(?P<study>[0-9.]+)"
                      r"(?:/series/(?P<series>[0-9.]+))?/?$")


class DicomwebError(SendError):
    """A DICOMweb server that cannot be read from (unreachable, an error status, no such study)."""


def is_dicomweb(text) -> bool:
    """Whether a ``medlens predict`` input is a DICOMweb address rather than a file."""
    return isinstance(text, str) and text.lower().startswith(SCHEMES)


@dataclass(frozen=True)
class StudyAddress:
    """A study (or one of its series) on a DICOMweb server: ``base_url`` is the DICOMweb root (``.../dicom-web``)."""

    base_url: str
    study_uid: str
    series_uid: str | None = None

    @classmethod
    def parse(cls, text: str) -> StudyAddress:
        """``dicomweb(s)://HOST[:PORT]/PATH/studies/UID[/series/UID]``.

        Raises:
            ConfigError: not of that form.
        """
        from medlens.errors import ConfigError

        match = _ADDRESS.match(http_url(text))
        if not match:
            raise ConfigError(f"{text!r}: expected dicomweb://HOST[:PORT]/PATH/studies/STUDY_UID (optionally "
                              "/series/SERIES_UID; dicomwebs:// for HTTPS), e.g. "
                              "dicomweb://127.0.0.1:8042/dicom-web/studies/1.2.840.113619.2.5")
        return cls(match["base"], match["study"], match["series"])


def pull_study(address: StudyAddress, folder: Path, *, timeout_s: float = 60.0) -> list[Path]:
    """Write the study's instances into ``folder/series_K/`` (K: 1, 2... in the server's series order).

    Returns:
        The series folders.

    Raises:
        DicomwebError: the server could not be reached, answered an error, or holds no such study / series.
    """
    client = _client(address.base_url, timeout_s)
    uids = [address.series_uid] if address.series_uid else _series_of(client, address)
    folders = []
    for k, series_uid in enumerate(uids, start=1):
        target = Path(folder) / f"series_{k}"
        target.mkdir(parents=True)
        count = 0
        for count, ds in enumerate(_call(address, "retrieve a series of the study",
                                         lambda u=series_uid: list(client.iter_series(address.study_uid, u))),
                                   start=1):
            ds.save_as(target / f"{count:05d}.dcm", enforce_file_format=True)
        if count == 0:
            raise DicomwebError(f"the DICOMweb server at {address.base_url} holds no instances of the series asked "
                                "for; check the series UID")
        folders.append(target)
    return folders


def _client(base_url: str, timeout_s: float):
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(base_url, timeout=timeout_s)
    client.set_http_retry_params(retry=False)
    return client


def _series_of(client, address: StudyAddress) -> list[str]:
    from pydicom import Dataset

    found = _call(address, "list the study's series", lambda: client.search_for_series(address.study_uid))
    uids = [str(Dataset.from_json(entry).get("SeriesInstanceUID", "")) for entry in found]
    if not [u for u in uids if u]:
        raise DicomwebError(f"the DICOMweb server at {address.base_url} holds no study with that StudyInstanceUID "
                            "(no series found); check the UID, or upload the study first")
    return [u for u in uids if u]


def _call(address: StudyAddress, what: str, request: Callable):
    """``request()``, its HTTP failures as a :class:`DicomwebError` that says what to check."""
    import requests

    try:
        return request()
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "an error"
        hint = ("check the URL's path: it must be the DICOMweb root (Orthanc: /dicom-web) followed by "
                "/studies/UID") if status in (400, 404) else "see the server's log"
        raise DicomwebError(f"the DICOMweb server at {address.base_url} answered {status} when asked to {what}; "
                            f"{hint}") from None
    except requests.RequestException as exc:
        raise DicomwebError(f"the DICOMweb server at {address.base_url} could not be reached to {what} "
                            f"({type(exc).__name__}); is it running, and are host and port right?") from None


def predict_dicomweb(predictor, text: str, out: Path, kinds: Sequence[str], *, push: bool,
                     log: Callable[[str], None] = print) -> int:
    """Pull the study at ``text``, predict each series the model takes, write the results under ``out``, and
    with ``push`` store them back in the server's study.

    Returns:
        The number of series that failed (0: every series taken was predicted, and pushed when asked).

    Raises:
        DicomwebError / SendError: pulling or pushing failed (nothing pushed); ConfigError: a bad address.
    """
    from medlens.deploy.pacs.rules import SeriesRules, summarise
    from medlens.deploy.pacs.send import Destination, send_files

    address, rules = StudyAddress.parse(text), SeriesRules.of(predictor)
    results, failed = [], 0
    with tempfile.TemporaryDirectory(prefix="medlens-dicomweb-") as pulled:
        for folder in pull_study(address, Path(pulled)):
            summary = summarise(folder)
            reason = rules.refusal(summary)
            if reason:
                log(f"not predicted: {reason}")
                continue
            try:
                paths = _predict_one(predictor, folder, Path(out) / folder.name, kinds)
            except MedlensError as exc:  # one series failing leaves the others
                failed += 1
                log(f"{summary.describe()}: failed: {exc}")
                continue
            log(f"{summary.describe()}: {len(paths)} DICOM result object(s) in {Path(out) / folder.name}")
            results += paths
    if not results and not failed:
        log(f"no series of the study matched the model's rules ({rules.describe()}); nothing predicted")
        return 1
    if push and failed:
        log("nothing pushed: a series failed (above); fix it and rerun with --push")
    elif push:
        send_files(results, Destination(url=address.base_url))
        log(f"pushed {len(results)} DICOM object(s) into the study at {address.base_url}")
    return failed


def _predict_one(predictor, folder: Path, out: Path, kinds: Sequence[str]) -> list[Path]:
    from medlens.deploy.pacs.results import predict_series

    return predict_series(predictor, folder, out, kinds)
