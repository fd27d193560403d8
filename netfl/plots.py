"""Figures researchers read at once: communication and loss over rounds, and loss vs bytes.

`netfl plot RUN_DIR...` writes, into the first run directory (or --out):
- `<run>/curves.png` per run: cumulative communication and cumulative loss against
  rounds, with a vertical line at every concept drift (seed 004 Fig. 5b);
- `tradeoff.png` over all runs: cumulative loss against cumulative communication,
  one point per run labelled with its protocol setting (seed 004 Fig. 2).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402


class PlotError(ValueError):
    """A run directory that cannot be plotted; names the directory."""


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """Metrics, summary, scenario and drift events of one run directory."""
    path = Path(run_dir)
    if not (path / "metrics.csv").is_file():
        raise PlotError(f"{path}: not a run directory (no metrics.csv)")
    rows = _read_csv(path / "metrics.csv")
    summary = json.loads((path / "summary.json").read_text()) if (
        path / "summary.json").is_file() else {}
    scenario = yaml.safe_load((path / "scenario.yaml").read_text()) if (
        path / "scenario.yaml").is_file() else {}
    events = _read_csv(path / "events.csv") if (path / "events.csv").is_file() else []
    return {"dir": path, "rows": rows, "summary": summary, "scenario": scenario,
            "events": events}


def label(run: dict[str, Any]) -> str:
    """'periodic b=4', 'dynamic delta=0.5', 'fedavg b=5 fraction=0.3', ..."""
    protocol = dict(run["scenario"].get("protocol") or {})
    name = protocol.pop("name", run["summary"].get("protocol", "?"))
    protocol.pop("wait", None)
    protocol.pop("augmentation", None)
    return " ".join([name, *(f"{k}={v}" for k, v in protocol.items())])


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


def plot_tradeoff(runs: list[dict[str, Any]], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 5))
    for run in runs:
        last = run["rows"][-1]
        x, y = float(last["bytes_total"]) / 1e6, float(last["cumulative_loss"])
        ax.scatter([x], [y])
        ax.annotate(label(run), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlabel("cumulative communication (MB)")
    ax.set_ylabel("cumulative loss")
    ax.set_title("loss against communication, one point per run")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_runs(run_dirs: list[str], out: str | None = None) -> list[Path]:
    runs = [load_run(d) for d in run_dirs]
    empty = [str(r["dir"]) for r in runs if not r["rows"]]
    if empty:
        raise PlotError(f"{empty[0]}: metrics.csv has no rows yet")
    written = [plot_curves(run, run["dir"] / "curves.png") for run in runs]
    target = Path(out) if out else runs[0]["dir"].parent
    target.mkdir(parents=True, exist_ok=True)
    written.append(plot_tradeoff(runs, target / "tradeoff.png"))
    return written
