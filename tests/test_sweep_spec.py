"""Sweep files as a Hydra user writes them: a base file, kinds replaced whole, `~key`
deletions, named runs, directories named from the swept values and a hash, and every
invalid run reported before anything runs."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import yaml

from netfl import sweep
from netfl.cli import main
from netfl.scenario import ScenarioError

from .conftest import BASE, merge


def tiny(**changes):
    return merge(BASE, {"learners": {"count": 2}, "horizon": {"rounds": 2},
                        "model": {"kind": "linear", "hidden": []}, "eval": {"every": 1},
                        **changes})


def write(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def resolved(scenarios, key: str) -> list:
    return [sweep.lookup(s.resolved(), key) for s in scenarios]


def test_a_different_generator_replaces_the_topology_whole():
    base = tiny(learners={"count": 4},
                network={"topology": {"generator": "hierarchy", "params": {"switches": 2}}})
    scenarios = sweep.expand({"base": base, "grid": {
        "network.topology.generator": ["hierarchy", "star"]}})
    assert resolved(scenarios, "network.topology") == [
        {"generator": "hierarchy", "n": None, "params": {"switches": 2}},
        {"generator": "star", "n": None, "params": {}}]
    # the same kind merges: n joins the hierarchy's params; a file replaces a generator
    scenarios = sweep.expand({"base": base, "runs": [
        {"network": {"topology": {"n": 7}}},
        {"network.topology.params": {}},  # an empty mapping clears
        {"network": {"topology": "topologies/abilene.yaml"}}]})
    assert resolved(scenarios, "network.topology") == [
        {"generator": "hierarchy", "n": 7, "params": {"switches": 2}},
        {"generator": "hierarchy", "n": None, "params": {}},
        {"file": "topologies/abilene.yaml"}]


def test_a_run_and_a_grid_value_combine_unless_the_grid_changes_the_kind():
    spec = {"base": tiny(), "grid": {"network.topology.generator": ["ring", "hierarchy"]},
            "runs": [{"network": {"topology": {"n": 5}}},
                     {"network": {"topology": {"generator": "hierarchy",
                                               "params": {"switches": 2}}}}]}
    assert resolved(sweep.expand(spec), "network.topology") == [
        {"generator": "ring", "n": 5, "params": {}},
        {"generator": "hierarchy", "n": 5, "params": {}},
        {"generator": "ring", "n": None, "params": {}},  # the run's hierarchy params stay out
        {"generator": "hierarchy", "n": None, "params": {"switches": 2}}]


def test_protocols_and_codecs_are_replaced_when_their_name_changes():
    base = tiny(protocol={"name": "dynamic", "delta": 0.5, "b": 5},
                compression={"uplink": {"name": "topk", "k": 10}})
    scenarios = sweep.expand({"base": base, "runs": [
        {"protocol": {"delta": 0.1}},
        {"protocol": {"name": "periodic"}},
        {"protocol.name": "nosync"},
        {"compression": {"uplink": {"k": 20}}},
        {"compression.uplink.name": "qsgd"},  # topk's k would fail qsgd at build time
        {"compression": {"uplink": "fp16"}}]})
    protocols = [(s.protocol.name, getattr(s.protocol, "b", None),
                  getattr(s.protocol, "delta", None)) for s in scenarios]
    assert protocols[:3] == [("dynamic", 5, 0.1), ("periodic", 10, None), ("nosync", None, None)]
    assert resolved(scenarios, "compression.uplink")[3:] == [
        {"name": "topk", "k": 20}, {"name": "qsgd"}, {"name": "fp16"}]


def test_tilde_deletes_a_key_and_names_what_is_missing():
    base = tiny(compression={"uplink": {"name": "topk", "k": 10}}, seed=7)
    scenarios = sweep.expand({"base": base, "runs": [
        {"~compression.uplink": None}, {"compression": {"~uplink": None}, "~seed": None}]})
    assert resolved(scenarios, "compression.uplink") == [None, None]
    assert [s.seed for s in scenarios] == [7, 0]  # deleted: the default
    assert scenarios[0].name.startswith("uplink=default-")
    with pytest.raises(ScenarioError, match=r"runs\[1\] \(seeed=default\): ~seeed: is not set"):
        sweep.expand({"base": base, "runs": [{}, {"~seeed": None}]})
    with pytest.raises(ScenarioError, match=r"~seed: deletes the key and takes no value"):
        sweep.expand({"base": base, "runs": [{"~seed": 3}]})
    with pytest.raises(ScenarioError, match=r"grid: ~key deletes a key"):
        sweep.expand({"base": base, "grid": {"~seed": [1]}})


def test_run_directories_are_named_from_swept_values_and_a_hash():
    spec = {"name": "s", "base": tiny(), "grid": {"network.topology": [
        {"generator": "ring"}, "topologies/abilene.yaml"]},
        "runs": [{"protocol": {"name": "gossip", "b": 2}}, {"name": "my baseline"},
                 {"network.bandwidth": "1 Mbit/s", "model": {"kind": "mlp", "hidden": [3, 4]}}]}
    names = [s.name.rsplit("-", 1)[0] for s in sweep.expand(spec)]
    assert names == [
        "topology=ring,protocol=gossip,b=2", "topology=abilene,protocol=gossip,b=2",
        "topology=ring,my_baseline", "topology=abilene,my_baseline",
        "topology=ring,bandwidth=1_Mbit_s,kind=mlp,hidden=3+4",
        "topology=abilene,bandwidth=1_Mbit_s,kind=mlp,hidden=3+4"]
    hashes = [s.name.rsplit("-", 1)[1] for s in sweep.expand(spec)]
    assert len(set(hashes)) == 6 and all(len(h) == 8 for h in hashes)
    # the hash is the resolved scenario's, without output.dir and name: stable across those
    moved = dict(spec, name="t", base={**tiny(), "name": "x", "output": {"dir": "elsewhere"}})
    assert [s.name for s in sweep.expand(moved)] == [s.name for s in sweep.expand(spec)]
    changed = dict(spec, base=tiny(seed=99))
    assert not {s.name for s in sweep.expand(changed)} & {s.name for s in sweep.expand(spec)}


def test_run_names_must_be_plain_and_runs_distinct():
    with pytest.raises(ScenarioError, match=r"runs\[0\].name: must be a plain name"):
        sweep.expand({"base": tiny(), "runs": [{"name": "../up"}]})
    with pytest.raises(ScenarioError, match=r"runs\[1\] \(b=5\): the same scenario as runs\[0\]"):
        sweep.expand({"base": tiny(), "runs": [{"protocol.b": 5}, {"protocol.b": 5}]})


def test_base_may_be_a_scenario_file_beside_the_sweep(tmp_path):
    (tmp_path / "conf" / "nets").mkdir(parents=True)
    write(tmp_path / "conf" / "nets" / "pair.yaml",
          {"links": [{"u": 0, "v": 1}, {"u": 0, "v": 2}]})
    write(tmp_path / "conf" / "base.yaml",
          tiny(name="base", network={"topology": "nets/pair.yaml"}))
    path = write(tmp_path / "grid.sweep.yaml",
                 {"base": "conf/base.yaml", "grid": {"seed": [0, 1]}})
    scenarios = sweep.load(path, ["learners.count=2", "~eval"])
    assert scenarios.name == "grid" and [s.seed for s in scenarios] == [0, 1]
    assert scenarios[0].network.topology.file == str(tmp_path / "conf" / "nets" / "pair.yaml")
    assert scenarios[0].eval.every == 10  # ~eval: the defaults
    write(path, {"base": "conf/nope.yaml"})
    with pytest.raises(ScenarioError, match=r"base: .*nope.yaml: no such scenario file"):
        sweep.load(path)
    write(path, {"base": 3})
    with pytest.raises(ScenarioError, match="base: expected a scenario mapping or the path"):
        sweep.load(path)


def test_every_invalid_run_is_reported_before_anything_runs(tmp_path, capsys):
    path = write(tmp_path / "bad.sweep.yaml", {"base": tiny(), "runs": [
        {"protocol": {"name": "periodic", "b": 2}},
        {"protocol": {"name": "dynamic", "delta": -1}},  # schema
        {"network": {"topology": {"generator": "ring", "n": 2}}},  # build time
        {"network": {"links": [{"u": 0, "v": 9, "bandwidth": "1 Mbit/s"}]}}]})  # build time
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[0] == f"error: {path}: 3 of 4 runs are invalid; nothing was run:"
    assert "runs[1] (protocol=dynamic,delta=-1)" in lines[1] and "protocol.delta" in lines[1]
    assert "runs[2] (topology=ring,n=2)" in err and "runs[3] (links=" in err
    assert "Traceback" not in err and not out.exists()


def test_the_build_check_is_netfl_validation_check(tmp_path, monkeypatch):
    seen = []

    def check(scenario):
        seen.append(scenario.seed)
        if scenario.seed == 1:
            raise ScenarioError("data.root: no such folder")

    monkeypatch.setitem(sys.modules, "netfl.validation", types.SimpleNamespace(check=check))
    with pytest.raises(ScenarioError, match=r"1 of 2 runs .*\n  seed=1: data.root: no such"):
        sweep.expand({"base": tiny(), "grid": {"seed": [0, 1]}})
    assert seen == [0, 1]
    assert len(sweep.expand({"base": tiny(), "grid": {"seed": [0, 1]}}, check=False)) == 2


def test_dry_run_lists_the_runs(tmp_path, capsys):
    path = write(tmp_path / "d.sweep.yaml", {"base": tiny(), "grid": {"seed": [0, 1]}})
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split("-")[0] for line in out] == ["seed=0", "seed=1"]
    assert all(": periodic " in line for line in out)


def exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own errors
        return exc.code


@pytest.mark.parametrize("args, needle", [
    (["--address", "ray://x:10001"], "--address and --gpus-per-run need --engine ray"),
    (["--engine", "ray", "--workers", "2"], "--workers is for --engine local"),
    (["--workers", "0"], "expected a positive integer"),
    (["--engine", "ray", "--gpus-per-run", "-1"], "expected a number >= 0"),
])
def test_engine_options_are_checked(tmp_path, capsys, args, needle):
    path = write(tmp_path / "d.sweep.yaml", {"base": tiny()})
    assert exit_code(["sweep", str(path), "--out", str(tmp_path / "o"), *args]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
