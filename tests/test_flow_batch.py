"""The array path of the flow model (netfl.sim.flow_batch) against the object path.

Every case sends the same messages three ways on fresh networks: one ``Network.send`` per
message, ``Network.send_many`` on the object path (the array path switched off) and
``send_many`` on the array path, and asserts that delivery times, counters, link
statistics (bytes, busy time, peak flows, delay shares) and the flow model's own counters
(refills, flows that started or ended alone) are exactly equal. The cases have unequal
bandwidths, sizes and latencies (flows finish at different times, several latency
timers), both sharing rules, a TCP window, and events that hand a batch in flight back
to the object path (another flow, a link failure, an endpoint going offline, the end of
the run). Closed forms check the absolute values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import networkx as nx
import numpy as np
import pytest
import simpy

from netfl.sim.network import COORDINATOR, Message, Network
from netfl.sim.topology import configure_links, generate, place

C = COORDINATOR
MODES = ("single", "objects", "arrays")


def tree(n: int, seed: int, latencies: bool) -> tuple[nx.Graph, dict[Any, Any]]:
    """A two-tier tree with random bandwidths per direction (and latencies per link)."""
    rng = np.random.default_rng(seed)
    g = configure_links(generate("hierarchy", None, seed=0, leaves=n), bandwidth=1e6,
                        latency=0.01)
    for _, _, data in g.edges(data=True):
        data["bandwidth"] = float(rng.choice([2e5, 5e5, 1e6, 4e6]))
        data["reverse_bandwidth"] = float(rng.choice([2e5, 1e6, 3e6]))
        if latencies:
            data["latency"] = float(rng.choice([0.002, 0.005, 0.0125, 0.03]))
    coordinator, nodes = place(g, n, coordinator=0)
    return g, {C: coordinator, **dict(enumerate(nodes))}


class Run:
    """A network and a record of what arrived, for one way of sending."""

    def __init__(self, g: nx.Graph, placement: dict[Any, Any], mode: str, **kwargs: Any):
        self.env = simpy.Environment()
        self.net = Network(self.env, g, placement, rng=np.random.default_rng(0), **kwargs)
        self.mode = mode
        self.arrays = 0  # batches that took the array path
        if mode != "arrays":
            self.net._send_array = lambda msgs, batch: False  # the object path only
        self.sent: list[Message] = []
        self.lost: list[Message] = []
        self.net.on_lost = self.lost.append

    def send(self, msgs: list[Message]) -> None:
        self.sent += msgs
        if self.mode == "single":
            for msg in msgs:
                self.net.send(msg)
            return
        self.net.send_many(msgs, lambda arrived: None)
        self.arrays += self.net._array is not None

    def at(self, t: float, action: Callable[[], None]) -> None:
        self.env.timeout(t).callbacks.append(lambda _ev: action())

    def result(self) -> dict[str, Any]:
        net, transport = self.net, self.net.transport
        return {
            "delivered": [(m.src, m.dst, m.sent_at, m.delivered_at) for m in self.sent],
            "lost": [(m.src, m.dst) for m in self.lost],
            "counters": net.counters(), "links": net.link_stats(),
            "most_loaded": net.most_loaded_link(), "total_delay": net.total_delay,
            "in_flight": net.in_flight, "undelivered": net.undelivered_rows(),
            "flow": (transport.refills, transport.refilled_flows, transport.alone),
            "now": self.env.now,
        }


def compare(script: Callable[[Run], None], g: nx.Graph, placement: dict[Any, Any],
            until: float | None = None, **kwargs: Any) -> tuple[dict[str, Any], Run]:
    """Run ``script`` three ways; assert identical results; return them and the array run."""
    results, runs = {}, {}
    for mode in MODES:
        run = runs[mode] = Run(g, placement, mode, **kwargs)
        script(run)
        run.env.run(until=until)
        results[mode] = run.result()
    for mode in ("objects", "arrays"):
        for key, value in results["single"].items():
            assert results[mode][key] == value, (mode, key)
    return results["arrays"], runs["arrays"]


def uploads(n: int, sizes: list[int], rnd: int = 0) -> list[Message]:
    return [Message("model", i, C, rnd, None, sizes[i % len(sizes)]) for i in range(n)]


def broadcast(n: int, size: int, rnd: int = 0) -> list[Message]:
    return [Message("broadcast", C, i, rnd, None, size) for i in range(n)]


@pytest.mark.parametrize("sharing", ["rtt", "fair"])
@pytest.mark.parametrize("latencies", [False, True])
def test_heterogeneous_uploads_and_broadcast_match_the_object_path(sharing, latencies):
    g, placement = tree(30, seed=1, latencies=latencies)

    def script(run: Run) -> None:
        run.send(uploads(30, [4000, 1500, 9000, 700]))
        # the broadcast goes once the uploads are in (nothing else in flight)
        run.at(2.0, lambda: run.send(broadcast(30, 3000, 1)))

    result, run = compare(script, g, placement, sharing=sharing)
    assert run.arrays == 2  # both batches took the array path
    assert result["in_flight"] == 0 and result["counters"]["messages"] == 60
    assert len({t for *_, t in result["delivered"]}) > 5  # many finish instants


def test_tcp_window_bounds_the_flows_as_on_the_object_path():
    g, placement = tree(20, seed=2, latencies=True)
    _, run = compare(lambda run: run.send(uploads(20, [20000, 5000])), g, placement,
                     tcp_window=2000)
    assert run.arrays == 1


def test_star_flows_that_share_nothing_start_and_end_alone():
    g = configure_links(generate("star", 9, seed=0), bandwidth=1e6, latency=0.005)
    coordinator, nodes = place(g, 8, coordinator=0)
    placement = {C: coordinator, **dict(enumerate(nodes))}
    result, run = compare(lambda run: run.send(uploads(8, [1000, 2000])), g, placement)
    assert run.arrays == 1
    assert result["flow"] == (0, 0, 16)  # every flow started and ended alone
    for src, _, _, at in result["delivered"]:
        assert at == pytest.approx(0.005 + [1000, 2000][src % 2] * 8 / 1e6, rel=1e-12)


@pytest.mark.parametrize("k", [2, 5, 12])
def test_k_equal_flows_on_one_bottleneck_finish_at_latency_plus_k_size_over_bandwidth(k):
    g = nx.Graph()
    for i in range(k):
        g.add_edge(f"s{i}", "A", bandwidth=1e9, latency=0.001)
    g.add_edge("A", "root", bandwidth=1e6, latency=0.004)
    placement = {C: "root", **{i: f"s{i}" for i in range(k)}}
    result, run = compare(lambda run: run.send(uploads(k, [5000])), g, placement)
    assert run.arrays == 1
    expected = 0.005 + k * 5000 * 8 / 1e6
    assert [at for *_, at in result["delivered"]] == pytest.approx([expected] * k, rel=1e-12)
    bottleneck = next(row for row in result["links"] if row["src_node"] == "A")
    assert bottleneck["bytes"] == k * 5000 and bottleneck["peak_flows"] == k
    assert bottleneck["busy_s"] == pytest.approx(k * 5000 * 8 / 1e6, rel=1e-12)


def test_another_flow_during_the_batch_hands_it_to_the_object_path():
    g, placement = tree(16, seed=3, latencies=True)

    def script(run: Run) -> None:
        run.send(uploads(16, [6000, 2500]))
        run.at(0.03, lambda: run.send([Message("model", 3, C, 1, None, 4000)]))
        run.at(0.031, lambda: run.send(broadcast(16, 1000, 1)))  # not idle: object path

    _, run = compare(script, g, placement)
    assert run.arrays == 1


def test_a_link_failing_under_the_batch_aborts_its_flows_as_on_the_object_path():
    g, placement = tree(16, seed=4, latencies=False)
    node = placement[5]
    parent = next(iter(g[node]))

    def script(run: Run) -> None:
        run.send(uploads(16, [8000, 3000]))
        run.at(0.02, lambda: run.net.set_link(node, parent, False))
        run.at(0.3, lambda: run.net.set_link(node, parent, True))

    result, run = compare(script, g, placement, retransmit_timeout=0.05)
    assert run.arrays == 1 and result["counters"]["retransmissions"] >= 1


def test_an_endpoint_going_offline_loses_only_its_messages():
    g, placement = tree(12, seed=5, latencies=True)

    def script(run: Run) -> None:
        run.send(uploads(12, [5000]))
        run.at(0.02, lambda: run.net.set_endpoint(4, False))

    result, run = compare(script, g, placement)
    assert run.arrays == 1 and result["lost"] == [(4, C)]


@pytest.mark.parametrize("until", [0.004, 0.03, 0.09])
def test_a_run_cut_mid_batch_reports_the_same_links_and_undelivered_messages(until):
    g, placement = tree(20, seed=6, latencies=True)
    result, run = compare(lambda run: run.send(uploads(20, [9000, 4000])), g, placement,
                          until=until)
    assert run.arrays == 1 and result["in_flight"] == len(result["undelivered"]) > 0


def test_lossy_routes_and_busy_networks_take_the_object_path():
    g, placement = tree(8, seed=7, latencies=False)
    for _, _, data in g.edges(data=True):
        data["loss"] = 0.1
    _, run = compare(lambda run: run.send(uploads(8, [3000])), g, placement)
    assert run.arrays == 0
    g, placement = tree(8, seed=7, latencies=False)

    def busy(run: Run) -> None:
        run.send([Message("model", 0, C, 0, None, 50000)])
        run.send(uploads(8, [3000]))

    _, run = compare(busy, g, placement)
    assert run.arrays == 0


def test_array_batches_deliver_lists_per_instant_like_the_object_batch():
    g, placement = tree(24, seed=8, latencies=True)
    calls: dict[str, list[list[tuple[Any, float]]]] = {}
    for mode in ("objects", "arrays"):
        run = Run(g, placement, mode)
        got: list[list[tuple[Any, float]]] = []
        run.net.send_many(uploads(24, [3000, 7000]),
                          lambda msgs, got=got: got.append([(m.src, m.delivered_at)
                                                            for m in msgs]))
        run.env.run()
        calls[mode] = got
    assert calls["arrays"] == calls["objects"] and len(calls["arrays"]) > 1


def test_columns_make_messages_only_when_read_with_their_times():
    g, placement = tree(10, seed=9, latencies=True)
    runs = {}
    for mode in ("objects", "arrays"):
        run = Run(g, placement, mode)
        got: list[Any] = []
        payload = b"p" * 10
        run.net.send_columns("broadcast", [C] * 10, list(range(10)), 4, payload, None,
                             [300 if i % 2 else 900 for i in range(10)], got.append)
        if mode == "arrays":
            assert run.net._array is not None  # took the array path
            assert all(obj is None for obj in run.net._array.msgs.objs)  # no Message yet
        run.env.run()
        runs[mode] = [[(m.kind, m.src, m.dst, m.round, m.size, m.sent_at, m.delivered_at,
                        m.payload is payload) for m in arrived] for arrived in got]
        if mode == "arrays":
            arrived = max(got, key=len)
            assert len(arrived) > 1 and arrived.round == 4
            assert arrived.dsts == [m.dst for m in arrived]
            assert arrived.payloads == [payload] * len(arrived)
            assert arrived[0] is arrived[0]  # made once
            assert list(arrived[1:])[0] is arrived[1]
    assert runs["arrays"] == runs["objects"] and len(runs["arrays"]) > 1


def test_send_many_keeps_the_callers_message_objects():
    g, placement = tree(6, seed=10, latencies=False)
    run = Run(g, placement, "arrays")
    sent = uploads(6, [1000, 2500])
    got: list[Any] = []
    run.net.send_many(sent, got.append)
    run.env.run()
    arrived = [m for batch in got for m in batch]
    assert sorted(map(id, arrived)) == sorted(map(id, sent))
    assert all(m.delivered_at > m.sent_at == 0.0 for m in sent)
    assert run.net.array_batches == 1
