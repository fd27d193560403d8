"""The Python API: netfl.load, netfl.simulate, Result's DataFrames, the observer interface."""

from __future__ import annotations

import io
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

import netfl
from netfl.build import build
from netfl.cli import main
from netfl.observers import Tables
from netfl.scenario import ScenarioError

from .conftest import BASE, merge

SMALL = merge(BASE, {"learners": {"count": 3}, "horizon": {"rounds": 6}, "eval": {"every": 3}})
FULL = merge(SMALL, {
    "output": {"per_learner": True, "messages": True},
    "network": {"failures": [{"link": [0, 1], "at": "0.045 s", "for": "0.01 s"}]},
})


def written(frame: pd.DataFrame) -> pd.DataFrame:
    """A table as read back from its CSV text (how a run directory's file reads)."""
    return pd.read_csv(io.StringIO(frame.to_csv(index=False)))


# ------------------------------------------------------------------------------- load


def test_load_from_a_path_and_from_a_dict_with_overrides(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    from_path = netfl.load(path, overrides={"protocol.b": 2, "network.latency": "7 ms"})
    from_dict = netfl.load(SMALL, overrides=["protocol.b=2", "network.latency=7 ms"])
    assert isinstance(from_path, netfl.Scenario)
    assert from_path.resolved() == from_dict.resolved()
    assert from_path.protocol.b == 2 and from_path.network.latency == pytest.approx(0.007)
    assert SMALL["protocol"]["b"] == 5  # the caller's dict is never changed
    assert netfl.load(from_path, overrides={"seed": 9}).seed == 9


def test_load_reports_the_key_path():
    with pytest.raises(ScenarioError, match=r"learners\.count"):
        netfl.load(SMALL, overrides={"learners.count": 0})
    with pytest.raises(ScenarioError, match="expected a path, a dict or a Scenario"):
        netfl.load(3)


def test_import_netfl_stays_light():
    code = "import sys, netfl; print('torch' in sys.modules, 'pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.split() == ["False", "False"]


# --------------------------------------------------------------------------- simulate


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The FULL scenario through `netfl run` and through netfl.simulate without a directory."""
    base = tmp_path_factory.mktemp("api")
    path = base / "s.yaml"
    path.write_text(yaml.safe_dump(FULL))
    assert main(["run", str(path), "--out", str(base / "run"), "--quiet"]) == 0
    return base / "run", netfl.simulate(netfl.load(path))


@pytest.mark.parametrize("table", ["metrics", "learners", "events", "messages"])
def test_simulate_tables_equal_what_netfl_run_writes(both, table):
    run_dir, result = both
    on_disk = pd.read_csv(run_dir / f"{table}.csv")
    assert len(on_disk) > 0
    pd.testing.assert_frame_equal(written(getattr(result, table)), on_disk)


def test_simulate_summary_equals_netfl_runs(both):
    import json

    run_dir, result = both
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert result.run_dir is None and "run_dir" not in result.summary
    skip = {"wall_time_s", "run_dir"}
    assert {k: v for k, v in on_disk.items() if k not in skip} == \
        {k: v for k, v in result.summary.items() if k not in skip}
    assert result.status == "completed" and len(result.metrics) == 6
    assert result.events["event"].tolist() == ["link_down", "link_up"]
    assert len(result.learners) == 6 * 3


def test_simulate_with_out_writes_the_run_directory_and_probe_tables(tmp_path):
    probes = {"parameters": {"replicas": 3, "every": 3, "estimators": ["gaussian"], "dims": 1}}
    s = netfl.load(merge(SMALL, {"probes": probes}))
    result = netfl.simulate(s, out=tmp_path / "run")
    assert result.run_dir == tmp_path / "run"
    assert result.summary["run_dir"] == str(tmp_path / "run")
    assert set(result.probes) == {"probes_parameters"}
    on_disk = pd.read_csv(tmp_path / "run" / "probes_parameters.csv")
    pd.testing.assert_frame_equal(written(result.probes["probes_parameters"]), on_disk)
    assert on_disk["round"].tolist() == [3, 3, 3, 6, 6, 6]  # 3 learner pairs at rounds 3, 6
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "links.csv", "metrics.csv", "probes_parameters.csv", "scenario.yaml", "summary.json"]


def test_out_none_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = netfl.simulate(netfl.load(merge(SMALL, {"output": {"messages": True}})))
    assert list(tmp_path.iterdir()) == []
    assert len(result.metrics) == 6 and len(result.messages) > 0
    assert result.learners.columns.tolist() == ["round", "learner", "sim_time_s", "loss"]
    assert result.learners.empty  # output.per_learner is off


# -------------------------------------------------------------------------- observers


class Log(netfl.Observer):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_start(self, sim):
        self.calls.append(("start",))

    def on_round(self, sim, row):
        self.calls.append(("round", row["round"]))

    def on_message(self, sim, row):
        self.calls.append(("message", row["kind"], row["round"]))

    def on_upload(self, sim, learner, update):
        assert update.shape == (sim.bank.num_params,)
        self.calls.append(("upload", learner))

    def on_end(self, sim, summary):
        self.calls.append(("end", summary["status"]))


def test_observers_see_start_rounds_messages_and_end_in_order():
    log = Log()
    result = netfl.simulate(netfl.load(SMALL, overrides={"protocol.b": 3}), observers=[log])
    # b=3: the 3 uploads go before round 3's row (the learners finished round 3), then the
    # 3 models up and 3 broadcasts down arrive (5 ms links) before anyone starts round 4
    sync = [*(("upload", i) for i in range(3))]
    delivered = [*(("message", "model", 0) for _ in range(3)),
                 *(("message", "broadcast", 0) for _ in range(3))]
    at = [(c[0], c[1], 0) if c[0] == "message" else c for c in log.calls]
    assert at == [("start",), ("round", 1), ("round", 2), *sync, ("round", 3), *delivered,
                  ("round", 4), ("round", 5), *sync, ("round", 6), *delivered,
                  ("end", "completed")]
    assert [c[2] for c in log.calls if c[0] == "message"] == [3] * 6 + [6] * 6
    assert result.summary["messages"] == 12


def test_upload_is_the_update_the_uplink_codec_codes():
    updates: list[torch.Tensor] = []
    local: list[torch.Tensor] = []

    class Keep(netfl.Observer):
        def on_upload(self, sim, learner, update):
            if learner == 0:
                updates.append(update.clone())

        def on_round(self, sim, row):  # at a sync round the local models are not yet averaged
            local.append(sim.bank.flat()[0].clone())

    s = netfl.load(SMALL, overrides={"protocol.b": 3, "horizon.rounds": 3})
    sim = build(s, observers=[Keep()]).simulation
    start = sim.bank.flat()[0].clone()  # base 0: the model every learner starts from
    sim.run()
    assert len(updates) == 1  # one synchronization, after round 3
    torch.testing.assert_close(updates[0], local[2] - start, rtol=0, atol=0)
    assert updates[0].abs().sum() > 0


def test_no_message_callback_unless_someone_listens():
    s = netfl.load(SMALL)
    quiet = build(s, observers=[Tables(messages=False)]).simulation
    assert quiet.network.on_message is None
    quiet.observers.append(Log())
    assert quiet.network.on_message is not None
    with pytest.raises(TypeError, match="netfl.Observer"):
        quiet.observers.append(lambda sim, row: None)


def test_simulate_refuses_observers_of_the_wrong_type():
    with pytest.raises(TypeError, match="observers"):
        netfl.simulate(netfl.load(SMALL), observers=[print])


def test_simulate_passes_a_model_and_a_dataset_through():
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    result = netfl.simulate(netfl.load(SMALL), model=model, dataset=(x, y))
    assert result.status == "completed" and len(result.metrics) == 6
    assert result.summary["final_accuracy"] is not None
