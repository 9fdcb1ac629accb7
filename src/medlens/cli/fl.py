"""``medlens fl server|site|key``: one federation across machines, on Flower's SuperLink / SuperNode runtime.

The coordinator: ``medlens fl server --rounds R --min-sites K [--plan plan.yaml] [--site-keys KEYS/] [--out RUN]``;
each hospital: ``medlens fl site --server HOST:PORT --data SITE_DATA [--name NAME] [--root-certificates ca.pem]
[--key NAME.key]``; a hospital's key pair, made once at the site: ``medlens fl key --name NAME [--out DIR]``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from medlens.cli.train import parse_duration

ARGUMENTS = [
    (["role"], {"choices": ["server", "site", "key"],
                "help": "server: the coordinator (Flower SuperLink + the run); site: one hospital (a Flower "
                        "SuperNode on its data); key: make a site's key pair (NAME.key stays, NAME.pub goes to the "
                        "coordinator)"}),
    (["--address"], {"default": "127.0.0.1:9092", "metavar": "HOST:PORT",
                     "help": "server: where sites connect (default 127.0.0.1:9092; 0.0.0.0:9092 for every "
                             "interface); TLS is on unless HOST is loopback or --insecure"}),
    (["--rounds"], {"type": int, "help": "server: federated rounds (default: the plan's)"}),
    (["--local-epochs"], {"type": int, "help": "server: epochs each site trains per round (default: the budget's "
                                               "epochs shared over the rounds)"}),
    (["--min-sites"], {"type": int, "default": 2, "help": "server: sites a round needs (default 2)"}),
    (["--expect-sites"], {"type": int, "help": "server: sites to wait for before planning (default --min-sites)"}),
    (["--plan"], {"type": Path, "help": "server: a task plan.yaml to train with (default: planned from the "
                                        "sites' summaries)"}),
    (["--time-budget"], {"type": parse_duration, "help": "server: training time to plan for, e.g. 10m"}),
    (["--dp-epsilon"], {"type": float, "help": "server: DP-SGD target epsilon per site over the run (default off)"}),
    (["--strategy"], {"choices": ["fedavg", "fedprox", "fedbn"],
                      "help": "server: federated averaging to use (default: the plan's choice, with its reason)"}),
    (["--out"], {"type": Path, "help": "server: run folder (default runs/federated); run again to resume; key: "
                                       "where the key pair is written (default: this folder)"}),
    (["--site-keys"], {"nargs": "+", "type": Path, "metavar": "PUB",
                       "help": "server: admit only these sites: their public keys (.pub files, or folders of them) "
                               "from `medlens fl key`; needs TLS"}),
    (["--round-timeout"], {"type": parse_duration, "default": 1800.0,
                           "help": "server: how long a round waits for slow sites (default 30m)"}),
    (["--certfile"], {"type": Path, "help": "server: TLS certificate (default: one made in RUN/federated/tls)"}),
    (["--keyfile"], {"type": Path, "help": "server: TLS private key (with --certfile)"}),
    (["--ca-certfile"], {"type": Path, "help": "server: CA certificate that signed --certfile"}),
    (["--server"], {"metavar": "HOST:PORT", "help": "site: the server's address"}),
    (["--data"], {"type": Path, "help": "site: this site's dataset (folder or CSV manifest); it never leaves"}),
    (["--name"], {"help": "site: this site's name in the federation (default: the data folder's name); key: "
                          "the site the key pair is for"}),
    (["--key"], {"type": Path, "metavar": "NAME.key",
                 "help": "site: this site's private key, for a server that admits known sites only"}),
    (["--root-certificates"], {"type": Path, "metavar": "CA_PEM",
                               "help": "site: the CA that signed the server's certificate"}),
    (["--insecure"], {"action": "store_true", "help": "plain text even off loopback (weights readable on the way)"}),
    (["--series-rule"], {"action": "append", "metavar": "NAME=REGEX",
                         "help": "site: for a CSV of DICOM studies, the series read as view NAME (as for `medlens "
                                 "train`; repeat per series; every site names the same views)"}),
]
_TAKES = {"server": ("rounds", "local_epochs", "expect_sites", "plan", "time_budget", "dp_epsilon", "strategy", "out",
                     "certfile", "keyfile", "ca_certfile", "site_keys"),
          "site": ("server", "data", "name", "root_certificates", "key", "series_rule"),
          "key": ("name", "out")}


def run(args) -> int:
    from medlens.errors import ConfigError

    for name in sorted({n for names in _TAKES.values() for n in names} - set(_TAKES[args.role])):
        if getattr(args, name) is not None:
            owners = " / ".join(f"`medlens fl {role}`" for role, names in _TAKES.items() if name in names)
            raise ConfigError(f"`medlens fl {args.role}` does not take --{name.replace('_', '-')}; it is an option "
                              f"of {owners}")
    return {"server": _server, "site": _site, "key": _key}[args.role](args)


def _key(args) -> int:
    from medlens.errors import ConfigError
    from medlens.federated.tls import site_key

    if not args.name:
        raise ConfigError("`medlens fl key` needs --name SITE (the site the key pair is for)")
    private, public = site_key(args.out or Path("."), args.name)
    print(f"site {args.name}: private key {private} (keep it at the site; `medlens fl site ... --key {private}`), "
          f"public key {public} (send it to the coordinator: `medlens fl server ... --site-keys {public}`)")
    return 0


def site_key_files(paths: list[Path]) -> tuple[Path, ...]:
    """The ``.pub`` files of ``--site-keys``: files as given, folders as every ``*.pub`` in them.

    Raises:
        ConfigError: a folder without a single ``.pub`` file.
    """
    from medlens.errors import ConfigError
    from medlens.federated.tls import check_site_key

    files: list[Path] = []
    for path in paths or []:
        found = sorted(Path(path).glob("*.pub")) if Path(path).is_dir() else [Path(path)]
        if not found:
            raise ConfigError(f"--site-keys {path}: a folder without .pub files; put the sites' public keys "
                              "(`medlens fl key`) there")
        files += found
    for file in files:
        check_site_key(file, private=False)
    return tuple(files)


def _server(args) -> int:
    from medlens.federated.server import ServerSettings, exit_on_sigterm, serve

    out = args.out or Path("runs") / "federated"
    settings = ServerSettings(out, address=args.address, rounds=args.rounds, min_sites=args.min_sites,
                              expect_sites=args.expect_sites, plan=args.plan, time_budget_s=args.time_budget,
                              dp_epsilon=args.dp_epsilon, strategy=args.strategy, round_timeout_s=args.round_timeout,
                              local_epochs=args.local_epochs,
                              site_keys=site_key_files(args.site_keys), tls=server_tls(args, out))
    exit_on_sigterm()  # stopping the server stops its SuperLink too
    serve(settings)
    print(f"federated run written to {out}; evaluate it with `medlens evaluate {out}`")
    return 0


def server_tls(args, out: Path):
    """(ca, cert, key): given, made for the address, or None on loopback / with --insecure.

    Raises:
        ConfigError: only some of the certificate files given.
    """
    from medlens.errors import ConfigError
    from medlens.federated.site import is_local
    from medlens.federated.tls import local_certificates

    given = (args.ca_certfile, args.certfile, args.keyfile)
    if any(given):
        if not all(given):
            raise ConfigError("pass --ca-certfile, --certfile and --keyfile together (or none: a local CA is made)")
        return given
    host = args.address.rpartition(":")[0]
    if args.insecure or (is_local(host) and not args.site_keys):  # site keys need TLS, even on loopback
        return None
    import socket

    hosts = [host] if host not in ("0.0.0.0", "::", "[::]") else [socket.getfqdn(), socket.gethostname()]
    files = local_certificates(out / "federated" / "tls", hosts)
    print(f"TLS: a certificate for {', '.join(hosts)} signed by a local CA; give sites {files.ca} "
          "(--root-certificates)")
    return files.ca, files.cert, files.key


def _site(args) -> int:
    from medlens.errors import ConfigError
    from medlens.federated.server import exit_on_sigterm, free_port
    from medlens.federated.site import SiteSettings, explain_exit, follow, start_site

    if args.server is None or args.data is None:
        raise ConfigError("`medlens fl site` needs --server HOST:PORT and --data SITE_DATA")
    name = args.name or Path(args.data).name.removesuffix(".csv")
    settings = SiteSettings(args.server, args.data, name, root_certificates=args.root_certificates,
                            insecure=args.insecure, private_key=args.key, series_rules=tuple(args.series_rule or ()))
    print(f"site {name}: joining {args.server} with {args.data} (only summaries and weights leave this machine)")
    process = start_site(settings, clientappio_port=free_port(), log_file=subprocess.PIPE)
    exit_on_sigterm()  # stopping the site stops its SuperNode too
    try:
        output = follow(process, lambda line: print(line, file=sys.stderr, flush=True))
        if process.returncode != 0:
            raise ConfigError(f"site {name}: Flower's SuperNode stopped (exit {process.returncode}): "
                              f"{explain_exit(output, settings)}")
        return 0
    finally:
        from medlens.federated.server import stop

        stop(process)
