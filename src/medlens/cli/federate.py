"""``medlens federate --sites a/ b/ c/``: a federation on this machine (one site process per folder), then the
federated model beside each site's local-only model and the pooled model."""

from __future__ import annotations

from pathlib import Path

from medlens.cli.train import parse_duration

ARGUMENTS = [
    (["--sites"], {"nargs": "+", "type": Path, "required": True, "metavar": "SITE_DATA",
                   "help": "one dataset per site (folders or CSV manifests)"}),
    (["--rounds"], {"type": int, "help": "federated rounds (default: the plan's)"}),
    (["--local-epochs"], {"type": int, "help": "epochs each site trains per round (default: the budget's "
                                               "epochs shared over the rounds)"}),
    (["--min-sites"], {"type": int, "help": "sites a round needs (default 2)"}),
    (["--time-budget"], {"type": parse_duration, "help": "training time to plan for, e.g. 10m"}),
    (["--dp-epsilon"], {"type": float, "help": "DP-SGD target epsilon per site over the run (default off)"}),
    (["--strategy"], {"choices": ["fedavg", "fedprox", "fedbn"],
                      "help": "federated averaging to use (default: the plan chooses by how different the sites are)"}),
    (["--out"], {"type": Path, "help": "run folder (default runs/federated); run again to resume"}),
    (["--no-compare"], {"action": "store_true", "help": "skip the local-only and pooled models"}),
    (["--series-rule"], {"action": "append", "default": [], "metavar": "NAME=REGEX",
                         "help": "sites of DICOM studies (a CSV's study column): the series read as view NAME at "
                                 "every site (repeat per series)"}),
]


def run(args) -> int:
    from medlens.federated.launch import federate, site_names
    from medlens.federated.server import ServerSettings, exit_on_sigterm

    out = args.out or Path("runs") / "federated"
    settings = ServerSettings(out, rounds=args.rounds, min_sites=args.min_sites or 2, time_budget_s=args.time_budget,
                              dp_epsilon=args.dp_epsilon, strategy=args.strategy, local_epochs=args.local_epochs)
    exit_on_sigterm()  # stopping federate stops the SuperLink and the sites' SuperNodes it started
    federate(args.sites, settings, series_rules=tuple(args.series_rule))
    if not args.no_compare:
        from medlens.data.dataset import series_rules_given
        from medlens.federated.compare import compare_sites

        with series_rules_given(args.series_rule):  # the comparison opens the sites' studies too
            compare_sites(out, dict(zip(site_names(args.sites), args.sites, strict=True)))
    print(f"federated run written to {out}; evaluate / export / serve take it like any run")
    return 0
