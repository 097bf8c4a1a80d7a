"""Numbers from a simulated run: waits, spread, saturation, affinity, re-routes; and the ranking."""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Final

from .engine_run import Run

__all__ = ["METRICS", "gini", "jain", "percentile", "ranking", "run_metrics", "to_csv"]

METRICS: Final[dict[str, tuple[str, str]]] = {
    # key: (label, "low" or "high" is better)
    "wait_assign_p50_s": ("time to assignment p50 (s)", "low"),
    "wait_assign_p90_s": ("time to assignment p90 (s)", "low"),
    "wait_assign_p99_s": ("time to assignment p99 (s)", "low"),
    "wait_reply_p50_s": ("time to first reply p50 (s)", "low"),
    "wait_reply_p90_s": ("time to first reply p90 (s)", "low"),
    "wait_reply_p99_s": ("time to first reply p99 (s)", "low"),
    "never_assigned": ("never assigned", "low"),
    "jain": ("load spread, Jain's index (1 = even)", "high"),
    "gini": ("load spread, Gini (0 = even)", "low"),
    "queue_max": ("most waiting at once", "low"),
    "queue_mean": ("mean waiting", "low"),
    "affinity_hit_rate": ("affinity hit rate (returning buyers)", "high"),
    "exclusive_hits": ("exclusive hits", "high"),
    "reroutes": ("re-routes", "low"),
    "reclaims": ("reclaims", "low"),
    "saturated_share": ("share of online agent-time at full capacity", "low"),
    "busy_share": ("share of online agent-time busy", "low"),
}


def percentile(values: list[int], q: float) -> float | None:
    """The q-th percentile (0..100, nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def jain(values: list[float]) -> float | None:
    """Jain's fairness index: 1 when every value is equal, 1/n when one takes everything."""
    total = sum(values)
    squares = sum(v * v for v in values)
    if not values or squares == 0:
        return None
    return total * total / (len(values) * squares)


def gini(values: list[float]) -> float | None:
    """The Gini coefficient: 0 when every value is equal, towards 1 when one takes everything."""
    n = len(values)
    total = sum(values)
    if n == 0 or total == 0:
        return None
    ordered = sorted(values)
    weighted = sum((i + 1) * v for i, v in enumerate(ordered))
    return (2 * weighted) / (n * total) - (n + 1) / n


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value / 1000, 3)


def run_metrics(run: Run) -> dict[str, Any]:
    """One variant's metrics: ``summary`` (the compared numbers), ``agents``, ``series``, ``reasons``."""
    scenario = run.scenario
    capacity = {(a.shop_id, a.agent_id): a for a in scenario.agents}
    agents: dict[str, dict[str, Any]] = {}
    normalised: list[float] = []
    total_online = total_full = total_busy = 0
    for key, received in sorted(run.received.items()):
        config = capacity.get(key)
        cap = config.max_capacity if config is not None else 0
        online = run.online_samples.get(key, 0)
        full = run.full_samples.get(key, 0)
        busy = run.busy_samples.get(key, 0)
        total_online += online
        total_full += full
        total_busy += busy
        series = run.load.get(key, [])
        name = key[1] if len(scenario.shops) == 1 else f"{key[0]}/{key[1]}"
        agents[name] = {
            "shop_id": key[0],
            "agent_id": key[1],
            "capacity": cap,
            "weight": config.weight if config is not None else 1,
            "received": received,
            "received_per_capacity": round(received / cap, 4) if cap else None,
            "mean_active": round(sum(series) / len(series), 3) if series else 0.0,
            "peak_active": max(series) if series else 0,
            "online_share": round(online / len(run.sample_t), 4) if run.sample_t else 0.0,
            "saturated_share": round(full / online, 4) if online else 0.0,
            "busy_share": round(busy / online, 4) if online else 0.0,
        }
        if config is not None and cap and online:  # configured agents that were ever online
            normalised.append(received / cap)
    jain_index, gini_index = jain(normalised), gini(normalised)
    summary: dict[str, Any] = {
        "conversations": run.conversations,
        "wait_assign_p50_s": _seconds(percentile(run.wait_assign_ms, 50)),
        "wait_assign_p90_s": _seconds(percentile(run.wait_assign_ms, 90)),
        "wait_assign_p99_s": _seconds(percentile(run.wait_assign_ms, 99)),
        "wait_reply_p50_s": _seconds(percentile(run.wait_reply_ms, 50)),
        "wait_reply_p90_s": _seconds(percentile(run.wait_reply_ms, 90)),
        "wait_reply_p99_s": _seconds(percentile(run.wait_reply_ms, 99)),
        "never_assigned": run.never_assigned,
        "never_replied": run.never_replied,
        "jain": None if jain_index is None else round(jain_index, 4),
        "gini": None if gini_index is None else round(gini_index, 4),
        "queue_max": max(run.waiting) if run.waiting else 0,
        "queue_mean": round(sum(run.waiting) / len(run.waiting), 3) if run.waiting else 0.0,
        "returning_dispatches": run.returning,
        "affinity_hits": run.affinity_hits,
        "affinity_hit_rate": round(run.affinity_hits / run.returning, 4) if run.returning else None,
        "exclusive_hits": run.exclusive_hits,
        "reroutes": run.reroutes,
        "reclaims": run.reclaims,
        "queue_timeouts": run.queue_timeouts,
        "pool_claims": run.pool_claims,
        "saturated_share": round(total_full / total_online, 4) if total_online else 0.0,
        "busy_share": round(total_busy / total_online, 4) if total_online else 0.0,
        "engine_calls": run.engine_calls,
    }
    minutes = [round((t - scenario.start_ms) / 60_000, 2) for t in run.sample_t]
    load = {(k[1] if len(scenario.shops) == 1 else f"{k[0]}/{k[1]}"): v for k, v in sorted(run.load.items()) if any(v)}
    return {
        "name": run.name,
        "summary": summary,
        "reasons": dict(sorted(run.reasons.items())),
        "agents": agents,
        "series": {"minutes": minutes, "waiting": run.waiting, "active": load},
    }


def ranking(variants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per metric: the best variant (ties: every variant with the best value, in input order)."""
    rows: list[dict[str, Any]] = []
    for key, (label, better) in METRICS.items():
        values = [(v["name"], v["summary"].get(key)) for v in variants]
        known = [(n, x) for n, x in values if x is not None]
        if not known:
            continue
        best = min(x for _, x in known) if better == "low" else max(x for _, x in known)
        winners = [n for n, x in known if x == best]
        rows.append({"metric": key, "label": label, "better": better, "best": winners, "value": best,
                     "all_equal": len(winners) == len(known)})  # fmt: skip
    return rows


def to_csv(variants: list[dict[str, Any]]) -> str:
    """Every metric in long form: variant, scope (summary / agent id / reason), metric, value."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["variant", "scope", "metric", "value"])
    for v in variants:
        for key, value in v["summary"].items():
            writer.writerow([v["name"], "summary", key, "" if value is None else value])
        for reason, count in v["reasons"].items():
            writer.writerow([v["name"], "reason", reason, count])
        for agent, data in v["agents"].items():
            for key, value in data.items():
                if key not in ("shop_id", "agent_id"):
                    writer.writerow([v["name"], f"agent:{agent}", key, "" if value is None else value])
    return out.getvalue()
