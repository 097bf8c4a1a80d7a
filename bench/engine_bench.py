"""In-process engine benchmarks: compiled vs reference on identical event streams.

Every function here is importable (``tests/test_bench.py`` runs them at a tiny
size) and returns plain dicts of numbers; ``bench/run.py`` runs them at full
size and writes ``bench/RESULTS.md``. Run one scenario by hand with::

    .venv/bin/python -m bench.engine_bench single --agents 5000 --decisions 20000
    .venv/bin/python -m bench.engine_bench many --shops 100000 --agents-per-shop 20 --affinity 10000000
    .venv/bin/python -m bench.engine_bench memory
    .venv/bin/python -m bench.engine_bench alloc

``run_batched`` sends the same kind of stream through ``dispatch_batch_wire``
(the DispatchBatch/DispatchStream path: no Python call per decision) and
reports the mean cost per decision of each batch call.

Timing: each decision is timed on its own with ``time.perf_counter_ns`` and
the median cost of an empty timer pair is subtracted, so "ns/decision" is the
cost of one ``engine.dispatch(...)`` call from Python, argument parsing and
result tuple included. Churn events (presence flips, agent replies, closes)
are interleaved in the stream but not timed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import _fastpath
from _fastpath import (
    AgentConfig,
    ConversationEvent,
    GroupConfig,
    OrderState,
    Presence,
    ReferenceEngine,
    ShopConfig,
    Strategy,
)

STRATEGIES = [
    Strategy.LEAST_SATURATION,
    Strategy.FEWEST_TODAY,
    Strategy.CAPACITY_ROUND_ROBIN,
    Strategy.FEWEST_UNREAD,
    Strategy.WEIGHTED_BUSYNESS,
]
T0 = 1_700_000_000_000  # ms; all streams start here and advance 1 ms per event

# Event kinds in a stream.
DISPATCH, PRESENCE, REPLY, CLOSE = 0, 1, 2, 3
BUYER_MESSAGE = int(ConversationEvent.BUYER_MESSAGE)
AGENT_REPLY = int(ConversationEvent.AGENT_REPLY)
CLOSED = int(ConversationEvent.CLOSED)
ONLINE, OFFLINE = int(Presence.ONLINE), int(Presence.OFFLINE)


def compiled_engine_cls() -> type:
    if _fastpath.CompiledEngine is None:
        raise RuntimeError(f"the compiled engine is not built: {_fastpath.COMPILED_IMPORT_ERROR}")
    return _fastpath.CompiledEngine


ENGINES: dict[str, Any] = {"reference": ReferenceEngine}


def engine_cls(kind: str) -> type:
    return compiled_engine_cls() if kind == "compiled" else ENGINES[kind]


# --------------------------------------------------------------------- building


def agent_id(shop: str, i: int) -> str:
    return f"{shop}:a{i}"


def build_shop(engine: Any, shop: str, n_agents: int, strategy: int, capacity: int, seed: int) -> None:
    """One shop: main account (MEMBER), ``n_agents`` agents, two groups (presale/aftersale) all online."""
    engine.put_shop(ShopConfig(shop_id=shop, main_account=f"{shop}:main", strategy=int(strategy), tie_seed=seed + 1))
    ids = [agent_id(shop, i) for i in range(n_agents)]
    for i, aid in enumerate(ids):
        engine.put_agent(
            AgentConfig(
                shop_id=shop,
                agent_id=aid,
                weight=1 + i % 3,
                max_capacity=capacity + (i % 4) * capacity,
                created_at_ms=i,
            )
        )
    half = max(1, n_agents // 2)
    engine.put_group(
        GroupConfig(
            shop_id=shop,
            group_id="presale",
            members=tuple(ids[:half]),
            order_states=(int(OrderState.NO_ORDER), int(OrderState.UNPAID)),
        )
    )
    if n_agents > 1:
        engine.put_group(
            GroupConfig(
                shop_id=shop,
                group_id="aftersale",
                members=tuple(ids[half:]),
                order_states=(int(OrderState.PAID_UNSHIPPED), int(OrderState.SHIPPED), int(OrderState.AFTER_SALE)),
            )
        )
    for aid in ids:
        engine.set_presence(shop, aid, ONLINE, 1, T0)


def make_stream(
    shops: Sequence[str],
    n_agents: int,
    n_decisions: int,
    *,
    churn: float,
    buyers_per_shop: int,
    max_live: int,
    seed: int,
    start_ms: int = T0 + 1,
    tag: str = "c",
) -> list[tuple]:
    """A deterministic event stream whose validity does not depend on the decisions.

    Per decision, ``churn`` other events on average: 1/3 presence flips (agents
    0 and 1 of a shop always stay online, so shops stay online and nothing
    waits), 1/3 agent replies (these create recent contacts: later decisions
    for the same buyer are affinity hits), 1/3 closes. Live conversations are
    capped at ``max_live`` by closing the oldest.
    """
    rng = random.Random(seed)
    out: list[tuple] = []
    live: list[tuple[str, str]] = []  # (shop, conversation), random-order
    offline: set[tuple[str, int]] = set()
    states = (1, 2, 3, 4, 5, 0)
    at = start_ms
    n = 0
    carry = 0.0
    while n < n_decisions:
        shop = shops[rng.randrange(len(shops))]
        buyer = f"b{rng.randrange(buyers_per_shop)}"
        conv = f"{tag}{n}"
        out.append((DISPATCH, shop, buyer, conv, at, states[n % 6]))
        live.append((shop, conv))
        n += 1
        at += 1
        carry += churn
        while carry >= 1.0:
            carry -= 1.0
            kind = rng.randrange(3)
            if kind == 0 and n_agents > 2:
                pshop = shops[rng.randrange(len(shops))]
                i = 2 + rng.randrange(n_agents - 2)
                key = (pshop, i)
                if key in offline:
                    offline.discard(key)
                    out.append((PRESENCE, pshop, agent_id(pshop, i), ONLINE, at))
                else:
                    offline.add(key)
                    out.append((PRESENCE, pshop, agent_id(pshop, i), OFFLINE, at))
            elif kind == 1 and live:
                s, c = live[rng.randrange(len(live))]
                out.append((REPLY, s, c, at))
            elif live:
                j = rng.randrange(len(live))
                live[j], live[-1] = live[-1], live[j]
                s, c = live.pop()
                out.append((CLOSE, s, c, at))
            at += 1
        while len(live) > max_live:
            j = rng.randrange(len(live))
            live[j], live[-1] = live[-1], live[j]
            s, c = live.pop()
            out.append((CLOSE, s, c, at))
            at += 1
    return out


def timer_overhead_ns() -> int:
    pc = time.perf_counter_ns
    samples = []
    for _ in range(20001):
        t0 = pc()
        t1 = pc()
        samples.append(t1 - t0)
    return int(statistics.median(samples))


def run_stream(engine: Any, events: Sequence[tuple], overhead: int) -> dict[str, Any]:
    """Apply ``events``; time each dispatch. Returns per-decision latencies (ns) and counters."""
    dispatch = engine.dispatch
    presence = engine.set_presence
    event = engine.conversation_event
    pc = time.perf_counter_ns
    lat: list[int] = []
    append = lat.append
    reasons: dict[int, int] = {}
    errors = 0
    was_enabled = gc.isenabled()
    gc.disable()
    wall0 = pc()
    try:
        for e in events:
            k = e[0]
            if k == DISPATCH:
                t0 = pc()
                r = dispatch(e[1], e[2], e[3], e[4], 1, "", e[5])
                t1 = pc()
                append(t1 - t0)
                reasons[r[0]] = reasons.get(r[0], 0) + 1
            else:
                try:
                    if k == PRESENCE:
                        presence(e[1], e[2], e[3], 1, e[4])
                    elif k == REPLY:
                        event(e[1], e[2], AGENT_REPLY, e[3])
                    else:
                        event(e[1], e[2], CLOSED, e[3])
                except _fastpath.DispatchError:
                    errors += 1
    finally:
        wall = pc() - wall0
        if was_enabled:
            gc.enable()
    engine.drain_outbox()
    lat = [max(0, x - overhead) for x in lat]
    return {"lat": lat, "reasons": reasons, "errors": errors, "wall_ns": wall, "events": len(events)}


def summarize(lat: Sequence[int]) -> dict[str, float]:
    if not lat:
        return {
            "n": 0,
            "p50_ns": float("nan"),
            "p99_ns": float("nan"),
            "mean_ns": float("nan"),
            "decisions_per_s": float("nan"),
        }
    s = sorted(lat)
    n = len(s)
    mean = sum(s) / n
    return {
        "n": n,
        "p50_ns": float(s[n // 2]),
        "p99_ns": float(s[min(n - 1, (n * 99) // 100)]),
        "mean_ns": mean,
        "decisions_per_s": 1e9 / mean if mean > 0 else float("inf"),
    }


# --------------------------------------------------------------------- scenario (a)


def bench_single_shop(
    kind: str,
    strategy: int,
    *,
    n_agents: int = 5000,
    n_decisions: int = 20000,
    churn: float = 0.5,
    seed: int = 1,
    overhead: int | None = None,
) -> dict[str, Any]:
    """(a) one shop with ``n_agents`` agents, one strategy."""
    overhead = timer_overhead_ns() if overhead is None else overhead
    engine = engine_cls(kind)(seed)
    t = time.perf_counter()
    build_shop(engine, "shop", n_agents, strategy, capacity=max(8, 4 * n_decisions // max(1, n_agents)), seed=seed)
    build_s = time.perf_counter() - t
    events = make_stream(
        ["shop"],
        n_agents,
        n_decisions,
        churn=churn,
        buyers_per_shop=max(10, n_decisions // 3),
        max_live=max(10, n_agents * 2),
        seed=seed,
    )
    res = run_stream(engine, events, overhead)
    out = summarize(res["lat"])
    out.update(
        kind=kind,
        strategy=Strategy(strategy).name,
        agents=n_agents,
        churn=churn,
        build_s=build_s,
        errors=res["errors"],
        reasons=res["reasons"],
        events=res["events"],
    )
    out["_lat"] = res["lat"]
    return out


# --------------------------------------------------------------------- scenario (b)


def build_many(
    engine: Any,
    n_shops: int,
    agents_per_shop: int,
    affinity: int,
    *,
    seed: int = 7,
    progress: bool = False,
    start_ms: int = T0 + 1,
    capacity: int = 50,
) -> dict[str, Any]:
    """(b) ``n_shops`` shops of ``agents_per_shop`` agents (strategies round the five), then
    ``affinity`` live recent-contact entries made the way production makes them:
    dispatch, agent reply, close (one buyer each)."""
    shops = [f"s{i}" for i in range(n_shops)]
    t = time.perf_counter()
    for i, s in enumerate(shops):
        build_shop(engine, s, agents_per_shop, STRATEGIES[i % 5], capacity=capacity, seed=seed + i)
    t_shops = time.perf_counter() - t
    t = time.perf_counter()
    dispatch = engine.dispatch
    event = engine.conversation_event
    at = start_ms
    per_shop = max(1, affinity // n_shops)
    made = 0
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for j in range(per_shop):
            buyer = f"h{j}"
            for s in shops:
                conv = f"w{made}"
                dispatch(s, buyer, conv, at, 1, "", 1 + made % 5)
                event(s, conv, AGENT_REPLY, at)
                event(s, conv, CLOSED, at)
                made += 1
                if made >= affinity:
                    break
            at += 1
            if made >= affinity:
                break
            if progress and j % 10 == 0:
                print(f"  affinity {made}/{affinity} ({time.perf_counter() - t:.0f}s)", file=sys.stderr, flush=True)
    finally:
        if gc_was:
            gc.enable()
    engine.drain_outbox()
    return {
        "shops": shops,
        "build_shops_s": t_shops,
        "build_affinity_s": time.perf_counter() - t,
        "affinity": made,
        "per_shop": per_shop,
        "at": at,
    }


def many_shops_stream(
    built: dict[str, Any],
    agents_per_shop: int,
    n_decisions: int,
    *,
    churn: float,
    seed: int,
    start_ms: int,
    tag: str = "c",
) -> list[tuple]:
    """A (b) stream over the shops of ``build_many``: half of its buyers are the
    ``h*`` buyers that hold a recent contact in every shop."""
    events = make_stream(
        built["shops"],
        agents_per_shop,
        n_decisions,
        churn=churn,
        buyers_per_shop=max(2, 2 * built["per_shop"]),
        max_live=max(100, len(built["shops"])),
        seed=seed,
        start_ms=start_ms,
        tag=tag,
    )
    return [
        (e[0], e[1], ("h" + e[2][1:]) if int(e[2][1:]) % 2 == 0 else e[2], *e[3:]) if e[0] == DISPATCH else e
        for e in events
    ]


def stream_end(events: Sequence[tuple]) -> int:
    """The first time after every event of ``events`` (a later stream starts there)."""
    return max(e[-2] if e[0] == DISPATCH else e[-1] for e in events) + 1


def bench_many_shops(
    kind: str,
    *,
    n_shops: int = 100_000,
    agents_per_shop: int = 20,
    affinity: int = 10_000_000,
    n_decisions: int = 200_000,
    churn: float = 0.5,
    seed: int = 7,
    overhead: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """(b) many shops with ``affinity`` live recent contacts and churn.

    Decisions pick a random shop and a buyer of which about half have a recent
    contact there (``h*`` buyers made by ``build_many``; ``b*`` buyers are new
    unless an earlier reply in the stream bound them).
    """
    overhead = timer_overhead_ns() if overhead is None else overhead
    engine = engine_cls(kind)(seed)
    built = build_many(engine, n_shops, agents_per_shop, affinity, seed=seed, progress=progress)
    events = many_shops_stream(built, agents_per_shop, n_decisions, churn=churn, seed=seed, start_ms=built["at"] + 1)
    res = run_stream(engine, events, overhead)
    out = summarize(res["lat"])
    reasons = res["reasons"]
    out.update(
        kind=kind,
        shops=n_shops,
        agents_per_shop=agents_per_shop,
        affinity=built["affinity"],
        churn=churn,
        build_shops_s=built["build_shops_s"],
        build_affinity_s=built["build_affinity_s"],
        errors=res["errors"],
        reasons={_fastpath.Reason(k).name: v for k, v in sorted(reasons.items())},
        events=res["events"],
        affinity_hit_rate=reasons.get(int(_fastpath.Reason.AFFINITY), 0) / max(1, len(res["lat"])),
    )
    out["_lat"] = res["lat"]
    return out


# --------------------------------------------------------------------- memory


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _memory_probe(what: str, size: int, kind: str) -> int:
    """In this process: build the base, then measure RSS growth of ``size`` units of ``what``."""
    engine = engine_cls(kind)(0)
    gc.collect()
    if what == "affinity":
        n_shops = 1000
        build_many(engine, n_shops, 4, 0)
        gc.collect()
        before = rss_bytes()
        build_many_affinity_only(engine, n_shops, size)
    elif what == "shops":  # shops of 2 agents and two groups: what a shop costs beyond its agents
        before = rss_bytes()
        for i in range(size):
            build_shop(engine, f"s{i}", 2, STRATEGIES[i % 5], capacity=50, seed=i)
    else:  # agents
        before = rss_bytes()
        n_shops = 1000
        for i in range(n_shops):
            build_shop(engine, f"s{i}", size // n_shops, STRATEGIES[i % 5], capacity=50, seed=i)
    gc.collect()
    return rss_bytes() - before


def build_many_affinity_only(engine: Any, n_shops: int, affinity: int) -> None:
    shops = [f"s{i}" for i in range(n_shops)]
    made = 0
    at = T0 + 1
    j = 0
    while made < affinity:
        buyer = f"h{j}"
        for s in shops:
            conv = f"w{made}"
            engine.dispatch(s, buyer, conv, at, 1, "", 1)
            engine.conversation_event(s, conv, AGENT_REPLY, at)
            engine.conversation_event(s, conv, CLOSED, at)
            made += 1
            if made >= affinity:
                break
        j += 1
        at += 1


def bench_memory(
    kind: str = "compiled",
    affinity_sizes: tuple[int, int] = (1_000_000, 3_000_000),
    agent_sizes: tuple[int, int] = (50_000, 250_000),
    shop_sizes: tuple[int, int] = (10_000, 50_000),
) -> dict[str, Any]:
    """RSS per affinity entry, per agent and per shop: (RSS(size2) - RSS(size1)) / (size2 - size1),
    each in a fresh process."""

    def probe(what: str, size: int) -> int:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = (
            f"import sys; sys.path.insert(0, {root!r}); from bench.engine_bench import _memory_probe; "
            f"print(_memory_probe({what!r}, {size:d}, {kind!r}))"
        )
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
        return int(out.stdout.strip().splitlines()[-1])

    a1, a2 = (probe("affinity", n) for n in affinity_sizes)
    g1, g2 = (probe("agents", n) for n in agent_sizes)
    s1, s2 = (probe("shops", n) for n in shop_sizes)
    return {
        "kind": kind,
        "affinity_sizes": list(affinity_sizes),
        "affinity_rss": [a1, a2],
        "bytes_per_affinity_entry": (a2 - a1) / (affinity_sizes[1] - affinity_sizes[0]),
        "agent_sizes": list(agent_sizes),
        "agent_rss": [g1, g2],
        "bytes_per_agent": (g2 - g1) / (agent_sizes[1] - agent_sizes[0]),
        "shop_sizes": list(shop_sizes),
        "shop_rss": [s1, s2],
        "bytes_per_shop": (s2 - s1) / (shop_sizes[1] - shop_sizes[0]),
    }


# --------------------------------------------------------------------- allocations


def bench_alloc(n_decisions: int = 100_000, *, n_agents: int = 50, warmup: int = 20_000) -> dict[str, Any]:
    """Net pymalloc blocks (``sys.getallocatedblocks()``) over ``n_decisions`` compiled decisions after warm-up.

    Each decision is closed right away (the stream is dispatch, reply, close),
    so the engine's live state is steady; ids are built before measuring.
    """
    engine = compiled_engine_cls()(3)
    for k, strategy in enumerate(STRATEGIES):
        build_shop(engine, f"s{k}", n_agents, strategy, capacity=100, seed=k)
    shops = [f"s{k}" for k in range(len(STRATEGIES))]
    total = warmup + n_decisions
    convs = [f"c{i}" for i in range(total)]
    buyers = [f"b{i % 997}" for i in range(total)]
    dispatch = engine.dispatch
    event = engine.conversation_event

    def run(lo: int, hi: int) -> None:
        at = T0 + 1 + lo
        for i in range(lo, hi):
            s = shops[i % 5]
            dispatch(s, buyers[i], convs[i], at, 1, "", 1 + i % 5)
            event(s, convs[i], AGENT_REPLY, at)
            event(s, convs[i], CLOSED, at)
            at += 1

    gc.collect()
    gc.disable()
    try:
        run(0, warmup)
        engine.drain_outbox()
        before = sys.getallocatedblocks()
        run(warmup, total)
        after = sys.getallocatedblocks()
    finally:
        gc.enable()
    return {
        "decisions": n_decisions,
        "blocks_delta": after - before,
        "blocks_per_decision": (after - before) / n_decisions,
    }


# --------------------------------------------------------------------- CLI


def _strip(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if not k.startswith("_")}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("single")
    s.add_argument("--agents", type=int, default=5000)
    s.add_argument("--decisions", type=int, default=20000)
    s.add_argument("--churn", type=float, default=0.5)
    s.add_argument("--engine", default="compiled")
    m = sub.add_parser("many")
    m.add_argument("--shops", type=int, default=100_000)
    m.add_argument("--agents-per-shop", type=int, default=20)
    m.add_argument("--affinity", type=int, default=10_000_000)
    m.add_argument("--decisions", type=int, default=200_000)
    m.add_argument("--churn", type=float, default=0.5)
    m.add_argument("--engine", default="compiled")
    sub.add_parser("memory")
    sub.add_parser("alloc")
    a = p.parse_args(argv)
    if a.cmd == "single":
        for st in STRATEGIES:
            print(
                json.dumps(
                    _strip(bench_single_shop(a.engine, st, n_agents=a.agents, n_decisions=a.decisions, churn=a.churn))
                )
            )
    elif a.cmd == "many":
        print(
            json.dumps(
                _strip(
                    bench_many_shops(
                        a.engine,
                        n_shops=a.shops,
                        agents_per_shop=a.agents_per_shop,
                        affinity=a.affinity,
                        n_decisions=a.decisions,
                        churn=a.churn,
                        progress=True,
                    )
                )
            )
        )
    elif a.cmd == "memory":
        print(json.dumps(bench_memory()))
    else:
        print(json.dumps(bench_alloc()))


if __name__ == "__main__":
    main()


# --------------------------------------------------------------------- (b) through the wire batch path


def batch_stream(events: Sequence[tuple], size: int) -> list[tuple[bytes, int, int, list[tuple]]]:
    """``events`` regrouped for ``dispatch_batch_wire``: (request bytes, now_ms, decisions, churn).

    Each group holds ``size`` consecutive decisions as one serialized
    DispatchBatchRequest; the churn events that came between them are applied
    after it. Churn only refers to conversations dispatched before it, so the
    stream stays valid. Built before timing: encoding is not measured."""
    from dispatcher._gen.dispatch.v1 import dispatch_pb2

    out: list[tuple[bytes, int, int, list[tuple]]] = []
    items: list[Any] = []
    churn: list[tuple] = []
    now = 0
    for e in events:
        if e[0] == DISPATCH:
            items.append(
                dispatch_pb2.DispatchRequest(
                    shop_id=e[1], buyer_id=e[2], conversation_id=e[3], type=1, order_state=e[5]
                )
            )
            now = max(now, e[4])
            if len(items) == size:
                out.append((dispatch_pb2.DispatchBatchRequest(requests=items).SerializeToString(), now, size, churn))
                items, churn = [], []
        else:
            churn.append(e)
    if items:
        out.append((dispatch_pb2.DispatchBatchRequest(requests=items).SerializeToString(), now, len(items), churn))
    return out


def run_batched(engine: Any, groups: Sequence[tuple[bytes, int, int, list[tuple]]]) -> dict[str, Any]:
    """Apply ``groups`` (batch_stream); time each ``dispatch_batch_wire`` call.
    Returns the mean ns per decision and the number of items that failed."""
    presence = engine.set_presence
    event = engine.conversation_event
    batch = engine.dispatch_batch_wire
    pc = time.perf_counter_ns
    spent = decisions = failed = 0
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for raw, now, n, churn in groups:
            t0 = pc()
            _, bad = batch(raw, now, n)
            spent += pc() - t0
            decisions += n
            failed += bad
            for e in churn:
                try:
                    if e[0] == PRESENCE:
                        presence(e[1], e[2], e[3], 1, e[4])
                    elif e[0] == REPLY:
                        event(e[1], e[2], AGENT_REPLY, e[3])
                    else:
                        event(e[1], e[2], CLOSED, e[3])
                except _fastpath.DispatchError:
                    pass
    finally:
        if was_enabled:
            gc.enable()
    engine.drain_outbox()
    return {"mean_ns": spent / max(1, decisions), "decisions": decisions, "failed": failed}
