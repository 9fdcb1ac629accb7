"""Training on several processes: two torchrun "nodes" on localhost, Lightning's own launcher, and the
checks of how a run was launched."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys

import pytest

from medlens.engine.distributed import Launch
from medlens.errors import ConfigError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _finished_run(root, world_size: int, epochs: int) -> dict:
    """The run folder a multi-process run leaves is the one a single process leaves."""
    info = json.loads((root / "run.json").read_text())
    assert info["status"] == "finished" and info["world_size"] == world_size and info["backend"] == "gloo"
    for name in ("plan.yaml", "splits.json", "card.json", "weights.pt", "report.html", "checkpoints/best.ckpt"):
        assert (root / name).exists(), name
    assert len(list(csv.DictReader(open(root / "metrics.csv")))) == epochs
    return info


@pytest.mark.e2e
def test_two_torchrun_nodes_on_localhost_train_one_run(demo_dir, tmp_path):
    port, out = _free_port(), tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def node(rank: int) -> subprocess.Popen:
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                   "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port),
                   "-m", "medlens.cli", "train", str(demo_dir / "classification.csv"), "--num-nodes", "2",
                   "--devices", "1", "--out", str(out), "--set", "train.max_epochs=2", "--set", "model.members=1",
                   "--no-progress"]
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    nodes = [node(0), node(1)]
    outputs = [n.communicate(timeout=400)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(o[-1500:] for o in outputs)
    info = _finished_run(out, world_size=2, epochs=2)
    assert info["num_nodes"] == 2
    plan = (out / "plan.yaml").read_text()
    assert "processes: 2" in plan  # rank 0 planned for both processes; only it wrote the run folder
    assert "run folder:" in outputs[0] and "run folder:" not in outputs[1]
    assert (out / "calibration.json").exists()


@pytest.mark.e2e
def test_segmentation_trains_on_two_processes_of_one_machine(demo_dir, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "medlens.cli", "train", str(demo_dir / "segmentation"), "--out", str(out),
               "--devices", "2", "--strategy", "ddp", "--set", "train.max_epochs=1", "--set",
               "segment.iterations_per_epoch=8", "--set", "data.input_size=[32,32,32]", "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            timeout=400)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr
    _finished_run(out, world_size=2, epochs=1)
    assert (out / "postprocess.json").exists()


def test_several_nodes_need_a_launcher(monkeypatch):
    for name in ("TORCHELASTIC_RUN_ID", "RANK", "SLURM_PROCID", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match=r"--num-nodes 2: the processes on every node are started by a launcher; "
                                          r"run e\.g\. `torchrun --nnodes 2"):
        Launch.detect(devices=1, num_nodes=2)
    assert Launch.detect(devices=2).processes == 2


def test_a_launcher_that_started_another_count_is_refused(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ConfigError, match=r"torchrun started 4 processes but --devices 1 x --num-nodes 2 = 2"):
        Launch.detect(devices=1, num_nodes=2)
    assert Launch.detect(devices=2, num_nodes=2).launcher == "torchrun"
