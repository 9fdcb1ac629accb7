"""Download one file atomically and verify its checksum: the file appears verified or not at all.

Shared by ``medlens fetch medmnist`` (MD5 from MedMNIST's metadata) and ``medlens fetch weights``
(SHA-256, or the SHA-256 prefix that torch.hub puts in a file's name, e.g. ``resnet18-f37072fd.pth``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from medlens.errors import MedlensError

_NAMES = {"md5": "MD5", "sha256": "SHA-256"}


@dataclass(frozen=True)
class Checksum:
    """What a downloaded file must hash to.

    Attributes:
        algorithm: ``"md5"`` or ``"sha256"``.
        digest: lowercase hex digest, or its first characters when ``prefix`` (torch.hub's ``check_hash``
            compares the SHA-256 with the hex digits after the last ``-`` of the file name the same way).
        prefix: whether ``digest`` is only the start of the full digest.
    """

    algorithm: Literal["md5", "sha256"]
    digest: str
    prefix: bool = False

    def describe(self) -> str:
        """``"SHA-256 f37072fd... (prefix)"``, for messages and tables."""
        name = _NAMES[self.algorithm]
        prefix = "... (the prefix in the file name, as torch.hub checks)" if self.prefix else ""
        return f"{name} {self.digest}{prefix}"

    def matches(self, path: Path) -> bool:
        """Whether the file at ``path`` hashes to this digest (or starts with it)."""
        got = file_digest(path, self.algorithm)
        return got.startswith(self.digest.lower()) if self.prefix else got == self.digest.lower()


def file_digest(path: Path, algorithm: str, chunk: int = 1 << 20) -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download_verified(url: str, target: Path, checksum: Checksum, *, error: type[MedlensError] = MedlensError,
                      timeout_s: float = 60.0) -> Path:
    """Download ``url`` to ``target`` through a temporary file beside it; keep it only if the checksum matches.

    A ``target`` that already matches is kept without downloading.

    Args:
        url: ``https://`` address, or ``file://`` for a copy already on disk (offline machines, tests).
        target: where the verified file goes; its folder is created.
        checksum: what the file must hash to.
        error: the exception class to raise (the caller's domain error).

    Returns:
        ``target``.

    Raises:
        error: the download failed (message: the address, the reason, and where to put the file by hand),
            or the file hashed to something else (the partial download is deleted, nothing is left behind).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_file() and checksum.matches(target):
        return target
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as response:
            shutil.copyfileobj(response, out, length=1 << 20)
        if not checksum.matches(Path(tmp)):
            got = file_digest(Path(tmp), checksum.algorithm)
            expected = checksum.digest + ("... (the published prefix)" if checksum.prefix else "")
            raise error(f"downloaded {target.name} from {url} has {_NAMES[checksum.algorithm]} {got}, expected "
                        f"{expected}; the file was deleted. The download was corrupted or the source changed: try "
                        "again, or check the address")
        os.replace(tmp, target)
    except OSError as exc:  # URLError, timeouts and disk errors are all OSError
        raise error(f"could not download {url} ({exc}); check the network, or download it by hand (from a machine "
                    f"that has a network) and put it at {target}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target
