"""Where results go: a DICOM node over C-STORE (``AE@HOST:PORT``) or a DICOMweb server over STOW-RS.

>>> destination = Destination.parse("ORTHANC@pacs.local:4242")      # or "https://pacs.local/dicom-web"
>>> send_files([seg_path, sr_path], destination)

All objects of one result go together: C-STORE opens one association and checks that the peer accepts every
object's SOP class before the first object is sent; STOW-RS posts them in one request. A failure is retried a
few times (the objects keep their SOP Instance UIDs, so a resend replaces, never duplicates) and then raised as
a :class:`SendError` naming the objects the destination did not confirm.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medlens.errors import MedlensError

LOG = logging.getLogger("medlens.pacs")
RETRIES = 2  # resends after a failed attempt
RETRY_DELAY_S = 1.0
CALLING_AE = "MEDLENS"
_AE = re.compile(r"^(?P<ae>[^@\s\\]{1,16})@(?P<host>[^:\s]+):(?P<port>\d{1,5})$")


class SendError(MedlensError):
    """Results that could not be delivered (after the retries)."""


@dataclass(frozen=True)
class Destination:
    """A C-STORE peer (``ae_title``, ``host``, ``port``) or a DICOMweb base URL (``url``)."""

    ae_title: str | None = None
    host: str | None = None
    port: int | None = None
    url: str | None = None

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``AE@HOST:PORT``, ``http(s)://HOST[:PORT]/PATH`` (the DICOMweb root, e.g. ``.../dicom-web``), or the same
        as ``dicomweb(s)://``.

        Raises:
            ConfigError: anything else, with the two forms.
        """
        from medlens.errors import ConfigError

        text = text.strip()
        if re.match(r"^(https?|dicomwebs?)://", text):
            return cls(url=http_url(text).rstrip("/"))
        match = _AE.match(text)
        if match and 0 < int(match["port"]) < 65536:
            return cls(match["ae"], match["host"], int(match["port"]))
        raise ConfigError(f"destination {text!r}: expected AE_TITLE@HOST:PORT (a DICOM node, C-STORE; AE title of "
                          "1-16 characters) or http(s)://HOST[:PORT]/PATH (a DICOMweb server's root, STOW-RS), e.g. "
                          "ORTHANC@127.0.0.1:4242 or http://127.0.0.1:8042/dicom-web")

    def describe(self) -> str:
        return self.url if self.url else f"{self.ae_title}@{self.host}:{self.port}"


def http_url(text: str) -> str:
    """``dicomweb://`` as ``http://`` and ``dicomwebs://`` as ``https://``; http(s) URLs unchanged."""
    return re.sub(r"^dicomweb(s?)://", lambda m: f"http{m[1]}://", text.strip())


def send_files(paths: Sequence[Path], destination: Destination, *, retries: int = RETRIES,
               calling_ae: str = CALLING_AE, timeout_s: float = 30.0) -> None:
    """Deliver every file in ``paths`` to ``destination``, all or an error.

    Raises:
        SendError: the destination refused or could not be reached after ``retries`` resends; the message says
            what it answered and which objects it did not confirm.
    """
    if not paths:
        return
    datasets = _read_all(paths)
    attempt = 0
    while True:
        try:
            if destination.url:
                return _stow(datasets, destination.url, timeout_s)
            return _c_store(datasets, destination, calling_ae, timeout_s)
        except SendError as exc:
            if attempt >= retries or getattr(exc, "final", False):
                raise
            attempt += 1
            LOG.warning("sending to %s failed (%s); retry %d of %d", destination.describe(), exc, attempt, retries)
            time.sleep(RETRY_DELAY_S * attempt)


def _read_all(paths: Sequence[Path]) -> list:
    """Every object read before anything is sent: a file that does not read sends nothing."""
    import pydicom

    try:
        return [pydicom.dcmread(p) for p in paths]
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise SendError(f"a result object could not be read back before sending ({type(exc).__name__}); nothing "
                        "was sent") from None


def _final(error: SendError) -> SendError:
    error.final = True  # retrying cannot help (a refusal, not a failure on the way)
    return error


# ---- C-STORE ------------------------------------------------------------------------------------------------------
def _c_store(datasets: list, destination: Destination, calling_ae: str, timeout_s: float) -> None:
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for sop_class, syntax in sorted({(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}):
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        raise SendError(f"{destination.describe()} did not accept an association from {calling_ae} ("
                        + ("rejected: add the AE title to its known modalities" if assoc.is_rejected else
                           "no answer: is it running and the port right?") + "); nothing was sent")
    try:
        refused = _refused_classes(assoc, datasets)
        if refused:
            raise _final(SendError(f"{destination.describe()} does not accept {', '.join(refused)} objects; "
                                   "nothing was sent"))
        sent = 0
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is None or code not in (0x0000, 0xB000, 0xB006, 0xB007):
                shown = "no answer" if code is None else f"status 0x{code:04X}"
                raise SendError(f"{destination.describe()} answered {shown} to result object {sent + 1} of "
                                f"{len(datasets)}; objects {sent + 1}..{len(datasets)} were not stored")
            sent += 1
        LOG.debug("%d object(s) stored at %s", sent, destination.describe())
    finally:
        assoc.release()


def _refused_classes(assoc, datasets: list) -> list[str]:
    from pydicom.uid import UID

    accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
    return sorted({UID(str(d.SOPClassUID)).name for d in datasets if str(d.SOPClassUID) not in accepted})


# ---- STOW-RS ------------------------------------------------------------------------------------------------------
def _stow(datasets: list, url: str, timeout_s: float) -> None:
    import requests
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url, timeout=timeout_s)
    client.set_http_retry_params(retry=False)
    try:
        answer = client.store_instances(datasets)
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        error = SendError(f"the DICOMweb server at {url} answered {status} to STOW-RS ({_reason(exc)}); "
                          + _hint(status) + "; nothing was confirmed stored")
        raise (error if status is None or status >= 500 else _final(error)) from None
    except requests.RequestException as exc:
        raise SendError(f"the DICOMweb server at {url} could not be reached ({type(exc).__name__}); is it running "
                        "and the URL right?") from None
    failed = len(answer.get("FailedSOPSequence", [])) if answer is not None else 0
    if failed:
        raise SendError(f"the DICOMweb server at {url} stored {len(datasets) - failed} of {len(datasets)} result "
                        f"objects and refused {failed}")


def _reason(exc) -> str:
    response = exc.response
    return (response.reason or "no reason given") if response is not None else type(exc).__name__


def _hint(status: int | None) -> str:
    if status == 404:
        return "check the URL's path (Orthanc's DICOMweb root is /dicom-web)"
    if status in (401, 403):
        return "the server wants credentials medlens does not send"
    return "see the server's log"
