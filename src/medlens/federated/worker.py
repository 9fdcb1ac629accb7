"""A site's warm worker: one long-lived process that does the site's work for every message of a run.

Flower's SuperNode starts a new ``flwr-clientapp`` process for each message. Importing medlens' training stack
there (torch, Lightning, MONAI) costs about 6 s of CPU a message, several seconds of every round when sites share
a machine. So :func:`medlens.federated.site.start_site` also starts this worker in the SuperNode's process group
(stopping the site stops both); the ClientApp, which imports only Flower and numpy, hands each call of
:mod:`medlens.federated.site` (``summarise``, ``fit``, ``clinical_moments``, ``calibration_statistics``) to it over
a Unix socket in a private folder (mode 0700) with a random key (:mod:`multiprocessing.connection`'s HMAC
handshake), and gets the result or the site's refusal back.

Nothing changes in what a site computes or sends: the worker runs the same functions with the same arguments, and
what a site keeps between rounds stays in the SuperNode's ``context.state``. Where no worker answers (none started,
or it died), the ClientApp runs the call itself, as before, and says so in the site's log.

    python -m medlens.federated.worker FOLDER    # FOLDER from :func:`prepare`; serves until stopped
"""

from __future__ import annotations

import os
import pickle
import secrets
import shutil
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

NODE_KEY = "worker"  # node config entry: the worker's folder
CALLS = ("summarise", "fit", "clinical_moments", "calibration_statistics")
WAIT_S = 60.0  # how long a ClientApp waits for a worker still starting


def available() -> bool:
    """Unix sockets exist here (not on Windows' Python): otherwise sites run without a worker."""
    return hasattr(socket, "AF_UNIX")


def prepare() -> Path:
    """A private folder (0700) holding the worker's key (0600); its socket is made there when the worker starts.

    The worker removes the folder when it stops; this process also does at its exit, for a worker killed before
    it could (a site stopped while the worker was still starting)."""
    import atexit

    folder = Path(tempfile.mkdtemp(prefix="medlens-site-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    key = folder / "key"
    key.touch(mode=0o600)
    key.write_bytes(secrets.token_bytes(32))
    return folder


def command(folder: Path) -> list[str]:
    return [sys.executable, "-m", "medlens.federated.worker", str(folder)]


def call(node_config, name: str, *args, **kwargs):
    """``medlens.federated.site.<name>(node_config, *args, **kwargs)`` under the site's series rules: in the site's
    worker when ``node_config`` (the SuperNode's) names one that answers, else in this process.

    Raises:
        whatever the call raises (a :class:`~medlens.errors.MedlensError` refusal arrives as itself).
    """
    node_config = dict(node_config)
    if folder := node_config.get(NODE_KEY):
        try:
            outcome = _remote(Path(str(folder)), (name, node_config, args, kwargs))
        except (OSError, EOFError) as exc:  # no worker answers: do the work here
            print(f"medlens site: no warm worker ({type(exc).__name__}: {exc}); running {name} in the ClientApp "
                  "process", flush=True)
        else:
            status, value = outcome
            if status == "ok":
                return value
            if status == "refused":
                raise value
            raise RuntimeError(f"the site's worker failed in {name}:\n{value}")
    return run(name, node_config, args, kwargs)


def run(name: str, node_config: dict, args: tuple, kwargs: dict):
    """The call itself (in the worker, or in a ClientApp without one)."""
    from medlens.data.dataset import series_rules_given
    from medlens.federated import site

    if name not in CALLS:
        raise ValueError(f"a site's worker runs {', '.join(CALLS)}, not {name!r}")
    with series_rules_given(site.series_rules_of(node_config)):  # a site of DICOM studies: its rules
        return getattr(site, name)(node_config, *args, **kwargs)


def _remote(folder: Path, request: tuple):
    from multiprocessing.connection import Client

    address, key = folder / "socket", (folder / "key").read_bytes()
    deadline = time.monotonic() + WAIT_S
    while not address.exists():  # the worker is still starting
        if time.monotonic() > deadline or not folder.exists():
            raise FileNotFoundError(f"no socket in {folder} after {WAIT_S:g} s")
        time.sleep(0.1)
    with Client(str(address), family="AF_UNIX", authkey=key) as connection:
        connection.send(request)
        return connection.recv()


def serve(folder: Path) -> None:
    """Answer calls on ``folder/socket`` one at a time until stopped; the folder is removed on exit."""
    from multiprocessing import AuthenticationError
    from multiprocessing.connection import Listener

    key = (folder / "key").read_bytes()
    listener = Listener(str(folder / "socket"), family="AF_UNIX", authkey=key)  # calls queue while we import
    _exit_with(os.getppid(), folder)
    try:
        import medlens.federated.local  # the training stack, once for the whole run
        import medlens.federated.site  # noqa: F401

        print(f"medlens site worker {os.getpid()}: ready", flush=True)
        while True:
            try:
                connection = listener.accept()
            except (OSError, EOFError, AuthenticationError):  # a client without the key, or gone during the handshake
                continue
            with connection:
                _answer(connection)
    finally:
        listener.close()
        shutil.rmtree(folder, ignore_errors=True)


def _exit_with(parent: int, folder: Path) -> None:
    """Exit when the medlens process that started the site is gone (killed, so it could not stop its site)."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(2.0)
        shutil.rmtree(folder, ignore_errors=True)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def _answer(connection) -> None:
    from medlens.errors import MedlensError

    try:
        request = connection.recv()
    except (OSError, EOFError):
        return
    try:
        outcome = ("ok", run(*request))
    except (MedlensError, FileNotFoundError) as exc:  # the site's refusal, which the ClientApp reports as today
        outcome = ("refused", exc if _pickles(exc) else MedlensError(str(exc)))
    except Exception:  # noqa: BLE001 - a bug: its traceback goes to the ClientApp, which fails the message
        outcome = ("failed", traceback.format_exc())
    try:
        connection.send(outcome)
    except (OSError, EOFError):  # the ClientApp was stopped meanwhile
        pass


def _pickles(value) -> bool:
    try:
        pickle.loads(pickle.dumps(value))
        return True
    except Exception:  # noqa: BLE001 - an exception class with a constructor of its own
        return False


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # unwind: the folder is removed
    serve(Path(sys.argv[1]))
