"""Scenario schema: defaults, units, and errors that name the key path."""

from __future__ import annotations

import pytest

from netfl.scenario import ScenarioError, from_dict, load


def error_of(data) -> str:
    with pytest.raises(ScenarioError) as info:
        from_dict(data)
    return str(info.value)


def test_defaults_are_filled_in():
    s = from_dict({})
    assert s.learners.count == 4
    assert s.protocol.name == "periodic" and s.protocol.b == 10
    assert s.horizon.rounds == 100
    assert s.network.bandwidth == 100e6


def test_human_units():
    s = from_dict({
        "network": {"bandwidth": "10 Mbit/s", "latency": "20 ms",
                    "links": [{"u": 0, "v": 1, "bandwidth": "1 Gbps", "latency": "1.5 ms"}]},
        "learners": {"compute_time": "250 ms"},
        "horizon": {"sim_time": "2 min"},
    })
    assert s.network.bandwidth == 10e6
    assert s.network.latency == pytest.approx(0.02)
    assert s.network.links[0].bandwidth == 1e9
    assert s.network.links[0].latency == pytest.approx(0.0015)
    assert s.learners.compute_time.mean == pytest.approx(0.25)
    assert s.horizon.sim_time == 120


@pytest.mark.parametrize("data, expected", [
    ({"netwrk": {}}, "netwrk: unknown key"),
    ({"network": {"bandwidth": -5}}, "network.bandwidth: Input should be greater than 0, got -5"),
    ({"network": {"bandwidth": "fast"}}, "network.bandwidth: expected a bit rate"),
    ({"network": {"links": [{"u": 0, "v": 1, "latency": "soon"}]}},
     "network.links[0].latency: expected a duration"),
    ({"protocol": {"name": "periodic", "b": 0}}, "protocol.b: Input should be greater than"),
    ({"protocol": {"name": "gossipy"}}, "protocol: unknown protocol 'gossipy'"),
    ({"protocol": {"b": 2, "fraction": 0.5}}, "protocol.fraction: unknown key"),
    ({"protocol": {"name": "fedavg", "fraction": 1.5}}, "protocol.fraction"),
    ({"protocol": {"name": "periodic", "C": 0.1}}, "protocol.C: unknown key"),
    ({"learners": {"count": 0}}, "learners.count"),
    ({"learners": {"compute_time": {"dist": "uniform", "low": 0.1}}},
     "learners.compute_time: uniform compute_time needs low and high"),
    ({"data": {"dataset": "mnist"}}, "data: dataset mnist reads local files: set data.root"),
    ({"data": {"partition": "by-magic"}}, "data.partition"),
    ({"model": {"hidden": [64, 0]}}, "model.hidden[1]"),
    ({"network": {"loss": 1.0}}, "network.loss"),
])
def test_errors_name_the_key_path(data, expected):
    assert expected in error_of(data)


def test_several_errors_are_listed_together():
    message = error_of({"learners": {"count": -1}, "optimizer": {"lr": 0}})
    assert "learners.count" in message and "optimizer.lr" in message


def test_overrides_apply_before_validation():
    s = from_dict({}, overrides=["protocol.b=4", "learners.count=7", "network.latency=1 ms"])
    assert (s.protocol.b, s.learners.count, s.network.latency) == (4, 7, 0.001)
    with pytest.raises(ScenarioError, match="protocol.b"):
        from_dict({}, overrides=["protocol.b=-1"])


def test_load_reports_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("learners: {count: 3\n")
    with pytest.raises(ScenarioError, match=r"bad.yaml: not valid YAML \(line"):
        load(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ScenarioError, match="top level must be a mapping"):
        load(listing)


def test_name_defaults_to_file_stem(tmp_path):
    path = tmp_path / "my-experiment.yaml"
    path.write_text("seed: 5\n")
    assert load(path).name == "my-experiment"


def test_yaml_reads_on_yes_no_as_strings_and_true_false_as_booleans(tmp_path):
    """YAML 1.2 booleans: `eval: {on: test}` means the key "on", not True."""
    path = tmp_path / "s.yaml"
    path.write_text("eval:\n  on: train\n  local: false\nprotocol: {name: periodic, wait: true}\n")
    sc = load(path)
    assert sc.eval.on == "train" and sc.eval.local is False and sc.protocol.wait is True
