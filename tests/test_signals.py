"""Runs that survive signals: SIGTERM as Ctrl-C, a second Ctrl-C, Ctrl-C while building.

Each case starts `netfl run` in a subprocess, waits for a file that says where the run is
(metrics.csv with rows, or a marker written by a build that never ends), then signals it:
deterministic, with every wait bounded.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .conftest import BASE, merge

LONG = merge(BASE, {"learners": {"count": 2}, "horizon": {"rounds": 1_000_000},
                    "eval": {"every": 1000}})

# `netfl run ARGS...`, optionally with a build that marks its start and then never ends
DRIVER = """
import pathlib, sys, time
import netfl.build
marker = pathlib.Path(sys.argv[1])
if sys.argv[2] == "hang":
    def building(*args, **kwargs):
        marker.write_text("building")
        while True:
            time.sleep(0.01)
    netfl.build.build = building
from netfl.cli import entry
sys.argv[1:] = sys.argv[3:]
entry()
"""


def start(tmp_path: Path, hang: bool = False) -> tuple[subprocess.Popen, Path, Path]:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(LONG))
    out, marker = tmp_path / "run", tmp_path / "marker"
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(marker), "hang" if hang else "run",
         "run", str(path), "--out", str(out), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    return proc, out, marker


def wait_for(condition, proc: subprocess.Popen, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"exited early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the run")
        time.sleep(0.02)


def metrics_rows(out: Path) -> int:
    try:
        return (out / "metrics.csv").read_text().count("\n") - 1
    except FileNotFoundError:
        return -1


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the run did not stop after the signal")
    return proc.returncode, stdout, stderr


@pytest.mark.parametrize("signals, code, by", [
    ([signal.SIGTERM], 143, "SIGTERM"),
    ([signal.SIGINT, signal.SIGINT], 130, "SIGINT"),  # the second 2 ms after the first
], ids=["sigterm", "double-sigint"])
def test_a_signalled_run_writes_an_interrupted_summary(tmp_path, signals, code, by):
    proc, out, _ = start(tmp_path)
    wait_for(lambda: metrics_rows(out) >= 3, proc)
    for i, signum in enumerate(signals):
        if i:
            time.sleep(0.002)
        os.kill(proc.pid, signum)
    rc, stdout, stderr = finish(proc)
    assert rc == code, stderr
    assert "Traceback" not in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["interrupted_by"] == by
    assert json.loads(stdout)["status"] == "interrupted"
    with (out / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert summary["rounds"] == len(rows) >= 3
    assert [int(r["round"]) for r in rows] == list(range(1, len(rows) + 1))
    assert sorted(p.name for p in out.iterdir()) == [
        "links.csv", "metrics.csv", "scenario.yaml", "summary.json"]


def test_ctrl_c_while_building_leaves_no_run_directory(tmp_path):
    signum, code = signal.SIGINT, 130  # SIGTERM takes the same path (SignalGuard)
    proc, out, marker = start(tmp_path, hang=True)
    wait_for(marker.exists, proc)
    assert [p.name for p in out.iterdir()] == [".netfl-run.lock"]  # claimed before building
    os.kill(proc.pid, signum)
    rc, _, stderr = finish(proc)
    assert rc == code
    assert stderr.strip() == f"error: interrupted ({signal.Signals(signum).name})"
    assert not out.exists()


def test_kill_9_loses_at_most_the_rows_after_the_last_flush(tmp_path):
    proc, out, _ = start(tmp_path)
    wait_for(lambda: metrics_rows(out) >= 3, proc)
    proc.kill()
    finish(proc)
    text = (out / "metrics.csv").read_text()
    assert text.endswith("\n")  # whole rows only: each is flushed as it is written
    rows = list(csv.DictReader(text.splitlines()))
    assert [int(r["round"]) for r in rows] == list(range(1, len(rows) + 1))
    assert not (out / "summary.json").exists()
