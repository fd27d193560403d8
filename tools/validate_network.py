"""Check netfl's flow-level network model against SimGrid (CM02) on small textbook cases.

    python tools/validate_network.py            # every case
    python tools/validate_network.py line star  # some cases, by name

Each case is a small graph (bandwidth in bit/s, latency in s per link) and a few flows
(source node, destination node, bytes, start time). The same case runs three ways:

* netfl: ``netfl.sim.network.Network(..., model="flow")``, one ``send`` per flow;
* a closed form: the textbook fluid answer, by hand (line, dumbbell, staggered, window,
  hierarchy) or, for the parking lots, by progressive filling (``max_min_rates``): max-min
  rates recomputed whenever a flow starts sending or finishes (``fluid_reference``);
* SimGrid 4.1 with its CM02 model, the reference: a flow-level model validated against
  packet-level simulation and real networks (Velho et al., 2013). Every correction is
  switched off, so that it is the plain model: latency and bandwidth factors 1, weight-S 0,
  no cross traffic (a flow does not also load the reverse direction), TCP-gamma 0 (no
  window bound) except in the window case, where it is the window. Links are split-duplex
  (each direction its own capacity) and routes are given link by link, so the route is
  the one netfl takes (every case is a tree, so there is only one). SimGrid's engine cannot
  be created twice in a process, so each case runs in a fresh subprocess of this script.

In both models a flow pays the whole route latency first and then sends at its rate, so a
delivery takes latency + size / rate. One known difference: CM02 shares a link in
proportion to 1 / route latency (a flow of twice the latency gets half the share; a route
of latency 0 counts as 1 s), where netfl and the closed forms use plain max-min; the
parking lot with latencies (``parking-lat``) shows it, the other cases have equal
latencies or none. Times in the table are on the simulation clock; the
last column is the worst relative difference of a flow's delivery time, netfl against
SimGrid (the closed form where SimGrid is not installed). The target is 1% in every case.
SimGrid is optional: without it the tool prints netfl's figures and the closed form.
Install: see README, "Validating against SimGrid".
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import networkx as nx

MB = 1e6  # bytes
MBIT = 1e6  # bit/s
TOLERANCE = 0.01


@dataclass
class Flow:
    src: Hashable  # graph node
    dst: Hashable
    size: float  # bytes
    start: float = 0.0  # seconds


@dataclass
class Case:
    name: str
    what: str
    graph: nx.Graph
    flows: list[Flow]
    closed: Callable[[Case], list[float]] | None  # delivery time of each flow
    tcp_window: float | None = None  # bytes; None: no window bound
    notes: list[str] = field(default_factory=list)


def _graph(edges: list[tuple[Hashable, Hashable, float, float]]) -> nx.Graph:
    g = nx.Graph()
    for u, v, bandwidth, latency in edges:
        g.add_edge(u, v, bandwidth=bandwidth, latency=latency, loss=0.0)
    return g


def route(case: Case, flow: Flow) -> list[tuple[Hashable, Hashable]]:
    """Directed links from source to destination (lowest latency; unique in a tree)."""
    nodes = nx.shortest_path(case.graph, flow.src, flow.dst, weight="latency")
    return list(zip(nodes, nodes[1:]))


def route_latency(case: Case, flow: Flow) -> float:
    return sum(case.graph.edges[link]["latency"] for link in route(case, flow))


# -- closed forms -------------------------------------------------------------------------------


def max_min_rates(
    routes: dict[int, list[tuple[Hashable, Hashable]]], capacity: dict[tuple, float]
) -> dict[int, float]:
    """Textbook max-min fair rates by progressive filling.

    Repeatedly take the link whose remaining capacity, split evenly among its flows not yet
    fixed, is smallest; those flows get that share; the link is full; repeat.
    """
    rates: dict[int, float] = {}
    left = dict(capacity)
    while len(rates) < len(routes):
        users: dict[tuple, list[int]] = {}
        for f, links in routes.items():
            if f not in rates:
                for link in links:
                    users.setdefault(link, []).append(f)
        link = min(users, key=lambda k: left[k] / len(users[k]))
        share = left[link] / len(users[link])
        for f in users[link]:
            rates[f] = share
            for other in routes[f]:
                left[other] -= share
    return rates


def fluid_reference(case: Case) -> list[float]:
    """Delivery times of the fluid model: each flow sends from start + route latency at its
    max-min rate, recomputed whenever a flow starts sending or finishes."""
    capacity = {}
    for u, v, data in case.graph.edges(data=True):
        capacity[u, v] = capacity[v, u] = data["bandwidth"]
    routes = {i: route(case, f) for i, f in enumerate(case.flows)}
    begin = {i: f.start + route_latency(case, f) for i, f in enumerate(case.flows)}
    bits = {i: f.size * 8 for i, f in enumerate(case.flows)}
    done: dict[int, float] = {}
    now = 0.0
    while len(done) < len(bits):
        active = [i for i in bits if i not in done and begin[i] <= now]
        rates = max_min_rates({i: routes[i] for i in active}, capacity) if active else {}
        waiting = [begin[i] for i in bits if i not in done and begin[i] > now]
        finish = [now + bits[i] / rates[i] for i in active]
        step = min(waiting + finish) - now
        for i in active:
            bits[i] -= rates[i] * step
            if bits[i] <= 1e-9 * case.flows[i].size:
                done[i] = now + step
        now += step
    return [done[i] for i in range(len(case.flows))]


def _all_at(t: float) -> Callable[[Case], list[float]]:
    return lambda case: [t] * len(case.flows)


def _staggered(case: Case) -> list[float]:
    """Two equal flows on one link: the first sends alone until the second starts, then they
    share; the first finishes, then the second has the link to itself."""
    a, b = case.flows
    bw = case.graph.edges[a.src, a.dst]["bandwidth"]
    lat = route_latency(case, a)
    alone = (b.start - a.start) * bw  # bits the first flow sent alone
    first = b.start + lat + (a.size * 8 - alone) / (bw / 2)
    second = first + (b.size * 8 - (a.size * 8 - alone)) / bw
    return [first, second]


# -- cases --------------------------------------------------------------------------------------


def _cases() -> list[Case]:
    line = _graph([(i, i + 1, 100 * MBIT, 0.010) for i in range(3)])
    dumbbell = _graph(
        [(f"s{i}", "A", 1000 * MBIT, 0.005) for i in range(10)]
        + [("A", "B", 100 * MBIT, 0.010), ("B", "r", 1000 * MBIT, 0.005)]
    )
    star = _graph([(f"s{i}", "hub", 100 * MBIT, 0.010) for i in range(10)]
                  + [("hub", "r", 100 * MBIT, 0.010)])
    lot = [0, 1, 2, 3]
    lot_flows = [Flow(0, 3, 10 * MB)] + [Flow(i, i + 1, 10 * MB) for i in range(3)]
    hierarchy = _graph(
        [(0, k, 100 * MBIT, 0.010) for k in range(1, 11)]
        + [(1 + i % 10, 11 + i, 100 * MBIT, 0.010) for i in range(100)]
    )
    window = _graph([(0, 1, 1000 * MBIT, 0.025), (1, 2, 1000 * MBIT, 0.025)])
    return [
        Case("line", "1 flow x 10 MB, 3 hops of 100 Mbit/s, 10 ms",
             line, [Flow(0, 3, 10 * MB)], _all_at(10 * MB * 8 / (100 * MBIT) + 0.030)),
        Case("dumbbell", "10 x 10 MB, 1 Gbit/s 5 ms access, 100 Mbit/s 10 ms core",
             dumbbell, [Flow(f"s{i}", "r", 10 * MB) for i in range(10)],
             _all_at(10 * 10 * MB * 8 / (100 * MBIT) + 0.020)),
        Case("star", "10 x 10 MB via a hub, all links 100 Mbit/s 10 ms",
             star, [Flow(f"s{i}", "r", 10 * MB) for i in range(10)],
             _all_at(10 * 10 * MB * 8 / (100 * MBIT) + 0.020)),
        Case("parking", "parking lot, 3 links of 100 Mbit/s, 0 ms; 1 long + 3 short x 10 MB",
             _graph([(u, v, 100 * MBIT, 0.0) for u, v in zip(lot, lot[1:])]),
             lot_flows, fluid_reference),
        Case("parking-uneq", "parking lot, links of 100, 50, 80 Mbit/s, 0 ms",
             _graph([(0, 1, 100 * MBIT, 0.0), (1, 2, 50 * MBIT, 0.0), (2, 3, 80 * MBIT, 0.0)]),
             lot_flows, fluid_reference),
        Case("parking-lat", "parking lot, 3 links of 100 Mbit/s, 10 ms each",
             _graph([(u, v, 100 * MBIT, 0.010) for u, v in zip(lot, lot[1:])]),
             lot_flows, fluid_reference,
             notes=["closed form is unweighted max-min; CM02 weights each flow's share by "
                    "1 / its route latency (RTT unfairness), so its short flows get 3/4 of "
                    "each link here and finish first"]),
        Case("staggered", "2 x 10 MB on one 100 Mbit/s 10 ms link, second starts at 0.3 s",
             _graph([(0, 1, 100 * MBIT, 0.010)]),
             [Flow(0, 1, 10 * MB), Flow(0, 1, 10 * MB, start=0.3)], _staggered),
        Case("window", "1 flow x 10 MB, 2 hops of 1 Gbit/s, 25 ms; TCP window 1 MB",
             window, [Flow(0, 2, 10 * MB)],
             _all_at(0.050 + 10 * MB / min(1000 * MBIT / 8, 1 * MB / (2 * 0.050))),
             tcp_window=1 * MB),
        Case("hierarchy", "100 learners x 1 MB to the root; 10 switches, 100 Mbit/s 10 ms",
             hierarchy, [Flow(11 + i, 0, 1 * MB) for i in range(100)],
             _all_at(10 * 1 * MB * 8 / (100 * MBIT) + 0.020)),
    ]


# -- netfl --------------------------------------------------------------------------------------


def run_netfl(case: Case, model: str = "flow") -> tuple[list[float], str]:
    """Delivery time of each flow in netfl under ``model``."""
    import numpy as np
    import simpy

    from netfl.sim.network import Message, Network

    kwargs = {"model": model}
    if case.tcp_window is not None:
        if model != "flow":
            raise RuntimeError("the TCP window needs the flow model")
        kwargs["tcp_window"] = case.tcp_window
    placement = {}
    for i, f in enumerate(case.flows):
        placement["src", i], placement["dst", i] = f.src, f.dst
    env = simpy.Environment()
    net = Network(env, case.graph, placement, rng=np.random.default_rng(0), **kwargs)
    messages = [
        Message(kind="model", src=("src", i), dst=("dst", i), round=0, payload=None,
                size=int(f.size))
        for i, f in enumerate(case.flows)
    ]

    def start(msg: Message, at: float):
        yield env.timeout(at)
        net.send(msg)

    for msg, f in zip(messages, case.flows):
        env.process(start(msg, f.start))
    env.run()
    return [msg.delivered_at for msg in messages], model


# -- SimGrid ------------------------------------------------------------------------------------


def simgrid_worker(name: str) -> None:
    """Run one case in SimGrid CM02 (in this fresh process) and print its times as JSON."""
    import simgrid

    case = next(c for c in _cases() if c.name == name)
    gamma = case.tcp_window or 0
    engine = simgrid.Engine([
        "validate_network",
        "--cfg=network/model:CM02",
        "--cfg=network/latency-factor:1",
        "--cfg=network/bandwidth-factor:1",
        "--cfg=network/weight-S:0",
        "--cfg=network/crosstraffic:0",
        f"--cfg=network/TCP-gamma:{gamma}",
        "--log=root.thres:warning",
    ])
    zone = engine.netzone_root.add_netzone_full("net")
    hosts = {}
    for f in case.flows:
        for node in (f.src, f.dst):
            if node not in hosts:
                hosts[node] = zone.add_host(f"n{node}", 1e9)
    links = {}
    for u, v, data in case.graph.edges(data=True):
        link = zone.add_split_duplex_link(f"{u}-{v}", data["bandwidth"] / 8)  # bytes/s
        link.set_latency(data["latency"]).seal()
        up, down = simgrid.LinkInRoute.Direction.UP, simgrid.LinkInRoute.Direction.DOWN
        links[u, v], links[v, u] = (link, up), (link, down)
    routed = set()
    for f in case.flows:
        if (f.src, f.dst) not in routed:
            routed.add((f.src, f.dst))
            hops = [simgrid.LinkInRoute(*links[link]) for link in route(case, f)]
            zone.add_route(hosts[f.src], hosts[f.dst], hops, False)
    zone.seal()
    times = [0.0] * len(case.flows)

    def sender(i: int, f: Flow) -> None:
        simgrid.this_actor.sleep_for(f.start)
        simgrid.Comm.sendto(hosts[f.src], hosts[f.dst], int(f.size))
        times[i] = simgrid.Engine.clock

    for i, f in enumerate(case.flows):
        hosts[f.src].add_actor(f"flow{i}", sender, i, f)
    engine.run()
    print(json.dumps(times))


def run_simgrid(case: Case) -> list[float]:
    """Run the case in a fresh process. pip's simgrid wheel installs libsimgrid.so beside its
    Python module but without a run path to it, hence LD_LIBRARY_PATH (simgrid issue 386)."""
    env = dict(os.environ)
    lib_dir = os.path.dirname(importlib.util.find_spec("simgrid").origin)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [lib_dir, env.get("LD_LIBRARY_PATH")]))
    out = subprocess.run(
        [sys.executable, __file__, "--simgrid-case", case.name],
        capture_output=True, text=True, timeout=600, env=env,
    )
    if out.returncode != 0:
        raise RuntimeError(f"SimGrid failed on {case.name}: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- table --------------------------------------------------------------------------------------


def _fmt(times: list[float] | None) -> tuple[str, str]:
    if times is None:
        return "-", "-"
    return f"{sum(times) / len(times):.4f}", f"{max(times):.4f}"


def _worst(ours: list[float], ref: list[float]) -> float:
    return max(abs(a - b) / b for a, b in zip(ours, ref))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", nargs="*", help="case names (default: all)")
    ap.add_argument("--model", default="flow", choices=("flow", "store_and_forward"),
                    help="netfl's network model (store_and_forward: the model before flows)")
    ap.add_argument("--simgrid-case", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.simgrid_case:
        simgrid_worker(args.simgrid_case)
        return 0
    cases = [c for c in _cases() if not args.cases or c.name in args.cases]
    unknown = set(args.cases) - {c.name for c in cases}
    if unknown:
        ap.error(f"unknown case(s) {', '.join(sorted(unknown))}; "
                 f"cases: {', '.join(c.name for c in _cases())}")
    have_simgrid = importlib.util.find_spec("simgrid") is not None
    header = ("case", "netfl mean", "netfl last", "closed mean", "closed last",
              "SimGrid mean", "SimGrid last", "worst flow %", "ok")
    rows, notes, models = [header], [], set()
    for case in cases:
        try:
            ours, model = run_netfl(case, args.model)
            models.add(model)
        except (RuntimeError, TypeError, ValueError) as err:
            ours = None
            notes.append(f"{case.name}: netfl did not run: {err}")
        closed = case.closed(case) if case.closed else None
        theirs = run_simgrid(case) if have_simgrid else None
        ref = theirs if theirs is not None else closed
        diff = _worst(ours, ref) if ours is not None and ref is not None else None
        rows.append((case.name, *_fmt(ours), *_fmt(closed), *_fmt(theirs),
                     "-" if diff is None else f"{100 * diff:.3f}",
                     "-" if diff is None else ("yes" if diff <= TOLERANCE else "NO")))
        notes += [f"{case.name}: {note}" for note in case.notes]
    widths = [max(len(row[k]) for row in rows) for k in range(len(header))]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(w) if k == 0 else cell.rjust(w)
                        for k, (cell, w) in enumerate(zip(row, widths))))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print()
    for case in cases:
        print(f"{case.name}: {case.what}")
    ref = "SimGrid CM02" if have_simgrid else "closed form"
    print(f"\nnetfl model: {', '.join(sorted(models)) or 'none'}; times in seconds; worst flow % "
          f"is max |netfl - ref| / ref over flows, ref = {ref}; target {100 * TOLERANCE:g}%")
    if not have_simgrid:
        print("SimGrid is not installed (pip install simgrid==4.1; see README): "
              "no SimGrid columns.")
    for note in notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
