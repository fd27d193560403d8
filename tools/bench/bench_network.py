"""Network cost at scale: the flow model (max-min sharing) against store-and-forward.

Platform: a two-tier tree, ``topology.generate("hierarchy", leaves=N)``: root 0 (the
coordinator), floor(sqrt(N)) switches, one learner on each of the N leaves; access links
(leaf-switch) 100 Mbit/s, core links (switch-root) 1 Gbit/s, 5 ms per link. Each
learner sends 1 MB messages to the coordinator, so every switch's core link is shared by
its k leaves: in the flow model each flow gets min(100 Mbit/s, 1 Gbit/s / k).

Cases (each run with both transports, a fresh SimPy environment each):

- ``burst``: all N learners send at t = 0, as at the end of a synchronous round. The
  flow model's last delivery is checked against the max-min closed form
  2 * 5 ms + 8e6 bit / min(1e8, 1e9 / k_max), store-and-forward's against its FIFO one
  8e6 / 1e8 + 2 * 5 ms + k_max * 8e6 / 1e9.
- ``staggered``: R rounds ``ROUND_PERIOD`` = 2 s apart; in each round every learner sends
  at an offset drawn uniformly in [0, ``SPREAD`` = 1 s). With 100 leaves per switch
  (N = 10,000) a switch's core link is offered 0.8 of its capacity during the spread, so
  the flows of a round overlap a lot (~9 at once per switch, ~900 in all, often
  saturating the core link; every start and end refills its switch's flows), while a
  round has drained ~0.1 s after its spread, long before the next one starts (rounds do
  not overlap). One driver process walks the pre-drawn sorted send instants; its own
  cost (``driver alone``) is measured with a network that does nothing.

- ``protocol``: the communication-bound run of issue #12: continuous averaging (every
  round, every learner uploads its model and receives the average) of a tiny model (linear,
  4 features, 2 classes: 10 parameters, 61-byte messages) on the same two-tier tree, built
  and run through netfl (``netfl.build``), for ``--rounds-protocol`` rounds. Three runs, a
  fresh build each: ``nosync`` (the same training and no message: the reference), the star
  protocol's per-message path (one send and one callback per message) and its batched path
  (``Simulation.send_many``: one call per upload set and per broadcast, arrivals handled a
  list at a time; each batch moves as numpy arrays, netfl.sim.flow_batch, when nothing else
  is in flight). Printed: wall and CPU seconds of ``sim.run()``, messages per wall and
  per CPU second, the communication's own CPU (run minus nosync) per message, how many
  batches took the array path, whether both paths gave identical metrics, and the batched
  / per-message ratio. Target (issue #12): 200,000 messages per wall second batched.

Printed per model: wall seconds to build the Network and to run, simulated time of the
last delivery, SimPy events processed, messages per wall second, seconds of both spent in
Python's garbage collector (each run starts after a ``gc.collect()``), and for the flow
model the refills (component recomputations) and their mean size in flows. Last line: the
flow / store-and-forward ratio of run wall time per case. ``--scaling`` runs the burst at
1,000, 10,000 and 100,000 learners (``--sizes``) and tabulates how wall time grows.
All routes have the same latency, so the flow model's ``sharing`` (rtt or fair) does not
change the figures. Why: the flow model is the default, and a 10,000-learner round must
stay cheap (target: under 2 s wall per 10,000-flow round on a 2-core CPU, within 3x of
store-and-forward).

    python tools/bench/bench_network.py [--learners 10000] [--rounds 100]
        [--case burst|staggered|both] [--model flow|store_and_forward|both]
    python tools/bench/bench_network.py --scaling [--sizes 1000,10000,100000]
    python tools/bench/bench_network.py --case protocol [--learners 10000]
        [--rounds-protocol 5] [--torch-threads 1]
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable, Generator, Hashable
from dataclasses import dataclass

import networkx as nx
import numpy as np
import simpy

from netfl.sim import topology
from netfl.sim.network import COORDINATOR, MODELS, Message, Network

SIZE = 1_000_000  # bytes per message
ACCESS_BW, CORE_BW, LATENCY = 1e8, 1e9, 5e-3  # bit/s, bit/s, s per link
ROUND_PERIOD, SPREAD = 2.0, 1.0  # staggered case: s between round starts, send window


class CountingEnvironment(simpy.Environment):
    """A SimPy environment that counts the events it processes."""

    def __init__(self) -> None:
        super().__init__()
        self.events = 0

    def step(self) -> None:
        super().step()
        self.events += 1


class Deliveries:
    """Callback for the events ``Network.send`` returns: count and latest delivery."""

    def __init__(self) -> None:
        self.count = 0
        self.last = 0.0

    def __call__(self, event: simpy.Event) -> None:
        self.count += 1
        at = event.value.delivered_at
        if at > self.last:
            self.last = at


class GcTimer:
    """Wall seconds spent in the garbage collector while active (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._since = 0.0

    def __enter__(self) -> GcTimer:
        gc.collect()  # every run starts from the same heap, not the last run's garbage
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._since = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._since


@dataclass
class Platform:
    graph: nx.Graph
    placement: dict[Hashable, Hashable]
    learners: int
    k_max: int  # most leaves on one switch
    build_s: float  # wall seconds to generate and configure the graph


@dataclass
class Result:
    model: str
    build_s: float  # Network construction
    run_s: float  # sends and env.run
    last: float  # simulated time of the last delivery
    events: int
    sent: int
    delivered: int
    gc_s: float  # of build_s + run_s, in the garbage collector
    refills: int = 0
    refilled_flows: int = 0

    def line(self) -> str:
        text = (f"  {self.model:<17} build {self.build_s:7.3f} s  run {self.run_s:8.3f} s  "
                f"last delivery {self.last:9.4f} s  events {self.events:>9,}  "
                f"{self.sent / self.run_s:>9,.0f} msg/s  gc {self.gc_s:6.3f} s  delivered "
                f"{self.delivered:,}/{self.sent:,}")
        if self.model == "flow":
            mean = self.refilled_flows / self.refills if self.refills else 0.0
            text += f"\n  {'':<17} refills {self.refills:,}  mean component {mean:,.1f} flows"
        return text


def platform(n: int) -> Platform:
    """The two-tier tree with n leaves, coordinator on the root, one learner per leaf."""
    start = time.perf_counter()
    g = topology.generate("hierarchy", None, seed=0, leaves=n)
    g = topology.configure_links(g, bandwidth=ACCESS_BW, latency=LATENCY, tiers={
        "core": {"bandwidth": CORE_BW}, "access": {"bandwidth": ACCESS_BW}})
    coordinator, nodes = topology.place(g, n, coordinator=0)
    placement: dict[Hashable, Hashable] = {COORDINATOR: coordinator, **dict(enumerate(nodes))}
    k_max = max(g.degree(v) - 1 for v, tier in g.nodes(data="tier") if tier == "switch")
    return Platform(g, placement, n, k_max, time.perf_counter() - start)


def network(p: Platform, model: str) -> tuple[CountingEnvironment, Network, float]:
    env = CountingEnvironment()
    start = time.perf_counter()
    net = Network(env, p.graph, p.placement, rng=np.random.default_rng(0), model=model)
    return env, net, time.perf_counter() - start


def result(model: str, build_s: float, run_s: float, env: CountingEnvironment, net: Network,
           seen: Deliveries, gc_timer: GcTimer) -> Result:
    transport = net.transport
    return Result(model, build_s, run_s, seen.last, env.events, net.messages, seen.count,
                  gc_timer.seconds, getattr(transport, "refills", 0),
                  getattr(transport, "refilled_flows", 0))


def burst(p: Platform, model: str) -> Result:
    """Every learner sends one message at t = 0."""
    with GcTimer() as gc_timer:
        env, net, build_s = network(p, model)
        seen = Deliveries()
        start = time.perf_counter()
        for i in range(p.learners):
            net.send(Message("model", i, COORDINATOR, 0, None, SIZE)).callbacks.append(seen)
        env.run()
        run_s = time.perf_counter() - start
    return result(model, build_s, run_s, env, net, seen, gc_timer)


def expected_burst(model: str, k_max: int) -> float:
    """Closed-form last delivery of the burst (see the module docstring)."""
    bits = SIZE * 8
    if model == "flow":
        return 2 * LATENCY + bits / min(ACCESS_BW, CORE_BW / k_max)
    return bits / ACCESS_BW + 2 * LATENCY + k_max * bits / CORE_BW


def schedule(n: int, rounds: int, seed: int = 1) -> tuple[list[float], list[int], list[int]]:
    """Send instants of the staggered case, sorted, with their learner and round."""
    rng = np.random.default_rng(seed)
    times = np.arange(rounds)[:, None] * ROUND_PERIOD + rng.random((rounds, n)) * SPREAD
    order = np.argsort(times, axis=None, kind="stable")
    return times.ravel()[order].tolist(), (order % n).tolist(), (order // n).tolist()


def driver(env: simpy.Environment, send: Callable[[Message], object],
           plan: tuple[list[float], list[int], list[int]]) -> Generator[simpy.Event, None, None]:
    for at, learner, round_ in zip(*plan):
        if at > env.now:
            yield env.timeout(at - env.now)
        send(Message("model", learner, COORDINATOR, round_, None, SIZE))


def driver_alone(plan: tuple[list[float], list[int], list[int]]) -> float:
    """Wall seconds of the staggered driver with a network that does nothing."""
    gc.collect()
    env = simpy.Environment()
    env.process(driver(env, lambda msg: None, plan))
    start = time.perf_counter()
    env.run()
    return time.perf_counter() - start


def staggered(p: Platform, model: str, plan: tuple[list[float], list[int], list[int]]
              ) -> Result:
    with GcTimer() as gc_timer:
        env, net, build_s = network(p, model)
        seen = Deliveries()

        def send(msg: Message) -> None:
            net.send(msg).callbacks.append(seen)

        start = time.perf_counter()
        env.process(driver(env, send, plan))
        env.run()
        run_s = time.perf_counter() - start
    return result(model, build_s, run_s, env, net, seen, gc_timer)


def protocol_scenario(n: int, rounds: int, protocol: str):
    """The communication-bound scenario: continuous averaging of a 10-parameter model."""
    from netfl.scenario import from_dict

    return from_dict({
        "name": "bench-network-protocol", "seed": 0, "device": "cpu",
        "network": {"topology": {"generator": "hierarchy"}, "bandwidth": ACCESS_BW,
                    "latency": LATENCY, "tiers": {"core": {"bandwidth": CORE_BW}}},
        "learners": {"count": n, "compute_time": "10 ms"},
        "data": {"dataset": "gaussian_mixture", "partition": "iid", "batch_size": 4,
                 "params": {"n_samples": 20 * n, "n_features": 4, "n_classes": 2}},
        "model": {"kind": "linear", "hidden": []},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "protocol": {"name": protocol},
        "horizon": {"rounds": rounds},
        "eval": {"every": rounds, "local": False, "max_samples": 1000,
                 "divergence_every": rounds},
        "output": {"per_learner": False},
    })


@dataclass
class ProtocolRun:
    name: str
    wall: float
    cpu: float
    messages: int
    row: dict
    arrays: int = 0  # batches that took the array path


    def line(self, reference: ProtocolRun | None) -> str:
        text = f"  {self.name:<12} run {self.wall:7.3f} s wall {self.cpu:7.3f} s cpu"
        if self.messages:
            text += (f"  {self.messages:>9,} messages  {self.messages / self.wall:>9,.0f} msg/s"
                     f"  {self.messages / self.cpu:>9,.0f} msg/cpu-s")
        if reference is not None and self.messages:
            own = (self.cpu - reference.cpu) / self.messages
            text += f"  communication {own * 1e6:5.1f} us cpu/msg"
        if self.arrays:
            text += f"  ({self.arrays} array batches)"
        return text


def protocol_run(n: int, rounds: int, protocol: str, batched: bool) -> ProtocolRun:
    from netfl.build import build
    from netfl.protocols.base import StarAveraging

    gc.collect()
    built = build(protocol_scenario(n, rounds, protocol))
    sim = built.simulation  # (Simulation.run freezes what the build made: gc.freeze)
    saved = StarAveraging.batch_messages
    StarAveraging.batch_messages = batched
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        sim.run()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        StarAveraging.batch_messages = saved
    name = protocol if protocol == "nosync" else ("batched" if batched else "per-message")
    return ProtocolRun(name, wall, cpu, sim.network.messages, sim.last_row,
                       getattr(sim.network, "array_batches", 0))


def run_protocol(n: int, rounds: int, threads: int) -> None:
    import torch

    if threads > 0:  # a 10-parameter model gains nothing from more; on a loaded 2-core
        torch.set_num_threads(threads)  # machine a 2-thread pool slows training ~10x
    print(f"protocol: continuous averaging, {n:,} learners, linear model (10 parameters), "
          f"{rounds} rounds on the two-tier tree; torch threads {torch.get_num_threads()}")
    reference = protocol_run(n, rounds, "nosync", False)
    print(reference.line(None) + "  (training alone: the reference)")
    single = protocol_run(n, rounds, "continuous", False)
    print(single.line(reference))
    batched = protocol_run(n, rounds, "continuous", True)
    print(batched.line(reference))
    same = single.row == batched.row and single.messages == batched.messages
    print(f"  metrics of the last row identical: {'yes' if same else 'NO'}; batched / "
          f"per-message: wall {batched.wall / single.wall:.2f}, cpu "
          f"{batched.cpu / single.cpu:.2f}; communication cpu "
          f"{(batched.cpu - reference.cpu) / (single.cpu - reference.cpu):.2f}")


def best(repeats: int, run: Callable[..., Result], *args: object) -> Result:
    """``run(*args)`` of least wall time out of ``repeats`` (a shared machine is noisy)."""
    return min((run(*args) for _ in range(repeats)), key=lambda r: r.run_s)


def ratio_text(results: dict[str, Result]) -> str:
    if "flow" in results and "store_and_forward" in results:
        return f"{results['flow'].run_s / results['store_and_forward'].run_s:.2f}"
    return "n/a"


def run_burst(p: Platform, models: tuple[str, ...], repeats: int) -> dict[str, Result]:
    print(f"burst: {p.learners:,} learners x 1 MB at t = 0, k_max = {p.k_max} leaves per switch")
    results = {}
    for model in models:
        r = results[model] = best(repeats, burst, p, model)
        print(r.line())
        expected = expected_burst(model, p.k_max)
        ok = r.delivered == p.learners and abs(r.last - expected) <= 1e-9 * expected
        print(f"  {'':<17} expected last delivery {expected:.6f} s, measured {r.last:.6f} s: "
              f"{'ok' if ok else 'MISMATCH'}")
    return results


def run_staggered(p: Platform, models: tuple[str, ...], rounds: int, repeats: int
                  ) -> dict[str, Result]:
    plan = schedule(p.learners, rounds)
    sends = len(plan[0])
    print(f"staggered: {rounds} rounds x {p.learners:,} learners x 1 MB, sends uniform in "
          f"[0, {SPREAD:g} s) of rounds {ROUND_PERIOD:g} s apart; driver alone "
          f"{driver_alone(plan):.3f} s")
    results = {}
    for model in models:
        r = results[model] = best(repeats, staggered, p, model, plan)
        print(r.line())
        last_round_end = (rounds - 1) * ROUND_PERIOD + SPREAD
        print(f"  {'':<17} {r.run_s / rounds:.3f} s wall per round; "
              f"{'all' if r.delivered == sends else 'NOT all'} delivered; last delivery "
              f"{r.last - last_round_end:+.4f} s after the last round's window")
    return results


def run_scaling(sizes: list[int], models: tuple[str, ...], repeats: int) -> None:
    rows: list[tuple[int, int, str, Result]] = []
    for n in sizes:
        p = platform(n)
        print(f"{n:,} learners: platform built in {p.build_s:.2f} s")
        for model in models:
            r = best(repeats, burst, p, model)
            ok = (r.delivered == n
                  and abs(r.last - expected_burst(model, p.k_max)) <= 1e-9 * r.last)
            rows.append((n, p.k_max, model, r))
            print(f"  {model:<17} run {r.run_s:.3f} s{'' if ok else '  (MISMATCH)'}")
    print("scaling (burst):")
    print(f"  {'learners':>9} {'k_max':>5} {'model':<17} {'build s':>8} {'run s':>8} "
          f"{'gc s':>7} {'events':>10} {'msg/s':>9} {'x prev':>7}")
    previous: dict[str, Result] = {}
    for n, k_max, model, r in rows:
        growth = f"{r.run_s / previous[model].run_s:.1f}" if model in previous else ""
        previous[model] = r
        print(f"  {n:>9,} {k_max:>5} {model:<17} {r.build_s:>8.3f} {r.run_s:>8.3f} "
              f"{r.gc_s:>7.3f} {r.events:>10,} {n / r.run_s:>9,.0f} {growth:>7}")
    if len(models) == 2:
        ratios = "  ".join(f"{n:,}: {a.run_s / b.run_s:.2f}" for (n, _, _, a), (*_, b)
                           in zip(rows[::2], rows[1::2]))
        print(f"ratio flow / store_and_forward run wall time (burst): {ratios}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--learners", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=100, help="staggered case")
    ap.add_argument("--case", choices=("burst", "staggered", "both", "protocol"),
                    default="both")
    ap.add_argument("--rounds-protocol", type=int, default=5, help="protocol case")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="protocol case: torch intra-op threads (0: torch's default)")
    ap.add_argument("--model", choices=(*MODELS, "both"), default="both")
    ap.add_argument("--scaling", action="store_true", help="the burst at --sizes learners")
    ap.add_argument("--sizes", default="1000,10000,100000", help="for --scaling")
    ap.add_argument("--repeats", type=int, default=1, help="keep the fastest of this many runs")
    args = ap.parse_args()
    models = MODELS if args.model == "both" else (args.model,)
    if args.scaling:
        run_scaling([int(s) for s in args.sizes.split(",")], models, args.repeats)
        return
    if args.case == "protocol":
        run_protocol(args.learners, args.rounds_protocol, args.torch_threads)
        return
    p = platform(args.learners)
    print(f"platform: hierarchy, {args.learners:,} leaves, {p.graph.number_of_nodes():,} nodes, "
          f"access {ACCESS_BW / 1e6:g} Mbit/s, core {CORE_BW / 1e9:g} Gbit/s, "
          f"{LATENCY * 1e3:g} ms per link; built in {p.build_s:.2f} s")
    ratios = []
    if args.case in ("burst", "both"):
        ratios.append(f"burst {ratio_text(run_burst(p, models, args.repeats))}")
    if args.case in ("staggered", "both"):
        results = run_staggered(p, models, args.rounds, args.repeats)
        ratios.append(f"staggered {ratio_text(results)}")
    print(f"ratio flow / store_and_forward run wall time: {'  '.join(ratios)}")


if __name__ == "__main__":
    main()
