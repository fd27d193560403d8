"""`netfl validate` refuses what `netfl run` would, with the key path or file named."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from netfl.cli import main
from netfl.scenario import ScenarioError, from_dict, load
from netfl.validation import check, keyed

from .conftest import BASE, merge

GRAPHML = """<?xml version="1.0" encoding="UTF-8"?>
<graphml xmlns="http://graphml.graphdrawing.org/xmlns">
  <key id="bw" for="edge" attr.name="bandwidth" attr.type="double"/>
  <graph edgedefault="undirected">
    <node id="0"/><node id="1"/><node id="2"/>
    <edge source="0" target="1">{data}</edge><edge source="0" target="2"/>{extra}
  </graph>
</graphml>
"""


def _scenario_file(tmp_path, changes, name="s.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(merge(BASE, changes)))
    return path


def _error(capsys, argv) -> str:
    """The one-line error of a refused command (exit 2, no traceback)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


CASES = [  # (changes to BASE, text of the error), each refused by validate and by run
    ({"network": {"placement": [1, "nope"]}}, "network.placement: unknown node 'nope' (entry 1)"),
    ({"network": {"placement": [1, 2, 3, 4, 1]}}, "network.placement: expected 1 to 4 nodes"),
    ({"network": {"links": [{"u": 0, "v": 99, "bandwidth": 5}]}},
     "network.links[0]: link (0, 99): unknown node 99"),
    ({"network": {"coordinator": 42}}, "network.coordinator: unknown node 42"),
    ({"learners": {"count": 5000}}, "learners.count: 5000 learners"),
    ({"optimizer": {"name": "adam", "betas": [1.5, 0.999]}},
     "optimizer.betas[0]: Input should be less than 1"),
    ({"network": {"bandwidth": 1e-300}}, "network.bandwidth: Input should be greater than"),
    ({"network": {"latency": 1e300}}, "network.latency: Input should be less than or equal"),
    ({"network": {"tiers": {"access": {"latency": "1e9 s"}}}}, "network.tiers.access.latency"),
    ({"learners": {"tick": 1e-300}}, "learners.tick: Input should be greater than or equal"),
    ({"learners": {"compute_time": 1e-300}}, "learners.compute_time.mean: Input should be"),
    ({"horizon": {"sim_time": 1e300}}, "horizon.sim_time: Input should be less than or equal"),
    ({"data": {"batch_size": 10**9}}, "data.batch_size, learners.count, model.hidden: the bank"),
    ({"data": {"dataset": "gaussian_mixture", "params": {"n_samples": 10**10}}},
     "data.params.n_samples, data.params.n_features: generating the gaussian_mixture"),
    ({"data": {"dataset": "gaussian_mixture", "params": {"n_features": "many"}}},
     "data: gaussian_mixture: n_features must be an integer"),
    ({"data": {"dataset": "mnist", "root": "/no/such/dir"}}, "data: mnist: root directory"),
    ({"model": {"kind": "linear", "hidden": [4]}}, "model.hidden: kind 'linear' has no hidden"),
    ({"compression": {"uplink": {"name": "topk", "k": -1}}}, "compression.uplink: topk: k must"),
    ({"protocol": {"name": "hierarchical", "edges": [1, 77]}}, "protocol.edges: node 77 is not"),
    ({"probes": {"parameters": {"replicas": 3, "dims": 1, "estimators": ["ksg"], "k": 1}},
      "learners": {"count": 1}}, "probes.parameters: needs at least 2 learners"),
]


@pytest.mark.parametrize("changes, needle", CASES)
def test_validate_and_run_refuse_alike_naming_the_key(tmp_path, capsys, changes, needle):
    path = _scenario_file(tmp_path, changes)
    err = _error(capsys, ["validate", str(path)])
    assert needle in err, err
    run_err = _error(capsys, ["run", str(path), "--out", str(tmp_path / "run"), "--quiet"])
    # run reports a component's own wording (validate leads it with the scenario key)
    assert needle in run_err or needle.split(": ", 1)[1] in run_err


def test_check_is_the_api_sweeps_call(tiny):
    check(tiny())  # a good scenario passes, silently
    with pytest.raises(ScenarioError, match="network.placement: unknown node 9"):
        check(tiny(network={"placement": [9]}))


def test_a_disconnected_network_names_the_key(tmp_path, capsys):
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump({"links": [{"u": 0, "v": 1}, {"u": 2, "v": 3}]}))
    scenario = _scenario_file(tmp_path, {"network": {"topology": str(path)},
                                         "learners": {"count": 2}})
    err = _error(capsys, ["validate", str(scenario)])
    assert f"{path}: network is disconnected: 2 components" in err
    generated = _scenario_file(tmp_path, {"network": {"topology": {
        "generator": "erdos_renyi", "n": 6, "params": {"p": 0.01, "connected": False}}}}, "g.yaml")
    if main(["validate", str(generated)]) == 2:  # the generator may refuse the parameter
        err = capsys.readouterr().err
        assert err.startswith("error: network.topology")


@pytest.mark.parametrize("data, extra, needle", [
    ('<data key="bw">NaN</data>', "", "link (0, 1): bandwidth must be > 0"),
    ('<data key="bw">1e-300</data>', "", "link (0, 1): bandwidth must be > 0 and finite"),
    ("", '<edge source="2" target="2"/>', "link (2, 2) is a self-loop"),
])
def test_a_bad_topology_file_is_named(tmp_path, capsys, data, extra, needle):
    graph = tmp_path / "g.graphml"
    graph.write_text(GRAPHML.format(data=data, extra=extra))
    path = _scenario_file(tmp_path, {"network": {"topology": str(graph)},
                                     "learners": {"count": 2}})
    err = _error(capsys, ["validate", str(path)])
    assert f"{graph}: {needle}" in err


def test_set_without_a_key_says_so(capsys):
    err = _error(capsys, ["validate", "scenarios/quickstart.yaml", "--set", "=3"])
    assert "--set =3: expected key.path=value" in err and "top level" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_device_is_refused_by_validate(tmp_path, capsys):
    err = _error(capsys, ["validate", str(_scenario_file(tmp_path, {"device": "cuda"}))])
    assert "device: cuda requested but no CUDA device is available" in err


def test_an_alias_bomb_is_refused_naming_the_file(tmp_path, capsys):
    lines = ["data:", "  params:", '    a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"    a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    err = _error(capsys, ["validate", str(path)])
    assert f"{path}: refused: its aliases expand to more than 1,000,000 nodes" in err
    loop = tmp_path / "loop.yaml"
    loop.write_text("data: {params: &p {a: [*p]}}\n")
    assert "infinite expansion" in _error(capsys, ["validate", str(loop)])


def test_a_few_aliases_still_work(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("name: ok\nmodel: {hidden: &w [8]}\ndata: {params: {}}\n"
                    "network: {placement: *w}\n")
    scenario = load(path)
    assert scenario.model.hidden == [8] and scenario.network.placement == [8]


def test_plot_refuses_a_file_as_out_and_a_truncated_summary(tmp_path, capsys):
    run_dir = tmp_path / "run"
    path = _scenario_file(tmp_path, {"horizon": {"rounds": 2}, "eval": {"every": 1}})
    assert main(["run", str(path), "--out", str(run_dir), "--quiet"]) == 0
    capsys.readouterr()
    target = tmp_path / "a_file"
    target.write_text("")
    assert "--out " + str(target) + ": is a file" in _error(
        capsys, ["plot", str(run_dir), "--out", str(target)])
    summary = run_dir / "summary.json"
    summary.write_text(summary.read_text()[:40])
    assert "summary.json: not valid JSON" in _error(capsys, ["plot", str(run_dir)])
    with pytest.raises(json.JSONDecodeError):
        json.loads(summary.read_text())


@pytest.mark.parametrize("message, section, expected", [
    ("m: 9 learners need more", "data", "learners.count: 9 learners need more"),
    ("hidden: kind 'linear' has none", "model", "model.hidden: kind 'linear' has none"),
    ("mnist: root directory not found", "data", "data: mnist: root directory not found"),
    ("/x/g.graphml: link (0, 1) bad", "network.topology", "/x/g.graphml: link (0, 1) bad"),
    ("network.placement: unknown", "network.topology", "network.placement: unknown"),
])
def test_component_messages_are_led_by_the_scenario_key(message, section, expected):
    assert keyed(message, section) == expected


def test_non_finite_numbers_stay_refused():
    with pytest.raises(ScenarioError, match="horizon.sim_time"):
        from_dict({"horizon": {"sim_time": math.inf}})
