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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from netfl import scenario as scenario_mod
from netfl.scenario import Scenario, ScenarioError

TABLE_COLUMNS = [
    "run", "protocol", "setting", "cumulative_loss", "bytes_total", "bytes_up", "bytes_down",
    "messages", "syncs", "final_accuracy", "final_mse", "sim_time_s", "time_to_accuracy_s",
    "wall_time_s", "status",
]
LEAD = 3  # run, protocol, setting; the swept keys' columns follow them
UNSWEPT = ("name", "output.dir")  # differ between any two runs without being a setting
MAX_WIDTH = 28  # widest swept column on the console


class Sweep(list[Scenario]):
    """The scenarios of a sweep, remembering which dotted keys the sweep file varies."""

    def __init__(self, scenarios: Iterable[Scenario] = (), swept: Iterable[str] = ()):
        super().__init__(scenarios)
        self.swept = list(swept)


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


def _changed_keys(base: dict[str, Any], changes: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys a run sets: a mapping is followed down unless it replaces a value
    whole (a protocol, a dotted key, a base value that is not a mapping)."""
    keys = []
    for key, value in changes.items():
        below = base.get(key)
        if ("." not in key and key != "protocol" and isinstance(value, dict) and value
                and (below is None or isinstance(below, dict))):
            keys += _changed_keys(below or {}, value, f"{prefix}{key}.")
        else:
            keys.append(prefix + key)
    return keys


def lookup(data: Any, dotted: str) -> Any:
    """The value at a dotted key path of plain data, None where the path does not exist."""
    for key in dotted.split("."):
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted leaf paths of nested mappings; an empty mapping is a leaf."""
    if not isinstance(data, dict) or (not data and prefix):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def compact(value: Any) -> str:
    """One-line form of a setting: `hierarchy`, `generator=ring n=9`, `0.005`, `[1,2]`.

    Unset (None) and empty entries of a mapping are left out; a mapping left with one
    entry shows only its value."""
    if isinstance(value, dict):
        items = {k: v for k, v in leaves(value).items() if v is not None and v != {} and v != []}
        if len(items) == 1:
            return compact(next(iter(items.values())))
        return " ".join(f"{k}={compact(v)}" for k, v in items.items())
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(compact(v) for v in value) + "]"
    return "" if value is None else str(value)


def differing_keys(scenarios: list[Scenario]) -> list[str]:
    """Leaf keys whose resolved values differ between scenarios (protocol, name, dir aside)."""
    flat = [leaves(s.resolved()) for s in scenarios]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    return [k for k in keys if not k.startswith(("protocol.", *UNSWEPT))
            and len({repr(f.get(k)) for f in flat}) > 1]


def swept_keys(scenarios: list[Scenario]) -> list[str]:
    """The sweep file's keys for a Sweep; else the keys that differ (several scenario files).

    `protocol` itself is left out: the protocol and setting columns show it."""
    keys = scenarios.swept if isinstance(scenarios, Sweep) else differing_keys(scenarios)
    return [k for k in keys if k != "protocol"]


def setting(s: Scenario) -> str:
    params = s.protocol.model_dump(exclude={"name", "wait"}, exclude_none=True)
    return " ".join(f"{k}={v}" for k, v in params.items()) or "-"


def _slug(s: Scenario, changes: dict[str, Any]) -> str:
    parts = [s.protocol.name, *(f"{k}{v}" for k, v in
                                s.protocol.model_dump(exclude={"name", "wait"},
                                                      exclude_none=True).items())]
    for key, value in changes.items():
        if key != "protocol":
            parts.append(f"{key.split('.')[-1]}{compact(value)}")
    text = "-".join(str(p) for p in parts)
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def expand(spec: Any, source: str = "sweep") -> Sweep:
    """All scenarios of a sweep, validated, with unique names and the keys it varies."""
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
    base = spec["base"] if isinstance(spec["base"], dict) else {}
    swept = list(grid) + [k for run in runs for k in _changed_keys(base, run)]
    scenarios, seen = Sweep(swept=dict.fromkeys(swept)), set()
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


def load(path: str | Path, overrides: list[str] = ()) -> Sweep:
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"{path}: no such sweep file")
    try:
        spec = yaml.safe_load(scenario_mod.read_text(path, "sweep file"))
    except yaml.YAMLError:
        raise ScenarioError(f"{path}: not valid YAML") from None
    if isinstance(spec, dict) and isinstance(spec.get("base"), dict):
        for text in overrides:
            key, value = scenario_mod.parse_override(text)
            scenario_mod.set_key(spec["base"], key, value)
    return expand(spec, str(path))


def table_row(s: Scenario, summary: dict[str, Any], swept: list[str]) -> dict[str, Any]:
    """One row: the run, its protocol, each swept key's value, then the summary's numbers."""
    resolved = s.resolved()
    return {"run": s.name, "protocol": s.protocol.name, "setting": setting(s),
            **{key: compact(lookup(resolved, key)) for key in swept},
            **{k: summary.get(k) for k in TABLE_COLUMNS[LEAD:]}}


def run_sweep(scenarios: list[Scenario], out: str | Path, *, progress: bool = False,
              log=None) -> list[dict[str, Any]]:
    """Run every scenario into out/<name>/ and write out/sweep.csv, one row per run."""
    from netfl.run import run

    log = log if log is not None else sys.stderr  # the stream of now, not of import time
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    swept = swept_keys(scenarios)
    rows = []
    for index, s in enumerate(scenarios, 1):
        summary = run(s, str(out / s.name), progress=progress)
        rows.append(table_row(s, summary, swept))
        print(f"[{index}/{len(scenarios)}] {s.name}: loss {summary['cumulative_loss']:.1f}, "
              f"{summary['bytes_total']} bytes", file=log)
        write_table(rows, out / "sweep.csv")
        if summary["status"] == "interrupted":
            break  # Ctrl-C stops the sweep; a diverged run is recorded and the sweep goes on
    return rows


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """TABLE_COLUMNS with the rows' swept keys after the first three."""
    extra = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in TABLE_COLUMNS]
    return [*TABLE_COLUMNS[:LEAD], *extra, *TABLE_COLUMNS[LEAD:]]


def write_table(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns(rows))
        writer.writeheader()
        writer.writerows(rows)


def _headers(keys: list[str]) -> list[str]:
    """Each key's last part, or the whole dotted key where two last parts coincide."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return [part if last.count(part) == 1 else key for key, part in zip(keys, last)]


def _cell(value: Any, fmt: str, width: int) -> str:
    return f"{'-' if value is None else format(value, fmt):>{width}}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """A console table; the score is accuracy, or mean squared error for regression runs.

    Every swept key gets a column, so runs that differ only in, say, the topology
    still read apart."""
    key, label = "final_accuracy", "final acc"
    if rows and all(r.get("final_accuracy") is None for r in rows) and any(
            r.get("final_mse") is not None for r in rows):
        key, label = "final_mse", "final mse"
    swept = [k for k in columns(rows) if k not in TABLE_COLUMNS]
    widths = [min(MAX_WIDTH, max(len(h), *(len(str(r.get(k, ""))) for r in rows)))
              for k, h in zip(swept, _headers(swept))]
    head = " ".join([f"{'protocol':10} {'setting':34}",
                     *(f"{h[:w]:{w}}" for h, w in zip(_headers(swept), widths)),
                     f"{'cum. loss':>11} {'bytes':>13} {label:>9} {'sim time s':>10} "
                     f"{'t to acc s':>10}"])
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = [f"{r['protocol']:10} {r['setting'][:34]:34}",
                 *(f"{str(r.get(k, ''))[:w]:{w}}" for k, w in zip(swept, widths)),
                 _cell(r.get("cumulative_loss"), ".1f", 11), _cell(r.get("bytes_total"), "d", 13),
                 _cell(r.get(key), ".3f", 9), _cell(r.get("sim_time_s"), ".2f", 10),
                 _cell(r.get("time_to_accuracy_s"), ".2f", 10)]
        lines.append(" ".join(cells))
    return "\n".join(lines)
