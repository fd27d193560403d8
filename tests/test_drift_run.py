"""Drifting streams inside a run: events recorded at the right round, with their time."""

from __future__ import annotations

import pytest

from netfl.build import build
from netfl.cli import main
from netfl.results import read_metrics
from netfl.scenario import ScenarioError, from_dict

from .conftest import BASE, merge


def drifting(**data):
    return merge(BASE, {"data": {"dataset": "graphical", "batch_size": 5, **data},
                        "model": {"kind": "mlp", "hidden": [8]},
                        "protocol": {"name": "nosync"}, "horizon": {"rounds": 12}})


def test_drift_events_at_listed_rounds():
    sim = build(from_dict(drifting(drift={"mode": "at", "rounds": [4, 9]}))).simulation
    sim.run()
    assert [(e["round"], e["concept_from"], e["concept_to"]) for e in sim.events] == \
        [(4, 0, 1), (9, 1, 2)]
    # recorded as round 3 ends, i.e. when the first round of the new concept starts
    assert sim.events[0]["sim_time_s"] == pytest.approx(0.03)
    assert sim.source.concept_at(2) == 0 and sim.source.concept_at(3) == 1


def test_events_csv_and_drift_counter(tmp_path):
    import yaml

    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump(drifting(drift={"mode": "at", "rounds": [5],
                                                   "kind": "gradual", "width": 3})))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    lines = (tmp_path / "run" / "events.csv").read_text().splitlines()
    assert lines == ["round,sim_time_s,event,kind,concept_from,concept_to,element",
                     "5,0.04,drift,gradual,0,1,"]
    rows = read_metrics(tmp_path / "run")
    assert [int(r["drifts"]) for r in rows][2:5] == [0, 1, 1]  # counted as round 4 ends


@pytest.mark.parametrize("data, needle", [
    ({"dataset": "digits", "drift": {"mode": "at", "rounds": [5]}}, "drift needs a drifting"),
    ({"dataset": "graphical", "drift": {"mode": "at"}}, "mode 'at' needs rounds"),
    ({"dataset": "graphical", "drift": {"mode": "random"}}, "needs p > 0"),
    ({"dataset": "graphical", "drift": {"mode": "at", "rounds": [1]}}, "data.drift.rounds[0]"),
])
def test_drift_config_errors(data, needle):
    with pytest.raises(ScenarioError) as info:
        from_dict(merge(BASE, {"data": data}))
    assert needle in str(info.value)
