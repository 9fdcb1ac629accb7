"""``medlens predict MODEL dicomweb://HOST[:PORT]/PATH/studies/STUDY_UID[/series/SERIES_UID] [--push]``.

The study's series are pulled over WADO-RS (dicomweb-client) into a temporary folder, one folder per series;
each series the model's rules take is predicted and its DICOM results written under ``--out``; with ``--push``
they are stored back into the same server over STOW-RS, all in one request, and only when every series
predicted. ``dicomweb://`` is plain HTTP, ``dicomwebs://`` HTTPS (on the command line an ``http://`` address
would read as a file path). Series of a modality the model was not trained on are not pulled at all.

A model of several series (its plan's ``dataset.series_rules``) predicts the study as one case: the rules pick one
series each from the server's series search (``"<Modality> <SeriesDescription>"``), only those are pulled, into
one study folder, and the results refer to the first rule's series, as the PACS listener's do.
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


@dataclass(frozen=True)
class ListedSeries:
    """A series of a study as the server's series search (QIDO-RS) lists it."""

    uid: str
    number: int | None
    modality: str
    description: str

    @property
    def label(self) -> str:
        """``"<Modality> <SeriesDescription>"``, what series rules are matched against."""
        return f"{self.modality} {self.description}".strip()


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
    listed = ([ListedSeries(address.series_uid, None, "", "")] if address.series_uid
              else _series_of(client, address))
    folders, skipped = [], []
    for k, series in enumerate(listed, start=1):
        reason = skip(series.number, series.modality) if skip is not None and series.modality else None
        if reason:
            skipped.append(reason)
            continue
        folders.append(_pull_series(client, address, series.uid, Path(folder) / f"{prefix}series_{k}"))
    return folders, skipped


def pull_picked_series(address: StudyAddress, study_folder: Path, series_rules: Sequence[str], *,
                       timeout_s: float = 60.0) -> dict[str, Path]:
    """Pull the series of the study that ``series_rules`` pick, one per rule, into ``study_folder/series_K/``.

    The rules are matched against the server's series search, so the study's other series (localizers, other
    sequences) are never pulled.

    Returns:
        ``{view: series folder}`` in rule order.

    Raises:
        ConfigError: the address names one series (the model reads several series of a study).
        DicomwebError: the server could not be read, or a rule matches no series of the study, or several.
    """
    from medlens.data.series import SeriesInfo, picked_or_problems
    from medlens.errors import ConfigError

    if address.series_uid:
        raise ConfigError(f"{address.base_url}/studies/{address.study_uid}/series/{address.series_uid}: this model "
                          "reads several series of a study (its series rules pick them); give the study's address "
                          "without /series/UID")
    client = _client(address.base_url, timeout_s)
    listed = _series_of(client, address)
    names = {f"series_{k}": series for k, series in enumerate(listed, start=1)}
    picked, problems = picked_or_problems([SeriesInfo(Path(n), s.label) for n, s in names.items()], series_rules)
    if problems:
        seen = "; ".join(f"series {s.number if s.number is not None else '(no number)'}: {s.label!r}"
                         for s in sorted(listed, key=lambda s: (s.number is None, s.number or 0)))
        raise DicomwebError(f"the study at {address.base_url} cannot be read by the model's series rules "
                            f"{', '.join(series_rules)}: {'; '.join(problems)} (the server lists {seen}); "
                            "nothing predicted or pushed")
    return {view: _pull_series(client, address, names[str(name)].uid, Path(study_folder) / str(name))
            for view, name in picked.items()}


def _pull_series(client, address: StudyAddress, series_uid: str, target: Path) -> Path:
    """One series' instances into the new folder ``target`` (one file each).

    Raises:
        DicomwebError: the server could not be read, or holds no instance of the series.
    """
    target.mkdir(parents=True)
    if _save_series(client, address, series_uid, target) == 0:
        raise DicomwebError(f"the DICOMweb server at {address.base_url} holds no instances of the series asked "
                            "for; check the series UID")
    return target


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


def _series_of(client, address: StudyAddress) -> list[ListedSeries]:
    """Each series of the study, in the server's order (QIDO-RS, the description asked for by name: not every
    server returns it by default)."""
    from pydicom import Dataset

    found = _call(address, "list the study's series",
                  lambda: client.search_for_series(address.study_uid, fields=["SeriesDescription"]))
    listed = []
    for entry in found:
        ds = Dataset.from_json(entry)
        number = ds.get("SeriesNumber")
        if ds.get("SeriesInstanceUID"):
            listed.append(ListedSeries(str(ds.SeriesInstanceUID), int(number) if number not in (None, "") else None,
                                       str(ds.get("Modality", "") or ""), str(ds.get("SeriesDescription", "") or "")))
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
        ConfigError: ``push`` without a ``dicomweb://`` input, a malformed address, or the address of one series for
            a model of several series.
        DicomwebError: a server could not be read, or a study holds no series the model takes (for a model of
            several series: a rule matches no series of the study, or several).
    """
    from medlens.deploy.pacs.results import default_outputs
    from medlens.errors import ConfigError

    addresses = [StudyAddress.parse(str(i)) for i in inputs if is_dicomweb(i)]
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
            taken = (_taken_study if predictor.config.dataset.series_rules else _taken)(
                predictor, address, Path(pulled), prefix, log)
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


def _taken_study(predictor, address: StudyAddress, folder: Path, prefix: str, log: Callable[[str], None]) -> list[Path]:
    """For a model of several series: the study folder (``{prefix}study/``) of the series its rules pick, pulled
    and checked as the PACS listener checks a study it received (modality, slices).

    Raises:
        DicomwebError: the rules do not pick one series each, or a picked series is not one the model takes.
    """
    from medlens.deploy.pacs.rules import StudyRules

    rules = StudyRules.of(predictor)
    study = folder / f"{prefix}study"
    pull_picked_series(address, study, rules.series_rules)
    _, reason, what = rules.pick(study)
    if reason:
        raise DicomwebError(f"the study at {address.base_url} is not one the model takes: {reason}; nothing "
                            "predicted or pushed")
    log(f"pulled {what}")
    return [study]
