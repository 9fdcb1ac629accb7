"""``medlens federate``: a whole federation on this machine, through the same processes real sites run.

One SuperNode per site folder (:func:`medlens.federated.site.start_site`, as ``medlens fl site`` starts it) and
the coordinator (:func:`medlens.federated.server.serve`, as ``medlens fl server`` runs it), all on loopback.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from medlens.errors import ConfigError
from medlens.federated.server import ServerSettings, free_port, serve, stop
from medlens.federated.site import SiteSettings, start_site


def site_names(folders: list[Path]) -> list[str]:
    """One name per site folder: its name (a CSV's stem), numbered when two are alike."""
    names: list[str] = []
    for folder in folders:
        base = Path(folder).name.removesuffix(".csv") or "site"
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def federate(sites: list[Path], settings: ServerSettings, *, node_config: dict[str, dict] | None = None,
             series_rules: tuple[str, ...] = (), log=print) -> Path:
    """Run a federation of ``sites`` (folders or CSV manifests on this machine) to its end.

    Args:
        sites: one dataset per site.
        settings: the coordinator's settings (its ``address`` is replaced by a free loopback port).
        node_config: extra node config per site name (``{name: {key: value}}``).
        series_rules: ``NAME=REGEX`` rules every site reads its DICOM studies with (sites of a CSV's study column).

    Returns:
        The run folder.

    Raises:
        ConfigError: fewer than two sites; FileNotFoundError: a site's data is missing.
    """
    if len(sites) < 2:
        raise ConfigError(f"federate needs at least two sites, got {len(sites)}: pass --sites a/ b/ [c/ ...]")
    names = site_names(sites)
    # the data is on this machine: the model is calibrated on the sites' validation splits together
    settings = replace(settings, address=f"127.0.0.1:{free_port()}", expect_sites=settings.expect_sites or len(sites),
                       calibrate_on=settings.calibrate_on or {n: Path(s) for n, s in zip(names, sites, strict=True)},
                       shared_machine=True)
    logs = Path(settings.out) / "federated" / "sites"
    logs.mkdir(parents=True, exist_ok=True)
    processes = []
    threads = max(1, (os.cpu_count() or 1) // len(sites))  # the sites share this machine's cores, not each all
    try:
        for name, data in zip(names, sites, strict=True):
            site = SiteSettings(settings.address, Path(data), name, node_config=(node_config or {}).get(name),
                                series_rules=tuple(series_rules))
            with open(logs / f"{name}.log", "ab") as site_log:
                processes.append(start_site(site, clientappio_port=free_port(), log_file=site_log,
                                            flwr_home=logs / "flwr", threads=threads))
        log(f"federate: {len(sites)} site process(es) started ({', '.join(names)}); logs in {logs}")
        return serve(settings, log=log)
    finally:
        for process in processes:
            stop(process)
