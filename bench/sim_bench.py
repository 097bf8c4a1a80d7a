"""``dispatcher simulate`` speed (issue 17): one shop, 50 agents, 20,000 conversations over a day,
6 variants, target <= 30 s. Prints the seconds; ``--report DIR`` also writes the report.

    .venv/bin/python bench/sim_bench.py [--report DIR]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dispatcher.simulate import Variant, parse_workload, run_variants

HOURLY = [2, 1, 1, 1, 1, 2, 4, 8, 12, 14, 14, 13, 11, 12, 14, 14, 13, 12, 11, 12, 13, 10, 6, 3]


def workload() -> dict[str, Any]:
    agents = []
    for i in range(50):
        start = ["00:00", "08:00", "09:00", "12:00", "14:00"][i % 5]
        end = ["12:00", "18:00", "21:00", "24:00", "24:00"][i % 5]
        agents.append({
            "agent_id": f"shop:agent{i:02d}",
            "capacity": [5, 8, 10, 12, 15][i % 5],
            "weight": 1 + i % 3,
            "reply_delay": {"dist": "exponential", "mean_s": 15 + (i % 7) * 5},
            "handle_time": {"dist": "lognormal", "mean_s": 420 + (i % 4) * 120, "sigma": 0.6},
            "online": [[start, end]],
        })  # fmt: skip
    return {
        "simulation": {"seed": 1, "hours": 24},
        "shops": [{
            "shop_id": "shop",
            "settings": {"strategy": "LEAST_SATURATION"},
            "arrivals": {"total": 20_000, "hourly": HOURLY, "returning_share": 0.3, "messages": 3},
            "agents": agents,
        }],
    }  # fmt: skip


VARIANTS = [
    Variant("least-saturation", shop={"strategy": 1}),
    Variant("fewest-today", shop={"strategy": 2}),
    Variant("capacity-rr", shop={"strategy": 3}),
    Variant("fewest-unread", shop={"strategy": 4}),
    Variant("weighted-busyness", shop={"strategy": 5}),
    Variant("ls+reroute-2m", shop={"strategy": 1, "reroute_unanswered_after_ms": 120_000}),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, help="also write the report into this dir")
    args = parser.parse_args()
    t0 = time.perf_counter()
    scenario = parse_workload(workload())
    result = run_variants(scenario, VARIANTS)
    simulated = time.perf_counter() - t0
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(f"simulated 6 variants x {len(scenario.arrivals)} conversations, 50 agents, 1 day: {simulated:.2f} s")
    for name, seconds in result["timing_s"].items():
        print(f"  {name:<20} {seconds:6.2f} s")
    if args.report is not None:
        from dispatcher.simulate.report import write_report

        t1 = time.perf_counter()
        write_report(result, args.report)
        print(f"report: {time.perf_counter() - t1:.2f} s more ({args.report})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
