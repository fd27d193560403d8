"""Figures researchers read at once: bytes and loss over rounds, loss vs bytes, accuracy vs time.

`netfl plot RUN_DIR...` writes, into the first run directory (or --out):
- `<run>/curves.png` per run: cumulative communication and cumulative loss against
  rounds, with a vertical line at every concept drift (seed 004 Fig. 5b);
- `tradeoff.png` over all runs: cumulative loss against cumulative communication
  (the run's totals from summary.json, which include bytes sent after the last
  round), one point per run with a label no other run shares, and for several
  runs the Pareto front (seed 004 Fig. 2);
- `time_accuracy.png` over all runs: the average model's accuracy against
  simulated time, with a dashed line at `eval.target_accuracy` (time to accuracy).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

from netfl.sweep import compact, leaves, lookup  # noqa: E402

UNCOMPARED = ("name", "output")  # differ between runs without telling them apart
GENERIC = ("generator", "file", "name", "kind", "dist")  # a label names the section instead


class PlotError(ValueError):
    """A run directory that cannot be plotted; names the directory."""


def _read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file, without a last row cut short by a crash (missing fields)."""
    with path.open() as handle:
        return [r for r in csv.DictReader(handle) if None not in r.values()]


def _read_mapping(path: Path, parse: Callable[[str], Any], what: str) -> dict[str, Any]:
    """A JSON or YAML mapping, {} when the file is absent; a damaged file names itself."""
    if not path.is_file():
        return {}
    try:
        data = parse(path.read_text())
    except (ValueError, yaml.YAMLError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
        raise PlotError(f"{path}: not valid {what} (truncated?)") from None
    if not isinstance(data, dict):
        raise PlotError(f"{path}: expected a {what} mapping, got {type(data).__name__}")
    return data


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """Metrics, summary, scenario and drift events of one run directory."""
    path = Path(run_dir)
    if not (path / "metrics.csv").is_file():
        raise PlotError(f"{path}: not a run directory (no metrics.csv)")
    rows = _read_csv(path / "metrics.csv")
    summary = _read_mapping(path / "summary.json", json.loads, "JSON")
    scenario = _read_mapping(path / "scenario.yaml", yaml.safe_load, "YAML")
    events = _read_csv(path / "events.csv") if (path / "events.csv").is_file() else []
    return {"dir": path, "rows": rows, "summary": summary, "scenario": scenario,
            "events": events}


def totals(run: dict[str, Any]) -> tuple[float, float]:
    """(bytes_total, cumulative_loss) of a run: the summary's, else the last metrics row's.

    The summary counts the messages delivered after the last round (the final average)."""
    last = run["rows"][-1] if run["rows"] else {}
    values = []
    for key in ("bytes_total", "cumulative_loss"):
        value = run["summary"].get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            if key not in last:
                raise PlotError(f"{run['dir']}: no {key} in summary.json or metrics.csv")
            value = last[key]
        values.append(float(value))
    return values[0], values[1]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (both coordinates lower is better),
    in increasing x; equal points are all kept."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front: list[int] = []
    for i in order:
        if not front or points[i][1] < points[front[-1]][1] or points[i] == points[front[-1]]:
            front.append(i)
    return front


def label(run: dict[str, Any]) -> str:
    """'periodic b=4', 'dynamic delta=0.5', 'fedavg b=5 fraction=0.3', ..."""
    protocol = dict(run["scenario"].get("protocol") or {})
    name = protocol.pop("name", run["summary"].get("protocol", "?"))
    protocol.pop("wait", None)
    protocol.pop("augmentation", None)
    return " ".join([name, *(f"{k}={v}" for k, v in protocol.items() if v is not None)])


def _short(key: str, keys: list[str]) -> str:
    """`topology` for network.topology.generator, `n` for network.topology.n, ..."""
    parts = key.split(".")
    name = parts[-2] if parts[-1] in GENERIC and len(parts) > 1 else parts[-1]
    same = [k for k in keys if k != key and k.split(".")[-1] == parts[-1]]
    return key if same and name == parts[-1] else name


def _differences(group: list[dict[str, Any]]) -> list[str]:
    """For runs that share a label: what differs between their resolved scenarios."""
    flat = [{k: v for k, v in leaves(r["scenario"]).items() if not k.startswith(UNCOMPARED)}
            for r in group]
    keys = [k for k in dict.fromkeys(k for f in flat for k in f)
            if len({repr(f.get(k)) for f in flat}) > 1]
    return [" ".join(f"{_short(k, keys)}={compact(f[k])}" for k in keys
                     if f.get(k) not in (None, "", [], {})) for f in flat]  # only what is set


def _dedupe(names: list[str], extra: Callable[[list[int]], list[str]]) -> list[str]:
    """Append extra(indices) to the names that are not unique yet, where it tells them apart."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name, []).append(i)
    out = list(names)
    for indices in groups.values():
        more = extra(indices) if len(indices) > 1 else []
        if len(set(more)) > 1:
            for i, text in zip(indices, more):
                out[i] = f"{names[i]}, {text}" if text else names[i]
    return out


def labels(runs: list[dict[str, Any]]) -> list[str]:
    """One label per run, no two alike: the protocol setting, then what differs in the
    scenarios (the topology, a seed, ...), then the run directory, then a number."""
    names = [label(run) for run in runs]
    names = _dedupe(names, lambda idx: _differences([runs[i] for i in idx]))
    names = _dedupe(names, lambda idx: [runs[i]["dir"].name for i in idx])
    names = _dedupe(names, lambda idx: [str(runs[i]["dir"]) for i in idx])
    return _dedupe(names, lambda idx: [f"#{n}" for n in range(1, len(idx) + 1)])


def _column(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows]


def plot_curves(run: dict[str, Any], out: Path) -> Path:
    rows = run["rows"]
    rounds = _column(rows, "round")
    fig, (ax_bytes, ax_loss) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    ax_bytes.plot(rounds, [b / 1e6 for b in _column(rows, "bytes_total")], color="tab:blue")
    ax_bytes.set_ylabel("cumulative communication (MB)")
    ax_loss.plot(rounds, _column(rows, "cumulative_loss"), color="tab:red")
    ax_loss.set_ylabel("cumulative loss")
    ax_loss.set_xlabel("round")
    for event in run["events"]:
        for ax in (ax_bytes, ax_loss):
            ax.axvline(float(event["round"]), color="gray", linestyle="--", linewidth=0.8)
    fig.suptitle(f"{run['scenario'].get('name', run['dir'].name)}: {label(run)}")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


_INLINE_LABELS = 8


def plot_tradeoff(runs: list[dict[str, Any]], out: Path,
                  names: list[str] | None = None) -> Path:
    names = names or labels(runs)
    points = [(b / 1e6, loss) for b, loss in map(totals, runs)]
    many = len(runs) > _INLINE_LABELS  # beyond this, labels beside points overlap: a legend
    fig, ax = plt.subplots(figsize=(11, 6) if many else (7, 5))
    markers = "osD^v<>PX*"
    for i, ((x, y), name) in enumerate(zip(points, names)):
        ax.scatter([x], [y], marker=markers[i // 10 % len(markers)] if many else "o",
                   label=name if many else None)
        if not many:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if len(runs) > 1:
        front = [points[i] for i in pareto_front(points)]
        ax.step([x for x, _ in front], [y for _, y in front], where="post", color="gray",
                linestyle="--", linewidth=1, label="Pareto front", zorder=0)
        if many:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        else:
            ax.legend(fontsize=8)
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlabel("cumulative communication (MB)")
    ax.set_ylabel("cumulative loss")
    ax.set_title("loss against communication, one point per run")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _score(runs: list[dict[str, Any]]) -> tuple[str, str]:
    """Accuracy of the average model, or its squared error when no run has accuracies."""
    for key, text in (("acc_mean_model", "accuracy of the average model"),
                      ("mse_mean_model", "test MSE of the average model")):
        if any(r.get(key) for run in runs for r in run["rows"]):
            return key, text
    return "acc_mean_model", "accuracy of the average model"


def plot_time_accuracy(runs: list[dict[str, Any]], out: Path,
                       names: list[str] | None = None) -> Path:
    """Score against simulated time, one line per run: how long each takes to get there."""
    names = names or labels(runs)
    key, text = _score(runs)
    fig, ax = plt.subplots(figsize=(7, 5))
    for run, name in zip(runs, names):
        rows = [r for r in run["rows"] if r.get(key)]
        if rows:
            ax.plot(_column(rows, "sim_time_s"), _column(rows, key), marker=".", label=name)
    targets = {lookup(run["scenario"], "eval.target_accuracy") for run in runs} - {None}
    if key == "acc_mean_model":
        for target in sorted(targets):
            ax.axhline(float(target), color="gray", linestyle="--", linewidth=1,
                       label=f"target accuracy {float(target):g}")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel(text)
    ax.set_title("time to accuracy" if key == "acc_mean_model" else "error against time")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_runs(run_dirs: list[str], out: str | None = None) -> list[Path]:
    runs = [load_run(d) for d in run_dirs]
    empty = [str(r["dir"]) for r in runs if not r["rows"]]
    if empty:
        raise PlotError(f"{empty[0]}: metrics.csv has no rows yet")
    target = Path(out) if out else runs[0]["dir"].parent
    if target.exists() and not target.is_dir():
        raise PlotError(f"--out {target}: is a file; give a directory for the figures")
    try:  # checked before any figure is drawn, so a bad --out writes nothing
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PlotError(f"--out {target}: cannot create the directory ({exc.strerror})") \
            from None
    try:
        written = [plot_curves(run, run["dir"] / "curves.png") for run in runs]
        names = labels(runs)
        written.append(plot_tradeoff(runs, target / "tradeoff.png", names))
        written.append(plot_time_accuracy(runs, target / "time_accuracy.png", names))
    except OSError as exc:
        raise PlotError(f"{exc.filename or target}: cannot write the figure "
                        f"({exc.strerror or exc})") from None
    return written
