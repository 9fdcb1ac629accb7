"""A hospital's side: its Flower SuperNode process, and what its ClientApp does with each message.

``medlens fl site --server HOST:PORT --data SITE_DATA`` starts ``flower-supernode`` with the site's data folder
and name in its node config, and the site's warm worker (:mod:`medlens.federated.worker`). For each message the
SuperNode starts a ``flwr-clientapp`` process (Flower's default subprocess isolation) that hands the call of a
handler here to that worker (or runs it itself where no worker answers). Only aggregates and weights ever leave
the site: its summary (counts, label balance, intensity statistics:
:func:`medlens.federated.summaries.site_summary`), its clinical columns' count, sum and sum of squares
(:func:`clinical_moments`), the model's weights after local training, numeric training metrics, and its
validation aggregates for calibration.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from medlens.errors import ConfigError
from medlens.federated.server import flower, flower_env
from medlens.federated.tls import check_site_key


@dataclass(frozen=True)
class SiteSettings:
    """How one site joins a federation.

    Attributes:
        server: the SuperLink's Fleet API, ``HOST:PORT``.
        data: the site's dataset (folder or CSV manifest), read only by this site.
        name: the site's name in logs and results (never a patient identifier).
        root_certificates: CA that signed the server's certificate (None: insecure, localhost only).
        insecure: connect without TLS (refused unless the server is on this machine or this is set).
        node_config: further node config entries (``key -> value``), for tests and plugins.
        private_key: the site's own key (``medlens fl key``), for a server that admits known sites only.
        series_rules: ``NAME=REGEX`` texts picking each DICOM study's series (a CSV's study column), as for
            ``medlens train --series-rule``; they stay at the site, and only the view names (and the rule texts, so
            that a new study can be read alike) reach the plan.
    """

    server: str
    data: Path
    name: str
    root_certificates: Path | None = None
    insecure: bool = False
    node_config: dict | None = None
    private_key: Path | None = None
    series_rules: tuple[str, ...] = ()


SERIES_RULES_KEY = "series-rules"


def encode_rules(rules) -> str:
    """The rules as one node-config value: base64 of their JSON list (Flower's node config takes plain strings
    without quotes, and a rule is a regular expression)."""
    import base64

    return base64.b64encode(json.dumps(list(rules)).encode()).decode()


def series_rules_of(node_config) -> tuple[str, ...]:
    """The site's ``--series-rule`` texts from its node config (``()`` without)."""
    import base64

    value = node_config.get(SERIES_RULES_KEY) if hasattr(node_config, "get") else None
    return tuple(json.loads(base64.b64decode(str(value)))) if value else ()


def is_local(host: str) -> bool:
    """Whether ``host`` is this machine's loopback address (where plain text is acceptable)."""
    return host in ("127.0.0.1", "localhost", "::1", "[::1]")


def supernode_command(settings: SiteSettings, clientappio_port: int) -> list[str]:
    """The ``flower-supernode`` command line for ``settings``.

    Raises:
        ConfigError: no TLS certificate for a remote server, or the data is missing.
    """
    if not Path(settings.data).exists():
        raise FileNotFoundError(f"site data {settings.data} does not exist; pass the site's dataset folder or CSV "
                                "with --data")
    host = settings.server.rpartition(":")[0]
    if settings.root_certificates is None and not (settings.insecure or is_local(host)):
        raise ConfigError(f"{settings.server} is not on this machine and no CA certificate was given: pass the CA "
                          "that signed the server's certificate with --root-certificates (the server prints where "
                          "it wrote one), or --insecure to send weights in plain text")
    config = {"data": str(Path(settings.data).resolve()), "name": settings.name, **(settings.node_config or {})}
    if settings.series_rules:
        from medlens.data.series import parse_series_rules

        parse_series_rules(settings.series_rules)  # a malformed rule is refused here, before anything starts
        config[SERIES_RULES_KEY] = encode_rules(settings.series_rules)
    command = [flower("flower-supernode"), "--superlink", settings.server, "--node-config",
               " ".join(f"{key}={json.dumps(value)}" for key, value in config.items()),
               "--clientappio-api-address", f"127.0.0.1:{clientappio_port}"]
    if settings.private_key is not None:
        check_site_key(settings.private_key, private=True)
        command += ["--auth-supernode-private-key", str(Path(settings.private_key).resolve())]
    if settings.root_certificates is not None:
        return [*command, "--root-certificates", str(settings.root_certificates)]
    return [*command, "--insecure"]


def start_site(settings: SiteSettings, *, clientappio_port: int, log_file=None,
               flwr_home: Path | None = None, threads: int | None = None) -> subprocess.Popen:
    """Start the site's SuperNode; it retries until the server is reachable and serves until stopped.

    Where Unix sockets exist, also the site's worker (:mod:`medlens.federated.worker`), which does the work
    of every message in one long-lived process, in the SuperNode's process group.

    Args:
        flwr_home: Flower's folder for the apps it receives (default ``~/.flwr``).
        threads: CPU threads its training may use (sites sharing one machine); default: torch's choice, or
            ``OMP_NUM_THREADS`` when set.
    """
    from medlens.federated import worker

    folder = worker.prepare() if worker.available() else None
    if folder is not None:
        settings = replace(settings, node_config={**(settings.node_config or {}), worker.NODE_KEY: str(folder)})
    command = supernode_command(settings, clientappio_port)
    env = flower_env(flwr_home)
    if threads is not None and "OMP_NUM_THREADS" not in env:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    # its own process group (which server.stop signals), off the terminal's Ctrl-C; its worker joins that group
    supernode = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT if log_file else None, env=env,
                                 process_group=0)
    if folder is not None:
        out = sys.stderr if log_file is subprocess.PIPE else log_file
        try:
            subprocess.Popen(worker.command(folder), stdout=out, stderr=subprocess.STDOUT if out else None, env=env,
                             process_group=supernode.pid)
        except OSError:  # the SuperNode exited at once (its group is gone): the caller reads why from its output
            shutil.rmtree(folder, ignore_errors=True)
    return supernode


def follow(process: subprocess.Popen, echo, keep: int = 60) -> str:
    """Pass the SuperNode's output (``stdout=PIPE``) to ``echo`` line by line until it exits; its last lines.

    Read in a thread: the processes the SuperNode starts (its SuperExec) hold the pipe open after it exits."""
    import threading
    from collections import deque

    tail: deque[str] = deque(maxlen=keep)

    def read() -> None:
        for line in process.stdout:
            text = line.decode(errors="replace") if isinstance(line, bytes) else line
            echo(text.rstrip("\n"))
            tail.append(text)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    process.wait()
    reader.join(timeout=2.0)
    return "".join(tail)


# what Flower's SuperNode says when it cannot join -> what the site should do
_EXITS = (
    ("No SuperNode found with the given public key",
     "the server does not know this site's key: send {name}'s public key (the .pub beside --key) to the "
     "coordinator, who adds it with `medlens fl server --site-keys`"),
    ("All SuperNodes must be registered",
     "the server admits known sites only: make a key pair with `medlens fl key --name {name}`, send the .pub to "
     "the coordinator and join with --key"),
    ("SSL/TLS handshake error",
     "SSL/TLS handshake error: --root-certificates is not the CA that signed the server's certificate"),
    ("Unable to parse the private key", "--key is not a site private key: make one with `medlens fl key`"),
)


def explain_exit(output: str, settings: SiteSettings) -> str:
    """Why the SuperNode stopped, from its output, in the words a site's operator can act on."""
    for phrase, advice in _EXITS:
        if phrase.lower() in output.lower():
            return advice.format(name=settings.name)
    return (f"see its messages above; 'connection refused' or repeated retries: is the server running at "
            f"{settings.server}?")


# ---- what the ClientApp does (runs in the site's flwr-clientapp process) ----

# paths and file names can hold patient names or ids: a site's refusal crosses the wire without them
_PATH = re.compile(r"(?:\b[A-Za-z]:)?[^\s'\"(),;:]*[/\\][^\s'\"(),;:]*"  # a path (POSIX or Windows)
                   r"|[^\s'\"(),;:/\\]{2,}\.[A-Za-z][A-Za-z0-9]{0,4}(?:\.gz)?\b")  # a file name with an extension


def redact(text: str) -> str:
    """``text`` with every path and file name replaced by ``<file>`` (what a site's refusal may say)."""
    return _PATH.sub("<file>", text)


def summarise(node_config: dict) -> tuple[dict, dict]:
    """Round 0: the site's summary (no file names, paths, patient ids or image bytes), and the split it counted as
    the site keeps it for its later messages (:func:`~medlens.federated.summaries.split_record`; never sent)."""
    from medlens.federated.summaries import summary_and_split

    return summary_and_split(Path(node_config["data"]), name=str(node_config["name"]))


def fit(node_config: dict, config_json: str, plan_json: str, weights: dict[str, np.ndarray], *, round: int,
        local: dict[str, np.ndarray], privacy: dict | None = None, validate: bool = False,
        kept_split: dict | None = None) -> tuple[dict, int, dict, dict | None, dict | None, dict]:
    """One round of local training from the global ``weights`` (completed by the site's own ``local`` ones).

    Args:
        local: arrays the site keeps between rounds (FedBN: its BatchNorm layers), overriding the initial model's.
        privacy: the DP accountant's state after the site's previous round (``Private.state()``), or None.
        validate: first score the global model received on this site's validation split (the task's
            ``aggregate_calibration`` statistics), from which the server chooses the round it keeps.
        kept_split: the site's split from its earlier messages (see :func:`trainer`).

    Returns:
        (weights after training, training cases, numeric metrics, the accountant's state now or None, the received
        model's validation aggregates or None, the split to keep for the next message).
    """
    from medlens.federated.local import to_numpy

    site = trainer(node_config, config_json, plan_json, kept_split=kept_split)
    # Flower starts a new ClientApp process per message: FedBN's own layers come back from the SuperNode's
    # context state, and before the first round from the planned network itself
    full = {**to_numpy(site.module.model.state_dict()), **local, **weights}
    validation = None
    if validate:
        from medlens.tasks import task_for

        site.load(full)
        validation = task_for(site.config).aggregate_calibration.statistics(site.module.model.eval(), site.config,
                                                                            site.fit_)
    if privacy:
        site.private = privacy  # privatise(resume=...) takes the state: epsilon is counted over every round
    trained, n_examples, metrics = site.fit(full, round=round)
    spent = site.private.state() if site.private is not None and hasattr(site.private, "state") else None
    return ({key: np.asarray(value) for key, value in trained.items()}, int(n_examples), metrics, spent, validation,
            site.kept_split)


def clinical_moments(node_config: dict, config_json: str, *, kept_split: dict | None = None) -> dict:
    """After round 0, for a plan with numeric clinical inputs: ``{column: (count, sum, sum of squares)}`` of this
    site's training split (:meth:`~medlens.data.clinical.ClinicalEncoder.moments`), from which the server pools the
    z-score statistics every site encodes with; no single case's value."""
    from medlens.config import config_from_dict
    from medlens.data import open_dataset
    from medlens.data.clinical import ClinicalEncoder
    from medlens.data.prepared import split_cases
    from medlens.federated.summaries import split_for

    config = config_from_dict(json.loads(config_json), where="the server's plan")
    dataset = open_dataset(Path(node_config["data"]))
    record, _ = split_for(dataset, seed=config.train.seed, kept=kept_split)
    return ClinicalEncoder.moments(config.clinical, split_cases(dataset, record["splits"], 0)["train"])


def calibration_statistics(node_config: dict, config_json: str, plan_json: str,
                           weights: dict[str, np.ndarray], *, kept_split: dict | None = None) -> dict:
    """After the last round: the final global model's aggregates on this site's validation split, for a server that
    holds no data (the task's ``aggregate_calibration``; no single case's score, label or id)."""
    from medlens.tasks import task_for

    site = trainer(node_config, config_json, plan_json, kept_split=kept_split)
    site.load(weights)  # every key: the model the server deploys (FedBN: the averaged batch norm)
    aggregates = task_for(site.config).aggregate_calibration
    return aggregates.statistics(site.module.model.eval(), site.config, site.fit_)


def trainer(node_config: dict, config_json: str, plan_json: str, *, kept_split: dict | None = None):
    """The site's :class:`~medlens.federated.local.SiteTrainer` for the plan the server sent; ``kept_split``, the
    split its summary counted, spares it auditing every image again while its data are unchanged."""
    from medlens.config import config_from_dict
    from medlens.federated.local import SiteTrainer

    config = config_from_dict(json.loads(config_json), where="the server's plan")
    return SiteTrainer(config, plan_from_json(plan_json), Path(node_config["data"]), site=str(node_config["name"]),
                       kept_split=kept_split)


def plan_from_json(text: str):
    from medlens.federated.plan import FederationPlan

    return FederationPlan(**json.loads(text))


def plan_to_json(plan) -> str:
    return json.dumps(asdict(plan))
