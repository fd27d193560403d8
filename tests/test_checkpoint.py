"""output.checkpoint_every and resume: a run stopped and resumed ends as an uninterrupted
run does, byte for byte, whatever stopped it (SIGTERM, Ctrl-C, kill -9)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import netfl
from netfl.api import Interrupted
from netfl.checkpoint import CheckpointError, _Pickler, _Unpickler
from netfl.cli import main
from netfl.observers import Observer

BASE = {
    "name": "ck",
    "network": {"topology": {"generator": "star"}, "bandwidth": "10 Mbit/s",
                "latency": "20 ms"},
    "learners": {"count": 4, "compute_time": "50 ms"},
    "data": {"dataset": "digits", "batch_size": 10},
    "model": {"kind": "mlp", "hidden": [16]},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "protocol": {"name": "periodic", "b": 3},
    "horizon": {"rounds": 24},
    "eval": {"every": 5},
    "output": {"messages": True, "per_learner": True},
}
FILES = ("metrics.csv", "events.csv", "links.csv", "messages.csv", "learners.csv")


class StopAt(Observer):
    """SIGTERM as a cluster sends it, at the end of round ``at``."""

    def __init__(self, at: int, signum: int = signal.SIGTERM) -> None:
        self.at, self.signum = at, signum

    def on_round(self, sim, row):
        if row["round"] == self.at:
            raise Interrupted(self.signum)


def scenario(**changes):
    return netfl.load(BASE, changes)


def tables(run_dir: Path) -> dict[str, bytes]:
    return {f: (run_dir / f).read_bytes() for f in FILES if (run_dir / f).exists()}


def stopped_and_resumed(tmp_path: Path, stop_at: int, every: int, **changes):
    reference = netfl.simulate(scenario(**changes), out=tmp_path / "ref")
    cut = tmp_path / "cut"
    first = netfl.simulate(scenario(**changes, **{"output.checkpoint_every": every}), out=cut,
                           observers=[StopAt(stop_at)])
    assert first.status == "interrupted"
    assert first.summary["checkpoints"] >= 1
    return reference, netfl.resume(cut), cut


CASES = {
    "periodic": {},
    "fedavg-randk-adam": {"protocol.name": "fedavg", "protocol.fraction": 0.5,
                          "compression.uplink": {"name": "randk", "k": 0.3},
                          "protocol.server_optimizer": {"name": "adam", "lr": 0.01}},
    "m22-qsgd": {"compression.uplink": "m22", "compression.downlink": "qsgd"},
    "gossip-ring": {"protocol": {"name": "gossip"}, "network.topology.generator": "ring"},
    "dynamic": {"protocol": {"name": "dynamic", "delta": 0.3, "b": 2}},
    "fedasync": {"protocol": {"name": "fedasync"}},
    "hierarchical": {"protocol": {"name": "hierarchical"},
                     "network.topology.generator": "hierarchy"},
    "scaffold": {"protocol": {"name": "scaffold"}},
    "availability": {"learners.availability": {"kind": "markov", "mean_online": 1.0,
                                               "mean_offline": 0.3}},
    "failures-loss": {"network.failures": [{"links": "all", "mtbf": 2.0, "mttr": 0.2}],
                      "network.loss": 0.05},
    "drift": {"data.dataset": "graphical",
              "data.drift": {"mode": "at", "rounds": [9, 18], "kind": "sudden"}},
    "sim-time": {"horizon.rounds": None, "horizon.sim_time": 1.5},
}


@pytest.mark.parametrize("case", CASES)
def test_stopped_and_resumed_run_writes_what_an_uninterrupted_run_writes(tmp_path, case):
    reference, resumed, cut = stopped_and_resumed(tmp_path, stop_at=16, every=6, **CASES[case])
    assert resumed.status == "completed"
    assert 6 <= resumed.summary["resumed_from_round"] <= 16
    assert tables(cut) == tables(tmp_path / "ref")
    keep = ("wall_time_s", "run_dir", "checkpoints", "last_checkpoint_round",
            "resumed_from_round")
    final = {k: v for k, v in resumed.summary.items() if k not in keep}
    assert final == {k: v for k, v in reference.summary.items() if k not in keep}
    assert resumed.metrics.equals(reference.metrics)  # the rows before the checkpoint too


def test_a_resumed_run_can_stop_and_resume_again(tmp_path):
    netfl.simulate(scenario(), out=tmp_path / "ref")
    cut = tmp_path / "cut"
    netfl.simulate(scenario(**{"output.checkpoint_every": 5}), out=cut, observers=[StopAt(12)])
    second = netfl.resume(cut, observers=[StopAt(19, signal.SIGINT)])
    assert second.status == "interrupted" and second.summary["interrupted_by"] == "SIGINT"
    third = netfl.resume(cut)
    assert third.summary["resumed_from_round"] >= 15
    assert tables(cut) == tables(tmp_path / "ref")


def test_checkpoints_wait_for_a_quiet_step(tmp_path):
    """Round 3 is a sync round (b=3): its uploads are in flight when its row is written, so
    the checkpoint is taken at the first step of round 4, with nothing in flight."""
    result = netfl.simulate(scenario(**{"output.checkpoint_every": 3}), out=tmp_path / "r")
    assert result.summary["checkpoints"] == 7  # after rows 3, 6, ..., 21 (24 ends the run)
    assert result.summary["last_checkpoint_round"] == 21
    assert "checkpoint_error" not in result.summary


def test_resume_refuses_what_it_cannot_continue(tmp_path):
    done = tmp_path / "done"
    netfl.simulate(scenario(**{"output.checkpoint_every": 10}), out=done)
    with pytest.raises(CheckpointError, match="completed"):
        netfl.resume(done)
    plain = tmp_path / "plain"
    netfl.simulate(scenario(), out=plain, observers=[StopAt(5)])
    with pytest.raises(CheckpointError, match="no checkpoint"):
        netfl.resume(plain)
    with pytest.raises(CheckpointError, match="no such run directory"):
        netfl.resume(tmp_path / "missing")
    edited = tmp_path / "edited"
    netfl.simulate(scenario(**{"output.checkpoint_every": 5}), out=edited,
                   observers=[StopAt(12)])
    spec = yaml.safe_load((edited / "scenario.yaml").read_text())
    spec["optimizer"]["lr"] = 0.2
    (edited / "scenario.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(CheckpointError, match="differs from the scenario"):
        netfl.resume(edited)
    (edited / "checkpoint.pkl").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        netfl.resume(edited)


def test_cli_resume_errors_exit_2(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path / "nowhere"), "--quiet"]) == 2
    assert "no such run directory" in capsys.readouterr().err
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(BASE))
    assert main(["run", str(path), "--resume", str(tmp_path)]) == 2
    assert "give no scenario file" in capsys.readouterr().err
    assert main(["run"]) == 2
    assert "give a scenario file" in capsys.readouterr().err
    assert main(["validate", str(path), "--set", "output.checkpoint_every=0"]) == 2
    assert "output.checkpoint_every" in capsys.readouterr().err


def test_kill_9_then_resume_from_the_command_line(tmp_path):
    """A run killed outright (its lock left behind) resumes from its last checkpoint."""
    spec = {**BASE, "horizon": {"rounds": 150}, "eval": {"every": 50},
            "output": {"checkpoint_every": 10}}
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(spec))
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "netfl.cli", "run", str(path), "--out",
                             str(run_dir), "--quiet"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (run_dir / "checkpoint.pkl").exists():
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run_dir / "checkpoint.pkl").exists()
    assert not (run_dir / "summary.json").exists()  # killed: no summary
    assert (run_dir / ".netfl-run.lock").exists()
    out = subprocess.run([sys.executable, "-m", "netfl.cli", "run", "--resume", str(run_dir),
                          "--quiet"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["status"] == "completed" and summary["resumed_from_round"] >= 10
    reference = netfl.simulate(netfl.load(path), out=tmp_path / "ref")
    assert reference.summary["status"] == "completed", reference.summary
    assert reference.summary["rounds"] == 150
    assert tables(run_dir) == tables(tmp_path / "ref")
    assert not (run_dir / ".netfl-run.lock").exists()


def test_pickled_views_share_their_storage_and_version_counter():
    base = torch.arange(12.0)
    state = {"base": base, "view": base[2:8].view(2, 3), "t": base.view(3, 4).t(),
             "param": torch.nn.Parameter(torch.ones(2)), "empty": torch.zeros(0)}
    handle = io.BytesIO()
    pickler = _Pickler(handle, {}, {})
    pickler.dump(state)
    back = _Unpickler(io.BytesIO(handle.getvalue()), {}, {}, pickler.storage_table()).load()
    before = back["base"]._version
    back["view"][0, 1] = -1.0
    assert back["base"][3] == -1.0 and back["base"]._version > before
    assert torch.equal(back["t"], base.view(3, 4).t().clone().index_put_(
        (torch.tensor([3]), torch.tensor([0])), torch.tensor([-1.0])))
    assert isinstance(back["param"], torch.nn.Parameter) and back["param"].requires_grad
    assert back["empty"].shape == (0,)


def test_a_sweep_resumes_an_interrupted_run_from_its_checkpoint(tmp_path):
    from netfl import sweep
    from netfl.sweep_exec import run_sweep

    spec = {"name": "sw", "base": {**BASE, "output": {"checkpoint_every": 5}},
            "grid": {"optimizer.lr": [0.05, 0.1]}}
    path = tmp_path / "s.sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    runs = sweep.load(path)
    out = tmp_path / "out"
    run_sweep(runs, out, log=io.StringIO())
    first = runs[1]  # as if SIGTERM had stopped it at round 13:
    shutil.rmtree(out / first.name)
    cut = netfl.simulate(first, out=out / first.name, observers=[StopAt(13)])
    assert cut.status == "interrupted"
    log = io.StringIO()
    rows = run_sweep(runs, out, log=log)
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert "resumes from its checkpoint at round 1" in log.getvalue()  # 10 or later
    assert json.loads((out / first.name / "summary.json").read_text())[
        "resumed_from_round"] >= 10
    reference = netfl.simulate(first, out=tmp_path / "ref")
    assert reference.status == "completed"
    assert tables(out / first.name) == tables(tmp_path / "ref")
    assert not (out / ".attempts").exists()  # resumed, not set aside
