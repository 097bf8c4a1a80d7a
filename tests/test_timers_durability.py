"""§10 deadlines across kill -9: one that passed while the server was down fires on recovery, once.

The real server as a subprocess on a data dir (as in ``test_durability.py``): a
conversation is dispatched with a 2 s re-route deadline, the server is killed
before it passes and restarted after. Its tick fires the deadline (journaled as a
``tick`` record); a second kill -9 and restart replays that record and finds the
same state, with nothing left to fire.
"""

from __future__ import annotations

import time
from pathlib import Path

from google.protobuf import duration_pb2
from test_durability import Server, Stubs, servers  # noqa: F401 - the fixture

from dispatcher._gen.dispatch.v1 import admin_pb2, dispatch_pb2

SHOP = "late"


async def _state(target: str) -> admin_pb2.ShopState:
    stubs = Stubs(target)
    try:
        return await stubs.admin.GetShopState(admin_pb2.GetShopStateRequest(shop_id=SHOP))
    finally:
        await stubs.channel.close()


def _loads(state: admin_pb2.ShopState) -> dict[str, int]:
    return {a.agent_id: a.active for a in state.agents}


async def _wait_for(target: str, predicate, timeout: float = 10.0) -> admin_pb2.ShopState:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        state = await _state(target)
        if predicate(state) or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


async def test_a_deadline_that_passed_while_down_fires_on_recovery_exactly_once(
    tmp_path: Path,
    servers: list[Server],  # noqa: F811
) -> None:
    data = tmp_path / "data"
    server = Server(data)
    servers.append(server)
    stubs = Stubs(server.target)
    await stubs.admin.PutShop(
        admin_pb2.PutShopRequest(
            shop=admin_pb2.ShopConfig(
                shop_id=SHOP,
                main_account=f"{SHOP}:main",
                reroute_unanswered_after=duration_pb2.Duration(seconds=2),
            )
        )
    )
    for agent in ("a", "b"):
        await stubs.admin.PutAgent(
            admin_pb2.PutAgentRequest(agent=admin_pb2.Agent(shop_id=SHOP, agent_id=f"{SHOP}:{agent}", max_capacity=1))
        )
        await stubs.dispatch.SetPresence(
            dispatch_pb2.SetPresenceRequest(shop_id=SHOP, agent_id=f"{SHOP}:{agent}", presence=1)
        )
    answer = await stubs.dispatch.Dispatch(
        dispatch_pb2.DispatchRequest(shop_id=SHOP, buyer_id="buyer", conversation_id="c1")
    )
    first = answer.agent_id
    await stubs.channel.close()
    before = await _state(server.target)
    assert before.pending_deadlines == 1
    server.kill9()

    time.sleep(2.5)  # the deadline passes while the server is down

    again = Server(data)
    servers.append(again)
    moved = await _wait_for(again.target, lambda s: s.pending_deadlines == 0)
    assert moved.pending_deadlines == 0
    loads = _loads(moved)
    assert loads[first] == 0 and sum(loads.values()) == 1  # re-routed once, to the other agent
    again.kill9()

    third = Server(data)
    servers.append(third)
    replayed = await _state(third.target)
    assert _loads(replayed) == loads  # the tick record replays; nothing fires twice
    assert replayed.pending_deadlines == 0
    assert third.finish() == 0
