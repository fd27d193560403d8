"""The command line as a user meets it: exit codes, messages, run directories."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from netfl import results
from netfl.cli import main
from netfl.results import SUMMARY_KEYS

from .conftest import BASE, merge


def write(tmp_path, data, name="s.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_validate_prints_resolved_scenario(tmp_path, capsys):
    path = write(tmp_path, {"learners": {"count": 3}, "network": {"latency": "20 ms"}})
    assert main(["validate", str(path)]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["learners"]["count"] == 3
    assert resolved["network"]["latency"] == 0.02
    assert resolved["protocol"] == {"name": "periodic", "b": 10, "wait": True, "deadline": None,
                                    "overcommit": 1.0, "mu": 0.0, "server_optimizer": None}


@pytest.mark.parametrize("data, needle", [
    ({"learners": {"count": "many"}}, "learners.count"),
    ({"unknown_section": 1}, "unknown_section: unknown key"),
    ({"network": {"topology": "nowhere.graphml"}}, "nowhere.graphml"),
    ({"data": {"dataset": "mnist", "root": "/no/such/dir"}}, "/no/such/dir"),
    ({"network": {"links": [{"u": 0, "v": 1, "bandwidth": "1 Mbit/s"}],
                  "topology": {"generator": "ring", "n": 5}, "coordinator": 99}}, "99"),
])
def test_user_errors_exit_2_with_one_message(tmp_path, capsys, data, needle):
    path = write(tmp_path, merge(BASE, data))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert err.startswith("error: ")


def test_console_script_bad_yaml_has_no_traceback(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("protocol: [unclosed\n")
    proc = subprocess.run([sys.executable, "-m", "netfl.cli", "validate", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "broken.yaml: not valid YAML" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_writes_run_directory(tmp_path, capsys):
    path = write(tmp_path, BASE)
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(summary)
    assert summary["status"] == "completed"
    assert summary["rounds"] == 20 and summary["learners"] == 4
    assert summary["bytes_total"] == summary["bytes_up"] + summary["bytes_down"] > 0
    assert 0 <= summary["final_accuracy"] <= 1
    rows = results.read_metrics(out)
    assert [int(r["round"]) for r in rows] == list(range(1, 21))
    assert float(rows[-1]["cumulative_loss"]) == pytest.approx(summary["cumulative_loss"])
    assert rows[9]["acc_mean_model"] != "" and rows[8]["acc_mean_model"] == ""
    assert yaml.safe_load((out / "scenario.yaml").read_text())["seed"] == BASE["seed"]
    assert (out / "links.csv").read_text().startswith("src_node,dst_node,bytes")


def test_set_overrides_reach_the_run(tmp_path):
    path = write(tmp_path, BASE)
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--quiet", "--set", "horizon.rounds=7",
                 "--set", "protocol={name: nosync}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 7 and summary["bytes_total"] == 0


def test_existing_results_are_never_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text("precious")
    path = write(tmp_path, BASE)
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == "precious"


def test_same_scenario_and_seed_give_identical_metrics(tmp_path):
    path = write(tmp_path, merge(BASE, {"protocol": {"name": "fedavg", "b": 4, "fraction": 0.5},
                                        "network": {"loss": 0.2}}))
    for name in ("a", "b"):
        assert main(["run", str(path), "--out", str(tmp_path / name), "--quiet"]) == 0
    assert (tmp_path / "a" / "metrics.csv").read_text() == \
        (tmp_path / "b" / "metrics.csv").read_text()
    other = tmp_path / "c"
    assert main(["run", str(path), "--out", str(other), "--quiet", "--set", "seed=4"]) == 0
    assert (other / "metrics.csv").read_text() != (tmp_path / "a" / "metrics.csv").read_text()


def test_interrupt_keeps_rows_and_writes_interrupted_summary(tmp_path, monkeypatch):
    original = results.Recorder.on_round

    def interrupt_at_round_8(self, sim, row):
        if row["round"] == 8:
            raise KeyboardInterrupt
        original(self, sim, row)

    monkeypatch.setattr(results.Recorder, "on_round", interrupt_at_round_8)
    path = write(tmp_path, BASE)
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 130
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert len(results.read_metrics(out)) == 7


def test_per_learner_rows(tmp_path):
    path = write(tmp_path, merge(BASE, {"output": {"per_learner": True}}))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    lines = (out / "learners.csv").read_text().splitlines()
    assert lines[0] == "round,learner,sim_time_s,loss"
    assert len(lines) == 1 + 20 * 4
