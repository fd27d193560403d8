"""Flow model: delivery times against max-min closed forms, and against a brute-force reference."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import simpy

from netfl.sim.network import COORDINATOR, Message, Network

C = COORDINATOR
MB = 1_000_000


def network(g: nx.Graph, placement: dict, **kw) -> tuple[simpy.Environment, Network]:
    env = simpy.Environment()
    kw.setdefault("rng", np.random.default_rng(0))
    return env, Network(env, g, placement, model="flow", **kw)


def msg(src, dst, size: int, kind: str = "model") -> Message:
    return Message(kind=kind, src=src, dst=dst, round=0, payload=None, size=size)


def send_at(env, net, t: float, m: Message) -> Message:
    env.timeout(t).callbacks.append(lambda _ev: net.send(m))
    return m


def line(links: list[tuple[float, float]]) -> nx.Graph:
    g = nx.Graph()
    for i, (bw, lat) in enumerate(links):
        g.add_edge(i, i + 1, bandwidth=bw, latency=lat)
    return g


def test_one_flow_over_a_line_takes_size_over_min_bandwidth_plus_latencies():
    hops = [(1e8, 0.010), (2.5e7, 0.002), (4e7, 0.030)]
    env, net = network(line(hops), {"a": 0, "b": 3})
    m = msg("a", "b", 10 * MB)
    net.send(m)
    env.run()
    expected = 10 * MB * 8 / 2.5e7 + 0.042
    assert m.delivered_at == pytest.approx(expected, rel=1e-9)
    assert net.ideal_delivery_time(10 * MB, 0, 3) == pytest.approx(expected, rel=1e-9)


def dumbbell(n: int, shared: float = 1e8, access: float = 1e9, latency: float = 0.005):
    g = nx.Graph()
    for i in range(n):
        g.add_edge(f"s{i}", "A", bandwidth=access, latency=latency)
    g.add_edge("A", "B", bandwidth=shared, latency=0.01)
    g.add_edge("B", "r", bandwidth=access, latency=latency)
    return g, {**{i: f"s{i}" for i in range(n)}, "r": "r"}


@pytest.mark.parametrize("n", [1, 2, 10])
def test_dumbbell_flows_share_the_link_and_finish_together(n):
    g, placement = dumbbell(n)
    env, net = network(g, placement)
    sent = [msg(i, "r", 10 * MB) for i in range(n)]
    for m in sent:
        net.send(m)
    env.run()
    expected = n * 10 * MB * 8 / 1e8 + 0.02
    assert [m.delivered_at for m in sent] == pytest.approx([expected] * n, rel=1e-9)


def test_parking_lot_equal_capacities_give_everyone_half():
    # long flow 0 -> 3 over three links, one short flow on each link, no latency
    g = line([(1e7, 0.0)] * 3)
    env, net = network(g, {"L": 0, "end": 3, **{f"s{i}": i for i in range(3)},
                           **{f"d{i}": i + 1 for i in range(3)}})
    long = msg("L", "end", MB)
    short = [msg(f"s{i}", f"d{i}", MB) for i in range(3)]
    for m in [long, *short]:
        net.send(m)
    env.run()
    expected = MB * 8 / 5e6  # every link carries two flows: C / 2 each
    assert [m.delivered_at for m in [long, *short]] == pytest.approx([expected] * 4, rel=1e-9)


def test_parking_lot_unequal_capacities_follow_progressive_filling():
    # capacities 10, 20, 30 Mbit/s: link 1 fixes the long flow and short 1 at 5; short 2 gets
    # 20 - 5 = 15, short 3 gets 30 - 5 = 25. The long flow never speeds up (link 1 stays shared).
    g = line([(1e7, 0.0), (2e7, 0.0), (3e7, 0.0)])
    env, net = network(g, {"L": 0, "end": 3, **{f"s{i}": i for i in range(3)},
                           **{f"d{i}": i + 1 for i in range(3)}})
    bits = MB * 8
    long = msg("L", "end", MB)
    short = [msg(f"s{i}", f"d{i}", MB) for i in range(3)]
    for m in [long, *short]:
        net.send(m)
    env.run()
    assert short[2].delivered_at == pytest.approx(bits / 25e6, rel=1e-9)
    assert short[1].delivered_at == pytest.approx(bits / 15e6, rel=1e-9)
    assert short[0].delivered_at == pytest.approx(bits / 5e6, rel=1e-9)
    assert long.delivered_at == pytest.approx(bits / 5e6, rel=1e-9)


def test_parking_lot_rates_grow_when_a_short_flow_leaves():
    # equal capacities C; short flow 0 is a quarter the size: it leaves at t1 = (S/4)/(C/2),
    # then the long flow is limited by links 1 and 2 (still C/2 each): unchanged; short flow 0
    # leaving frees nothing for it. Instead make link 0 the only shared one: long over 0-1-2,
    # short only on link 0; after the short one leaves the long flow gets C.
    cap = 1e7
    g = line([(cap, 0.0), (cap, 0.0)])
    env, net = network(g, {"L": 0, "end": 2, "s": 0, "d": 1})
    long, short = msg("L", "end", MB), msg("s", "d", MB // 4)
    net.send(long)
    net.send(short)
    env.run()
    t1 = (MB // 4) * 8 / (cap / 2)
    moved = cap / 2 * t1
    assert short.delivered_at == pytest.approx(t1, rel=1e-9)
    assert long.delivered_at == pytest.approx(t1 + (MB * 8 - moved) / cap, rel=1e-9)


def test_flows_starting_at_different_instants():
    cap, lat, t0 = 1e7, 0.01, 0.3
    g = line([(cap, lat)])
    env, net = network(g, {"a": 0, "b": 0, "r": 1})
    bits = MB * 8
    first = send_at(env, net, 0.0, msg("a", "r", MB))
    second = send_at(env, net, t0, msg("b", "r", MB))
    env.run()
    # first alone from lat to t0 + lat, then both at cap / 2, then second alone
    t1 = t0 + lat + 2 * (bits - cap * t0) / cap
    assert first.delivered_at == pytest.approx(t1, rel=1e-9)
    assert second.delivered_at == pytest.approx(t1 + t0, rel=1e-9)


def test_rtt_sharing_gives_shares_inversely_proportional_to_route_latency():
    # a 10 ms and a 30 ms flow on one 10 Mbit/s link (SimGrid CM02): shares 3/4 and 1/4
    g = nx.Graph()
    g.add_edge(0, 1, bandwidth=1e7, latency=0.01)
    g.add_edge(1, 2, bandwidth=1e9, latency=0.02)
    env, net = network(g, {"a": 0, "near": 1, "far": 2})
    near, far = msg("a", "near", MB), msg("a", "far", MB)
    net.send(near)
    net.send(far)
    env.run()
    # near runs at 7.5 Mbit/s from 10 ms; far joins at 30 ms: before that near had it all
    t_near = 0.01 + 0.02 + (MB * 8 - 1e7 * 0.02) / 7.5e6
    assert near.delivered_at == pytest.approx(t_near, rel=1e-9)
    moved = 2.5e6 * (t_near - 0.03)
    assert far.delivered_at == pytest.approx(t_near + (MB * 8 - moved) / 1e7, rel=1e-9)
    env, net = network(g, {"a": 0, "near": 1, "far": 2}, sharing="fair")
    near, far = msg("a", "near", MB), msg("a", "far", MB)
    net.send(near)
    net.send(far)
    env.run()
    t_near = 0.03 + (MB * 8 - 1e7 * 0.02) / 5e6
    assert near.delivered_at == pytest.approx(t_near, rel=1e-9)


def test_tcp_window_bounds_the_rate_by_window_over_rtt():
    window, lat = 65536, 0.05  # 64 KiB over a 100 ms RTT: 5.24 Mbit/s on a 1 Gbit/s link
    g = line([(1e9, lat)])
    env, net = network(g, {"a": 0, "b": 1}, tcp_window=window)
    m = msg("a", "b", 10 * MB)
    net.send(m)
    env.run()
    rate = window * 8 / (2 * lat)
    assert m.delivered_at == pytest.approx(lat + 10 * MB * 8 / rate, rel=1e-9)
    assert net.ideal_delivery_time(10 * MB, 0, 1) == pytest.approx(m.delivered_at, rel=1e-9)


def test_window_bound_frees_capacity_for_other_flows():
    # one window-bound flow at 2 Mbit/s; the other flow on the 10 Mbit/s link gets the rest (8)
    lat = 0.1
    g = nx.Graph()
    g.add_edge(0, 1, bandwidth=1e7, latency=lat)
    env, net = network(g, {"a": 0, "b": 0, "r": 1}, tcp_window=2e6 / 8 * 2 * lat)
    slow, fast = msg("a", "r", MB), msg("b", "r", MB)
    net.send(slow)
    net.send(fast)
    env.run()
    # the window applies to both flows (2 Mbit/s each): both bound, link not saturated
    assert slow.delivered_at == pytest.approx(lat + MB * 8 / 2e6, rel=1e-9)
    assert fast.delivered_at == pytest.approx(lat + MB * 8 / 2e6, rel=1e-9)


def test_directions_have_their_own_capacity():
    g = nx.Graph()
    g.add_edge(0, 1, bandwidth=1e8, reverse_bandwidth=1e7, forward=1, latency=0.0)
    env, net = network(g, {"up": 0, "down": 1})
    a, b = msg("up", "down", MB), msg("down", "up", MB)  # 0 -> 1 is the reverse direction
    net.send(a)
    net.send(b)
    env.run()
    assert a.delivered_at == pytest.approx(MB * 8 / 1e7, rel=1e-9)
    assert b.delivered_at == pytest.approx(MB * 8 / 1e8, rel=1e-9)


def test_lost_transfer_is_resent_after_the_timeout_and_charged_again():
    g = line([(1e7, 0.01)])
    g.edges[0, 1]["loss"] = 0.5
    seed, timeout = 5, 0.2
    draws = np.random.default_rng(seed).random(50)
    attempts = int(np.argmax(draws < 0.5)) + 1  # a transfer is kept when its draw < 1 - loss
    assert attempts == 4  # the seed is chosen so that three transfers are lost
    env, net = network(g, {"a": 0, "b": 1}, rng=np.random.default_rng(seed),
                       retransmit_timeout=timeout)
    m = msg("a", "b", MB)
    net.send(m)
    env.run()
    transfer = 0.01 + MB * 8 / 1e7
    assert m.delivered_at == pytest.approx(attempts * transfer + (attempts - 1) * timeout)
    assert net.retransmissions == attempts - 1
    assert net.bytes_total == attempts * MB
    assert net.link_bytes[0, 1] == attempts * MB


def test_same_node_is_immediate_and_free_of_links():
    g = line([(1e7, 0.01)])
    env, net = network(g, {"a": 0, "b": 0})
    m = msg("a", "b", MB)
    net.send(m)
    env.run()
    assert m.delivered_at == 0.0 and net.link_bytes == {} and net.bytes_total == MB


def test_link_statistics_busy_time_peak_and_delay_shares():
    g, placement = dumbbell(4)
    env, net = network(g, placement)
    for i in range(4):
        net.send(msg(i, "r", MB))
    env.run()
    stats = {(row["src_node"], row["dst_node"]): row for row in net.link_stats()}
    shared = stats["A", "B"]
    transfer = 4 * MB * 8 / 1e8
    assert shared["busy_s"] == pytest.approx(transfer, rel=1e-9)
    assert shared["peak_flows"] == 4 and stats["s0", "A"]["peak_flows"] == 1
    assert shared["utilisation"] == pytest.approx(transfer / (transfer + 0.02), rel=1e-9)
    assert stats["B", "A"]["bytes"] == 0 and stats["B", "A"]["busy_s"] == 0
    # the delay is latency on every link plus transfer time at the bottleneck: shares sum to 1
    assert sum(row["delay_share"] for row in stats.values()) == pytest.approx(1.0)
    assert shared["delay_share"] == pytest.approx((transfer + 0.01) / (transfer + 0.02))
    assert net.most_loaded_link()["link"] in ("A->B", "B->r")


# -- failures -------------------------------------------------------------------------------------


def triangle(direct: float = 0.01, detour: float = 0.02) -> nx.Graph:
    """0-1 direct (low latency) and 0-2-1 (a detour), all 10 Mbit/s."""
    g = nx.Graph()
    g.add_edge(0, 1, bandwidth=1e7, latency=direct)
    g.add_edge(0, 2, bandwidth=1e7, latency=detour / 2)
    g.add_edge(2, 1, bandwidth=1e7, latency=detour / 2)
    return g


def test_failed_link_aborts_the_flow_and_the_resend_takes_another_route():
    env, net = network(triangle(), {"a": 0, "b": 1}, retransmit_timeout=0.2)
    m = msg("a", "b", MB)
    net.send(m)
    fail_at = 0.5  # mid-transfer (0.01 s latency + 0.8 s transfer on the direct link)
    env.timeout(fail_at).callbacks.append(lambda _ev: net.set_link(0, 1, up=False))
    env.run()
    assert m.delivered_at == pytest.approx(fail_at + 0.2 + 0.02 + MB * 8 / 1e7, rel=1e-9)
    assert net.retransmissions == 1 and net.bytes_total == 2 * MB
    moved = int(round((fail_at - 0.01) * 1e7 / 8))
    assert net.link_bytes[0, 1] == moved  # only what crossed before the cut
    assert net.link_bytes[0, 2] == MB and net.path(0, 1) == [0, 2, 1]


def test_unreachable_destination_waits_for_the_link_to_return():
    g = line([(1e7, 0.01)])
    env, net = network(g, {"a": 0, "b": 1}, retransmit_timeout=0.2)
    net.set_link(0, 1, up=False)
    m = msg("a", "b", MB)
    net.send(m)
    assert net.bytes_total == 0  # nothing on the wire while there is no route
    env.timeout(3.0).callbacks.append(lambda _ev: net.set_link(0, 1, up=True))
    env.run()
    assert m.delivered_at == pytest.approx(3.0 + 0.01 + MB * 8 / 1e7, rel=1e-9)
    assert net.bytes_total == MB and net.retransmissions == 0


def test_message_is_given_up_and_reported_lost():
    g = line([(1e7, 0.01)])
    lost = []
    env, net = network(g, {"a": 0, "b": 1}, give_up=5.0, on_lost=lost.append)
    node_down = net.set_node
    node_down(1, up=False)
    m = msg("a", "b", MB)
    event = net.send(m)
    env.run()
    assert lost == [m] and not event.triggered and net.messages_lost == 1
    assert env.now == pytest.approx(5.0) and net.in_flight == 0


def test_node_failure_takes_every_link_down_and_repair_restores_them():
    g = nx.star_graph(3)
    for u, v in g.edges:
        g.edges[u, v].update(bandwidth=1e7, latency=0.0)
    env, net = network(g, {"a": 1, "b": 2})
    net.set_node(0, up=False)
    assert net.router.route(1, 2) is None
    net.set_node(0, up=True)
    assert net.path(1, 2) == [1, 0, 2]
    net.set_link(0, 1, up=False)
    net.set_node(0, up=False)
    net.set_node(0, up=True)
    assert net.router.route(1, 2) is None  # the link's own failure still holds


# -- against a brute-force fluid reference --------------------------------------------------------


def reference_times(routes, sizes, starts, latencies, capacity, weights=None):
    """Weighted max-min fluid delivery times by recomputing every rate at every event (slow,
    obvious): a saturating link gives each of its unfixed flows weight * capacity / sum."""
    n = len(sizes)
    weights = weights or [1.0] * n
    remaining = [s * 8.0 for s in sizes]
    active_from = [starts[i] + latencies[i] for i in range(n)]
    done = [None] * n
    now = 0.0
    while any(d is None for d in done):
        active = [i for i in range(n) if done[i] is None and active_from[i] <= now + 1e-12]
        rates = {}
        cap = dict(capacity)
        left = set(active)
        while left:
            level = {}
            for link in cap:
                users = [i for i in left if link in routes[i]]
                if users:
                    level[link] = cap[link] / sum(weights[i] for i in users)
            link = min(level, key=level.get)
            x = level[link]
            for i in [i for i in left if link in routes[i]]:
                rates[i] = weights[i] * x
                left.discard(i)
                for other in routes[i]:
                    cap[other] -= rates[i]
        candidates = [active_from[i] for i in range(n) if done[i] is None and i not in active]
        finish = [(now + remaining[i] / rates[i], i) for i in active]
        t_next = min([f for f, _ in finish] + candidates)
        for i in active:
            remaining[i] -= rates[i] * (t_next - now)
        now = t_next
        for f, i in finish:
            if f <= now + 1e-12:
                done[i] = now
    return done


@pytest.mark.parametrize("sharing", ["rtt", "fair"])
@pytest.mark.parametrize("seed", range(6))
def test_random_flows_on_a_random_tree_match_the_brute_force_reference(seed, sharing):
    rng = np.random.default_rng(seed)
    g = nx.random_labeled_tree(8, seed=seed)
    for u, v in g.edges:
        g.edges[u, v].update(bandwidth=float(rng.choice([1e6, 2e6, 5e6])),
                             reverse_bandwidth=float(rng.choice([1e6, 3e6])), forward=u,
                             latency=float(rng.choice([0.0, 0.01, 0.05])))
    n = 12
    pairs = [tuple(rng.choice(8, 2, replace=False)) for _ in range(n)]
    sizes = [int(rng.integers(10_000, 400_000)) for _ in range(n)]
    starts = [float(rng.choice([0.0, 0.0, 0.1, 0.25, 0.7])) for _ in range(n)]
    placement = {f"s{i}": int(a) for i, (a, _) in enumerate(pairs)}
    placement.update({f"d{i}": int(b) for i, (_, b) in enumerate(pairs)})
    env, net = network(g, placement, sharing=sharing)
    sent = [send_at(env, net, starts[i], msg(f"s{i}", f"d{i}", sizes[i])) for i in range(n)]
    env.run()
    routes, latencies = [], []
    for a, b in pairs:
        path = net.path(int(a), int(b))
        routes.append([(u, v) for u, v in zip(path, path[1:])])
        latencies.append(sum(g.edges[u, v]["latency"] for u, v in routes[-1]))
    capacity = {}
    for u, v, data in g.edges(data=True):
        capacity[u, v] = data["bandwidth"]
        capacity[v, u] = data["reverse_bandwidth"]
    weights = None
    if sharing == "rtt":  # CM02: weight 1 / route latency, 1 for a route without latency
        weights = [1 / lat if lat > 0 else 1.0 for lat in latencies]
    expected = reference_times(routes, sizes, starts, latencies, capacity, weights)
    assert [m.delivered_at for m in sent] == pytest.approx(expected, rel=1e-7)


def test_flows_that_change_no_other_rate_start_and_end_without_a_refill():
    # two learners on their own 10 Mbit/s access links into a 1 Gbit/s core link: neither
    # limits the other, so each starts and ends alone; a third flow on a learner's access
    # link halves that learner's rate and needs a refill
    g = nx.Graph()
    g.add_edge("a", "s", bandwidth=1e7, latency=0.01)
    g.add_edge("b", "s", bandwidth=1e7, latency=0.01)
    g.add_edge("s", "root", bandwidth=1e9, latency=0.01)
    env, net = network(g, {0: "a", 1: "b", 2: "a", C: "root"})
    first, second = msg(0, C, MB), send_at(env, net, 0.1, msg(1, C, MB))
    net.send(first)
    env.run()
    assert net.transport.refills == 0 and net.transport.alone == 4
    assert first.delivered_at == pytest.approx(0.02 + 0.8, rel=1e-9)
    assert second.delivered_at == pytest.approx(0.1 + 0.02 + 0.8, rel=1e-9)
    third = send_at(env, net, env.now, msg(0, C, MB))
    fourth = send_at(env, net, env.now, msg(2, C, MB))
    env.run()
    assert net.transport.refills >= 1
    assert third.delivered_at == pytest.approx(fourth.delivered_at)
    assert fourth.delivered_at - fourth.sent_at == pytest.approx(0.02 + 1.6, rel=1e-9)
