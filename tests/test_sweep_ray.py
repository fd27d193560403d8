"""`netfl sweep --engine ray`: the same runs as Ray tasks on a local Ray instance give the
serial results, and a resume through Ray skips what is done."""

from __future__ import annotations

import csv

import pytest
import yaml

from netfl import sweep
from netfl.cli import main
from netfl.sweep_exec import run_sweep

from .conftest import BASE, merge

ray = pytest.importorskip("ray")

TINY = merge(BASE, {"learners": {"count": 2}, "horizon": {"rounds": 2},
                    "model": {"kind": "linear", "hidden": []}, "eval": {"every": 1}})


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray instance for the module; run_sweep uses it and leaves it running."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


def test_ray_tasks_give_the_serial_results(tmp_path, capsys):
    spec = {"name": "r", "base": TINY, "grid": {"seed": [0, 1]}}
    path = tmp_path / "r.sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    serial = run_sweep(sweep.expand(spec), tmp_path / "serial", workers=1)
    out = tmp_path / "ray"
    assert main(["sweep", str(path), "--out", str(out), "--engine", "ray"]) == 0
    assert "2 to run (Ray)" in capsys.readouterr().err
    with (out / "sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["status"] for r in rows] == ["completed"] * 2
    for a, b in zip(serial, rows):
        assert a["run"] == b["run"] and float(a["cumulative_loss"]) == float(b["cumulative_loss"])
        assert (tmp_path / "serial" / a["run"] / "metrics.csv").read_bytes() == \
            (out / b["run"] / "metrics.csv").read_bytes()
    assert ray.is_initialized()  # the test's instance, not shut down by the sweep
    assert main(["sweep", str(path), "--out", str(out), "--engine", "ray"]) == 0
    assert "2 runs, 2 done already, 0 to run" in capsys.readouterr().err
