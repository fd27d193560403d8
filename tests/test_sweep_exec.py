"""Running sweeps: resume, failures that do not stop the sweep, Ctrl-C and SIGTERM, worker
processes that give the serial results, and sweep directories that are never clobbered."""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import yaml

import netfl.run
from netfl import sweep
from netfl.cli import main
from netfl.data.datasets import DataError
from netfl.results import OutputError
from netfl.run import RunError
from netfl.sweep_exec import RAY_MISSING, previous, run_sweep

from .conftest import BASE, merge

TINY = merge(BASE, {"learners": {"count": 2}, "horizon": {"rounds": 2},
                    "model": {"kind": "linear", "hidden": []}, "eval": {"every": 1}})


def sweep_file(tmp_path: Path, seeds: list[int]) -> Path:
    path = tmp_path / "s.sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "base": TINY, "grid": {"seed": seeds}}))
    return path


def table(out: Path) -> list[dict[str, str]]:
    with (out / "sweep.csv").open() as handle:
        return list(csv.DictReader(handle))


def sweep_cli(path: Path, out: Path, *args: str) -> int:
    return main(["sweep", str(path), "--out", str(out), "--quiet", "--workers", "1", *args])


@pytest.fixture
def failing(monkeypatch):
    """netfl.run.run that fails as told for some seeds: {seed: exception}."""
    real, plan = netfl.run.run, {}

    def run(scenario, out=None, *, progress=True):
        if scenario.seed in plan:
            raise plan[scenario.seed]
        return real(scenario, out, progress=progress)

    monkeypatch.setattr(netfl.run, "run", run)
    return plan


def test_a_rerun_skips_completed_runs_and_reruns_the_rest(tmp_path, capsys):
    out = tmp_path / "out"
    assert sweep_cli(sweep_file(tmp_path, [0, 1]), out) == 0
    first = table(out)
    kept, redo = (out / first[0]["run"]), (out / first[1]["run"])
    stamp = (kept / "metrics.csv").stat().st_mtime_ns
    summary = json.loads((redo / "summary.json").read_text())
    (redo / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    capsys.readouterr()

    assert sweep_cli(sweep_file(tmp_path, [0, 1, 2]), out) == 0  # one more seed: a new run
    second = table(out)
    assert [r["status"] for r in second] == ["completed"] * 3
    assert second[0] == first[0]  # kept as it was, wall time included
    assert (kept / "metrics.csv").stat().st_mtime_ns == stamp
    aside = out / ".attempts" / f"{redo.name}.1"
    assert json.loads((aside / "summary.json").read_text())["status"] == "interrupted"
    assert (aside / "metrics.csv").read_bytes() == (redo / "metrics.csv").read_bytes()
    err = capsys.readouterr().err
    assert f"{redo.name}: earlier attempt (interrupted) moved to {aside}" in err
    assert "3 runs, 1 done already, 2 to run" in err

    assert main(["sweep", str(sweep_file(tmp_path, [2, 3])), "--out", str(out), "--dry-run"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].startswith("seed=2-") and listed[0].endswith(" b=5  (done)")
    assert listed[1].startswith("seed=3-") and listed[1].endswith(" b=5")
    assert sweep_cli(sweep_file(tmp_path, [2]), out) == 0  # a smaller sweep: the rest stay
    assert [r["run"] for r in table(out)] == [second[2]["run"]]
    assert "2 folder(s) in" in capsys.readouterr().err
    assert len(list(csv.DictReader((out / ".attempts" / "sweep.csv.1").open()))) == 3


def test_what_an_earlier_attempt_left(tmp_path):
    s = sweep.expand({"base": TINY})[0]
    run_dir, d = tmp_path / s.name, sweep.digest(s)
    assert previous(run_dir, d) == ("new", None)
    run_dir.mkdir()
    assert previous(run_dir, d) == ("retry", None)  # no summary: unfinished
    (run_dir / "scenario.yaml").write_text(yaml.safe_dump(s.resolved(), sort_keys=False))
    for status, state in [("completed", "done"), ("diverged", "done"), ("failed", "retry"),
                          ("interrupted", "retry")]:
        (run_dir / "summary.json").write_text(json.dumps({"status": status}))
        assert previous(run_dir, d)[0] == state
    (run_dir / "summary.json").write_text('{"status": "compl')  # cut short
    assert previous(run_dir, d)[0] == "retry"
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed"}))
    data = s.resolved()
    (run_dir / "scenario.yaml").write_text(yaml.safe_dump({**data, "seed": 5}))
    assert previous(run_dir, d)[0] == "retry"  # another scenario ran here
    (run_dir / "scenario.yaml").write_text(yaml.safe_dump({**data, "name": "x"}))
    assert previous(run_dir, d)[0] == "done"  # the name is not part of the hash


def test_failed_runs_record_their_error_and_the_sweep_goes_on(tmp_path, capsys, failing):
    failing.update({1: DataError("data.root: vanished"), 2: RuntimeError("boom"),
                    3: RunError("deadlock: learner 0 waits forever")})
    path, out = sweep_file(tmp_path, [0, 1, 2, 3, 4]), tmp_path / "out"
    assert sweep_cli(path, out) == 1
    rows = table(out)
    assert [r["status"] for r in rows] == ["completed", "failed", "failed", "failed", "completed"]
    assert rows[1]["error"] == "data.root: vanished"
    assert rows[2]["error"].startswith("RuntimeError: boom (traceback in ")
    assert "RuntimeError: boom" in (out / rows[2]["run"] / "error.txt").read_text()
    assert rows[3]["error"] == "deadlock: learner 0 waits forever"
    assert rows[4]["cumulative_loss"] and not rows[1]["cumulative_loss"]
    printed = capsys.readouterr()
    assert f"failed: {rows[1]['run']}: data.root: vanished" in printed.out
    assert f"resume: netfl sweep {path} --out {out}" in printed.err

    failing.clear()
    assert sweep_cli(path, out) == 0
    assert [r["status"] for r in table(out)] == ["completed"] * 5
    assert (out / ".attempts" / f"{rows[2]['run']}.1" / "error.txt").is_file()


def test_ctrl_c_stops_the_sweep_and_the_table_says_so(tmp_path, capsys, failing):
    failing[1] = KeyboardInterrupt()
    path, out = sweep_file(tmp_path, [0, 1, 2]), tmp_path / "out"
    assert sweep_cli(path, out) == 130
    assert [r["status"] for r in table(out)] == ["completed", "interrupted", "pending"]
    console = capsys.readouterr().out.splitlines()
    assert [line.split()[-1] for line in console[2:5]] == ["completed", "interrupted", "pending"]
    failing.clear()
    assert sweep_cli(path, out) == 0
    assert [r["status"] for r in table(out)] == ["completed"] * 3


def test_sigterm_stops_the_sweep_with_exit_143(tmp_path, monkeypatch):
    real = netfl.run.run

    def run(scenario, out=None, *, progress=True):
        if scenario.seed == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # as Slurm does at the time limit
        return real(scenario, out, progress=progress)

    monkeypatch.setattr(netfl.run, "run", run)
    out = tmp_path / "out"
    assert sweep_cli(sweep_file(tmp_path, [0, 1, 2]), out) == 143
    assert [r["status"] for r in table(out)] == ["completed", "interrupted", "pending"]


def test_worker_processes_give_the_serial_results(tmp_path, capsys):
    scenarios = sweep.expand({"base": TINY, "grid": {"seed": [0, 1]}})
    serial = run_sweep(scenarios, tmp_path / "serial", workers=1)
    parallel = run_sweep(scenarios, tmp_path / "parallel", workers=2)
    assert "2 to run (2 worker processes)" in capsys.readouterr().err
    assert [r["status"] for r in parallel] == ["completed"] * 2
    for a, b in zip(serial, parallel):
        assert {**a, "wall_time_s": 0} == {**b, "wall_time_s": 0}
        assert (tmp_path / "serial" / a["run"] / "metrics.csv").read_bytes() == \
            (tmp_path / "parallel" / b["run"] / "metrics.csv").read_bytes()


def test_a_sweep_directory_is_never_clobbered(tmp_path, capsys):
    path = sweep_file(tmp_path, [0])
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("keep")
    assert sweep_cli(path, notes) == 2
    assert "holds no sweep (sweep.csv); choose another --out" in capsys.readouterr().err
    assert sweep_cli(path, notes / "mine.txt") == 2
    assert "is not a directory" in capsys.readouterr().err
    assert [p.name for p in notes.iterdir()] == ["mine.txt"]

    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    with (out / ".sweep.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another sweep holds it
        with pytest.raises(OutputError, match="another sweep is running into this directory"):
            run_sweep(sweep.load(path), out)
    assert not (out / "sweep.csv").exists()


def test_engine_ray_without_ray_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    out = tmp_path / "out"
    assert main(["sweep", str(sweep_file(tmp_path, [0])), "--out", str(out),
                 "--engine", "ray"]) == 2
    assert capsys.readouterr().err == f"error: {RAY_MISSING}\n"
    assert not out.exists()


def test_the_fork_server_preloads_what_a_run_imports():
    """A module the fork server cannot import is skipped without a word (multiprocessing
    ignores the ImportError), leaving each worker to import it on its first run."""
    import importlib.util

    from netfl.workers import RUN_IMPORTS, _preload

    names = _preload()
    assert names[:len(RUN_IMPORTS)] == list(RUN_IMPORTS)
    assert len(names) == len(set(names))
    assert all(importlib.util.find_spec(name) is not None for name in RUN_IMPORTS)
    ours = {name for name, module in sys.modules.items()
            if name.startswith("netfl.") and getattr(module, "__spec__", None) is not None}
    assert ours <= set(names)
    assert not any(name.endswith("__main__") for name in names)


def test_the_fork_server_starts_before_the_sweep_is_loaded(tmp_path, monkeypatch):
    from multiprocessing import forkserver

    import netfl.workers

    calls: list[object] = []
    monkeypatch.setattr(forkserver, "ensure_running", lambda: calls.append("server"))
    netfl.workers.start_workers(1)
    assert calls == []  # one worker: the runs go in this process
    netfl.workers.start_workers(2)
    assert calls == ["server"]

    calls.clear()
    monkeypatch.setattr(netfl.workers, "start_workers", lambda n: calls.append(("early", n)))
    real_load = sweep.load
    monkeypatch.setattr(sweep, "load", lambda *a: calls.append("load") or real_load(*a))
    path, out = sweep_file(tmp_path, [0]), tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--quiet", "--workers", "3"]) == 0
    assert calls == [("early", 3), "load"]  # early: before netfl.api's imports, once
    calls.clear()
    assert main(["sweep", str(path), "--dry-run", "--workers", "3"]) == 0
    assert calls == ["load"]
