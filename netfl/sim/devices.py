"""Device heterogeneity from a trace: each learner's compute speed and access-link bandwidth.

A device trace is a CSV with one row per device: ``learner`` (an id),
``steps_per_s`` (training steps per second), ``uplink_bps`` and
``downlink_bps`` (bit/s; either may be empty to keep the scenario's links).
FedScale's ``client_device_capacity`` (``computation``: ms per sample,
``communication``: kbit/s, both directions) is converted by
``tools/convert_fedscale_trace.py``. Learners take devices by a seeded draw
(``assign: random``, with replacement when the trace has fewer devices than
learners, as FedScale samples client profiles) or by sorted id (learner i gets
the i-th device, cycling).

A learner's access link is the first link of its lowest-latency route to the
coordinator: its uplink direction gets ``uplink_bps``, the other ``downlink_bps``.
Learners that share a node would share that link, so a device trace needs one
learner per node.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np

from netfl.sim.traces import csv_rows, pick


class DeviceTraceError(ValueError):
    """A device trace that cannot be used; the message names the file (and line)."""


@dataclass
class Devices:
    """Per-learner values (NaN where the trace leaves a value out)."""

    steps_per_s: np.ndarray
    uplink_bps: np.ndarray
    downlink_bps: np.ndarray


def _number(path: Path, line: int, key: str, text: str | None, optional: bool) -> float:
    if text is None or text.strip() == "":
        if optional:
            return math.nan
        raise DeviceTraceError(f"{path}, line {line}: {key} is missing")
    try:
        value = float(text)
    except ValueError:
        raise DeviceTraceError(f"{path}, line {line}: {key} must be a number, got "
                               f"{text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise DeviceTraceError(f"{path}, line {line}: {key} must be > 0 and finite, got {text}")
    return value


def read_devices(path: str | Path) -> tuple[list[int], Devices]:
    """The trace's device ids (sorted) and their values, row for row."""
    path = Path(path)
    rows: dict[int, tuple[float, float, float]] = {}
    lines = csv_rows(path, ("learner", "steps_per_s"),
                     "learner, steps_per_s[, uplink_bps, downlink_bps]", "device trace",
                     DeviceTraceError)
    for line, row in lines:
        try:
            device = int(row["learner"])
        except (TypeError, ValueError):
            raise DeviceTraceError(f"{path}, line {line}: learner must be an integer") from None
        rows[device] = (
            _number(path, line, "steps_per_s", row.get("steps_per_s"), False),
            _number(path, line, "uplink_bps", row.get("uplink_bps"), True),
            _number(path, line, "downlink_bps", row.get("downlink_bps"), True),
        )
    if not rows:
        raise DeviceTraceError(f"{path}: no devices")
    ids = sorted(rows)
    values = np.array([rows[i] for i in ids], dtype=np.float64)
    return ids, Devices(values[:, 0], values[:, 1], values[:, 2])


def assign(devices: Devices, m: int, mode: str, rng: np.random.Generator) -> Devices:
    """One device per learner: a seeded draw or by sorted id."""
    picks = pick(len(devices.steps_per_s), m, mode, rng)
    return Devices(devices.steps_per_s[picks], devices.uplink_bps[picks],
                   devices.downlink_bps[picks])


def apply_links(graph: nx.Graph, coordinator: Hashable, nodes: list[Hashable],
                devices: Devices) -> None:
    """Set each learner's access link (first hop towards the coordinator) in place."""
    if len(set(nodes)) < len(nodes):
        raise DeviceTraceError("a device trace gives each learner its own access link: "
                               "it needs one learner per node (network.placement)")
    paths = nx.single_source_dijkstra_path(graph, coordinator, weight="latency")
    for learner, node in enumerate(nodes):
        up, down = devices.uplink_bps[learner], devices.downlink_bps[learner]
        if math.isnan(up) and math.isnan(down):
            continue
        if node == coordinator:
            raise DeviceTraceError(f"learner {learner} sits on the coordinator's node: it has "
                                   "no access link for its device's bandwidth")
        route = paths.get(node)
        if route is None:
            continue  # disconnected: the network reports it
        nxt = route[-2]  # the path runs coordinator -> ... -> nxt -> node
        data = graph.edges[node, nxt]
        towards, away = ("bandwidth", "reverse_bandwidth") if data["forward"] == node \
            else ("reverse_bandwidth", "bandwidth")
        if not math.isnan(up):
            data[towards] = float(up)
        if not math.isnan(down):
            data[away] = float(down)
