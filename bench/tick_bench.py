"""In-process: the cost of time moving (issue 14, spec §10): ``engine.tick(now_ms)`` with many pending deadlines.

Every shop sets ``reroute_unanswered_after``; ``n_conversations`` conversations are dispatched
round-robin over the shops and never answered, so each holds one pending re-route deadline
(``engine.pending_deadlines()`` == ``n_conversations``). Dispatch times advance 1 ms per
``per_ms`` conversations, so the deadlines are spread the same way, ``per_ms`` per millisecond.
Then, on the same engine:

- **idle ticks**: ``tick(now)`` with ``now`` before the earliest deadline (fires nothing), each
  call timed alone (``perf_counter_ns``, minus the empty-timer cost, as in ``engine_bench``);
- **firing ticks**: ticks that move time forward by ``step`` ms, each firing about
  ``step * per_ms`` deadlines, for several steps over disjoint slices of the deadlines. Each
  fired deadline re-routes its conversation to another agent of the shop (reason REROUTED;
  ``max_reroutes`` 1, so no new deadline). The cost per expired deadline is the summed time
  of those ticks over the deadlines they fired. The outbox the hand-outs go to is drained
  after each tick, untimed (the server hands it to the watchers).

``python -m bench.tick_bench --conversations 1000000 --shops 10000 [--engine reference]``
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import subprocess
import sys
import time
from typing import Any

from bench import engine_bench as eb

REROUTE_AFTER_MS = 600_000  # 10 min: later than every dispatch time of the build
STEPS_MS = (1, 100, 10_000)  # firing ticks: ~per_ms, 100 * per_ms, 10,000 * per_ms deadlines each


def build(
    engine: Any,
    n_shops: int,
    agents_per_shop: int,
    n_conversations: int,
    *,
    per_ms: int = 10,
    reroute_after_ms: int = REROUTE_AFTER_MS,
) -> dict[str, Any]:
    """Shops with ``reroute_unanswered_after`` set, then ``n_conversations`` open, unanswered ones."""
    shops = [f"s{i}" for i in range(n_shops)]
    t = time.perf_counter()
    for i, s in enumerate(shops):
        # Capacity well above the open conversations per agent: every dispatch and every
        # re-route finds an agent.
        cap = max(50, 4 * n_conversations // max(1, n_shops * agents_per_shop))
        eb.build_shop(engine, s, agents_per_shop, eb.STRATEGIES[i % 5], capacity=cap, seed=7 + i)
        config = engine.shop_config(s)
        engine.put_shop(dataclasses.replace(config, reroute_unanswered_after_ms=reroute_after_ms))
    t_shops = time.perf_counter() - t
    dispatch = engine.dispatch
    start = eb.T0 + 10
    t = time.perf_counter()
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for i in range(n_conversations):
            dispatch(shops[i % n_shops], f"b{i}", f"c{i}", start + i // per_ms, 1, "", 1 + i % 5)
    finally:
        if gc_was:
            gc.enable()
    engine.drain_outbox()
    t_convs = time.perf_counter() - t
    last = start + (n_conversations - 1) // per_ms
    if last >= start + reroute_after_ms:
        raise ValueError("the dispatch times outlast the re-route delay: deadlines would fire during the build")
    return {
        "shops": n_shops,
        "agents_per_shop": agents_per_shop,
        "conversations": n_conversations,
        "per_ms": per_ms,
        "first_deadline": start + reroute_after_ms,
        "last_dispatch": last,
        "build_shops_s": t_shops,
        "build_conversations_s": t_convs,
        "pending": int(engine.pending_deadlines()),
    }


def idle_ticks(engine: Any, start: int, end: int, n: int, overhead: int) -> dict[str, Any]:
    """``n`` ticks at times in [start, end) (all before the first deadline), each timed alone; then
    the same ``n`` ticks again in one timed loop (``loop_mean_ns``: the Python call and the loop
    included, no timer per call: steadier than the per-call figures, which are near the timer's
    own cost)."""
    tick = engine.tick
    pc = time.perf_counter_ns
    lat = []
    fired = 0
    span = max(1, end - start)
    gc.disable()
    try:
        for j in range(n):
            now = start + (j * span) // n
            t0 = pc()
            fired += tick(now)
            t1 = pc()
            lat.append(max(0, t1 - t0 - overhead))
        nows = [start + (j * span) // n for j in range(n)]
        t0 = pc()
        for now in nows:
            fired += tick(now)
        loop = pc() - t0
    finally:
        gc.enable()
    s = eb.summarize(lat)
    return {
        "ticks": n,
        "fired": fired,
        "p50_ns": s["p50_ns"],
        "p99_ns": s["p99_ns"],
        "mean_ns": s["mean_ns"],
        "loop_mean_ns": loop / n,
    }


def firing_ticks(engine: Any, start: int, step: int, n_ticks: int, overhead: int) -> dict[str, Any]:
    """``n_ticks`` ticks at start + step, start + 2 step, ...; the outbox drained after each, untimed."""
    tick = engine.tick
    drain = engine.drain_outbox
    pc = time.perf_counter_ns
    total = 0
    fired = 0
    per_tick: list[int] = []
    handed = 0
    now = start
    gc.disable()
    try:
        for _ in range(n_ticks):
            now += step
            t0 = pc()
            k = tick(now)
            t1 = pc()
            total += max(0, t1 - t0 - overhead)
            fired += k
            per_tick.append(k)
            handed += len(drain())
    finally:
        gc.enable()
    return {
        "step_ms": step,
        "ticks": n_ticks,
        "fired": fired,
        "handouts": handed,
        "fired_per_tick": fired / n_ticks,
        "ns_per_deadline": total / fired if fired else float("nan"),
        "ns_per_tick": total / n_ticks,
        "end": now,
    }


def bench_ticks(
    kind: str,
    *,
    n_shops: int,
    agents_per_shop: int,
    n_conversations: int,
    per_ms: int = 10,
    idle: int = 100_000,
    steps: tuple[int, ...] = STEPS_MS,
    overhead: int | None = None,
) -> dict[str, Any]:
    """Build, then idle ticks, then firing ticks at each step over its own slice of the deadlines
    (``n_conversations / (len(steps) + 1)`` deadlines per step, the rest left pending), then
    idle ticks again with what is left pending."""
    if overhead is None:
        overhead = eb.timer_overhead_ns()
    engine = eb.engine_cls(kind)(7)
    built = build(engine, n_shops, agents_per_shop, n_conversations, per_ms=per_ms)
    rss = eb.rss_bytes()
    first = built["first_deadline"]
    res: dict[str, Any] = {"engine": kind, "build": built, "rss_mib": rss >> 20, "overhead_ns": overhead}
    res["idle"] = idle_ticks(engine, built["last_dispatch"] + 1, first, idle, overhead)
    res["idle"]["pending"] = int(engine.pending_deadlines())
    share = n_conversations // (len(steps) + 1)  # deadlines per step
    now = first - 1
    res["firing"] = []
    for step in steps:
        n_ticks = max(1, share // max(1, step * per_ms))
        r = firing_ticks(engine, now, step, n_ticks, overhead)
        now = r.pop("end")
        res["firing"].append(r)
    res["pending_after"] = int(engine.pending_deadlines())
    after = idle_ticks(engine, now, now + 1, min(idle, 10_000), overhead)
    after["pending"] = res["pending_after"]
    res["idle_after"] = after
    fired = sum(r["fired"] for r in res["firing"])
    res["fired"] = fired
    res["reasons"] = {eb._fastpath.Reason(k).name: sum(v) for k, v in enumerate(engine.decision_counts()) if sum(v)}
    return res


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", default="compiled", choices=["compiled", "reference"])
    p.add_argument("--shops", type=int, default=10_000)
    p.add_argument("--agents-per-shop", type=int, default=10)
    p.add_argument("--conversations", type=int, default=1_000_000)
    p.add_argument("--per-ms", type=int, default=10)
    p.add_argument("--idle", type=int, default=100_000)
    a = p.parse_args(argv)
    res = bench_ticks(
        a.engine,
        n_shops=a.shops,
        agents_per_shop=a.agents_per_shop,
        n_conversations=a.conversations,
        per_ms=a.per_ms,
        idle=a.idle,
    )
    json.dump(res, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()


# --------------------------------------------------------------------- the section of bench/run.py


def sizes(quick: bool) -> dict[str, Any]:
    """The section's sizes: 1 M open conversations (``--quick``: 100,000); the reference, whose tick
    looks at every pending deadline of every shop, at a size it runs in seconds, next to the
    compiled engine at the same size."""
    if quick:
        return {
            "shops": 1000,
            "agents_per_shop": 10,
            "conversations": 100_000,
            "idle": 20_000,
            "small": {"shops": 20, "agents_per_shop": 10, "conversations": 2000, "idle": 1000},
        }
    return {
        "shops": 10_000,
        "agents_per_shop": 10,
        "conversations": 1_000_000,
        "idle": 100_000,
        "small": {"shops": 40, "agents_per_shop": 10, "conversations": 4000, "idle": 2000},
    }


def per_deadline(x: dict[str, Any]) -> float:
    """ns per expired deadline over all the firing ticks of one ``bench_ticks`` result."""
    fired = sum(r["fired"] for r in x["firing"])
    return sum(r["ns_per_deadline"] * r["fired"] for r in x["firing"] if r["fired"]) / max(1, fired)


def run_ticks(quick: bool, conversations: int | None = None, runs: int = 3) -> dict[str, Any]:
    """The section: the compiled engine at full size ``runs`` times (each in a new engine; the
    table shows the run with the median cost per expired deadline), then both engines at the
    small size."""
    cfg = sizes(quick)
    if conversations is not None:
        cfg["conversations"] = conversations
    overhead = eb.timer_overhead_ns()
    out: dict[str, Any] = {"quick": quick, "cfg": cfg}

    def one(kind: str, c: dict[str, Any]) -> dict[str, Any]:
        return bench_ticks(
            kind,
            n_shops=c["shops"],
            agents_per_shop=c["agents_per_shop"],
            n_conversations=c["conversations"],
            idle=c["idle"],
            overhead=overhead,
        )

    def fresh(kind: str, c: dict[str, Any]) -> dict[str, Any]:
        """``one`` in a new process (``main``): its RSS is this engine's, not what an earlier
        section of ``bench.run`` left in this process."""
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        argv = [sys.executable, "-m", "bench.tick_bench", "--engine", kind, "--shops", str(c["shops"])]
        argv += ["--agents-per-shop", str(c["agents_per_shop"]), "--conversations", str(c["conversations"])]
        argv += ["--idle", str(c["idle"])]
        done = subprocess.run(argv, cwd=root, check=True, capture_output=True, text=True)
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    out["compiled_runs"] = []
    for _ in range(runs):
        out["compiled_runs"].append(fresh("compiled", cfg))
        gc.collect()
    ranked = sorted(out["compiled_runs"], key=per_deadline)
    out["compiled"] = ranked[len(ranked) // 2]
    out["small_compiled"] = one("compiled", cfg["small"])
    out["small_reference"] = one("reference", cfg["small"])
    return out


def render(res: dict[str, Any]) -> list[str]:
    """The section's Markdown lines (``bench/ANALYSIS_TICKS.md`` appended when it exists)."""
    from pathlib import Path

    c = res["compiled"]
    b = c["build"]
    L: list[str] = []
    w = L.append
    w("## Time moving: ticks with pending deadlines (issue 14, spec §10)\n")
    w(
        f"In-process, compiled engine (`bench/tick_bench.py`): {b['shops']:,} shops × {b['agents_per_shop']} agents, "
        f"every shop with `reroute_unanswered_after` 10 min; **{b['conversations']:,} open conversations** dispatched "
        f"round-robin over the shops and never answered, so **{b['pending']:,} deadlines pending** "
        f"({b['per_ms']} per millisecond of dispatch time). Built in {b['build_shops_s']:.1f} s (shops) + "
        f"{b['build_conversations_s']:.1f} s (conversations); RSS of the process (a fresh one per run) {c['rss_mib']:,} MiB. Each tick is one "
        f"`engine.tick(now_ms)` call from Python, timed alone minus the empty-timer cost ({c['overhead_ns']} ns); "
        "idle ticks are also timed as one loop of the same calls (loop mean: the Python call and loop included). "
        "A fired deadline re-routes its conversation to another agent of its shop (reason REROUTED; "
        "`max_reroutes` 1, so it sets no new deadline); the hand-outs are drained after each tick, untimed.\n"
    )
    idle, after = c["idle"], c["idle_after"]
    w("| tick | ticks | deadlines fired | per tick | per expired deadline |\n|---|---|---|---|---|")
    w(
        f"| idle (fires nothing), {idle['pending']:,} pending | {idle['ticks']:,} | {idle['fired']} | "
        f"p50 {idle['p50_ns']:,.0f} ns, p99 {idle['p99_ns']:,.0f} ns; loop mean {idle['loop_mean_ns']:,.0f} ns | — |"
    )
    for r in c["firing"]:
        w(
            f"| time + {r['step_ms']:,} ms per tick | {r['ticks']:,} | {r['fired']:,} ({r['fired_per_tick']:,.0f} per "
            f"tick) | mean {r['ns_per_tick'] / 1000:,.1f} µs | **{r['ns_per_deadline']:,.0f} ns** |"
        )
    w(
        f"| idle, {after['pending']:,} still pending | {after['ticks']:,} | {after['fired']} | "
        f"p50 {after['p50_ns']:,.0f} ns, p99 {after['p99_ns']:,.0f} ns; loop mean {after['loop_mean_ns']:,.0f} ns | — |"
    )
    w("")
    w(f"Decisions counted by the engine over the run: {c['reasons']}.\n")
    every = res.get("compiled_runs") or [c]
    if len(every) > 1:
        w(
            f"The table is the median of {len(every)} runs (each a new engine, built the same way) by cost per "
            "expired deadline; all of them: "
            + "; ".join(
                f"{per_deadline(x):,.0f} ns per deadline, idle loop mean {x['idle']['loop_mean_ns']:,.0f} ns"
                for x in every
            )
            + ".\n"
        )
    sc, sr = res["small_compiled"], res["small_reference"]
    sb = sc["build"]

    w(
        f"Both engines at {sb['shops']:,} shops × {sb['agents_per_shop']} agents, {sb['conversations']:,} pending "
        "deadlines (the reference's tick looks at every pending deadline of every shop, so it is measured small):\n"
    )
    w("| engine | idle tick, loop mean | per expired deadline (all steps) |\n|---|---|---|")
    for name, x in (("compiled", sc), ("reference", sr)):
        w(f"| {name} | {x['idle']['loop_mean_ns']:,.0f} ns | {per_deadline(x):,.0f} ns |")
    w("")
    analysis = Path(__file__).resolve().parent / "ANALYSIS_TICKS.md"
    if analysis.exists():
        w(analysis.read_text())
    return L
