"""``medlens fl server|site``: one federation across machines, on Flower's SuperLink / SuperNode runtime.

The coordinator: ``medlens fl server --rounds R --min-sites K [--plan plan.yaml] [--out RUN]``; each hospital:
``medlens fl site --server HOST:PORT --data SITE_DATA [--name NAME] [--root-certificates ca.pem]``.
"""

from __future__ import annotations

from pathlib import Path

from medlens.cli.train import parse_duration

ARGUMENTS = [
    (["role"], {"choices": ["server", "site"], "help": "server: the coordinator (Flower SuperLink + the run); "
                                                      "site: one hospital (a Flower SuperNode on its data)"}),
    (["--address"], {"default": "127.0.0.1:9092", "metavar": "HOST:PORT",
                     "help": "server: where sites connect (default 127.0.0.1:9092; 0.0.0.0:9092 for every "
                             "interface); TLS is on unless HOST is loopback or --insecure"}),
    (["--rounds"], {"type": int, "help": "server: federated rounds (default: the plan's)"}),
    (["--min-sites"], {"type": int, "default": 2, "help": "server: sites a round needs (default 2)"}),
    (["--expect-sites"], {"type": int, "help": "server: sites to wait for before planning (default --min-sites)"}),
    (["--plan"], {"type": Path, "help": "server: a task plan.yaml to train with (default: planned from the "
                                        "sites' summaries)"}),
    (["--time-budget"], {"type": parse_duration, "help": "server: training time to plan for, e.g. 10m"}),
    (["--dp-epsilon"], {"type": float, "help": "server: DP-SGD target epsilon per site over the run (default off)"}),
    (["--strategy"], {"choices": ["fedavg", "fedprox", "fedbn"],
                      "help": "server: federated averaging to use (default: the plan's choice, with its reason)"}),
    (["--out"], {"type": Path, "help": "server: run folder (default runs/federated); run again to resume"}),
    (["--round-timeout"], {"type": parse_duration, "default": 1800.0,
                           "help": "server: how long a round waits for slow sites (default 30m)"}),
    (["--certfile"], {"type": Path, "help": "server: TLS certificate (default: one made in RUN/federated/tls)"}),
    (["--keyfile"], {"type": Path, "help": "server: TLS private key (with --certfile)"}),
    (["--ca-certfile"], {"type": Path, "help": "server: CA certificate that signed --certfile"}),
    (["--server"], {"metavar": "HOST:PORT", "help": "site: the server's address"}),
    (["--data"], {"type": Path, "help": "site: this site's dataset (folder or CSV manifest); it never leaves"}),
    (["--name"], {"help": "site: this site's name in the federation (default: the data folder's name)"}),
    (["--root-certificates"], {"type": Path, "metavar": "CA_PEM",
                               "help": "site: the CA that signed the server's certificate"}),
    (["--insecure"], {"action": "store_true", "help": "plain text even off loopback (weights readable on the way)"}),
]
_SERVER = ("rounds", "expect_sites", "plan", "time_budget", "dp_epsilon", "strategy", "out", "certfile", "keyfile",
           "ca_certfile")
_SITE = ("server", "data", "name", "root_certificates")


def run(args) -> int:
    from medlens.errors import ConfigError

    wrong = [name for name in (_SITE if args.role == "server" else _SERVER) if getattr(args, name) is not None]
    if wrong:
        raise ConfigError(f"`medlens fl {args.role}` does not take --{wrong[0].replace('_', '-')}; it is an option "
                          f"of `medlens fl {'site' if args.role == 'server' else 'server'}`")
    return _server(args) if args.role == "server" else _site(args)


def _server(args) -> int:
    from medlens.federated.server import ServerSettings, exit_on_sigterm, serve

    out = args.out or Path("runs") / "federated"
    settings = ServerSettings(out, address=args.address, rounds=args.rounds, min_sites=args.min_sites,
                              expect_sites=args.expect_sites, plan=args.plan, time_budget_s=args.time_budget,
                              dp_epsilon=args.dp_epsilon, strategy=args.strategy, round_timeout_s=args.round_timeout,
                              tls=server_tls(args, out))
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
    if args.insecure or is_local(host):
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
    from medlens.federated.site import SiteSettings, start_site

    if args.server is None or args.data is None:
        raise ConfigError("`medlens fl site` needs --server HOST:PORT and --data SITE_DATA")
    name = args.name or Path(args.data).name.removesuffix(".csv")
    settings = SiteSettings(args.server, args.data, name, root_certificates=args.root_certificates,
                            insecure=args.insecure)
    print(f"site {name}: joining {args.server} with {args.data} (only summaries and weights leave this machine)")
    process = start_site(settings, clientappio_port=free_port())
    exit_on_sigterm()  # stopping the site stops its SuperNode too
    try:
        if process.wait() != 0:
            raise ConfigError(f"site {name}: Flower's SuperNode stopped (exit {process.returncode}; its messages are "
                              f"above). 'SSL/TLS handshake error': --root-certificates is not the CA that signed the "
                              f"server's certificate; connection refused: is the server running at {args.server}?")
        return 0
    finally:
        from medlens.federated.server import stop

        stop(process)
