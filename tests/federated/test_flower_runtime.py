"""Federated training on Flower's real deployment runtime: a SuperLink, one SuperNode per site, the ServerApp
submitted with ``flwr run``, all as processes on localhost (no mocks of Flower), on small synthetic sites."""

from __future__ import annotations

import csv
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from medlens.cli import main as medlens
from medlens.data.synthetic import chest_image
from medlens.federated.launch import federate
from medlens.federated.server import COMPONENTS, ServerSettings, free_port, read_state, serve, stop
from medlens.federated.site import SiteSettings, start_site
from medlens.io import Image, identity_direction, write_image

REPO = Path(__file__).resolve().parents[2]
SITES = ("north", "south", "east")


def write_site(folder: Path, name: str, first_patient: int, patients: int = 12, seed: int = 0) -> Path:
    """A small chest-image site: ``folder/name.csv`` (image, label, patient_id) and its PNGs."""
    rng = np.random.default_rng(seed + first_patient)
    rows = []
    for p in range(first_patient, first_patient + patients):
        label = "lesion" if p % 2 else "normal"
        for s in range(2):
            rel = f"img/{label}_{p:03d}_{s}.png"
            pixels = chest_image(rng, lesion=label == "lesion", size=32)
            write_image(Image(pixels.T[None], (0.6, 0.6), (0.0, 0.0), identity_direction(2)), folder / rel)
            rows.append({"image": rel, "label": label, "patient_id": f"PATIENT{p:04d}"})
    manifest = folder / f"{name}.csv"
    with open(manifest, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["image", "label", "patient_id"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sites")
    return {name: write_site(root / name, name, 100 * k) for k, name in enumerate(SITES)}


pytestmark = pytest.mark.usefixtures("flower_env")  # tests/federated/conftest.py


def settings(out: Path, **changes) -> ServerSettings:
    values = {"rounds": 1, "min_sites": 2, "time_budget_s": 2.0, "round_timeout_s": 120.0, "wait_sites_s": 60.0}
    return ServerSettings(out, **{**values, **changes})


def test_unsound_updates_are_refused_with_the_site_and_key():
    from medlens.federated.updates import Update, average, check_update, shared_keys

    weights = {"conv.weight": np.ones((2, 3), np.float32), "bn.weight": np.ones(2, np.float32),
               "bn.running_mean": np.zeros(2, np.float32), "bn.num_batches_tracked": np.array(4)}
    shapes = {k: v.shape for k, v in weights.items()}
    assert check_update(Update("a", weights, 10, {}), shapes) is None
    inf = {**weights, "conv.weight": np.array([[1, np.inf, 1]] * 2, np.float32)}
    assert "site 'b' sent 2 NaN / Inf value(s) in conv.weight" in check_update(Update("b", inf, 10, {}), shapes)
    wide = {**weights, "conv.weight": np.ones((2, 4), np.float32)}
    assert "shape (2, 4), expected (2, 3)" in check_update(Update("c", wide, 10, {}), shapes)
    assert "wrong keys" in check_update(Update("d", {**weights, "extra": np.ones(1)}, 10, {}), shapes)
    other = {**weights, "conv.weight": np.full((2, 3), 4, np.float32), "bn.num_batches_tracked": np.array(8)}
    mean = average([Update("a", weights, 3, {}), Update("e", other, 1, {})], list(weights))
    assert np.allclose(mean["conv.weight"], 1.75) and mean["bn.num_batches_tracked"] == 5
    assert mean["bn.num_batches_tracked"].dtype == weights["bn.num_batches_tracked"].dtype
    assert shared_keys(weights, "fedbn") == ["conv.weight"] and shared_keys(weights, "fedavg") == list(weights)


def test_a_sites_refusal_crosses_the_wire_without_paths_or_file_names():
    from medlens.federated.site import redact

    text = ("/data/site/P0012_smith.dcm: unreadable; C:\\scans\\x.nii.gz too; see case_7.png, e.g. shape "
            "(1, 64) in ct.nii.gz")
    assert redact(text) == "<file>: unreadable; <file> too; see <file>, e.g. shape (1, 64) in <file>"


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _cli_site(data: Path, address: str, log: Path, *options: str) -> subprocess.Popen:
    """``medlens fl site`` in its own process, its stderr into ``log``."""
    with open(log, "w") as err:
        return subprocess.Popen([sys.executable, "-m", "medlens.cli", "fl", "site", "--server", address, "--data",
                                 str(data), *options], stderr=err, stdout=subprocess.DEVNULL, start_new_session=True)


def _serve_with_sites(config: ServerSettings, sites: dict[str, SiteSettings], logs: Path, refused) -> Path:
    """Serve ``config``; once its Fleet API listens, ``refused()`` starts the processes that must be turned away
    (``{log: process}``), which must exit with status 2; then ``sites`` join and the federation runs.

    The refused ones go first: each starts Python, torch and a SuperNode, which on a busy 2-core machine can take
    longer than a whole federation, after which its SuperNode would wait for a server that is gone."""
    port = int(config.address.rpartition(":")[2])
    result = {}
    server = threading.Thread(target=lambda: result.update(run=serve(replace(config, wait_sites_s=300.0))))
    processes = []
    try:
        server.start()
        _wait_for(lambda: _listening(port), 60, "the server's Fleet API")
        turned_away = refused()
        processes += list(turned_away.values())
        assert all(process.wait(timeout=180) == 2 for process in turned_away.values())
        for name, site in sites.items():
            with open(logs / f"{name}.log", "ab") as log:
                processes.append(start_site(site, clientappio_port=free_port(), log_file=log))
        server.join(timeout=180)
        assert not server.is_alive()
    finally:
        for process in processes:
            stop(process)
    return result["run"]


@pytest.mark.e2e
def test_tls_with_the_local_certificates_and_a_site_with_another_ca_kept_out(sites, tmp_path):
    from medlens.federated.tls import local_certificates

    files = local_certificates(tmp_path / "tls", ["127.0.0.1"])
    assert local_certificates(tmp_path / "tls", ["127.0.0.1"]) == files and files.key.stat().st_mode & 0o077 == 0
    stranger = local_certificates(tmp_path / "other", ["127.0.0.1"])
    address, logs = f"127.0.0.1:{free_port()}", tmp_path / "logs"
    logs.mkdir()
    run = _serve_with_sites(
        settings(tmp_path / "run", address=address, tls=(files.ca, files.cert, files.key)),
        {name: SiteSettings(address, sites[name], name, root_certificates=files.ca) for name in ("north", "south")},
        logs, lambda: {"east": _cli_site(sites["east"], address, logs / "east-cli.log", "--root-certificates",
                                         str(stranger.ca))})
    assert sorted(read_state(run)["summaries"]) == ["north", "south"]
    # a coordinator without data: calibration from the sites' validation aggregates
    calibration = json.loads((run / "calibration.json").read_text())
    assert calibration["sites"] == ["north", "south"] and calibration["threshold_rule"].startswith("Youden J")
    assert "from aggregates they sent" in json.loads((run / "run.json").read_text())["federation"]["calibration"]
    error = (logs / "east-cli.log").read_text()
    assert "SSL/TLS handshake error" in error and "medlens fl: error: site east: Flower's SuperNode stopped" in error


@pytest.fixture(scope="module")
def federated_run(sites, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fl") / "run"
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        return federate(list(sites.values()), settings(out))


@pytest.mark.e2e
def test_three_sites_end_to_end(federated_run, tmp_path):
    state = read_state(federated_run)
    assert state["finished"] and state["round"] == 1
    assert [sorted(record["sites"]) for record in state["history"]] == [sorted(SITES)]
    # each site audited its data for its summary only: round 1 kept that split (the SuperNode's context state)
    assert {name: site["audited"] for name, site in state["history"][0]["sites"].items()} == dict.fromkeys(SITES, 0)
    assert (federated_run / "federated" / "global_round_1.safetensors").is_file()
    assert medlens(["evaluate", str(federated_run), "--bootstrap", "50", "--no-baseline"]) == 0
    assert medlens(["export", str(federated_run), "--out", str(tmp_path / "bundle"), "--format", "none"]) == 0
    assert (tmp_path / "bundle").is_dir()


@pytest.mark.e2e
def test_the_wire_carries_no_images_or_identifiers(federated_run, sites):
    from safetensors.numpy import load_file

    model = load_file(federated_run / "federated" / "global_round_0.safetensors")
    model_bytes = sum(v.nbytes for v in model.values())
    messages = [json.loads(line) for line in (federated_run / "federated" / "messages.jsonl").read_text().splitlines()]
    # summaries, one round, and the final global model's validation aggregates (the kept round is chosen by them)
    assert {m["kind"] for m in messages} == {"query", "train"} and len(messages) == 3 * 3
    forbidden = {row["patient_id"] for m in sites.values() for row in csv.DictReader(open(m))}
    forbidden |= {row["image"] for m in sites.values() for row in csv.DictReader(open(m))}
    forbidden |= {str(m.parent) for m in sites.values()} | {m.name for m in sites.values()}
    for message in messages:
        text = json.dumps(message)
        assert not [word for word in forbidden if word in text], message["site"]
        assert ".png" not in text
        if message["kind"] == "query":
            assert set(message["records"]) in ({"summary", "meta"}, {"calibration", "meta"})
        else:
            assert set(message["records"]) == {"weights", "metrics", "validation", "meta"}
            arrays = message["records"]["weights"]["arrays"]
            assert {k: tuple(shape) for k, (_, shape) in arrays.items()} == {k: v.shape for k, v in model.items()}
            # Flower's serialisation adds a dtype and shape per array, nothing more
            assert message["records"]["weights"]["bytes"] <= model_bytes + 512 * len(model)
            assert all(isinstance(v, int | float) for v in message["records"]["metrics"].values())


@pytest.mark.e2e
def test_a_poisoned_update_is_refused_and_never_averaged(sites, tmp_path):
    from safetensors.numpy import load_file

    poisoned = {**COMPONENTS, "clientapp": "tests.federated.poison_app:client_app"}
    run = federate(list(sites.values()), settings(tmp_path / "run", rounds=1, components=poisoned),
                   node_config={"east": {"poison": "nan"}})
    record = read_state(run)["history"][0]
    assert sorted(record["sites"]) == ["north", "south"]
    assert "NaN" in record["rejected"]["east"]
    assert "refused update: site 'east' sent" in (run / "federated" / "server.log").read_text()
    weights = load_file(run / "federated" / "global_round_1.safetensors")
    assert all(np.isfinite(v).all() for v in weights.values() if np.issubdtype(v.dtype, np.floating))


def _start_sites(sites: dict[str, Path], address: str, logs: Path) -> dict[str, subprocess.Popen]:
    logs.mkdir(parents=True, exist_ok=True)
    return {name: _start_site(name, data, address, logs) for name, data in sites.items()}


def _start_site(name: str, data: Path, address: str, logs: Path) -> subprocess.Popen:
    with open(logs / f"{name}.log", "ab") as log:
        return start_site(SiteSettings(address, data, name), clientappio_port=free_port(), log_file=log)


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.e2e
def test_a_site_killed_mid_round_does_not_stop_it_and_can_rejoin(sites, tmp_path):
    address = f"127.0.0.1:{free_port()}"
    config = settings(tmp_path / "run", rounds=2, address=address, expect_sites=3)
    processes = _start_sites(sites, address, tmp_path / "logs")
    result = {}
    server = threading.Thread(target=lambda: result.update(run=serve(config)))
    try:
        server.start()
        east_log = tmp_path / "logs" / "east.log"
        _wait_for(lambda: b"Receiving: train" in east_log.read_bytes(), 120, "round 1 to reach east")
        stop(processes["east"])  # the site's SuperNode and its ClientApp, mid-training
        processes["east"] = _start_site("east", sites["east"], address, tmp_path / "logs")  # it comes back
        server.join(timeout=240)
        assert not server.is_alive()
    finally:
        for process in processes.values():
            stop(process)
    history = read_state(tmp_path / "run")["history"]
    assert sorted(history[0]["sites"]) == ["north", "south"]
    assert "east" in history[-1]["sites"]
    assert read_state(tmp_path / "run")["finished"]
    # both rounds' global models scored on all three sites' validation splits; the run keeps the better one
    kept = json.loads((tmp_path / "run" / "run.json").read_text())["federation"]["kept_round"]
    assert set(kept["scores"]) == {"1", "2"} and kept["scores"][str(kept["round"])] == max(kept["scores"].values())


@pytest.mark.e2e
@pytest.mark.slow  # ~90-110 s on 2 cores: the SuperNodes' reconnection back-off after the SuperLink went away
def test_a_restarted_server_resumes_from_the_last_global_checkpoint(sites, tmp_path):
    port, out = free_port(), tmp_path / "run"
    command = [sys.executable, "-m", "medlens.cli", "fl", "server", "--address", f"127.0.0.1:{port}", "--rounds",
               "2", "--min-sites", "2", "--expect-sites", "2", "--time-budget", "2", "--out", str(out)]
    two = {name: sites[name] for name in SITES[:2]}
    processes = _start_sites(two, f"127.0.0.1:{port}", tmp_path / "logs")
    first = second = None
    try:
        first = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL)
        _wait_for(lambda: read_state(out).get("round", 0) >= 1, 150, "round 1's checkpoint")
        first.send_signal(signal.SIGTERM)  # the coordinator is stopped mid-run (its SuperLink with it)
        first.wait()
        second = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL)
        assert second.wait(timeout=180) == 0
    finally:
        for process in [*processes.values(), first, second]:
            if process is not None:
                stop(process)
    state = read_state(out)
    assert state["finished"] and [record["round"] for record in state["history"]] == [1, 2]
    assert "resuming after round 1" in (out / "federated" / "server.log").read_text()


def test_fl_refuses_options_of_the_other_role_and_plain_text_to_a_remote_server(tmp_path, capsys):
    assert medlens(["fl", "site", "--server", "127.0.0.1:9092", "--data", str(tmp_path), "--rounds", "3"]) == 2
    assert "`medlens fl site` does not take --rounds" in capsys.readouterr().err
    assert medlens(["fl", "server", "--data", str(tmp_path)]) == 2
    assert "does not take --data; it is an option of `medlens fl site`" in capsys.readouterr().err
    assert medlens(["fl", "site", "--server", "hospital.example.org:9092", "--data", str(tmp_path)]) == 2
    assert "--root-certificates" in capsys.readouterr().err
    assert medlens(["fl", "site", "--server", "127.0.0.1:9092", "--data", str(tmp_path / "absent")]) == 2
    assert "site data" in capsys.readouterr().err


@pytest.mark.e2e
def test_a_site_with_unreadable_data_is_refused_and_the_others_go_on(sites, tmp_path):
    broken = tmp_path / "west" / "west.csv"
    broken.parent.mkdir()
    broken.write_text("image,label,patient_id\n")  # a manifest without a single case
    run = federate([sites["north"], sites["south"], broken], settings(tmp_path / "run"))
    log = (run / "federated" / "server.log").read_text()
    assert "round 0: site 'west' refused (query): DatasetError: <file>: the CSV has no data rows" in log
    assert "west.csv" not in log + (run / "federated" / "messages.jsonl").read_text()
    state = read_state(run)
    assert sorted(state["summaries"]) == ["north", "south"] and state["finished"]
    assert sorted(state["history"][0]["sites"]) == ["north", "south"] and "west" in state["history"][0]["rejected"]


@pytest.mark.e2e
def test_only_sites_whose_keys_the_server_holds_may_join(sites, tmp_path, capsys):
    from medlens.federated.tls import local_certificates, site_key

    files = local_certificates(tmp_path / "tls", ["127.0.0.1"])
    keys = {name: site_key(tmp_path / "keys", name) for name in SITES}  # (private, public)
    address, logs = f"127.0.0.1:{free_port()}", tmp_path / "logs"
    logs.mkdir()
    trusted = ("--root-certificates", str(files.ca))
    run = _serve_with_sites(
        settings(tmp_path / "run", address=address, tls=(files.ca, files.cert, files.key),
                 site_keys=(keys["north"][1], keys["south"][1])),
        {name: SiteSettings(address, sites[name], name, root_certificates=files.ca, private_key=keys[name][0])
         for name in ("north", "south")},
        logs, lambda: {"east": _cli_site(sites["east"], address, logs / "east-cli.log", *trusted, "--key",
                                         str(keys["east"][0])),  # a key the server was not given
                       "keyless": _cli_site(sites["east"], address, logs / "keyless-cli.log", *trusted, "--name",
                                            "keyless")})
    state = read_state(run)
    assert sorted(state["summaries"]) == ["north", "south"] and state["finished"]
    assert "the server does not know this site's key: send east's public key" in (logs / "east-cli.log").read_text()
    assert "the server admits known sites only: make a key pair with `medlens fl key --name keyless`" in \
        (logs / "keyless-cli.log").read_text()
    assert "2 site key(s) registered; only those sites may join" in capsys.readouterr().out


def test_site_keys_are_made_once_and_checked_before_anything_starts(tmp_path, capsys):
    assert medlens(["fl", "key", "--name", "north", "--out", str(tmp_path)]) == 0
    assert "send it to the coordinator" in capsys.readouterr().out
    assert (tmp_path / "north.key").stat().st_mode & 0o077 == 0
    assert medlens(["fl", "key", "--name", "north", "--out", str(tmp_path)]) == 2  # never overwritten
    assert "exists already" in capsys.readouterr().err
    assert medlens(["fl", "server", "--site-keys", str(tmp_path / "north.pub"), "--insecure", "--out",
                    str(tmp_path / "run")]) == 2
    assert "Flower admits sites by their keys only over TLS" in capsys.readouterr().err
    assert medlens(["fl", "server", "--site-keys", str(tmp_path / "north.key"), "--out", str(tmp_path / "run")]) == 2
    assert "is not an OpenSSH public key" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert medlens(["fl", "server", "--site-keys", str(empty)]) == 2
    assert "a folder without .pub files" in capsys.readouterr().err
    assert medlens(["fl", "site", "--server", "127.0.0.1:9", "--data", str(tmp_path), "--key",
                    str(tmp_path / "north.pub")]) == 2
    assert "is not an OpenSSH private key" in capsys.readouterr().err
    assert medlens(["fl", "key", "--name", "x", "--data", str(tmp_path)]) == 2
    assert "does not take --data; it is an option of `medlens fl site`" in capsys.readouterr().err


@pytest.mark.e2e
def test_differential_privacy_and_fedbn_in_a_full_flower_run(sites, tmp_path):
    two = [sites["north"], sites["south"]]
    private = federate(two, settings(tmp_path / "dp", rounds=2, dp_epsilon=8.0))
    history = read_state(private)["history"]
    spent = [record["sites"]["north"]["dp_epsilon"] for record in history]
    assert 0 < spent[0] < spent[1] <= 8.0  # the accountant counts every round, not each round alone
    assert "norm: group" in (private / "plan.yaml").read_text()  # the plan names the network the weights fit
    assert medlens(["evaluate", str(private), "--bootstrap", "50", "--no-baseline"]) == 0
    assert medlens(["export", str(private), "--out", str(tmp_path / "bundle"), "--format", "none"]) == 0
    card = json.loads((tmp_path / "bundle" / "card.json").read_text())  # the model card says what was spent
    by_round = card["federation"]["dp"]["spent_by_round"]
    assert [r["round"] for r in by_round] == [1, 2] and by_round[1]["sites"]["north"]["epsilon"] == spent[1]
    assert "DP-SGD at target epsilon 8.0" in card["intended_use"] and "north epsilon" in card["intended_use"]
    fedbn = federate(two, settings(tmp_path / "fedbn", strategy="fedbn"))
    assert read_state(fedbn)["plan"]["strategy"] == "fedbn" and read_state(fedbn)["finished"]
    from safetensors.numpy import load_file

    kept = read_state(fedbn)["history"][0]["kept_at_sites"]  # never sent to the sites: each keeps its own
    weights = load_file(fedbn / "federated" / "global_round_1.safetensors")
    assert any(key.endswith("running_mean") for key in kept) and all(weights[key].ndim <= 1 for key in kept)
    assert not any(key.endswith("conv1.weight") for key in kept)
    from medlens.federated.compare import compare_sites
    from medlens.federated.server import load_site_norms

    own = {name: load_site_norms(fedbn, name) for name in ("north", "south")}  # from each site's last update
    assert all(set(arrays) == set(kept) for arrays in own.values())
    assert any(not np.allclose(own["north"][k], own["south"][k]) for k in kept if k.endswith("running_mean"))
    doc = compare_sites(fedbn, {"north": sites["north"], "south": sites["south"]}, pooled=False, n_bootstrap=20,
                        log=lambda *a: None)
    assert doc["federated_on_each_site"].startswith("with that site's own batch-norm layers")
    assert {r["test"] for r in doc["rows"] if r["model"] == "federated"} == {"north", "south", "all sites"}
    assert not read_state(private)["history"][0]["kept_at_sites"]


def test_rounds_planned_from_a_budget_stop_when_the_next_would_end_past_it(tmp_path):
    from medlens.federated.flower_app import Federation, Settings
    from medlens.federated.plan import FederationPlan
    from medlens.federated.server import run_config

    plan = FederationPlan("fedavg", rounds=10, local_epochs=2)
    history = [{"round": 1, "seconds": 100.0}, {"round": 2, "seconds": 120.0}]
    planned = Federation(None, Settings.from_run_config(run_config(ServerSettings(tmp_path, time_budget_s=300.0))))
    assert planned.budget_spent(history, plan)  # 220 s spent, a third round would end near 330 s
    assert not planned.budget_spent(history[:1], plan)  # 100 + 100 <= 300
    assert "stopping after round 2 of the 10 planned" in (tmp_path / "federated" / "server.log").read_text()
    replanned = [{"round": 1, "seconds": 30.0, "local_epochs": 1}, {"round": 2, "seconds": 140.0}]
    assert planned.budget_spent(replanned, plan)  # the next takes 140 s as round 2 did, not their mean of 85
    asked = Federation(None, Settings.from_run_config(run_config(ServerSettings(tmp_path, time_budget_s=300.0,
                                                                                rounds=10))))
    assert not asked.budget_spent(history, plan)  # --rounds 10: every round runs


def test_only_a_federation_planned_from_its_budget_is_replanned_after_round_1(tmp_path):
    from dataclasses import replace

    from medlens.federated.flower_app import Federation, Settings
    from medlens.federated.plan import FederationPlan
    from medlens.federated.server import run_config

    plan = FederationPlan("fedavg", rounds=10, local_epochs=4)
    record = {"seconds": 67.0, "sites": {"a": {"seconds": 40.0}}}

    def federation(**asked) -> Federation:
        return Federation(None, Settings.from_run_config(run_config(ServerSettings(tmp_path, **asked))))

    new = federation(time_budget_s=600.0).replan(plan, record)
    assert (new.rounds, new.local_epochs) == (5, 10)
    assert "planned 10 x 4" in (tmp_path / "federated" / "server.log").read_text()
    assert federation(time_budget_s=600.0, rounds=10).replan(plan, record) is None
    assert federation(time_budget_s=600.0, local_epochs=4).replan(plan, record) is None
    assert federation(time_budget_s=600.0).replan(replace(plan, dp_epsilon=8.0), record) is None  # noise set for 40


def test_the_rounds_run_are_the_replanned_ones(tmp_path):
    from dataclasses import asdict

    import numpy as np

    from medlens.config import Config
    from medlens.federated.flower_app import Federation, Settings, _plain
    from medlens.federated.plan import FederationPlan
    from medlens.federated.server import run_config

    class Scripted(Federation):  # the round loop alone: round 1 takes 67 s, 40 s of it fitting 4 epochs; then faster
        trained: list = []

        def start(self):
            state = {"round": 0, "config": _plain(Config()), "plan": asdict(FederationPlan("fedavg", 10, 4)),
                     "summaries": {"a": {}}, "history": [], "finished": False, "error": None}
            return state, {"w": np.zeros(2, np.float32)}

        def train_round(self, number, config, plan, weights, state, *, validate=False):
            self.trained.append((number, plan.local_epochs))
            record = {"round": number, "seconds": 67.0 if number == 1 else 30.0,  # the budget stops none
                      "local_epochs": plan.local_epochs, "sites": {"a": {"seconds": 10.0 * plan.local_epochs}}}
            return weights, record, {}

        def finish(self, config, plan, weights, state):
            self.finished = (plan, state)

    federation = Scripted(None, Settings.from_run_config(run_config(ServerSettings(tmp_path, time_budget_s=600.0))))
    federation._run({})
    plan, state = federation.finished
    assert (plan.rounds, plan.local_epochs) == (5, 10) and state["plan"]["rounds"] == 5
    assert federation.trained == [(1, 4), (2, 10), (3, 10), (4, 10), (5, 10)]  # 5 rounds, not the 10 first planned


def test_the_run_keeps_the_round_whose_global_model_scores_best_over_every_sites_validation(tmp_path):
    from medlens.config import Config
    from medlens.federated.flower_app import Federation, Settings
    from medlens.federated.plan import FederationPlan
    from medlens.federated.server import run_config, save_round
    from medlens.tasks.classification.aggregates import site_statistics

    config, rng = Config(), np.random.default_rng(0)
    federation = Federation(None, Settings.from_run_config(run_config(ServerSettings(tmp_path))))
    assert federation.keeps_last(config, FederationPlan("fedprox", rounds=3, local_epochs=1)) is None
    assert "FedBN" in federation.keeps_last(config, FederationPlan("fedbn", rounds=3, local_epochs=1))
    assert "differential privacy" in federation.keeps_last(
        config, FederationPlan("fedavg", rounds=3, local_epochs=1, dp_epsilon=8.0))

    def validation(noise: float) -> dict[str, dict]:  # each site's aggregates of a model this noisy
        labels = {name: rng.integers(0, 2, 200) for name in ("north", "south")}
        return {name: site_statistics(np.c_[np.zeros(200), 4 * (y - 0.5) + rng.normal(0, noise, 200)], y, "binary")
                for name, y in labels.items()}

    state = {"summaries": {"north": {}, "south": {}}, "history": [], "round": 0}
    for number, noise in ((1, 4.0), (2, 1.0), (3, 3.0)):  # round 2's global model separates the classes best
        state = federation.score_round({**state, "round": number}, number, validation(noise), config)
        save_round(tmp_path, state, {"w": np.full(2, float(number), np.float32)})
    late = federation.score_round(state, 3, {"north": validation(0.1)["north"]}, config)  # one site: no candidate
    assert late == state
    weights, state = federation.keep_best({"w": np.full(2, 3.0, np.float32)}, state)
    assert state["kept"]["round"] == 2 and weights["w"].tolist() == [2.0, 2.0]  # round 2's checkpoint, not the last
    assert state["kept"]["scores"]["2"] > max(state["kept"]["scores"]["1"], state["kept"]["scores"]["3"])
    assert "best validation AUC over all sites' validation splits" in state["kept"]["rule"]
    assert "round 3, the last" in (tmp_path / "federated" / "server.log").read_text()
