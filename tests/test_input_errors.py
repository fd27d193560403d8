"""Bad input a user can write is refused at validate time with the key or file named."""

from __future__ import annotations

import math

import pytest

from netfl.cli import main
from netfl.scenario import ScenarioError, from_dict


@pytest.mark.parametrize("data, needle", [
    ({"name": "../../../escaped"}, "name: must be a plain name"),
    ({"name": "a/b"}, "name: must be a plain name"),
    ({"name": ".."}, "name: must be a plain name"),
    ({"learners": {"count": True}}, "learners.count: must be an integer, got True"),
    ({"horizon": {"rounds": False}}, "horizon.rounds: must be an integer"),
    ({"optimizer": {"lr": math.inf}}, "optimizer.lr: Input should be a finite number"),
    ({"learners": {"init_noise": math.inf}}, "learners.init_noise: Input should be a finite"),
    ({"learners": {"compute_time": math.inf}}, "learners.compute_time.mean: Input should be a"),
    ({"horizon": {"sim_time": math.inf}}, "horizon.sim_time: Input should be a finite"),
    ({"network": {"bandwidth": math.inf}}, "network.bandwidth: Input should be a finite"),
    ({"network": {"latency": math.nan}}, "network.latency: Input should be a finite"),
    ({"data": {"augment": {"noise": math.inf}}}, "data.augment.noise: Input should be a finite"),
])
def test_schema_refuses_with_the_key_path(data, needle):
    with pytest.raises(ScenarioError) as info:
        from_dict(data)
    assert needle in str(info.value)


@pytest.mark.parametrize("raw", [
    "name: caf\xe9\n".encode("latin-1"),
    "name: x\n".encode("utf-16"),
    bytes(range(256)),
])
@pytest.mark.parametrize("command", ["validate", "run", "sweep"])
def test_files_that_are_not_utf8_are_one_clear_error(tmp_path, capsys, raw, command):
    path = tmp_path / "s.yaml"
    path.write_bytes(raw)
    assert main([command, str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not UTF-8 text" in err and "Traceback" not in err


def test_a_diverged_run_stops_with_its_round_strict_json_and_exit_3(tmp_path):
    import json

    import yaml

    from .conftest import BASE, merge

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(merge(BASE, {
        "optimizer": {"lr": 1e6}, "model": {"kind": "mlp", "hidden": [64, 64]},
        "compression": {"uplink": {"name": "randk", "k": 10}},
        "probes": {"parameters": {"replicas": 3, "every": 5, "estimators": ["ksg"], "k": 1,
                                  "dims": 1}}})))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 3
    text = (tmp_path / "run" / "summary.json").read_text()
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    assert summary["status"] == "diverged" and summary["diverged_at_round"] >= 1
    assert "diverged" in summary["error"]


def test_a_sweep_records_a_diverged_run_and_goes_on(tmp_path):
    import csv

    import yaml

    from .conftest import BASE

    sweep = tmp_path / "sw.yaml"
    sweep.write_text(yaml.safe_dump({"name": "d", "base": BASE, "runs": [
        {"optimizer": {"lr": 1e6}, "model": {"kind": "mlp", "hidden": [64, 64]}},
        {"optimizer": {"lr": 0.1}}]}))
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "out"), "--quiet",
                 "--workers", "1"]) == 3
    with (tmp_path / "out" / "sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["status"] for r in rows] == ["diverged", "completed"]
