"""tools/gradient_stats.py records the uplink codec's input over a run."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import yaml

from .conftest import BASE, merge

TOOL = Path(__file__).resolve().parents[1] / "tools" / "gradient_stats.py"


def test_records_updates_and_writes_stats(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gradient_stats", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(merge(BASE, {"protocol": {"name": "periodic", "b": 2}})))
    assert tool.main([str(path), "--out", str(tmp_path / "out")]) == 0
    with (tmp_path / "out" / "layer_stats.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    layers = 4  # mlp [16]: weight and bias of two linear layers
    assert len(rows) == 10 * layers  # 20 rounds, an upload every 2
    assert {"beta", "scale", "excess_kurtosis", "w2_gennorm", "w2_normal", "w2_laplace"} <= \
        set(rows[0])
    assert "10 uploads of learner 0 recorded" in capsys.readouterr().out
    assert (tmp_path / "out" / "independence.csv").read_text().count("\n") == 1 + layers
