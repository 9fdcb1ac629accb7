"""``medlens predict MODEL dicomweb://HOST[:PORT]/PATH/studies/STUDY_UID[/series/SERIES_UID] [--push]``.

The study's series are pulled over WADO-RS (dicomweb-client) into a temporary folder, one folder per series;
each series the model's rules take is predicted and its DICOM results written under ``--out``; with ``--push``
they are stored back into the same server over STOW-RS, all in one request, and only when every series
predicted. ``dicomweb://`` is plain HTTP, ``dicomwebs://`` HTTPS (on the command line an ``http://`` address
would read as a file path). Series of a modality the model was not trained on are not pulled at all.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from medlens.deploy.pacs.send import SendError, http_url

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


def pull_study(address: StudyAddress, folder: Path, *, prefix: str = "", skip: Callable | None = None,
               timeout_s: float = 60.0) -> tuple[list[Path], list[str]]:
    """Write the study's instances into ``folder/{prefix}series_K/`` (K: 1, 2... in the server's series order).

    Args:
        skip: ``skip(number, modality)`` -> why a series is not wanted (``None``: pull it), asked with what the
            server's series search says before anything of that series is pulled.

    Returns:
        The series folders pulled, and the reasons of the series skipped.

    Raises:
        DicomwebError: the server could not be reached, answered an error, or holds no such study / series.
    """
    client = _client(address.base_url, timeout_s)
    listed = [(address.series_uid, None, "")] if address.series_uid else _series_of(client, address)
    folders, skipped = [], []
    for k, (series_uid, number, modality) in enumerate(listed, start=1):
        reason = skip(number, modality) if skip is not None and modality else None
        if reason:
            skipped.append(reason)
            continue
        target = Path(folder) / f"{prefix}series_{k}"
        target.mkdir(parents=True)
        if _save_series(client, address, series_uid, target) == 0:
            raise DicomwebError(f"the DICOMweb server at {address.base_url} holds no instances of the series asked "
                                "for; check the series UID")
        folders.append(target)
    return folders, skipped


def _save_series(client, address: StudyAddress, series_uid: str, target: Path) -> int:
    """Stream one series' instances into ``target`` (one file each); how many."""
    def fetch() -> int:
        count = 0
        for count, ds in enumerate(client.iter_series(address.study_uid, series_uid), start=1):
            ds.save_as(target / f"{count:05d}.dcm", enforce_file_format=True)
        return count

    return _call(address, "retrieve a series of the study", fetch)


def _client(base_url: str, timeout_s: float):
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(base_url, timeout=timeout_s)
    client.set_http_retry_params(retry=False)
    return client


def _series_of(client, address: StudyAddress) -> list[tuple[str, int | None, str]]:
    """``(SeriesInstanceUID, SeriesNumber, Modality)`` of each series of the study (QIDO-RS)."""
    from pydicom import Dataset

    found = _call(address, "list the study's series", lambda: client.search_for_series(address.study_uid))
    listed = []
    for entry in found:
        ds = Dataset.from_json(entry)
        number = ds.get("SeriesNumber")
        if ds.get("SeriesInstanceUID"):
            listed.append((str(ds.SeriesInstanceUID), int(number) if number not in (None, "") else None,
                           str(ds.get("Modality", "") or "")))
    if not listed:
        raise DicomwebError(f"the DICOMweb server at {address.base_url} holds no study with that StudyInstanceUID "
                            "(no series found); check the UID, or upload the study first")
    return listed


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


@dataclass
class PulledInputs:
    """``medlens predict``'s inputs once the ``dicomweb://`` ones are pulled.

    Attributes:
        inputs: the inputs in their order, each ``dicomweb://`` address replaced by the folders of its series
            that the model's rules take.
        kinds: the DICOM result kinds to write (``--dicom``, or the task's default when pushing), or None.
        bases: series folder -> the DICOMweb root it came from (where ``--push`` stores its results).
    """

    inputs: list
    kinds: str | None
    bases: dict[str, str]
    log: Callable[[str], None] = print

    def push(self, written: Sequence[Path], failed: int) -> int:
        """Store ``written`` (the DICOM results) back into the studies they came from, all in one request per
        server, and only when nothing ``failed``; 1 when nothing could be pushed, else 0.

        Raises:
            SendError: a server refused or could not be reached (after the retries).
        """
        from medlens.deploy.pacs.send import Destination, send_files

        if failed:
            self.log("nothing pushed: a series failed (above); fix it and rerun with --push")
            return 1
        by_base: dict[str, list[Path]] = {}
        for path in written:
            base = self.bases.get(Path(path).parent.name.removesuffix("_dicom"))
            if base is not None:
                by_base.setdefault(base, []).append(Path(path))
        for base, paths in by_base.items():
            send_files(paths, Destination(url=base))
            self.log(f"pushed {len(paths)} DICOM object(s) into the study at {base}")
        return 0


@contextlib.contextmanager
def dicomweb_inputs(predictor, inputs: Sequence, *, kinds: str | None, push: bool,
                    log: Callable[[str], None] = print) -> Iterator[PulledInputs]:
    """Pull every ``dicomweb://`` input into a temporary folder (removed on exit); see :class:`PulledInputs`.

    Raises:
        ConfigError: ``push`` without a ``dicomweb://`` input, a malformed address, or a model of several series
            (its series rules pick a study's series; a DICOMweb study is predicted series by series).
        DicomwebError: a server could not be read, or a study holds no series the model takes.
    """
    from medlens.deploy.pacs.results import default_outputs
    from medlens.errors import ConfigError

    addresses = [StudyAddress.parse(str(i)) for i in inputs if is_dicomweb(i)]
    if addresses and predictor.config.dataset.series_rules:
        raise ConfigError(f"{next(str(i) for i in inputs if is_dicomweb(i))}: this model reads "
                          "several series of a study (its plan's series rules "
                          f"{', '.join(predictor.config.dataset.series_rules)}), and a DICOMweb study is predicted "
                          "series by series; download the study into a folder of series folders and run `medlens "
                          "predict RUN STUDY_FOLDER`, or let the PACS send it to `medlens serve RUN --dicom "
                          "AE@PORT`, which collects whole studies")
    if push and not addresses:
        raise ConfigError("--push stores the results back where a dicomweb:// input came from; give one, e.g. "
                          "dicomweb://127.0.0.1:8042/dicom-web/studies/STUDY_UID")
    if not addresses:
        yield PulledInputs(list(inputs), kinds, {}, log)
        return
    kinds = kinds or (",".join(default_outputs(predictor.task.name)) if push else None)
    with tempfile.TemporaryDirectory(prefix="medlens-dicomweb-") as pulled:
        local, bases = [], {}
        for k, item in enumerate(inputs):
            if not is_dicomweb(item):
                local.append(item)
                continue
            address = StudyAddress.parse(str(item))
            prefix = f"study{k + 1}_" if len(addresses) > 1 else ""
            taken = _taken(predictor, address, Path(pulled), prefix, log)
            local += taken
            bases.update({folder.name: address.base_url for folder in taken})
        yield PulledInputs(local, kinds, bases, log)


def _taken(predictor, address: StudyAddress, folder: Path, prefix: str, log: Callable[[str], None]) -> list[Path]:
    """Pull the study's series the model's rules take (a series of another modality is not even pulled); the
    others are logged with the reason.

    Raises:
        DicomwebError: none is taken.
    """
    from medlens.deploy.pacs.rules import SeriesRules, summarise

    rules = SeriesRules.of(predictor)
    folders, reasons = pull_study(address, folder, prefix=prefix,
                                  skip=lambda number, modality: rules.modality_refusal(number, modality))
    taken = []
    for pulled in folders:
        reason = rules.refusal(summarise(pulled))
        if reason:
            reasons.append(reason)
        else:
            taken.append(pulled)
    for reason in reasons:
        log(f"not predicted: {reason}")
    if not taken:
        raise DicomwebError(f"no series of the study at {address.base_url} matches the model ({rules.describe()}): "
                            + "; ".join(reasons) + "; nothing predicted or pushed")
    return taken
