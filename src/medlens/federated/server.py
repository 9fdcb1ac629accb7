"""The coordinator's side: the Flower SuperLink process, the run submitted to it, and the round checkpoints.

``medlens fl server`` starts ``flower-superlink`` (Fleet API for the sites, Control API and ServerAppIo API on
loopback only), then submits medlens' Flower app with ``flwr run`` (Flower's Control API). The SuperLink runs
the ServerApp (:mod:`medlens.federated.flower_app`) in a ``flwr-serverapp`` subprocess, which writes the run
folder. After every round the global model is checkpointed atomically in ``RUN/federated/``; a server started
again on the same ``--out`` resumes after the last completed round.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from medlens._files import read_json, write_bytes_atomic, write_json_atomic, write_text_atomic
from medlens.errors import ConfigError, MedlensError
from medlens.federated.tls import check_site_key

APP_PYPROJECT = """\
# Written by medlens: the Flower app `flwr run` submits (a FAB holding only this file; the code is medlens').
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "medlens-federation"
version = "1.0.0"
description = "medlens federated training"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "medlens"

[tool.flwr.app.components]
serverapp = "{serverapp}"
clientapp = "{clientapp}"

[tool.flwr.app.config]
{config}
"""
COMPONENTS = {"serverapp": "medlens.federated.flower_app:server_app",
              "clientapp": "medlens.federated.flower_app:client_app"}


@dataclass(frozen=True)
class ServerSettings:
    """One federation's coordinator.

    Attributes:
        out: the run folder (written by the ServerApp; resumed when it holds a checkpoint).
        address: where sites reach the Fleet API, ``HOST:PORT`` (bound as given).
        rounds / local_epochs / time_budget_s / dp_epsilon: passed to the plan (None: the plan decides / DP off).
        min_sites: sites a round needs.
        expect_sites: sites to wait for before round 0 (default ``min_sites``).
        plan: a task ``plan.yaml`` to use instead of the one planned from the summaries.
        round_timeout_s: the longest a round waits for a site that does not answer.
        wait_sites_s: how long to wait for enough sites to connect.
        tls: ``None`` (plain text: refused outside loopback unless ``insecure``), or (ca, cert, key) paths.
        calibrate_on: ``{site: data}`` readable by the server (``federate``): the model is calibrated on their
            validation splits together.
        site_keys: the public keys of the sites allowed to join (``medlens fl key``); none: any site that reaches
            the server (and trusts its certificate) may join. Needs TLS.
        strategy: ``fedavg`` / ``fedprox`` / ``fedbn`` instead of the plan's choice (None: the plan's).
        shared_machine: every site trains on this machine (``federate``): the schedule shares its CPUs.
        components: the Flower app's ``serverapp`` / ``clientapp`` references.
    """

    out: Path
    address: str = "127.0.0.1:9092"
    rounds: int | None = None
    min_sites: int = 2
    expect_sites: int | None = None
    plan: Path | None = None
    time_budget_s: float | None = None
    dp_epsilon: float | None = None
    round_timeout_s: float = 1800.0
    wait_sites_s: float = 600.0
    tls: tuple[Path, Path, Path] | None = None
    calibrate_on: dict[str, Path] = field(default_factory=dict)
    site_keys: tuple[Path, ...] = ()
    strategy: str | None = None
    shared_machine: bool = False
    local_epochs: int | None = None
    components: dict = field(default_factory=lambda: dict(COMPONENTS))


def run_config(settings: ServerSettings) -> dict:
    """The ServerApp's run config (TOML scalars; 0 / "" stand for "not given")."""
    return {"out": str(Path(settings.out).resolve()), "rounds": settings.rounds or 0,
            "min-sites": settings.min_sites, "expect-sites": settings.expect_sites or settings.min_sites,
            "plan": str(Path(settings.plan).resolve()) if settings.plan else "",
            "time-budget-s": float(settings.time_budget_s or 0.0), "dp-epsilon": float(settings.dp_epsilon or 0.0),
            "round-timeout-s": float(settings.round_timeout_s), "wait-sites-s": float(settings.wait_sites_s),
            "calibrate-on": encode_sites(settings.calibrate_on),
            "strategy": settings.strategy or "",
            "shared-machine": settings.shared_machine, "local-epochs": settings.local_epochs or 0}


def encode_sites(sites: dict[str, Path]) -> str:
    """``{site: data}`` as one run-config string (base64 of JSON: Flower's ``--run-config`` takes no quotes inside a
    value); :func:`decode_sites` reverses it."""
    text = json.dumps({k: str(Path(v).resolve()) for k, v in sites.items()})
    return base64.urlsafe_b64encode(text.encode()).decode() if sites else ""


def decode_sites(value: str) -> dict[str, Path]:
    return {k: Path(v) for k, v in json.loads(base64.urlsafe_b64decode(value) or b"{}").items()} if value else {}


def serve(settings: ServerSettings, *, log=print) -> Path:
    """Run the SuperLink and the federation to its end; returns the run folder.

    Raises:
        MedlensError: the run failed (its reason from the ServerApp's log); the checkpoints are kept.
    """
    if settings.site_keys and settings.tls is None:
        raise ConfigError("--site-keys: Flower admits sites by their keys only over TLS; drop --insecure (a local "
                          "certificate is made) or pass --certfile / --keyfile / --ca-certfile")
    for key in settings.site_keys:
        check_site_key(key, private=False)
    folder = Path(settings.out) / "federated"
    folder.mkdir(parents=True, exist_ok=True)
    home = folder / "flwr"
    ports = {"control": free_port(), "serverappio": free_port()}
    write_text_atomic(home / "config.toml", _connection(ports["control"], settings.tls))
    app = _write_app(folder / "app", settings)
    env = flower_env(home)
    if settings.site_keys:
        _register_first(settings, ports, env, log)
    with open(folder / "superlink.log", "ab") as link_log:
        link = subprocess.Popen(superlink_command(settings, ports), stdout=link_log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        try:
            wait_for_port("127.0.0.1", ports["control"], process=link, what="the SuperLink's Control API")
            log(f"federation server: sites connect to {settings.address} "
                + ("(TLS)" if settings.tls else "(plain text)") + f"; run folder {settings.out}")
            _submit(app, env, settings, log)
        finally:
            stop(link)
    state = read_state(settings.out)
    if not state.get("finished"):
        raise MedlensError(f"the federation stopped before its last round (see {folder / 'server.log'}): "
                           f"{state.get('error', 'no reason recorded')}; run the same command again to resume "
                           f"after round {state.get('round', 0)}")
    return Path(settings.out)


def superlink_command(settings: ServerSettings, ports: dict) -> list[str]:
    # a database on disk, not Flower's in-memory state: a restarted SuperLink still knows the sites' SuperNodes,
    # which would otherwise stop when it no longer recognises them
    command = [flower("flower-superlink"), "--disable-runtime-dependency-installation",
               "--database", str(Path(settings.out).resolve() / "federated" / "superlink.db"),
               "--fleet-api-address", settings.address,
               "--control-api-address", f"127.0.0.1:{ports['control']}",
               "--serverappio-api-address", f"127.0.0.1:{ports['serverappio']}"]
    if settings.site_keys:
        command.append("--enable-supernode-auth")  # only the sites registered below may join
    if settings.tls is None:
        return [*command, "--insecure"]
    ca, cert, key = settings.tls
    return [*command, "--ssl-ca-certfile", str(ca), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]


def _connection(control_port: int, tls) -> str:
    lines = ["[superlink]", 'default = "medlens"', "[superlink.medlens]",
             f'address = "127.0.0.1:{control_port}"']
    lines.append("insecure = true" if tls is None else f"root-certificates = {json.dumps(str(tls[0]))}")
    return "\n".join(lines) + "\n"


def _write_app(folder: Path, settings: ServerSettings) -> Path:
    config = "\n".join(f"{key} = {json.dumps(value)}" for key, value in run_config(settings).items())
    write_text_atomic(folder / "pyproject.toml", APP_PYPROJECT.format(config=config, **settings.components))
    return folder


SUBMIT_ATTEMPTS = 6


def _register_first(settings: ServerSettings, ports: dict, env: dict, log) -> None:
    """Register the site keys in the SuperLink's database before sites can reach it: a SuperLink whose Fleet API
    listens on a private loopback port only, stopped once the keys are in (a site that connected while they were
    being registered would be refused as unknown)."""
    folder = Path(settings.out) / "federated"
    private = replace(settings, address=f"127.0.0.1:{free_port()}")
    with open(folder / "superlink.log", "ab") as link_log:
        link = subprocess.Popen(superlink_command(private, ports), stdout=link_log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        try:
            wait_for_port("127.0.0.1", ports["control"], process=link, what="the SuperLink's Control API")
            register_sites(settings.site_keys, env, folder / "flwr-register.log", log)
        finally:
            stop(link)


def register_sites(keys, env: dict, log_path: Path, log) -> None:
    """Register each site's public key with the SuperLink (``flwr supernode register``); a key it knows already
    (a restarted server) counts as registered.

    Raises:
        MedlensError: the SuperLink refused a key, naming the file.
    """
    for key in keys:
        command = [flower("flwr"), "supernode", "register", str(Path(key).resolve()), "medlens"]
        for attempt in range(SUBMIT_ATTEMPTS):
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            output = done.stdout + done.stderr
            with open(log_path, "a", encoding="utf-8") as file:
                file.write(output)
            if done.returncode == 0 or "already in use" in output or "unavailable" not in output.lower():
                break
            time.sleep(1.0 + attempt)
        if done.returncode != 0 and "already in use" not in output:
            raise MedlensError(f"the SuperLink refused site key {key} (see {log_path}): "
                               f"{output.strip().splitlines()[-1] if output.strip() else 'no reason given'}")
    if keys:
        log(f"federation server: {len(keys)} site key(s) registered; only those sites may join")


def _submit(app: Path, env: dict, settings: ServerSettings, log) -> None:
    """``flwr run APP medlens --stream``: submit the run and follow its log until it ends."""
    overrides = " ".join(f"{key}={json.dumps(value)}" for key, value in run_config(settings).items())
    command = [flower("flwr"), "run", str(app), "medlens", "--run-config", overrides, "--stream"]
    path = Path(settings.out) / "federated" / "flwr-run.log"
    for attempt in range(SUBMIT_ATTEMPTS):  # the Control API's port opens before it answers (a busy machine)
        start = path.stat().st_size if path.exists() else 0
        with open(path, "ab") as run_log:
            done = subprocess.run(command, env=env, stdout=run_log, stderr=subprocess.STDOUT, check=False)
        unavailable = "unavailable" in path.read_bytes()[start:].decode(errors="replace")
        if done.returncode == 0 or not unavailable:
            break
        time.sleep(1.0 + attempt)
    if done.returncode != 0:
        raise MedlensError(f"`flwr run` could not submit the federation (exit {done.returncode}); see "
                           f"{Path(settings.out) / 'federated' / 'flwr-run.log'}")


def flower_env(home: Path | None) -> dict:
    """The environment Flower's processes run in: this Python's scripts first on PATH (the SuperLink and the
    SuperNode start ``flower-superexec`` / ``flwr-serverapp`` / ``flwr-clientapp`` by name), ``FLWR_HOME``."""
    scripts = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": os.pathsep.join([scripts, os.environ.get("PATH", "")])}
    if home is not None:
        env["FLWR_HOME"] = str(home)
    return env


def flower(executable: str) -> str:
    """A Flower executable of this Python environment (the one medlens is installed in)."""
    path = Path(sys.executable).parent / executable
    return str(path) if path.exists() else executable


def exit_on_sigterm() -> None:
    """Let SIGTERM unwind like Ctrl-C, so the Flower processes started here are stopped with this one."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def free_port() -> int:
    """A TCP port on loopback nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(host: str, port: int, *, process: subprocess.Popen, what: str, timeout_s: float = 60.0) -> None:
    """Return once ``host:port`` accepts connections.

    Raises:
        MedlensError: ``process`` exited or the port stayed closed for ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise MedlensError(f"{what} did not start (exit {process.returncode}); is {host}:{port} or the Fleet "
                               "address already in use? see the log in RUN/federated/")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise MedlensError(f"{what} did not open {host}:{port} within {timeout_s:.0f} s")


def stop(process: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """Stop a process started here in its own session or process group, and every process it started (Flower's app
    processes, a site's worker).

    SIGTERM to the group, up to ``timeout_s`` for the leader to exit, then SIGKILL to whatever is left of the
    group: a ``flwr-serverapp`` whose SuperLink is gone would otherwise wait for it forever.
    """
    import signal

    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
    time.sleep(0.5)
    _signal_group(process, signal.SIGKILL)
    process.wait()


def _signal_group(process: subprocess.Popen, sig) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ---- round checkpoints (written by the ServerApp) ----

def state_path(out: Path) -> Path:
    return Path(out) / "federated" / "state.json"


def read_state(out: Path) -> dict:
    """The federation's state (``{}`` before round 0 has finished)."""
    return read_json(state_path(out), default={}) or {}


def save_round(out: Path, state: dict, weights: dict[str, np.ndarray]) -> None:
    """Checkpoint the global model of ``state['round']``: weights first, then the state naming them (atomic)."""
    from safetensors.numpy import save

    name = f"global_round_{state['round']}.safetensors"
    write_bytes_atomic(Path(out) / "federated" / name, save({k: np.asarray(v, order="C") for k, v in weights.items()}))
    write_json_atomic(state_path(out), {**state, "weights": name})


def site_norms_path(out: Path, site: str) -> Path:
    """Where a FedBN site's own batch-norm arrays from its last update are kept (``RUN/federated/site_norms/``)."""
    import re

    return Path(out) / "federated" / "site_norms" / f"{re.sub(r'[^A-Za-z0-9._-]', '_', site)}.safetensors"


def save_site_norms(out: Path, norms: dict[str, dict[str, np.ndarray]]) -> None:
    """Keep each FedBN site's own batch-norm arrays ``{site: {key: array}}`` (atomic, one file per site)."""
    from safetensors.numpy import save

    for name, arrays in norms.items():
        write_bytes_atomic(site_norms_path(out, name), save({k: np.asarray(v, order="C") for k, v in arrays.items()}))


def load_site_norms(out: Path, site: str) -> dict[str, np.ndarray] | None:
    """A FedBN site's own batch-norm arrays, or ``None`` when the run kept none for it."""
    from safetensors.numpy import load_file

    path = site_norms_path(out, site)
    return load_file(path) if path.is_file() else None


def load_weights(out: Path, state: dict) -> dict[str, np.ndarray]:
    """The global weights the state names.

    Raises:
        ConfigError: the checkpoint file is missing or unreadable.
    """
    from safetensors.numpy import load_file

    path = Path(out) / "federated" / state["weights"]
    try:
        return load_file(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: the global checkpoint of round {state['round']} cannot be read ({exc}); "
                          "start the federation in a new --out folder") from None
