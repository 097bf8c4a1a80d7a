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
        events = eb.make_stream(built["shops"], 5, 400, churn=0.5, buyers_per_shop=4, max_live=100, seed=3,
                                start_ms=built["at"] + 1)
        groups = eb.batch_stream(events, 16)
        assert sum(n for _, _, n, _ in groups) == 400
        results.append(eb.run_batched(engine, groups))
        states.append(engine.export_state())
    assert results[0]["decisions"] == 400 and results[0]["failed"] == results[1]["failed"] == 0
    assert results[0]["mean_ns"] > 0
    assert states[0] == states[1]


def test_memory_and_alloc() -> None:
    mem = eb.bench_memory("compiled", affinity_sizes=(2000, 4000), agent_sizes=(2000, 4000))
    assert math.isfinite(mem["bytes_per_affinity_entry"]) and math.isfinite(mem["bytes_per_agent"])
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
