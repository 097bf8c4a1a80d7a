"""Smoke test of the engine benchmarks at a tiny size: well-formed numbers, no timing thresholds."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench import engine_bench as eb


def _well_formed(res: dict) -> None:
    assert res["n"] > 0
    for key in ("p50_ns", "p99_ns", "mean_ns", "decisions_per_s"):
        assert isinstance(res[key], float) and math.isfinite(res[key]) and res[key] >= 0, key
    assert res["p50_ns"] <= res["p99_ns"]
    assert res["errors"] == 0


@pytest.mark.parametrize("kind", ["compiled", "reference"])
def test_single_shop(kind: str) -> None:
    for st in eb.STRATEGIES:
        res = eb.bench_single_shop(kind, st, n_agents=20, n_decisions=50, churn=0.5, overhead=0)
        _well_formed(res)
        assert res["n"] == 50


def test_same_stream_same_answers() -> None:
    events = eb.make_stream(["shop"], 10, 200, churn=1.0, buyers_per_shop=20, max_live=30, seed=3)
    outs = []
    for kind in ("compiled", "reference"):
        engine = eb.engine_cls(kind)(1)
        eb.build_shop(engine, "shop", 10, eb.Strategy.LEAST_SATURATION, capacity=50, seed=1)
        outs.append(eb.run_stream(engine, events, 0)["reasons"])
    assert outs[0] == outs[1]


@pytest.mark.parametrize("kind", ["compiled", "reference"])
def test_many_shops(kind: str) -> None:
    res = eb.bench_many_shops(kind, n_shops=20, agents_per_shop=5, affinity=200, n_decisions=200, overhead=0)
    _well_formed(res)
    assert res["affinity"] == 200
    assert res["reasons"].get("AFFINITY", 0) > 0


def test_batched_stream_decides_like_the_per_call_stream() -> None:
    """run_batched regroups decisions into wire batches (churn between batches); the compiled
    engine and the reference end in the same state."""
    states, results = [], []
    for kind in ("compiled", "reference"):
        engine = eb.engine_cls(kind)(7)
        built = eb.build_many(engine, 30, 5, 300)
        events = eb.make_stream(
            built["shops"], 5, 400, churn=0.5, buyers_per_shop=4, max_live=100, seed=3, start_ms=built["at"] + 1
        )
        groups = eb.batch_stream(events, 16)
        assert sum(n for _, _, n, _ in groups) == 400
        results.append(eb.run_batched(engine, groups))
        states.append(engine.export_state())
    assert results[0]["decisions"] == 400 and results[0]["failed"] == results[1]["failed"] == 0
    assert results[0]["mean_ns"] > 0
    assert states[0] == states[1]


def test_memory_and_alloc() -> None:
    mem = eb.bench_memory("compiled", affinity_sizes=(2000, 4000), agent_sizes=(2000, 4000), shop_sizes=(300, 600))
    assert math.isfinite(mem["bytes_per_affinity_entry"]) and math.isfinite(mem["bytes_per_agent"])
    assert mem["shop_sizes"] == [300, 600] and math.isfinite(mem["bytes_per_shop"])
    alloc = eb.bench_alloc(2000, n_agents=5, warmup=500)
    assert alloc["decisions"] == 2000 and isinstance(alloc["blocks_delta"], int)


def test_grpc_bodies_are_framed() -> None:
    from bench import grpc_bench as gb

    body = gb.frame(gb.direct_request())
    assert body[0] == 0 and int.from_bytes(body[1:5], "big") == len(body) - 5


def test_results_name_the_cython_that_built_the_engine() -> None:
    """bench.run reports the Cython version even where the venv has none (it only lives in the
    isolated build environment of a fresh clone): the pin in pyproject is what built _fastpath."""
    from bench.run import cython_version

    assert cython_version().startswith("3.1.8")


def test_memory_latency_probe_sees_the_cache_hierarchy(tmp_path: Path) -> None:
    from bench.memlat import memory_latency

    lat = memory_latency(tmp_path, (1, 64), runs=1)
    one, big = lat["ns_per_load"]["1"], lat["ns_per_load"]["64"]
    assert 0 < one < big  # 1 MiB stays in a cache; 64 MiB does not
    assert lat["huge_mib"] == 64 and lat["huge_ns_per_load"] > 0


def test_lifecycle_workload_mix_and_batches() -> None:
    """The lifecycle workload (issue 13): 8 operations per conversation, ~1 buyer in 4 returning,
    1 presence change per 8 conversations; its batches are valid OperateRequests that keep each
    conversation's operations in order."""
    from bench import lifecycle as lc
    from dispatcher._gen.dispatch.v1 import dispatch_pb2

    items = lc.workload(4000, n_shops=50, contacts_per_shop=10, seed=3, tag="t", start_ms=1_790_000_000_000)
    mix = lc.mix(items)
    assert mix["conversations"] == mix["dispatch"] == mix["closed"] == 4000
    assert mix["buyer_message"] == mix["agent_reply"] == 3 * 4000
    assert 0.22 < mix["returning"] / 4000 < 0.28
    assert 450 <= mix["set_presence"] <= 500
    # Agents 0 and 1 of a shop never go offline.
    assert all(not x.agent.endswith((":a0", ":a1")) for x in items if isinstance(x, lc.PresenceChange))
    batches = list(lc.operate_batches(items, 64))
    assert len(batches) == 4000 // 64 + 1
    ops = 0
    for batch in batches:
        again = dispatch_pb2.OperateRequest.FromString(batch.SerializeToString())
        assert again == batch and 0 < len(again.operations) <= 4096
        seen: dict[str, int] = {}  # conversation -> operations seen, in order
        for op in again.operations:
            kind = op.WhichOneof("kind")
            assert kind in ("dispatch", "report_conversation", "set_presence")
            body = getattr(op, kind)
            assert body.HasField("at")
            if kind == "dispatch":
                assert body.conversation_id not in seen
                seen[body.conversation_id] = 1
            elif kind == "report_conversation":
                step = seen[body.conversation_id]
                assert body.event == lc.EVENTS[step - 1]
                seen[body.conversation_id] = step + 1
        assert all(n == 8 for n in seen.values())
        ops += len(again.operations)
    assert ops == sum(v for k, v in mix.items() if k not in ("conversations", "returning"))


@pytest.mark.parametrize("kind", ["compiled", "reference"])
def test_lifecycle_batches_apply_without_errors(kind: str) -> None:
    """Every operation of the workload is valid against the state the benchmark server builds."""
    import time

    from bench import lifecycle as lc
    from dispatcher._gen.dispatch.v1 import common_pb2
    from dispatcher.operations import OperationContext, apply_operations

    now = int(time.time() * 1000)
    engine = eb.engine_cls(kind)(7)
    eb.build_many(engine, 20, 5, 100, start_ms=now - 3_600_000)
    items = lc.workload(
        300, n_shops=20, agents_per_shop=5, contacts_per_shop=5, seed=4, tag="t", start_ms=now - 1_800_000
    )
    ctx = OperationContext(engine, engine.drain_outbox, None)
    reasons: dict[int, int] = {}
    for batch in lc.operate_batches(items, 16):
        response = apply_operations(ctx, batch.operations, now)
        assert [r.WhichOneof("kind") for r in response.results] == [o.WhichOneof("kind") for o in batch.operations]
        for r in response.results:
            assert not r.HasField("error"), r.error
            if r.WhichOneof("kind") == "dispatch":
                reasons[r.dispatch.reason] = reasons.get(r.dispatch.reason, 0) + 1
    assert reasons.get(common_pb2.REASON_AFFINITY, 0) > 0  # returning buyers meet their agent


def test_lifecycle_results_render() -> None:
    from bench import lifecycle_bench as lcb

    def path(rate: float) -> dict:
        return {
            "conversations": 10,
            "conv_per_server_cpu_s": rate,
            "conv_per_s": rate,
            "server_cpu_us_per_op": 1.0,
            "errors": {},
            "reasons": {"REASON_AFFINITY": 1, "REASON_GROUP": 3},
            "ops_per_batch": 520.0,
        }

    res = {
        "quick": True,
        "cfg": lcb.sizes(True, None),
        "small": {
            "unary": path(400),
            "stream": path(150_000),
            "pyclient": path(70_000),
            "node": {"unavailable": "clients/node has no automatic batching yet"},
        },
        "latency": {
            "unary_low": {**path(100), "p50_us": 500.0, "p99_us": 900.0, "latency_samples": 8},
            "pyclient_low": {**path(100), "p50_us": 700.0, "p99_us": 900.0, "latency_samples": 8},
        },
        "fsync": {"always": path(20_000)},
        "commands": ["x"],
    }
    got = {name: ok for name, _, _, ok in lcb.targets(res)}
    assert got["lifecycle: stream / unary at 200 shops"] is True  # 375x
    assert got["lifecycle: auto-batched p50 at low load vs unary p50"] is True  # 0.2 ms more
    text = "\n".join(lcb.render(res))
    assert "not available: clients/node has no automatic batching yet" in text and "375.0×" in text


@pytest.mark.parametrize("kind", ["compiled", "reference"])
def test_tick_bench_fires_every_deadline_once(kind: str) -> None:
    """The ticks section (issue 14): every conversation holds one pending re-route deadline; idle
    ticks fire nothing; the firing ticks fire each deadline once (a REROUTED hand-out each) and
    leave none pending."""
    from bench import tick_bench as tb

    res = tb.bench_ticks(kind, n_shops=6, agents_per_shop=3, n_conversations=600, idle=50, steps=(1, 10), overhead=0)
    assert res["build"]["pending"] == res["idle"]["pending"] == 600
    assert res["idle"]["fired"] == 0 and res["idle_after"]["fired"] == 0
    assert res["idle"]["p50_ns"] <= res["idle"]["p99_ns"]
    fired = [r["fired"] for r in res["firing"]]
    assert fired == [r["handouts"] for r in res["firing"]] and sum(fired) == res["fired"]
    assert fired[0] == 200 and res["firing"][0]["fired_per_tick"] == 10  # 10 deadlines per ms, 1 ms per tick
    assert res["fired"] + res["pending_after"] == 600 and res["reasons"]["REROUTED"] == res["fired"]
    assert all(math.isfinite(r["ns_per_deadline"]) and r["ns_per_deadline"] > 0 for r in res["firing"])


def test_tick_section_renders_and_splices() -> None:
    """bench.run --ticks-only puts the section before the gRPC one, then replaces it in place."""
    from bench import run
    from bench import tick_bench as tb

    def small(kind: str) -> dict:
        return tb.bench_ticks(kind, n_shops=4, agents_per_shop=2, n_conversations=200, idle=20, overhead=0)

    raw = {
        "ticks": {"quick": True, "cfg": {}, "compiled": small("compiled"), "small_compiled": small("compiled")},
        "ticks_run": {"machine": {"date": "d", "loadavg_start": "0", "loadavg_end": "0", "engine": "e"}, "argv": ["x"]},
    }
    raw["ticks"]["small_reference"] = small("reference")
    raw["ticks_run"]["elapsed_s"] = 1.0
    text = "\n".join(tb.render(raw["ticks"]))
    assert "200 open conversations" in text and "per expired deadline" in text
    old = "# R\n\n## Engine, in-process\n\nx\n\n## gRPC\n\ny\n"
    once = run.splice_ticks(old, raw)
    assert once.index("## Engine") < once.index(run.TICKS_HEADING) < once.index("## gRPC")
    assert run.splice_ticks(once, raw) == once  # replaced, not added again


def test_rebalance_bench_moves_every_shop_and_reports() -> None:
    """bench/rebalance_bench.py at a tiny size: a 2-node cluster's data dirs regrouped to 3."""
    from bench import rebalance_bench as rb

    res = rb.run(shops=30, conversations=3000)
    assert res["shops"] == 30 and res["conversations"] + res["contacts"] == 3000
    # 100 a shop for 10 agents of capacity 8: 20 wait in each queue, less one per close (its head is handed out)
    assert res["waiting"] == 30 * 20 - res["contacts"] and res["contacts"] == 15
    # every conversation handed out and not answered has a re-route deadline; the waiting ones do not
    assert res["pending_deadlines"] == res["conversations"] - res["waiting"] and 0 < res["moved"] < 30
    assert "s per million open conversations" in rb.render(res, ["--shops", "30"])
