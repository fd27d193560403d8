"""Sweeps expand and validate before running; plots come from real run directories."""

from __future__ import annotations

import pytest
import yaml

from netfl import sweep
from netfl.cli import main
from netfl.plots import PlotError, load_run, plot_runs
from netfl.scenario import ScenarioError

from .conftest import BASE, merge


def test_expand_runs_cross_grid():
    spec = {"name": "s", "base": BASE, "grid": {"seed": [0, 1]},
            "runs": [{"protocol": {"name": "periodic", "b": 2}},
                     {"protocol": {"name": "dynamic", "delta": 0.5}},
                     {"protocol": {"name": "nosync", "b": 3}}]}
    with pytest.raises(ScenarioError, match=r"runs\[2\] \(seed=0,protocol=nosync,b=3\): "
                                            r"protocol.b: unknown key"):
        sweep.expand(spec)
    spec["runs"][2] = {"protocol.name": "nosync"}  # a new name: periodic's b does not leak
    scenarios = sweep.expand(spec)
    assert len(scenarios) == 6
    assert [s.seed for s in scenarios] == [0, 1, 0, 1, 0, 1]
    assert scenarios[0].protocol.b == 2 and scenarios[2].protocol.delta == 0.5
    assert len({s.name for s in scenarios}) == 6
    assert scenarios[0].learners.count == BASE["learners"]["count"]


@pytest.mark.parametrize("spec, needle", [
    ({"runs": []}, "needs a 'base'"),
    ({"base": BASE, "grid": {"seed": 3}}, "grid"),
    ({"base": BASE, "gird": {}}, "gird: unknown key"),
])
def test_bad_sweeps(spec, needle):
    with pytest.raises(ScenarioError, match=needle):
        sweep.expand(spec)


def test_sweep_command_runs_every_setting_and_plots(tmp_path, capsys):
    spec = {"name": "mini", "base": merge(BASE, {"horizon": {"rounds": 10}}),
            "runs": [{"protocol": {"name": "periodic", "b": 5}}, {"protocol": {"name": "nosync"}}]}
    path = tmp_path / "mini.sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--quiet", "--workers", "1"]) == 0
    table = (out / "sweep.csv").read_text().splitlines()
    assert len(table) == 3 and table[0].startswith("run,protocol,setting,cumulative_loss")
    runs = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(runs) == 2
    capsys.readouterr()
    assert main(["plot", *map(str, runs), "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "tradeoff.png").read_bytes()[:4] == b"\x89PNG"
    assert all((r / "curves.png").is_file() for r in runs)
    run = load_run(runs[0])
    assert len(run["rows"]) == 10


def test_plot_rejects_a_non_run(tmp_path, capsys):
    with pytest.raises(PlotError, match="not a run directory"):
        plot_runs([str(tmp_path)])
    assert main(["plot", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
