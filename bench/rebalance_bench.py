"""How long an offline rebalance takes (``dispatcher cluster rebalance``, dispatcher/rebalance.py).

    .venv/bin/python -m bench.rebalance_bench [--quick] [--shops N] [--conversations N]
                                              [--out bench/RESULTS_REBALANCE.md]

A stopped cluster of 2 nodes is made as a server would leave it: one compiled engine
builds the shops (10 agents of capacity 8 each, re-routes on: every conversation tracked,
each one handed out and unanswered with a pending deadline), dispatches the conversations (beyond 80 a shop, they wait in
its queue) and makes recent contacts; its export is split by a 2-node map and written as the two nodes'
data dirs (snapshot and MANIFEST, as ``begin()`` writes them). Then ``rebalance()`` to
3 nodes is timed as the command runs it: recover both dirs, split, import/export check,
write, read back. The maintenance window is this time (plus copying the files).
"""

from __future__ import annotations

import argparse
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import _fastpath  # noqa: E402
from _fastpath import AgentConfig, ConversationEvent, Presence, ShopConfig  # noqa: E402
from dispatcher.cluster import Membership, dump_map, even_map  # noqa: E402
from dispatcher.rebalance import rebalance, split_states, write_node_dir  # noqa: E402

T0 = 1_790_000_000_000
MIN = 60_000
STEPS = {
    "recover": "recover both old data dirs (load each snapshot into an engine) and export them",
    "split": "regroup the shops by the new map",
    "check": "import each new state into a fresh engine and export it back, compared",
    "write": "write the 3 new data dirs (snapshot, MANIFEST, CLUSTER) and the map",
    "read_back": "recover each new data dir and compare it with what was meant",
}


def build(shops: int, conversations: int, agents: int = 10) -> tuple[dict[str, Any], dict[str, int]]:
    """One engine's export with ``shops`` shops and ``conversations`` open conversations."""
    engine = _fastpath.CompiledEngine(7)
    ids = [f"shop-{i}" for i in range(shops)]
    for shop in ids:
        engine.put_shop(ShopConfig(shop, f"{shop}:main", reroute_unanswered_after_ms=10 * MIN))
        for a in range(agents):
            engine.put_agent(AgentConfig(shop, f"a{a}", max_capacity=8))
            engine.set_presence(shop, f"a{a}", Presence.ONLINE, 1, T0)
    per_shop = max(1, conversations // shops)
    at = T0 + 1
    made = 0
    for k in range(per_shop):
        for shop in ids:
            engine.dispatch(shop, f"b{k}", f"{shop}-c{k}", at)
            made += 1
        at += 1
    contacts = 0
    for shop in ids[: max(1, shops // 10)]:  # recent contacts: a tenth of the shops close a few
        for k in range(min(5, per_shop)):
            engine.conversation_event(shop, f"{shop}-c{k}", ConversationEvent.AGENT_REPLY, at)
            engine.conversation_event(shop, f"{shop}-c{k}", ConversationEvent.CLOSED, at)
            contacts += 1
    engine.drain_outbox()
    state = engine.export_state()
    state["outbox"] = []
    waiting = sum(
        len(shop["waiting"]["1"]) + len(shop["waiting"]["2"]) + len(shop["waiting"]["3"]) for shop in state["shops"]
    )
    counts = {"shops": shops, "agents": shops * agents, "conversations": made - contacts, "waiting": waiting}
    return state, {**counts, "contacts": contacts}


def run(shops: int, conversations: int) -> dict[str, Any]:
    t = time.perf_counter()
    state, counts = build(shops, conversations)
    built_s = time.perf_counter() - t
    old_map = even_map([("dispatch-0", "127.0.0.1:50061"), ("dispatch-1", "127.0.0.1:50062")], 4096)
    new_map = even_map([(f"dispatch-{i}", f"127.0.0.1:{50061 + i}") for i in range(3)], 4096, epoch=2)
    work = Path(tempfile.mkdtemp(prefix="rebalance-bench-"))
    try:
        root = work / "old"
        root.mkdir()
        halves = split_states({"all": state}, even_map([("all", "x:1")], 4096), old_map)
        del state
        t = time.perf_counter()
        for name, half in halves.items():
            write_node_dir(root / name, half, Membership(old_map, name))
        written_s = time.perf_counter() - t
        (root / "cluster.toml").write_text(dump_map(old_map))
        del halves
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        t = time.perf_counter()
        report = rebalance(root, old_map, new_map, work / "new")
        seconds = time.perf_counter() - t
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        **counts,
        "pending_deadlines": sum(n["pending_deadlines"] for n in report.nodes.values()),
        "moved": report.moved,
        "build_s": built_s,
        "old_dirs_written_s": written_s,
        "old_bytes": size,
        "seconds": seconds,
        "steps": report.seconds,
        "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10,
    }


def render(r: dict[str, Any], argv: list[str]) -> str:
    per_m = r["seconds"] / max(1, r["conversations"]) * 1e6
    return "\n".join(
        [
            "## Offline rebalance (bench/rebalance_bench.py)",
            "",
            f"Machine: {platform.machine()}, Python {platform.python_version()}, engine {_fastpath.ENGINE_KIND}. "
            f"Generated {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC. "
            f"Command: `{' '.join(['python -m bench.rebalance_bench', *argv])}`.",
            "",
            f"A stopped 2-node cluster: {r['shops']:,} shops, {r['agents']:,} agents, {r['conversations']:,} open "
            f"conversations ({r['waiting']:,} of them waiting; {r['pending_deadlines']:,} re-route deadlines pending), "
            f"{r['contacts']:,} recent contacts; its two data dirs hold {r['old_bytes'] / 2**20:,.1f} MiB of "
            f"snapshots. `rebalance()` to 3 nodes (epoch 2), as `dispatcher cluster rebalance` runs it:",
            "",
            "| step | seconds |",
            "|---|---:|",
            *(f"| {STEPS.get(k, k)} | {v:.1f} |" for k, v in r["steps"].items()),
            f"| **all** | **{r['seconds']:.1f}** |",
            "",
            f"**{per_m:.1f} s per million open conversations**; {r['moved']:,} of {r['shops']:,} shops moved; "
            f"process peak RSS {r['maxrss_mib']:,} MiB (the states are held as Python data while they are "
            "regrouped). One process, one core: the maintenance window is this plus copying the files.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1,000 shops and 20,000 conversations")
    p.add_argument("--shops", type=int)
    p.add_argument("--conversations", type=int)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS_REBALANCE.md")
    a = p.parse_args(argv)
    shops = a.shops or (1000 if a.quick else 10_000)
    conversations = a.conversations or (20_000 if a.quick else 1_000_000)
    text = render(run(shops, conversations), argv)
    a.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
