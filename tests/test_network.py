"""Network, store-and-forward model: per-hop timing, FIFO queues, routing, loss, bytes."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import simpy

from netfl.sim.network import COORDINATOR, Message, Network
from netfl.sim.topology import configure_links, generate, load_graph

C = COORDINATOR


def line(links: list[tuple[float, float]], loss: float = 0.0) -> nx.Graph:
    """A path 0-1-...-k whose i-th link has (bandwidth, latency)."""
    g = nx.Graph()
    for i, (bw, lat) in enumerate(links):
        g.add_edge(i, i + 1, bandwidth=bw, latency=lat, loss=loss)
    return g


def network(g: nx.Graph, placement: dict, seed: int = 0, model: str = "store_and_forward",
            **kw) -> tuple[simpy.Environment, Network]:
    env = simpy.Environment()
    return env, Network(env, g, placement, rng=np.random.default_rng(seed), model=model, **kw)


def msg(src, dst, size: int, kind: str = "update", rnd: int = 0) -> Message:
    return Message(kind=kind, src=src, dst=dst, round=rnd, payload=None, size=size)


def send_at(env: simpy.Environment, net: Network, t: float, m: Message) -> list[Message]:
    """Send ``m`` at time ``t``; the returned list receives it on delivery."""
    got: list[Message] = []

    def fire(_event):
        net.send(m).callbacks.append(lambda ev: got.append(ev.value))

    env.timeout(t).callbacks.append(fire)
    return got


# -- timing ---------------------------------------------------------------------------------------


def test_delivery_time_over_three_hops_sums_serialization_and_latency():
    hops = [(1e6, 0.010), (2.5e6, 0.002), (4e6, 0.030)]
    env, net = network(line(hops), {0: 0, C: 3})
    m = msg(0, C, 1500)
    event = net.send(m)
    env.run()
    expected = sum(1500 * 8 / bw + lat for bw, lat in hops)
    assert event.processed and event.value is m
    assert m.sent_at == 0.0
    assert m.delivered_at == pytest.approx(expected, rel=1e-12, abs=0)
    assert net.ideal_delivery_time(1500, 0, 3) == pytest.approx(expected, rel=1e-12, abs=0)
    assert net.path(0, 3) == [0, 1, 2, 3]


def test_delivery_event_fires_at_delivery_time_with_message():
    env, net = network(line([(8000.0, 0.5)]), {0: 0, C: 1})
    seen = []
    net.send(msg(0, C, 1000)).callbacks.append(lambda ev: seen.append((env.now, ev.value.src)))
    env.run()
    assert seen == [(1.5, 0)]


def test_two_messages_at_once_queue_on_one_link():
    env, net = network(line([(8000.0, 0.5)]), {0: 0, 1: 0, C: 1})
    a, b = msg(0, C, 1000), msg(1, C, 1000)  # 1 s of serialization each
    net.send(a)
    net.send(b)
    env.run()
    assert a.delivered_at == 1.5
    assert b.delivered_at == 2.5  # exactly one serialization later
    assert b.delivered_at - a.delivered_at == 1000 * 8 / 8000.0


def test_directions_of_a_link_do_not_share_a_queue():
    env, net = network(line([(8000.0, 0.5)]), {0: 0, C: 1})
    up, down = msg(0, C, 1000), msg(C, 0, 1000)
    net.send(up)
    net.send(down)
    env.run()
    assert up.delivered_at == down.delivered_at == 1.5


def test_fifo_across_hops_message_joining_at_intermediate_node():
    # 0 --(1 s tx, 0.5 s)--> 1 --(1 s tx, 0.5 s)--> 2; A leaves 0 at t=0, reaches 1 at 1.5.
    env, net = network(line([(8000.0, 0.5), (8000.0, 0.5)]), {"a": 0, "b": 1, "c": 1, C: 2})
    b_got = send_at(env, net, 1.5, msg("b", C, 1000))  # joins at node 1 exactly as A arrives
    c_got = send_at(env, net, 2.0, msg("c", C, 1000))  # joins while A is on link (1, 2)
    a = msg("a", C, 1000)
    net.send(a)
    env.run()
    b, c = b_got[0], c_got[0]
    # A was sent first, so it wins the tie at t=1.5 and holds (1, 2) from 1.5 to 2.5.
    assert a.delivered_at == 3.0
    assert b.delivered_at == 4.0  # transmits 2.5..3.5
    assert c.delivered_at == 5.0  # transmits 3.5..4.5, behind B
    assert net.link_bytes == {(0, 1): 1000, (1, 2): 3000}


def test_message_joining_before_arrival_goes_first():
    env, net = network(line([(8000.0, 0.5), (8000.0, 0.5)]), {"a": 0, "b": 1, C: 2})
    b_got = send_at(env, net, 1.25, msg("b", C, 1000))  # on (1, 2) before A arrives at 1.5
    a = msg("a", C, 1000)
    net.send(a)
    env.run()
    assert b_got[0].delivered_at == 1.25 + 1.5
    assert a.delivered_at == 2.25 + 1.5  # waits for B to leave the link at 2.25


def test_shared_uplink_serves_in_send_order():
    g = configure_links(
        generate("hierarchy", n=None, leaves=6, switches=2, seed=0), bandwidth=8000.0, latency=0.0
    )
    leaves = [n for n, t in g.nodes(data="tier") if t == "leaf" and 1 in g[n]]
    env, net = network(g, {C: 0, **{i: leaf for i, leaf in enumerate(leaves)}})
    order = []
    for i in reversed(range(len(leaves))):
        net.send(msg(i, C, 1000)).callbacks.append(lambda ev: order.append(ev.value.src))
    env.run()
    assert order == list(reversed(range(len(leaves))))
    # access links in parallel (1 s), then the shared core link one message per second
    assert env.now == 1.0 + len(leaves)


# -- routing --------------------------------------------------------------------------------------


def test_routing_prefers_lower_latency_over_fewer_hops():
    g = nx.Graph()
    g.add_edge(0, 1, bandwidth=1e9, latency=0.100)
    for u, v in [(0, 2), (2, 3), (3, 1)]:
        g.add_edge(u, v, bandwidth=1e6, latency=0.010)
    env, net = network(g, {0: 0, C: 1})
    assert net.path(0, 1) == [0, 2, 3, 1]
    assert net.path(1, 0) == [1, 3, 2, 0]
    m = msg(0, C, 100)
    net.send(m)
    env.run()
    assert m.delivered_at == pytest.approx(3 * (800 / 1e6 + 0.010), rel=1e-12)
    assert net.link_bytes == {(0, 2): 100, (2, 3): 100, (3, 1): 100}


def test_routing_ties_on_latency_go_to_fewer_hops():
    g = nx.Graph()
    g.add_edge(0, 1, bandwidth=1e6, latency=0.02)
    g.add_edge(0, 2, bandwidth=1e6, latency=0.01)
    g.add_edge(2, 1, bandwidth=1e6, latency=0.01)
    _, net = network(g, {})
    assert net.path(0, 1) == [0, 1]
    assert net.path(1, 0) == [1, 0]


@pytest.mark.parametrize("placement", [{}, {C: 5}, {C: 0}])
def test_routing_ties_go_to_fewer_hops_between_distant_nodes(placement):
    g = nx.Graph()
    for u, v, lat in [(0, 2, 0.25), (2, 3, 0.25), (3, 5, 0.25), (0, 1, 0.25), (1, 5, 0.5)]:
        g.add_edge(u, v, bandwidth=1e6, latency=lat)
    _, net = network(g, placement)
    assert net.path(5, 0) == [5, 1, 0]
    assert net.path(0, 5) == [0, 1, 5]
    assert net.path(2, 5) == [2, 3, 5]


@pytest.mark.parametrize("hub", [None, 3])
def test_routes_are_lowest_latency_then_fewest_hops_on_a_random_graph(hub):
    g = generate("erdos_renyi", 25, p=0.2, seed=4)
    rng = np.random.default_rng(0)
    for u, v in g.edges:  # few distinct, exactly representable latencies: many ties
        g.edges[u, v].update(bandwidth=1e6, latency=float(rng.choice([0.25, 0.5, 0.75])))
    _, net = network(g, {} if hub is None else {C: hub})
    for a in g:
        for b in g:
            nodes = net.path(a, b)
            best = list(nx.all_shortest_paths(g, a, b, weight="latency"))
            assert nx.path_weight(g, nodes, "latency") == nx.path_weight(g, best[0], "latency")
            assert len(nodes) == min(len(p) for p in best)
            assert nodes == net.path(b, a)[::-1]


def test_routing_equal_paths_are_deterministic_and_symmetric():
    g = configure_links(generate("ring", 6, seed=0), bandwidth=1e6, latency=0.01)
    _, net1 = network(g, {C: 0})
    _, net2 = network(g, {C: 0})
    assert net1.path(3, 0) == net1.path(0, 3)[::-1]
    assert net2.path(0, 3) == net1.path(0, 3)
    assert net1.path(1, 4) == net1.path(4, 1)[::-1]


def test_same_node_delivery_is_immediate_and_uses_no_link():
    env, net = network(line([(8000.0, 0.5)]), {0: 1, C: 1})
    got = send_at(env, net, 2.0, msg(0, C, 500, kind="model"))
    env.run()
    assert got[0].sent_at == got[0].delivered_at == 2.0
    assert net.link_bytes == {}
    assert net.messages == 1 and net.bytes_up == 500 and net.bytes_by_kind == {"model": 500}
    assert net.ideal_delivery_time(500, 1, 1) == 0.0


# -- loss -----------------------------------------------------------------------------------------


def test_loss_resends_and_charges_bytes():
    env, net = network(
        line([(8000.0, 0.5)], loss=0.5), {0: 0, C: 1}, seed=3, retransmit_timeout=0.25
    )
    messages = [msg(0, C, 1000) for _ in range(40)]
    for m in messages:
        net.send(m)
    env.run()
    assert net.retransmissions > 0
    assert net.bytes_resent == 1000 * net.retransmissions
    assert net.link_bytes == {(0, 1): 1000 * (40 + net.retransmissions)}
    assert net.bytes_up == net.bytes_total == 1000 * (40 + net.retransmissions)
    assert net.bytes_by_kind == {"update": net.bytes_up}
    assert net.messages == 40
    assert all(m.delivered_at > 0 for m in messages)


def test_lost_transmission_waits_for_timeout_then_resends():
    rto, tx, lat = 0.25, 1.0, 0.5
    replica = np.random.default_rng(3)
    losses = 0
    while replica.random() < 0.5:
        losses += 1
    assert losses >= 1  # seed 3 loses the first attempt
    env, net = network(
        line([(8000.0, lat)], loss=0.5), {0: 0, C: 1}, seed=3, retransmit_timeout=rto
    )
    m = msg(0, C, 1000)
    net.send(m)
    env.run()
    assert net.retransmissions == losses
    assert m.delivered_at == pytest.approx((losses + 1) * tx + losses * rto + lat, rel=1e-12)


def test_no_loss_means_no_resends_and_no_random_draws():
    env, net = network(line([(8000.0, 0.5)], loss=0.0), {0: 0, C: 1})
    state = net.rng.bit_generator.state
    for _ in range(10):
        net.send(msg(0, C, 1000))
    env.run()
    assert net.retransmissions == 0 and net.bytes_resent == 0
    assert net.rng.bit_generator.state == state


# -- counters -------------------------------------------------------------------------------------


def test_counters_by_direction_kind_and_link():
    g = configure_links(load_graph("topologies/hierarchy.yaml"), bandwidth=1e8, latency=0.001)
    env, net = network(g, {C: 0, 0: 4, 1: 7, 2: 5})  # 4 and 7 under switch 1, 5 under 2
    net.send(msg(0, C, 100, kind="update"))
    net.send(msg(C, 1, 200, kind="model"))
    net.send(msg(0, 1, 30, kind="samples"))
    net.send(msg(2, 0, 7, kind="samples"))
    env.run()
    assert net.messages == 4
    assert net.messages_by_kind == {"update": 1, "model": 1, "samples": 2}
    assert (net.bytes_up, net.bytes_down, net.bytes_peer) == (100, 200, 37)
    assert net.bytes_total == 337
    assert net.bytes_by_kind == {"update": 100, "model": 200, "samples": 37}
    assert net.link_bytes == {
        (4, 1): 100 + 30,
        (1, 0): 100,
        (0, 1): 200 + 7,
        (1, 7): 200 + 30,
        (5, 2): 7,
        (2, 0): 7,
        (1, 4): 7,
    }
    snapshot = net.counters()
    assert snapshot["bytes_total"] == 337 and snapshot["link_bytes"] == net.link_bytes
    net.reset_counters()
    assert net.messages == 0 and net.link_bytes == {} and net.bytes_total == 0


def test_counts_message_when_sent_not_when_delivered():
    env, net = network(line([(8000.0, 0.5)]), {0: 0, C: 1})
    net.send(msg(C, 0, 1000))
    assert net.messages == 1 and net.bytes_down == 1000
    env.run(until=0.1)
    assert net.link_bytes == {(1, 0): 1000}


def test_shipped_hierarchy_matches_ideal_time():
    g = configure_links(load_graph("topologies/hierarchy.yaml"), bandwidth=1e8, latency=0.001)
    env, net = network(g, {C: 0, 0: 15})
    m = msg(0, C, 125_000)
    net.send(m)
    env.run()
    expected = (1e6 / 1e8 + 0.005) + (1e6 / 1e9 + 0.001)
    assert net.path(15, 0) == [15, 3, 0]
    assert m.delivered_at == pytest.approx(expected, rel=1e-12)


# -- errors ---------------------------------------------------------------------------------------


def test_unknown_endpoint_and_node_are_named():
    _, net = network(line([(1e6, 0.01)]), {0: 0, C: 1})
    with pytest.raises(ValueError, match="unknown endpoint 7"):
        net.send(msg(7, C, 10))
    with pytest.raises(ValueError, match="unknown node 9"):
        net.path(0, 9)
    with pytest.raises(ValueError, match="unknown node 'x'"):
        net.ideal_delivery_time(10, "x", 0)
    with pytest.raises(ValueError, match="endpoint 3 is placed on unknown node 5"):
        network(line([(1e6, 0.01)]), {3: 5})
    assert net.messages == 0


def test_disconnected_graph_has_no_route():
    g = line([(1e6, 0.01)])
    g.add_edge(5, 6, bandwidth=1e6, latency=0.01)
    _, net = network(g, {0: 0, C: 6})
    with pytest.raises(ValueError, match="disconnected"):
        net.send(msg(0, C, 10))
    with pytest.raises(ValueError, match="no route between nodes 1 and 5"):
        net.path(1, 5)


def test_bad_link_attributes_are_named():
    with pytest.raises(ValueError, match=r"link \(0, 1\): bandwidth must be > 0, got 0"):
        network(line([(0.0, 0.01)]), {})
    with pytest.raises(ValueError, match=r"link \(0, 1\): loss must be in \[0, 1\), got 1"):
        network(line([(1e6, 0.01)], loss=1.0), {})
    g = nx.Graph()
    g.add_edge(0, 1, latency=0.01)
    with pytest.raises(ValueError, match=r"link \(0, 1\): missing 'bandwidth'"):
        network(g, {})


def test_negative_size_is_refused():
    _, net = network(line([(1e6, 0.01)]), {0: 0, C: 1})
    with pytest.raises(ValueError, match="size"):
        net.send(msg(0, C, -1))


def test_add_endpoint_places_a_protocol_endpoint_and_refuses_unknown_or_moved_ones():
    env, net = network(line([(8000.0, 0.5)]), {0: 0, C: 1})
    net.add_endpoint("edge:1", 1)
    m = msg(0, "edge:1", 1000)
    net.send(m)
    env.run()
    assert m.delivered_at == pytest.approx(1000 * 8 / 8000.0 + 0.5)
    with pytest.raises(ValueError, match="unknown node 7"):
        net.add_endpoint("edge:7", 7)
    with pytest.raises(ValueError, match="already placed"):
        net.add_endpoint("edge:1", 0)
