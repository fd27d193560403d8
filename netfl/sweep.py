"""Sweeps: one base scenario, many settings, one table.

A sweep file holds a `base` scenario and either a `grid` (every combination of
the listed values, by dotted key path) or a list of `runs` (each a set of
overrides), or both (every run crossed with the grid):

    name: fig2
    base: {learners: {count: 100}, protocol: {name: periodic, b: 1}, ...}
    grid:
      seed: [0, 1]
    runs:
      - {protocol: {name: periodic, b: 1}}
      - {protocol: {name: dynamic, delta: 0.5}}
      - {protocol: {name: nosync}}

Every run is validated before the first one starts, so a typo fails at once.
"""

from __future__ import annotations

import copy
import csv
import itertools
import sys
from pathlib import Path
from typing import Any

import yaml

from netfl import scenario as scenario_mod
from netfl.scenario import Scenario, ScenarioError

TABLE_COLUMNS = [
    "run", "protocol", "setting", "cumulative_loss", "bytes_total", "bytes_up", "bytes_down",
    "messages", "syncs", "final_accuracy", "final_mse", "sim_time_s", "wall_time_s", "status",
]


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if "." in key:
            scenario_mod.set_key(out, key, copy.deepcopy(value))
        elif key == "protocol" or not (isinstance(value, dict) and isinstance(out.get(key), dict)):
            out[key] = copy.deepcopy(value)  # a protocol is replaced whole: its keys differ
        else:
            out[key] = _merge(out[key], value)
    return out


def setting(s: Scenario) -> str:
    params = s.protocol.model_dump(exclude={"name", "wait"})
    return " ".join(f"{k}={v}" for k, v in params.items()) or "-"


def _slug(s: Scenario, changes: dict[str, Any]) -> str:
    parts = [s.protocol.name, *(f"{k}{v}" for k, v in
                                s.protocol.model_dump(exclude={"name", "wait"}).items())]
    for key, value in changes.items():
        if key != "protocol":
            parts.append(f"{key.split('.')[-1]}{value}")
    text = "-".join(str(p) for p in parts)
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def expand(spec: Any, source: str = "sweep") -> list[Scenario]:
    """All scenarios of a sweep, validated, with unique names."""
    if not isinstance(spec, dict) or "base" not in spec:
        raise ScenarioError(f"{source}: a sweep needs a 'base' scenario")
    unknown = set(spec) - {"name", "base", "grid", "runs"}
    if unknown:
        raise ScenarioError(f"{source}: {sorted(unknown)[0]}: unknown key")
    grid = spec.get("grid") or {}
    runs = spec.get("runs") or [{}]
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ScenarioError(f"{source}: grid: expected key.path: [values, ...]")
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise ScenarioError(f"{source}: runs: expected a list of override mappings")
    name = spec.get("name") or Path(source).stem
    scenarios, seen = [], set()
    for run_index, run in enumerate(runs):
        for combo in itertools.product(*grid.values()):
            changes = {**run, **dict(zip(grid.keys(), combo))}
            data = _merge(spec["base"], changes)
            where = f"{source}: runs[{run_index}]" if len(runs) > 1 else source
            s = scenario_mod.from_dict(data, where)
            slug = _slug(s, {k: v for k, v in changes.items() if k in grid})
            s.name = f"{name}-{slug}"
            while s.name in seen:
                s.name += "_"
            seen.add(s.name)
            scenarios.append(s)
    return scenarios


def load(path: str | Path, overrides: list[str] = ()) -> list[Scenario]:
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"{path}: no such sweep file")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise ScenarioError(f"{path}: not valid YAML") from None
    if isinstance(spec, dict) and isinstance(spec.get("base"), dict):
        for text in overrides:
            key, value = scenario_mod.parse_override(text)
            scenario_mod.set_key(spec["base"], key, value)
    return expand(spec, str(path))


def run_sweep(scenarios: list[Scenario], out: str | Path, *, progress: bool = False,
              log=sys.stderr) -> list[dict[str, Any]]:
    """Run every scenario into out/<name>/ and write out/sweep.csv, one row per run."""
    from netfl.run import run

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, s in enumerate(scenarios, 1):
        summary = run(s, str(out / s.name), progress=progress)
        rows.append({"run": s.name, "protocol": s.protocol.name, "setting": setting(s),
                     **{k: summary.get(k) for k in TABLE_COLUMNS[3:]}})
        print(f"[{index}/{len(scenarios)}] {s.name}: loss {summary['cumulative_loss']:.1f}, "
              f"{summary['bytes_total']} bytes", file=log)
        write_table(rows, out / "sweep.csv")
        if summary["status"] != "completed":
            break
    return rows


def write_table(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, TABLE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A console table; the score is accuracy, or mean squared error for regression runs."""
    key, label = "final_accuracy", "final acc"
    if rows and all(r.get("final_accuracy") is None for r in rows) and any(
            r.get("final_mse") is not None for r in rows):
        key, label = "final_mse", "final mse"
    head = (f"{'protocol':10} {'setting':34} {'cum. loss':>11} {'bytes':>13} "
            f"{label:>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        score = r.get(key)
        lines.append(f"{r['protocol']:10} {r['setting'][:34]:34} {r['cumulative_loss']:11.1f} "
                     f"{r['bytes_total']:13d} {score if score is None else f'{score:9.3f}'}")
    return "\n".join(lines)
