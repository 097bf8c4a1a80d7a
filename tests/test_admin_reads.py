"""Admin reads of issue 11: ``GetBuyer.recent_contact_expires_at`` is the contact time
plus the shop's window, and ``GetShopState`` of a shop too big for one message is
read page by page."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from server_fixtures import T0, ThreadedServer, dispatch_client

from _fastpath import AgentConfig, ShopConfig
from dispatcher._gen.dispatch.v1 import admin_pb2, admin_pb2_grpc, common_pb2, dispatch_pb2, dispatch_pb2_grpc
from dispatcher.convert import SHOP_STATE_PAGE_BYTES, shop_state_page
from dispatcher.server import MAX_MESSAGE_BYTES

IA = grpc.StatusCode.INVALID_ARGUMENT
HOUR = 3600 * 1000


@pytest.fixture
def running() -> Iterator[tuple[ThreadedServer, Any, Any]]:
    server = ThreadedServer().start()
    channel = grpc.insecure_channel(server.target, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    try:
        yield server, dispatch_pb2_grpc.DispatchStub(channel), admin_pb2_grpc.AdminStub(channel)
    finally:
        channel.close()
        server.stop()


# ------------------------------------------------------------------ GetBuyer


@pytest.mark.parametrize("window_ms", [None, 1 * HOUR, 90 * 1000])
def test_recent_contact_expires_a_window_after_the_contact(running: Any, window_ms: int | None) -> None:
    server, d, a = running
    shop = admin_pb2.ShopConfig(shop_id="s", main_account="s")
    if window_ms is not None:
        shop.affinity_window.CopyFrom(duration_pb2.Duration(seconds=window_ms // 1000))
    a.PutShop(admin_pb2.PutShopRequest(shop=shop))
    a.PutAgent(admin_pb2.PutAgentRequest(agent=admin_pb2.Agent(shop_id="s", agent_id="s:a", max_capacity=5)))
    presence = dispatch_pb2.SetPresenceRequest(shop_id="s", agent_id="s:a", presence=common_pb2.PRESENCE_ONLINE)
    presence.at.FromMilliseconds(T0)
    d.SetPresence(presence)
    request = dispatch_pb2.DispatchRequest(shop_id="s", buyer_id="b", conversation_id="c")
    request.at.FromMilliseconds(T0)
    d.Dispatch(request)
    reply = dispatch_pb2.ReportConversationRequest(
        shop_id="s", conversation_id="c", event=common_pb2.CONVERSATION_EVENT_AGENT_REPLY
    )
    reply.at.FromMilliseconds(T0 + 1000)  # the contact: the agent replied
    d.ReportConversation(reply)
    answer = a.GetBuyer(admin_pb2.GetBuyerRequest(shop_id="s", buyer_id="b"))
    window = 72 * HOUR if window_ms is None else window_ms
    assert answer.recent_contact == "s:a"
    assert answer.recent_contact_expires_at.ToMilliseconds() == T0 + 1000 + window
    # It holds until then, and not at that instant (the engine's rule: younger than the window).
    presence.at.FromMilliseconds(T0 + 1000 + window - 1)
    d.SetPresence(presence)
    assert a.GetBuyer(admin_pb2.GetBuyerRequest(shop_id="s", buyer_id="b")).recent_contact == "s:a"
    presence.at.FromMilliseconds(T0 + 1000 + window)
    d.SetPresence(presence)
    gone = a.GetBuyer(admin_pb2.GetBuyerRequest(shop_id="s", buyer_id="b"))
    assert gone.recent_contact == "" and not gone.HasField("recent_contact_expires_at")


# ------------------------------------------------------------------ GetShopState pages

BIG = 60_000
PAD = "x" * 110  # long ids: 60k agents are more than one 8 MiB message


def big_shop(server: ThreadedServer) -> list[str]:
    """A shop of 60k agents, loaded straight into the engine (on the server's loop: no RPC
    per agent). Through a state import: 60k put_agent calls on the compiled engine take
    ~20 s (each costs time linear in the shop's agents)."""
    ids = [f"agent-{i:06d}-{PAD}" for i in range(BIG)]

    async def fill() -> None:
        scratch = type(server.engine)(0)
        scratch.put_shop(ShopConfig("big", "big"))
        scratch.put_agent(AgentConfig("big", "model", max_capacity=3))
        state = scratch.export_state()
        shop = next(x for x in state["shops"] if x["config"]["shop_id"] == "big")
        main, model = shop["agents"]
        assert main[0] == "big" and model[0] == "model"
        # creation order (reversed) is not agent_id order
        shop["agents"] = [main, *([agent_id, *model[1:]] for agent_id in reversed(ids))]
        server.engine.import_state(state)  # the server's engine is still empty

    server.run(fill(), timeout=120)
    return ["big", *ids]  # the main account is an agent too


def test_a_shop_of_60k_agents_is_read_page_by_page(running: Any) -> None:
    server, d, a = running
    ids = big_shop(server)

    # page_size 0: the server's default page, well under the limit, then the rest.
    seen: list[str] = []
    token, pages, agent_bytes = "", 0, 0
    while True:
        page = a.GetShopState(admin_pb2.GetShopStateRequest(shop_id="big", page_token=token))
        pages += 1
        assert page.ByteSize() <= SHOP_STATE_PAGE_BYTES
        assert page.shop_id == "big" and page.config.shop_id == "big"
        seen += [x.agent_id for x in page.agents]
        agent_bytes += sum(x.ByteSize() + 4 for x in page.agents)
        token = page.next_page_token
        if not token:
            break
    assert agent_bytes > MAX_MESSAGE_BYTES  # whole, it was RESOURCE_EXHAUSTED before paging
    assert pages >= 3
    assert seen == sorted(ids)  # every agent exactly once, in agent_id order

    # An explicit page size, through the client's iterator.
    with dispatch_client.DispatchClient(server.target, timeout=60) as client:
        first = client.get_shop_state("big", page_size=25_000)
        assert len(first.agents) == 25_000 and first.next_page_token
        assert [x.agent_id for x in client.iter_shop_agents("big", page_size=25_000)] == sorted(ids)


def test_pages_list_each_agent_once_while_agents_come_and_go(running: Any) -> None:
    server, d, a = running
    a.PutShop(admin_pb2.PutShopRequest(shop=admin_pb2.ShopConfig(shop_id="s", main_account="s")))
    for i in range(10):
        a.PutAgent(admin_pb2.PutAgentRequest(agent=admin_pb2.Agent(shop_id="s", agent_id=f"s:{i}", max_capacity=2)))
    page = a.GetShopState(admin_pb2.GetShopStateRequest(shop_id="s", page_size=4))
    assert [x.agent_id for x in page.agents] == ["s", "s:0", "s:1", "s:2"]
    # s:2 (the token's own agent) and s:5 leave, s:00 and s:9x arrive
    a.DeleteAgent(admin_pb2.DeleteAgentRequest(shop_id="s", agent_id="s:2"))
    a.DeleteAgent(admin_pb2.DeleteAgentRequest(shop_id="s", agent_id="s:5"))
    for new in ("s:00", "s:9x"):
        a.PutAgent(admin_pb2.PutAgentRequest(agent=admin_pb2.Agent(shop_id="s", agent_id=new, max_capacity=2)))
    seen = [x.agent_id for x in page.agents]
    token = page.next_page_token
    while token:
        page = a.GetShopState(admin_pb2.GetShopStateRequest(shop_id="s", page_size=4, page_token=token))
        seen += [x.agent_id for x in page.agents]
        token = page.next_page_token
    assert seen == ["s", "s:0", "s:1", "s:2", "s:3", "s:4", "s:6", "s:7", "s:8", "s:9", "s:9x"]


def test_a_small_shop_is_answered_whole_as_before(running: Any) -> None:
    server, d, a = running
    a.PutShop(admin_pb2.PutShopRequest(shop=admin_pb2.ShopConfig(shop_id="s", main_account="s")))
    for agent_id in ("s:z", "s:b", "s:m"):
        a.PutAgent(admin_pb2.PutAgentRequest(agent=admin_pb2.Agent(shop_id="s", agent_id=agent_id, max_capacity=2)))
    state = a.GetShopState(admin_pb2.GetShopStateRequest(shop_id="s"))
    assert [x.agent_id for x in state.agents] == ["s", "s:z", "s:b", "s:m"]  # creation order, as before
    assert state.next_page_token == ""
    e = server.engine
    expected = server.run(_state_pb(e, "s"))
    assert state == expected
    # One page holding everything: agent_id order, no token.
    paged = a.GetShopState(admin_pb2.GetShopStateRequest(shop_id="s", page_size=10))
    assert [x.agent_id for x in paged.agents] == ["s", "s:b", "s:m", "s:z"] and not paged.next_page_token


async def _state_pb(e: Any, shop_id: str) -> admin_pb2.ShopState:
    from dispatcher.convert import shop_state_to_pb

    return shop_state_to_pb(e.shop_state(shop_id), e.shop_config(shop_id))


def test_bad_page_requests_are_invalid_arguments(running: Any) -> None:
    server, d, a = running
    for shop in ("s", "t"):
        a.PutShop(admin_pb2.PutShopRequest(shop=admin_pb2.ShopConfig(shop_id=shop, main_account=shop)))
        for i in range(3):
            a.PutAgent(
                admin_pb2.PutAgentRequest(agent=admin_pb2.Agent(shop_id=shop, agent_id=f"{shop}:{i}", max_capacity=2))
            )
    token = a.GetShopState(admin_pb2.GetShopStateRequest(shop_id="s", page_size=1)).next_page_token
    assert token
    cases = [
        admin_pb2.GetShopStateRequest(shop_id="s", page_size=-1),
        admin_pb2.GetShopStateRequest(shop_id="t", page_token=token),  # another shop's token
        admin_pb2.GetShopStateRequest(shop_id="s", page_token="not a token"),
        admin_pb2.GetShopStateRequest(shop_id="s", page_token=token + "A"),
        admin_pb2.GetShopStateRequest(shop_id="s", page_token=token[:-2]),
        admin_pb2.GetShopStateRequest(shop_id="s", page_token="c2hvcA"),  # base64 of something else
        admin_pb2.GetShopStateRequest(shop_id="s", page_token="x" * 5000),
    ]
    for request in cases:
        with pytest.raises(grpc.RpcError) as info:
            a.GetShopState(request)
        assert info.value.code() == IA, (request, info.value.details())
        assert "page_" in (info.value.details() or "")
    with pytest.raises(grpc.RpcError) as info:
        a.GetShopState(admin_pb2.GetShopStateRequest(shop_id="nope", page_token=token))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_page_holds_at_least_one_agent_and_stays_under_its_budget() -> None:
    state = {
        "shop_id": "s", "clock_ms": T0, "groups": [], "queue": [], "staging": [], "pool": [], "live_conversations": 0,
        "agents": [
            {"agent_id": f"a{i:03d}", "role": 2, "presence": 1, "client": 1, "weight": 1, "max_capacity": 2,
             "created_at_ms": 0, "chat_permission": True, "offline_at_ms": -1, "active": 0, "unread": 0,
             "today": 0, "groups": [f"g{j}" for j in range(50)]}
            for i in range(200)
        ],
    }  # fmt: skip
    config = ShopConfig("s", "a000")
    seen, token = [], ""
    while True:
        page = shop_state_page(state, config, 0, token, max_bytes=2000)
        assert page.agents  # progress even when one agent alone is over the budget
        assert page.ByteSize() <= 2000 or len(page.agents) == 1
        seen += [x.agent_id for x in page.agents]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"a{i:03d}" for i in range(200)]
