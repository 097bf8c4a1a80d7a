"""dispatcher/rebalance.py: a stopped cluster's data dirs regrouped by a new map.

The promise: a shop behaves after the move exactly as if it had not moved (the same
answers, hand-outs and state), and a rebalance that cannot be done writes nothing.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from server_fixtures import ROOT
from test_cluster_tools import Up

import _fastpath
from _fastpath import AgentConfig, ConversationEvent, Presence, ShopConfig
from dispatcher._gen.dispatch.v1 import admin_pb2, admin_pb2_grpc, dispatch_pb2, dispatch_pb2_grpc
from dispatcher.cluster import NODE_RECORD, ClusterMap, NodeRecord, dump_map, even_map, load_map
from dispatcher.durability.datadir import DataDir
from dispatcher.rebalance import RebalanceError, rebalance, split_states

T0 = 1_790_000_000_000
MIN = 60_000
SHOPS = [f"shop-{i}" for i in range(12)]


def _build(engine: Any) -> None:
    """Shops with every kind of state: loads, a queue with priorities, recent contacts,
    conversations tracked for §10 re-routes (pending deadlines), an exclusive agent."""
    for i, shop in enumerate(SHOPS):
        engine.put_shop(
            ShopConfig(shop, f"{shop}:main", strategy=1 + i % 5, reroute_unanswered_after_ms=10 * MIN, tie_seed=i + 1)
        )
        for a in range(3):
            engine.put_agent(AgentConfig(shop, f"a{a}", max_capacity=2, weight=1 + a))
            engine.set_presence(shop, f"a{a}", Presence.ONLINE, 1, T0)
        engine.set_exclusive_agent(shop, "vip", "a1")
        at = T0 + 1000
        for c in range(8):
            engine.dispatch(shop, f"b{c}", f"{shop}-c{c}", at + c, priority=c % 3)
        for c in (0, 1):
            engine.conversation_event(shop, f"{shop}-c{c}", ConversationEvent.AGENT_REPLY, at + 100)
            engine.conversation_event(shop, f"{shop}-c{c}", ConversationEvent.CLOSED, at + 200)
    engine.drain_outbox()


def _afterwards(engine: Any, shop: str) -> list[Any]:
    """What a shop does next: returning buyers (affinity), a VIP, time passing (re-routes fire)."""
    answers: list[Any] = []
    at = T0 + 2 * MIN
    for c in (0, 1, 9):
        answers.append(engine.dispatch(shop, f"b{c}", f"{shop}-again{c}", at))
    answers.append(engine.dispatch(shop, "vip", f"{shop}-vip", at + 1))
    engine.tick_shop(shop, T0 + 15 * MIN)  # the unanswered ones are re-routed, the queue moves
    answers.append([row for row in engine.drain_outbox() if row[0] == shop])
    answers.append(engine.dispatch(shop, "late", f"{shop}-late", T0 + 16 * MIN))
    return answers


def _rows_of(state: dict[str, Any], shop: str) -> dict[str, Any]:
    timers = state["timers"]
    return {
        "shop": [s for s in state["shops"] if s["config"]["shop_id"] == shop],
        **{t: [r for r in state[t] if r[0] == shop] for t in ("conversations", "affinity", "exclusive")},
        "tracked": [r for r in timers["tracked"] if r[0] == shop],
        "pending": [r[:4] for r in timers["pending"] if r[0] == shop],  # seq renumbered
    }


@pytest.mark.parametrize("engine_name", ["CompiledEngine", "ReferenceEngine"])
def test_a_moved_shop_behaves_as_if_it_had_not_moved(engine_name: str) -> None:
    cls = getattr(_fastpath, engine_name)
    whole = cls(7)
    _build(whole)
    state = whole.export_state()
    state["outbox"] = []
    old_map = even_map([("n0", "127.0.0.1:1")], 64)
    new_map = even_map([("m0", "127.0.0.1:1"), ("m1", "127.0.0.1:2"), ("m2", "127.0.0.1:3")], 64, epoch=2)
    parts = split_states({"n0": state}, old_map, new_map)
    assert sorted(s["config"]["shop_id"] for p in parts.values() for s in p["shops"]) == sorted(SHOPS)
    assert all(p["shops"] for p in parts.values())  # 12 shops over 3 nodes: each got some
    assert sum(len(p["timers"]["pending"]) for p in parts.values()) == len(state["timers"]["pending"]) > 0
    nodes = {}
    for name, part in parts.items():
        nodes[name] = cls(part["seed"])
        nodes[name].import_state(part)
        for shop in (s["config"]["shop_id"] for s in part["shops"]):
            assert _rows_of(nodes[name].export_state(), shop) == _rows_of(state, shop)
    for shop in SHOPS:
        node = nodes[new_map.owner_of(shop).name]
        assert _afterwards(node, shop) == _afterwards(whole, shop), shop
        assert _rows_of(node.export_state(), shop) == _rows_of(whole.export_state(), shop), shop


def test_split_refuses_a_shop_in_two_data_dirs_or_in_the_wrong_one() -> None:
    engine = _fastpath.CompiledEngine(7)
    _build(engine)
    state = engine.export_state()
    two = even_map([("n0", "127.0.0.1:1"), ("n1", "127.0.0.1:2")], 64)
    new = even_map([("m0", "127.0.0.1:1")], 64, epoch=2)
    mine = {**state, "shops": [s for s in state["shops"] if two.owner_of(s["config"]["shop_id"]).name == "n0"]}
    for table in ("conversations", "affinity", "exclusive"):
        mine[table] = [r for r in state[table] if two.owner_of(r[0]).name == "n0"]
    mine["timers"] = {**state["timers"], "pending": [], "tracked": []}
    assert split_states({"n0": mine}, two, new)["m0"]["shops"] == mine["shops"]
    with pytest.raises(RebalanceError, match="is in the data dirs of both n0 and n1"):
        split_states({"n0": mine, "n1": mine}, two, new)
    with pytest.raises(RebalanceError, match="but the old map gives it to"):
        split_states({"n0": state}, two, new)


# ------------------------------------------------------------------ a real cluster, stopped and rebalanced


def _states(target: str, shops: list[str]) -> dict[str, Any]:
    with grpc.insecure_channel(target) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        out = {}
        for shop in shops:
            state = admin.GetShopState(
                admin_pb2.GetShopStateRequest(shop_id=shop), metadata=(("x-dispatch-shop", shop),)
            )
            out[shop] = state.SerializeToString(deterministic=True)
        return out


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher", "cluster", "rebalance", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_rebalance_a_stopped_cluster_from_two_nodes_to_three(tmp_path: Path) -> None:
    root, out = tmp_path / "two", tmp_path / "three"
    up = Up(root, 2)
    try:
        up.wait_ready()
        with grpc.insecure_channel(up.front) as channel:
            admin, dispatch = admin_pb2_grpc.AdminStub(channel), dispatch_pb2_grpc.DispatchStub(channel)
            for shop in SHOPS:
                md = (("x-dispatch-shop", shop),)
                admin.PutShop(admin_pb2.PutShopRequest(shop=admin_pb2.ShopConfig(shop_id=shop, main_account=f"{shop}:m")), metadata=md)  # fmt: skip
                admin.PutAgent(admin_pb2.PutAgentRequest(agent=admin_pb2.Agent(shop_id=shop, agent_id="a", max_capacity=1)), metadata=md)  # fmt: skip
                dispatch.SetPresence(dispatch_pb2.SetPresenceRequest(shop_id=shop, agent_id="a", presence=1), metadata=md)  # fmt: skip
                for c in range(3):  # one served, two queued
                    dispatch.Dispatch(dispatch_pb2.DispatchRequest(shop_id=shop, buyer_id=f"b{c}", conversation_id=f"{shop}-{c}"), metadata=md)  # fmt: skip
        before = _states(up.front, SHOPS)
        # A node still running is refused: its data dir is locked.
        running = _cli("--data-root", str(root), "--nodes", "3", "--out", str(out))
        assert running.returncode == 3 and "stop every node first" in running.stderr, running.stderr
        assert not out.exists()
        up.popen.send_signal(signal.SIGTERM)
        assert up.finish() == 0
    finally:
        up.kill()
    old_files = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    done = _cli("--data-root", str(root), "--nodes", "3", "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["shops"] == len(SHOPS) and 0 < report["moved"] < len(SHOPS) and report["epoch"] == 2
    assert sum(n["shops"] for n in report["nodes"].values()) == len(SHOPS)
    assert {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()} == old_files
    assert load_map(out / "cluster.toml").epoch == 2
    assert NodeRecord.from_json((out / "dispatch-2" / NODE_RECORD).read_bytes()) == NodeRecord("dispatch-2", 2, 4096)
    # Done twice into the same --out: refused, nothing written.
    again = _cli("--data-root", str(root), "--nodes", "3", "--out", str(out))
    assert again.returncode == 3 and "is not empty" in again.stderr
    up3 = Up(out, 3)
    try:
        up3.wait_ready()
        assert _states(up3.front, SHOPS) == before
        with grpc.insecure_channel(up3.front) as channel:
            dispatch = dispatch_pb2_grpc.DispatchStub(channel)
            for shop in SHOPS:  # the queue is still there: the next close hands out its head
                md = (("x-dispatch-shop", shop),)
                dispatch.ReportConversation(
                    dispatch_pb2.ReportConversationRequest(shop_id=shop, conversation_id=f"{shop}-0", event=3),
                    metadata=md,
                )
                state = admin_pb2_grpc.AdminStub(channel).GetShopState(
                    admin_pb2.GetShopStateRequest(shop_id=shop), metadata=md
                )
                assert [w.conversation_id for w in state.queue] == [f"{shop}-2"]
    finally:
        up3.kill()


def test_rebalance_refuses_an_epoch_that_is_not_newer(tmp_path: Path) -> None:
    root = tmp_path / "root"
    old = even_map([("n0", "127.0.0.1:1")], 64, epoch=3)
    DataDir(root / "n0", create=True).close()
    same = ClusterMap.of(64, 3, old.nodes)
    with pytest.raises(RebalanceError, match="must be newer"):
        rebalance(root, old, same, tmp_path / "out")
    (root / "cluster.toml").write_text(dump_map(old))
    assert not (tmp_path / "out").exists()
