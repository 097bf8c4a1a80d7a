"""End to end over a real server: the spec's scenarios through the public gRPC API.

Every test talks to a DispatchServer on a free port through dispatch_client;
presence and conversation events go through RPCs and time through `at`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter

import grpc
import pytest
from google.protobuf import duration_pb2
from server_fixtures import T0, ThreadedServer

import _fastpath
import dispatcher.convert
from dispatch_client import AsyncDispatchClient, AsyncWatch, dispatch_request, pb
from dispatcher._gen.dispatch.v1 import admin_pb2, dispatch_pb2, dispatch_pb2_grpc

ONLINE = pb.Presence.PRESENCE_ONLINE
SUSPENDED = pb.Presence.PRESENCE_SUSPENDED
OFFLINE = pb.Presence.PRESENCE_OFFLINE
R = pb.Reason
EV = pb.ConversationEvent
MIN = 60_000


async def make_shop(
    c: AsyncDispatchClient,
    shop: str = "s",
    agents: tuple[tuple[str, int], ...] = (),
    online: tuple[str, ...] = (),
    **fields: object,
) -> None:
    await c.put_shop(shop_id=shop, main_account=shop, **fields)
    for agent_id, capacity in agents:
        await c.put_agent(shop_id=shop, agent_id=agent_id, max_capacity=capacity)
    for agent_id in online:
        await c.set_presence(shop, agent_id, ONLINE, at=T0)


async def load(c: AsyncDispatchClient, shop: str, agent: str, n: int) -> None:
    """Give ``agent`` n live conversations assigned outside the dispatcher."""
    for i in range(n):
        await c.report_conversation(
            shop, f"load-{agent}-{i}", EV.CONVERSATION_EVENT_ASSIGNED, buyer_id=f"lb-{agent}-{i}", agent_id=agent, at=T0
        )


async def next_assignment(watch: AsyncWatch) -> dispatch_pb2.Assignment:
    return await asyncio.wait_for(watch.next(), 10)


async def expect_error(coro: object, code: grpc.StatusCode, *words: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro  # type: ignore[misc]
    assert info.value.code() == code, (info.value.code(), info.value.details())
    details = info.value.details() or ""
    for word in words:
        assert word in details, f"{word!r} not in {details!r}"
    return details


# ------------------------------------------------------------------ strategies


async def test_least_saturation_picks_the_30_percent_agent(client: AsyncDispatchClient) -> None:
    await make_shop(client, agents=(("s:a", 10), ("s:b", 10), ("s:c", 10)), online=("s:a", "s:b", "s:c"))
    await load(client, "s", "s:b", 5)
    await load(client, "s", "s:a", 3)
    await load(client, "s", "s:c", 8)
    answer = await client.dispatch("s", "buyer", "conv", at=T0 + 1, trace=True)
    assert (answer.agent_id, answer.reason) == ("s:a", R.REASON_GROUP)
    assert answer.conversation_id == "conv"
    assert any("LEAST_SATURATION" in line for line in answer.trace)


async def test_capacity_round_robin_30_20_10(client: AsyncDispatchClient) -> None:
    await make_shop(
        client,
        agents=(("s:c", 10), ("s:a", 30), ("s:b", 20)),
        online=("s:a", "s:b", "s:c"),
        strategy=pb.Strategy.STRATEGY_CAPACITY_ROUND_ROBIN,
    )
    picks = [(await client.dispatch("s", f"b{i}", f"c{i}", at=T0 + i)).agent_id for i in range(12)]
    assert picks == ["s:a", "s:b", "s:c", "s:a", "s:b", "s:a"] * 2


async def test_fewest_unread_tie_goes_to_the_earliest_created(client: AsyncDispatchClient) -> None:
    await client.put_shop(shop_id="s", main_account="s", strategy=pb.Strategy.STRATEGY_FEWEST_UNREAD)
    await client.put_agent(
        shop_id="s", agent_id="s:new", max_capacity=5, created_at=dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    )
    await client.put_agent(
        shop_id="s", agent_id="s:old", max_capacity=5, created_at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    )
    for agent in ("s:new", "s:old"):
        await client.set_presence("s", agent, ONLINE, at=T0)
    assert (await client.dispatch("s", "b1", "c1", at=T0)).agent_id == "s:old"
    # s:old now has one unread; s:new has none.
    assert (await client.dispatch("s", "b2", "c2", at=T0)).agent_id == "s:new"


# ------------------------------------------------------------------ affinity


async def test_suspended_agent_gets_its_recent_contact_but_no_new_buyer(client: AsyncDispatchClient) -> None:
    await make_shop(client, agents=(("s:x", 10), ("s:y", 10)), online=("s:x",))
    first = await client.dispatch("s", "b1", "c1", at=T0)
    assert first.agent_id == "s:x"
    await client.report_conversation("s", "c1", EV.CONVERSATION_EVENT_AGENT_REPLY, agent_id="s:x", at=T0 + 1)
    buyer = await client.get_buyer("s", "b1")
    assert buyer.recent_contact == "s:x"
    await client.set_presence("s", "s:y", ONLINE, at=T0 + 2)
    await client.set_presence("s", "s:x", SUSPENDED, at=T0 + 3)
    again = await client.dispatch("s", "b1", "c2", at=T0 + 4)
    assert (again.agent_id, again.reason) == ("s:x", R.REASON_AFFINITY)
    stranger = await client.dispatch("s", "b2", "c3", at=T0 + 5)
    assert (stranger.agent_id, stranger.reason) == ("s:y", R.REASON_GROUP)


async def test_offline_grace_held_then_expired(client: AsyncDispatchClient) -> None:
    await make_shop(client, agents=(("s:x", 10), ("s:y", 10)), online=("s:x",), offline_grace=dt.timedelta(minutes=10))
    assert (await client.dispatch("s", "b1", "c1", at=T0)).agent_id == "s:x"
    await client.report_conversation("s", "c1", EV.CONVERSATION_EVENT_AGENT_REPLY, at=T0 + 1)
    await client.set_presence("s", "s:y", ONLINE, at=T0 + 2)
    await client.set_presence("s", "s:x", OFFLINE, at=T0 + 3)
    held = await client.dispatch("s", "b1", "c2", at=T0 + 3 + 9 * MIN)
    assert (held.agent_id, held.reason) == ("s:x", R.REASON_AFFINITY_HELD)
    expired = await client.dispatch("s", "b1", "c3", at=T0 + 3 + 11 * MIN)
    assert (expired.agent_id, expired.reason) == ("s:y", R.REASON_GROUP)


async def test_exclusive_agent_and_robot_first(client: AsyncDispatchClient) -> None:
    await make_shop(client, agents=(("s:x", 10), ("s:y", 10)), online=("s:x", "s:y"))
    await client.put_agent(shop_id="s", agent_id="s:bot", role=pb.Role.ROLE_ROBOT)
    await client.put_shop(
        shop_id="s", main_account="s", exclusive_direct=True, robot_first=True, robot_agent_id="s:bot"
    )
    await client.set_exclusive_agent("s", "vip", "s:y")
    vip = await client.dispatch("s", "vip", "c1", at=T0)
    assert (vip.agent_id, vip.reason) == ("s:y", R.REASON_EXCLUSIVE)
    other = await client.dispatch("s", "someone", "c2", at=T0)
    assert (other.agent_id, other.reason) == ("s:bot", R.REASON_ROBOT)
    assert (await client.get_buyer("s", "vip")).exclusive_agent == "s:y"
    await client.delete_exclusive_agent("s", "vip")
    assert (await client.get_buyer("s", "vip")).exclusive_agent == ""


# ------------------------------------------------------------------ offline rules and staging


async def test_staging_cap_then_next_agent_on_watch(client: AsyncDispatchClient) -> None:
    await make_shop(
        client, agents=(("s:a", 10), ("s:b", 10)), offline_rule=pb.OfflineRule.OFFLINE_RULE_STAGING, staging_first_cap=2
    )
    watch = await client.watch_assignments("s")
    for i in range(3):
        answer = await client.dispatch("s", f"b{i}", f"c{i}", at=T0 + i)
        assert (answer.agent_id, answer.reason) == ("", R.REASON_OFFLINE_STAGING)
    assert [w.conversation_id for w in (await client.get_shop_state("s")).staging] == ["c0", "c1", "c2"]
    first = await client.set_presence("s", "s:a", ONLINE, at=T0 + 10)
    assert [(a.conversation_id, a.agent_id) for a in first.assignments] == [("c0", "s:a"), ("c1", "s:a")]
    second = await client.set_presence("s", "s:b", ONLINE, at=T0 + 11)
    assert [(a.conversation_id, a.agent_id) for a in second.assignments] == [("c2", "s:b")]
    seen = [await next_assignment(watch) for _ in range(3)]
    assert [(a.shop_id, a.conversation_id, a.buyer_id, a.agent_id) for a in seen] == [
        ("s", "c0", "b0", "s:a"),
        ("s", "c1", "b1", "s:a"),
        ("s", "c2", "b2", "s:b"),
    ]
    assert {a.reason for a in seen} == {R.REASON_OFFLINE_STAGING}
    assert seen[2].at.ToMilliseconds() == T0 + 11
    watch.cancel()


async def test_offline_main_account_and_proxy(client: AsyncDispatchClient) -> None:
    await make_shop(client, agents=(("s:a", 10),))
    answer = await client.dispatch("s", "b", "c1", at=T0)
    assert (answer.agent_id, answer.reason) == ("s", R.REASON_OFFLINE_MAIN_ACCOUNT)
    await client.put_agent(shop_id="s", agent_id="outsourced", role=pb.Role.ROLE_PROXY, max_capacity=50)
    await client.put_shop(
        shop_id="s",
        main_account="s",
        offline_rule=pb.OfflineRule.OFFLINE_RULE_PROXY_ACCOUNT,
        proxy_account="outsourced",
    )
    answer = await client.dispatch("s", "b2", "c2", at=T0)
    assert (answer.agent_id, answer.reason) == ("outsourced", R.REASON_OFFLINE_PROXY_ACCOUNT)


async def test_message_pool_claim(client: AsyncDispatchClient) -> None:
    await make_shop(client, agents=(("s:a", 10),), offline_rule=pb.OfflineRule.OFFLINE_RULE_MESSAGE_POOL)
    watch = await client.watch_assignments()
    for i in range(2):
        answer = await client.dispatch("s", f"b{i}", f"c{i}", at=T0 + i)
        assert (answer.agent_id, answer.reason) == ("", R.REASON_OFFLINE_MESSAGE_POOL)
    named = await client.claim_from_pool("s", "s:a", "c1", at=T0 + 5)
    assert (named.conversation_id, named.buyer_id, named.agent_id) == ("c1", "b1", "s:a")
    oldest = await client.claim_from_pool("s", "s:a", at=T0 + 6)
    assert oldest.conversation_id == "c0"
    seen = [await next_assignment(watch) for _ in range(2)]
    assert [(a.conversation_id, a.reason) for a in seen] == [
        ("c1", R.REASON_OFFLINE_MESSAGE_POOL),
        ("c0", R.REASON_OFFLINE_MESSAGE_POOL),
    ]
    await expect_error(client.claim_from_pool("s", "s:a", at=T0 + 7), grpc.StatusCode.FAILED_PRECONDITION, "pool")
    watch.cancel()


# ------------------------------------------------------------------ main account, cases A-D


async def _main_case(c: AsyncDispatchClient, shop: str, mode: int, main_in_group: bool) -> None:
    await c.put_shop(shop_id=shop, main_account=shop, main_account_mode=mode)
    await c.put_agent(shop_id=shop, agent_id=shop, max_capacity=10)
    await c.put_agent(shop_id=shop, agent_id=f"{shop}:sub", max_capacity=10)
    members = [f"{shop}:sub", shop] if main_in_group else [f"{shop}:sub"]
    await c.put_group(shop_id=shop, group_id="g", members=members)
    for agent in (shop, f"{shop}:sub"):
        await c.set_presence(shop, agent, ONLINE, at=T0)


async def test_main_account_case_a_only_main(client: AsyncDispatchClient) -> None:
    await _main_case(client, "a", pb.MainAccountMode.MAIN_ACCOUNT_MODE_ONLY_MAIN, False)
    agents = {(await client.dispatch("a", f"b{i}", f"c{i}", at=T0)).agent_id for i in range(4)}
    assert agents == {"a"}


async def test_main_account_case_b_excluded(client: AsyncDispatchClient) -> None:
    await _main_case(client, "b", pb.MainAccountMode.MAIN_ACCOUNT_MODE_EXCLUDED, False)
    await load(client, "b", "b:sub", 10)  # the only sub-account is full
    answer = await client.dispatch("b", "buyer", "c", at=T0)
    assert (answer.agent_id, answer.reason) == ("", R.REASON_QUEUED)
    forwarded = await client.report_conversation(
        "b", "load-b:sub-0", EV.CONVERSATION_EVENT_TRANSFERRED, to_agent_id="b", at=T0
    )
    assert forwarded.agent_id == "b"
    # The transfer freed a seat on b:sub: the queued conversation goes there, not to the main account.
    assert [(a.conversation_id, a.agent_id) for a in forwarded.assignments] == [("c", "b:sub")]


async def test_main_account_case_c_fallback(client: AsyncDispatchClient) -> None:
    await _main_case(client, "c", pb.MainAccountMode.MAIN_ACCOUNT_MODE_FALLBACK, False)
    assert (await client.dispatch("c", "b1", "c1", at=T0)).agent_id == "c:sub"
    await client.set_presence("c", "c:sub", OFFLINE, at=T0 + 1)
    answer = await client.dispatch("c", "b2", "c2", at=T0 + 2)
    assert (answer.agent_id, answer.reason) == ("c", R.REASON_FALLBACK)


async def test_main_account_case_d_member(client: AsyncDispatchClient) -> None:
    await _main_case(client, "d", pb.MainAccountMode.MAIN_ACCOUNT_MODE_MEMBER, True)
    await load(client, "d", "d:sub", 5)
    answer = await client.dispatch("d", "b1", "c1", at=T0)
    assert (answer.agent_id, answer.reason, answer.group_id) == ("d", R.REASON_GROUP, "g")


# ------------------------------------------------------------------ groups


async def test_unbound_order_state_spreads_over_groups(client: AsyncDispatchClient) -> None:
    await make_shop(client, agents=(("s:pre", 1000), ("s:post", 1000)), online=("s:pre", "s:post"), tie_seed=7)
    await client.put_group(
        shop_id="s", group_id="presale", members=["s:pre"], order_states=[pb.OrderState.ORDER_STATE_NO_ORDER]
    )
    await client.put_group(
        shop_id="s",
        group_id="aftersale",
        members=["s:post"],
        order_states=[pb.OrderState.ORDER_STATE_SHIPPED],
        sources=["ORDER_PAGE"],
    )
    bound = [
        await client.dispatch("s", f"x{i}", f"x{i}", order_state=pb.OrderState.ORDER_STATE_SHIPPED, at=T0)
        for i in range(5)
    ]
    assert {(a.group_id, a.agent_id) for a in bound} == {("aftersale", "s:post")}
    by_source = await client.dispatch("s", "y", "y", source="ORDER_PAGE", at=T0)
    assert by_source.group_id == "aftersale"
    unbound = [
        await client.dispatch("s", f"u{i}", f"u{i}", order_state=pb.OrderState.ORDER_STATE_UNPAID, at=T0)
        for i in range(30)
    ]
    counts = Counter(a.group_id for a in unbound)
    assert set(counts) == {"presale", "aftersale"}
    assert all(a.reason == R.REASON_GROUP for a in unbound)


async def test_fallback_when_the_bound_group_is_full(client: AsyncDispatchClient) -> None:
    await make_shop(client, agents=(("s:pre", 1), ("s:other", 5)), online=("s:pre", "s:other"))
    await client.put_group(
        shop_id="s", group_id="presale", members=["s:pre"], order_states=[pb.OrderState.ORDER_STATE_NO_ORDER]
    )
    await load(client, "s", "s:pre", 1)
    answer = await client.dispatch("s", "b", "c", order_state=pb.OrderState.ORDER_STATE_NO_ORDER, at=T0)
    assert (answer.agent_id, answer.reason, answer.group_id) == ("s:other", R.REASON_FALLBACK, "")


async def test_transfer_to_group(client: AsyncDispatchClient) -> None:
    await make_shop(client, agents=(("s:a", 5), ("s:b", 5)), online=("s:a", "s:b"))
    await client.put_group(shop_id="s", group_id="g", members=["s:b"])
    await client.report_conversation("s", "c", EV.CONVERSATION_EVENT_ASSIGNED, buyer_id="b", agent_id="s:a", at=T0)
    moved = await client.report_conversation("s", "c", EV.CONVERSATION_EVENT_TRANSFERRED, to_group_id="g", at=T0 + 1)
    assert moved.agent_id == "s:b"
    conv = await client.get_conversation("s", "c")
    assert (conv.agent_id, conv.forwarded, conv.buyer_id) == ("s:b", True, "b")
    assert (await client.get_buyer("s", "b")).recent_contact == "s:b"


# ------------------------------------------------------------------ queue


async def test_everyone_full_queues_then_hands_out_oldest_first(client: AsyncDispatchClient) -> None:
    await make_shop(client, agents=(("s:a", 1),), online=("s:a",))
    watch = await client.watch_assignments("s")
    assert (await client.dispatch("s", "b1", "c1", at=T0)).agent_id == "s:a"
    for i in (2, 3):
        queued = await client.dispatch("s", f"b{i}", f"c{i}", at=T0 + i)
        assert (queued.agent_id, queued.reason) == ("", R.REASON_QUEUED)
    state = await client.get_shop_state("s")
    assert [(w.conversation_id, w.buyer_id, w.since.ToMilliseconds()) for w in state.queue] == [
        ("c2", "b2", T0 + 2),
        ("c3", "b3", T0 + 3),
    ]
    closed = await client.report_conversation("s", "c1", EV.CONVERSATION_EVENT_CLOSED, at=T0 + 10)
    assert [(a.conversation_id, a.agent_id, a.reason) for a in closed.assignments] == [("c2", "s:a", R.REASON_GROUP)]
    await client.report_conversation("s", "c2", EV.CONVERSATION_EVENT_CLOSED, at=T0 + 11)
    seen = [await next_assignment(watch) for _ in range(2)]
    assert [(a.conversation_id, a.buyer_id, a.agent_id) for a in seen] == [("c2", "b2", "s:a"), ("c3", "b3", "s:a")]
    assert [a.at.ToMilliseconds() for a in seen] == [T0 + 10, T0 + 11]
    assert not (await client.get_shop_state("s")).queue
    watch.cancel()


async def test_capacity_raise_drains_the_queue_to_watchers_of_that_shop_only(client: AsyncDispatchClient) -> None:
    await make_shop(client, shop="s", agents=(("s:a", 1),), online=("s:a",))
    await make_shop(client, shop="t", agents=(("t:a", 1),), online=("t:a",))
    watch_t = await client.watch_assignments("t")
    watch_s = await client.watch_assignments("s")
    for shop in ("s", "t"):
        await client.dispatch(shop, "b1", "c1", at=T0)
        assert (await client.dispatch(shop, "b2", "c2", at=T0)).reason == R.REASON_QUEUED
    await client.put_agent(shop_id="s", agent_id="s:a", max_capacity=2)  # Admin call: drains s's queue
    got = await next_assignment(watch_s)
    assert (got.shop_id, got.conversation_id, got.agent_id) == ("s", "c2", "s:a")
    await client.report_conversation("t", "c1", EV.CONVERSATION_EVENT_CLOSED, at=T0 + 1)
    got_t = await next_assignment(watch_t)
    assert (got_t.shop_id, got_t.conversation_id) == ("t", "c2")  # and nothing from shop s before it
    watch_s.cancel()
    watch_t.cancel()


# ------------------------------------------------------------------ direct


async def test_direct_types_pass_through_without_state(client: AsyncDispatchClient) -> None:
    await make_shop(client, agents=(("s:a", 1),), online=("s:a",))
    for kind in (
        pb.ConversationType.CONVERSATION_TYPE_SHOP_TO_SHOP,
        pb.ConversationType.CONVERSATION_TYPE_PLATFORM_TO_SHOP,
        pb.ConversationType.CONVERSATION_TYPE_BUYER_TO_BUYER,
    ):
        answer = await client.dispatch("s", "", "", type=kind, to_account="other:shop", at=T0)
        assert (answer.agent_id, answer.reason, answer.group_id) == ("other:shop", R.REASON_DIRECT, "")
    state = await client.get_shop_state("s")
    assert state.live_conversations == 0
    assert [(a.agent_id, a.active) for a in state.agents if a.agent_id == "s:a"] == [("s:a", 0)]


async def test_concurrent_calls_are_all_answered_consistently(client: AsyncDispatchClient) -> None:
    await make_shop(client, agents=(("s:a", 60), ("s:b", 40)), online=("s:a", "s:b"))
    answers = await asyncio.gather(*(client.dispatch("s", f"b{i}", f"c{i}", at=T0) for i in range(120)))
    counts = Counter(a.agent_id for a in answers)
    assert counts[""] == 20 and counts["s:a"] == 60 and counts["s:b"] == 40
    assert sum(a.reason == R.REASON_QUEUED for a in answers) == 20
    state = await client.get_shop_state("s")
    assert (state.live_conversations, len(state.queue)) == (120, 20)


# ------------------------------------------------------------------ batch and stream


def _mixed_batch(prefix: str) -> list[dispatch_pb2.DispatchRequest]:
    return [
        dispatch_request("s", "b1", f"{prefix}1", at=T0),
        dispatch_request("nope", "b2", f"{prefix}2", at=T0),  # unknown shop
        dispatch_request("s", "b3", "", at=T0),  # no conversation id
        dispatch_request("s", "b4", f"{prefix}1", at=T0),  # the first's id, another buyer (a retry would answer)
        dispatch_request("s", "b5", f"{prefix}5", at=T0, trace=True),
    ]


def _check_mixed(responses: list[dispatch_pb2.DispatchResponse], prefix: str) -> None:
    assert len(responses) == 5
    assert [r.conversation_id for r in responses] == [f"{prefix}1", f"{prefix}2", "", f"{prefix}1", f"{prefix}5"]
    codes = [r.error.code if r.HasField("error") else None for r in responses]
    assert codes == [
        None,
        grpc.StatusCode.NOT_FOUND.value[0],
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        grpc.StatusCode.ALREADY_EXISTS.value[0],
        None,
    ]
    assert "nope" in responses[1].error.message
    assert "conversation_id" in responses[2].error.message
    assert responses[1].reason == R.REASON_UNSPECIFIED and responses[1].agent_id == ""
    assert responses[0].agent_id == "s:a" and responses[4].agent_id == "s:a"
    assert responses[4].trace and not responses[0].trace


async def test_dispatch_batch_keeps_order_and_per_item_errors(client: AsyncDispatchClient) -> None:
    await make_shop(client, agents=(("s:a", 100),), online=("s:a",))
    _check_mixed(await client.dispatch_batch(_mixed_batch("c")), "c")
    assert (await client.get_shop_state("s")).live_conversations == 2


async def test_dispatch_stream_answers_each_batch_in_order(client: AsyncDispatchClient) -> None:
    await make_shop(client, agents=(("s:a", 100),), online=("s:a",))

    async def batches():  # type: ignore[no-untyped-def]
        yield _mixed_batch("p")
        yield [dispatch_request("s", f"b{i}", f"q{i}", at=T0) for i in range(50)]
        yield []
        yield _mixed_batch("r")

    answers = [batch async for batch in client.dispatch_stream(batches())]
    assert [len(a) for a in answers] == [5, 50, 0, 5]
    _check_mixed(answers[0], "p")
    assert [r.conversation_id for r in answers[1]] == [f"q{i}" for i in range(50)]
    _check_mixed(answers[3], "r")


async def test_batches_the_engine_reader_declines_take_the_protobuf_path(
    client: AsyncDispatchClient, server: ThreadedServer
) -> None:
    await make_shop(client, agents=(("s:a", 10),), online=("s:a",))
    item = dispatch_request("s", "b", "u1", at=T0).SerializeToString() + b"\xa0\x06\x01"  # + unknown field 100
    with_unknown = b"\x0a" + bytes([len(item)]) + item
    async with grpc.aio.insecure_channel(server.target) as channel:
        batch = channel.unary_unary("/dispatch.v1.Dispatch/DispatchBatch")
        answer = dispatch_pb2.DispatchBatchResponse.FromString(await batch(with_unknown))
        assert [(r.agent_id, r.conversation_id) for r in answer.responses] == [("s:a", "u1")]
        stream = channel.stream_stream("/dispatch.v1.Dispatch/DispatchStream")

        async def one_good_then_garbage():  # type: ignore[no-untyped-def]
            yield dispatch_pb2.DispatchBatchRequest(
                requests=[dispatch_request("s", "b", "u2", at=T0)]
            ).SerializeToString()
            yield b"\x0a\x09\x0a\x01s"  # truncated

        answers = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for raw in stream(one_good_then_garbage()):
                answers.append(dispatch_pb2.DispatchBatchResponse.FromString(raw))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid dispatch.v1.DispatchBatchRequest" in (info.value.details() or "")
        assert [a.responses[0].conversation_id for a in answers] == ["u2"]
    assert (await client.get_shop_state("s")).live_conversations == 2


async def test_batch_limits(client: AsyncDispatchClient, server: ThreadedServer) -> None:
    await make_shop(client, agents=(("s:a", 10),), online=("s:a",))
    too_many = [dispatch_request("s", "b", f"c{i}", at=T0) for i in range(4097)]
    await expect_error(client.dispatch_batch(too_many), grpc.StatusCode.INVALID_ARGUMENT, "requests", "4096")

    async def one_too_big():  # type: ignore[no-untyped-def]
        yield too_many

    with pytest.raises(grpc.aio.AioRpcError) as info:
        [batch async for batch in client.dispatch_stream(one_too_big())]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A message over the server's 8 MiB limit: refused, not a crash.
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(server.target, options=options) as channel:
        stub = dispatch_pb2_grpc.DispatchStub(channel)
        huge = dispatch_request("s", "b", "c", source="x" * (9 * 1024 * 1024))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Dispatch(huge)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await client.dispatch("s", "b", "ok", at=T0)).agent_id == "s:a"  # still serving
    assert (await client.get_shop_state("s")).live_conversations == 1


# ------------------------------------------------------------------ bad input


async def test_bad_input_gets_precise_statuses_and_the_server_keeps_serving(client: AsyncDispatchClient) -> None:
    await make_shop(client, agents=(("s:a", 1),), online=("s:a",))
    await client.dispatch("s", "b", "live", at=T0)
    IA, NF, FP, AE = (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
    )
    cases = [
        (client.dispatch("nope", "b", "c"), NF, ("nope",)),
        (client.dispatch("", "b", "c"), IA, ("shop_id",)),
        (client.dispatch("s", "", "c"), IA, ("buyer_id",)),
        (client.dispatch("s", "b", "x" * 129), IA, ("conversation_id", "128")),
        (client.dispatch("s", "b", "bad\nid"), IA, ("conversation_id", "control")),
        (client.dispatch("s", "b", "c", type=99), IA, ("type",)),
        (client.dispatch("s", "b", "c", order_state=42), IA, ("order_state",)),
        (client.dispatch("s", "", "", type=pb.ConversationType.CONVERSATION_TYPE_SHOP_TO_SHOP), IA, ("to_account",)),
        (client.dispatch("s", "other", "live"), AE, ("live",)),  # another buyer (the same one: a retry, §12)
        (client.dispatch("s", "b", "c", priority=10), IA, ("priority",)),
        (client.dispatch("s", "b", "c", at=-5), IA, ("at",)),
        (client.set_presence("s", "ghost", ONLINE), NF, ("ghost",)),
        (client.set_presence("s", "s:a", pb.Presence.PRESENCE_UNSPECIFIED), IA, ("presence",)),
        (client.set_presence("s", "s:a", ONLINE, client=7), IA, ("client",)),
        (client.report_conversation("s", "missing", EV.CONVERSATION_EVENT_CLOSED), NF, ("missing",)),
        (client.report_conversation("s", "live", EV.CONVERSATION_EVENT_UNSPECIFIED), IA, ("event",)),
        (
            client.report_conversation(
                "s", "live", EV.CONVERSATION_EVENT_TRANSFERRED, to_agent_id="s:a", to_group_id="g"
            ),
            IA,
            ("to_agent_id", "to_group_id"),
        ),
        (client.report_conversation("s", "live", EV.CONVERSATION_EVENT_TRANSFERRED, to_group_id="nog"), NF, ("nog",)),
        (client.report_conversation("s", "live", EV.CONVERSATION_EVENT_BUYER_MESSAGE, buyer_id="else"), FP, ("buyer",)),
        (
            client.report_conversation("s", "live", EV.CONVERSATION_EVENT_ASSIGNED, buyer_id="b", agent_id="s:a"),
            AE,
            ("live",),
        ),
        (client.claim_from_pool("s", "s:a"), FP, ("pool",)),
        (client.put_shop(shop_id="s", main_account="other"), FP, ("main account",)),
        (client.put_shop(shop_id="s2", main_account=""), IA, ("main_account",)),
        (client.put_shop(shop_id="s2", main_account="s2", robot_first=True), IA, ("robot_first",)),
        (client.put_shop(shop_id="s2", main_account="s2", timezone="Mars/Olympus"), IA, ("timezone",)),
        (client.put_shop(shop_id="s2", main_account="s2", staging_first_cap=0), IA, ("staging_first_cap",)),
        (client.put_shop(shop_id="s2", main_account="s2", affinity_window=dt.timedelta(0)), IA, ("affinity_window",)),
        (
            client.put_shop(shop_id="s2", main_account="s2", offline_grace=duration_pb2.Duration(seconds=-1)),
            IA,
            ("offline_grace",),
        ),
        (client.put_shop(shop_id="s2", main_account="s2", strategy=77), IA, ("strategy",)),
        (client.put_shop(shop_id="s2", main_account="s2", robot_agent_id="s2:bot"), NF, ("robot_agent_id",)),
        (client.put_agent(shop_id="s", agent_id="s:z"), IA, ("max_capacity",)),
        (client.put_agent(shop_id="s", agent_id="s:z", max_capacity=1, weight=0), IA, ("weight",)),
        (client.put_agent(shop_id="s", agent_id="s:z", max_capacity=1, role=pb.Role.ROLE_MAIN), IA, ("MAIN",)),
        (client.put_agent(shop_id="nope", agent_id="x", max_capacity=1), NF, ("nope",)),
        (client.delete_agent("s", "s:a"), FP, ("s:a",)),
        (client.delete_agent("s", "s"), FP, ("main account",)),
        (client.delete_shop("s"), FP, ("live",)),
        (client.delete_shop("nope"), NF, ("nope",)),
        (client.put_group(shop_id="s", group_id="g", members=["ghost"]), NF, ("ghost",)),
        (
            client.put_group(shop_id="s", group_id="g", order_states=[pb.OrderState.ORDER_STATE_UNSPECIFIED]),
            IA,
            ("order_states",),
        ),
        (client.put_group(shop_id="s", group_id="g", robot_enabled=True), FP, ("robot_enabled",)),
        (client.delete_group("s", "nog"), NF, ("nog",)),
        (client.set_exclusive_agent("s", "b", "ghost"), NF, ("ghost",)),
        (client.delete_exclusive_agent("s", "b"), NF, ("exclusive",)),
        (client.get_shop_state("nope"), NF, ("nope",)),
        (client.get_conversation("s", "missing"), NF, ("missing",)),
        (client.get_buyer("s", ""), IA, ("buyer_id",)),
    ]
    for coro, code, words in cases:
        await expect_error(coro, code, *words)
    # Messages without their required sub-message, and a malformed Timestamp.
    await expect_error(client.admin_stub.PutShop(admin_pb2.PutShopRequest()), IA, "shop")
    await expect_error(client.admin_stub.PutAgent(admin_pb2.PutAgentRequest()), IA, "agent")
    await expect_error(client.admin_stub.PutGroup(admin_pb2.PutGroupRequest()), IA, "group")
    bad_at = dispatch_request("s", "b", "c")
    bad_at.at.nanos = -1
    await expect_error(client.dispatch_stub.Dispatch(bad_at), IA, "at.nanos")
    # Still serving, and nothing half-applied.
    state = await client.get_shop_state("s")
    assert state.live_conversations == 1
    assert [a.agent_id for a in state.agents] == ["s", "s:a"]
    assert await client.list_shops() == ["s"]
    await client.report_conversation("s", "live", EV.CONVERSATION_EVENT_CLOSED, at=T0 + 1)
    assert (await client.dispatch("s", "b", "after", at=T0 + 2)).agent_id == "s:a"


# ------------------------------------------------------------------ inspection


async def test_get_shop_state_contents_and_defaults(client: AsyncDispatchClient) -> None:
    stored = await client.put_shop(shop_id="s", main_account="s", timezone="Asia/Shanghai")
    assert stored.affinity_window.ToTimedelta() == dt.timedelta(hours=72)
    assert stored.offline_grace.ToTimedelta() == dt.timedelta(0)
    assert (stored.staging_first_cap, stored.busy_threshold, stored.affinity_may_exceed_capacity) == (100, 4, True)
    assert stored.strategy == pb.Strategy.STRATEGY_LEAST_SATURATION
    assert stored.offline_rule == pb.OfflineRule.OFFLINE_RULE_MAIN_ACCOUNT
    assert stored.main_account_mode == pb.MainAccountMode.MAIN_ACCOUNT_MODE_MEMBER
    explicit = await client.put_shop(
        shop_id="s", main_account="s", busy_threshold=0, affinity_may_exceed_capacity=False
    )
    assert (explicit.busy_threshold, explicit.affinity_may_exceed_capacity, explicit.timezone) == (0, False, "UTC")

    await client.put_agent(shop_id="s", agent_id="s:a", max_capacity=3)
    await client.put_agent(shop_id="s", agent_id="s:m", max_capacity=2, weight=5, chat_permission=False)
    await client.put_group(shop_id="s", group_id="g", members=["s:a", "s:m"])
    await client.set_presence("s", "s:a", ONLINE, pb.Client.CLIENT_DESKTOP, at=T0)
    await client.set_presence("s", "s:m", ONLINE, pb.Client.CLIENT_MOBILE, at=T0)
    await client.set_presence("s", "s:m", OFFLINE, at=T0 + 5)
    await client.dispatch("s", "b1", "c1", at=T0 + 6)
    await client.report_conversation("s", "c1", EV.CONVERSATION_EVENT_AGENT_REPLY, at=T0 + 7)
    await client.dispatch("s", "b2", "c2", at=T0 + 8)
    state = await client.get_shop_state("s")
    assert state.shop_id == "s" and state.clock.ToMilliseconds() == T0 + 8
    agents = {a.agent_id: a for a in state.agents}
    assert list(agents) == ["s", "s:a", "s:m"]
    a, m = agents["s:a"], agents["s:m"]
    assert (a.role, a.presence, a.client, a.weight, a.max_capacity, a.chat_permission) == (
        pb.Role.ROLE_SUB,
        ONLINE,
        pb.Client.CLIENT_DESKTOP,
        1,
        3,
        True,
    )
    assert (a.active, a.unread, a.today, list(a.groups)) == (2, 1, 2, ["g"])
    assert not a.HasField("offline_at")
    assert (m.presence, m.weight, m.chat_permission, m.offline_at.ToMilliseconds()) == (OFFLINE, 5, False, T0 + 5)
    assert agents["s"].role == pb.Role.ROLE_MAIN
    assert [(g.group_id, list(g.members)) for g in state.groups] == [("g", ["s:a", "s:m"])]
    assert state.live_conversations == 2 and not state.queue and not state.pool and not state.staging
    assert state.config.busy_threshold == 0 and state.config.shop_id == "s"
    conv = await client.get_conversation("s", "c2")
    assert (conv.agent_id, conv.wait, conv.unread, conv.forwarded) == (
        "s:a",
        pb.WaitKind.WAIT_KIND_UNSPECIFIED,
        True,
        False,
    )


async def test_shop_lifecycle(client: AsyncDispatchClient) -> None:
    await make_shop(client, shop="s", agents=(("s:a", 1),), online=("s:a",))
    await make_shop(client, shop="r")
    assert await client.list_shops() == ["r", "s"]
    await client.put_group(shop_id="s", group_id="g", members=["s:a"])
    await client.delete_group("s", "g")
    await client.delete_agent("s", "s:a")
    await client.delete_shop("s")
    assert await client.list_shops() == ["r"]


async def test_watch_ends_with_ok_when_the_server_stops() -> None:
    running = ThreadedServer().start()
    try:
        async with AsyncDispatchClient(running.target) as c:
            watch = await c.watch_assignments()
            running.stop(grace=5)
            stopped = True
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(watch.next(), 10)
            assert await watch._call.code() == grpc.StatusCode.OK
    finally:
        if not locals().get("stopped"):
            running.stop()


# ------------------------------------------------------------------ §11 priority and position, §12 retries


async def test_waiting_answers_carry_position_and_estimated_wait_and_retries_are_safe(
    client: AsyncDispatchClient,
) -> None:
    """Over gRPC, on every path: unary (the engine's wire codec), batch, Operate; GetShopState
    lists the queue in hand-out order with priorities and positions."""
    await make_shop(client, agents=(("s:a", 1),), online=("s:a",))
    await client.dispatch("s", "b0", "busy", at=T0)
    for i in range(3):  # two hand-outs 4 s apart: the queue's rate is known
        await client.dispatch("s", f"w{i}", f"w{i}", at=T0)
    await client.report_conversation("s", "busy", EV.CONVERSATION_EVENT_CLOSED, at=T0 + 1_000)
    await client.report_conversation("s", "w0", EV.CONVERSATION_EVENT_CLOSED, at=T0 + 5_000)
    low = await client.dispatch("s", "b1", "low", at=T0 + 5_000)
    assert (low.reason, low.position, low.estimated_wait.ToMilliseconds()) == (R.REASON_QUEUED, 2, 8_000)
    high = await client.dispatch("s", "b2", "high", at=T0 + 5_000, priority=9)
    assert (high.reason, high.position, high.estimated_wait.ToMilliseconds()) == (R.REASON_QUEUED, 1, 4_000)
    (batched,) = await client.dispatch_batch([dispatch_request("s", "b1", "low", at=T0 + 6_000, priority=3)])
    assert (batched.reason, batched.position, batched.estimated_wait.ToMilliseconds()) == (R.REASON_QUEUED, 3, 12_000)
    operated = await client.operate(
        [dispatch_pb2.Operation(dispatch=dispatch_request("s", "b2", "high", at=T0 + 7_000))]
    )
    assert operated.results[0].dispatch.position == 1
    served = await client.dispatch("s", "w1", "w1", at=T0 + 8_000)  # a retry of a held one
    assert (served.agent_id, served.reason, served.position, served.HasField("estimated_wait")) == (
        "s:a",
        R.REASON_GROUP,
        0,
        False,
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.dispatch("s", "someone-else", "low", at=T0 + 8_000)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    state = await client.get_shop_state("s")
    assert [(w.conversation_id, w.priority, w.position) for w in state.queue] == [
        ("high", 9, 1),
        ("w2", 0, 2),
        ("low", 0, 3),
    ]
    assert state.live_conversations == 4


# ------------------------------------------------------------------ business hours (§10)


async def test_business_hours_over_grpc_and_get_shop_state(client: AsyncDispatchClient) -> None:
    # Open on T0's weekday (2023-11-14, a Tuesday) from 00:00 to 22:30 UTC: T0 is open. The
    # server's now is closed whatever day the suite runs: today and tomorrow (UTC) are closed
    # by dated exceptions (GetShopState judges open_now by the server's clock).
    day = dt.datetime.fromtimestamp(T0 / 1000, dt.UTC).date()
    today = dt.datetime.now(dt.UTC).date()
    hours = admin_pb2.BusinessHours(
        weekly=[admin_pb2.WeeklyInterval(day_of_week=day.weekday(), open_minute=0, close_minute=22 * 60 + 30)],
        exceptions=[
            admin_pb2.DateException(date=str(today), closed=True),
            admin_pb2.DateException(date=str(today + dt.timedelta(days=1)), closed=True),
            admin_pb2.DateException(date="2099-12-25", closed=True),
        ],
    )
    stored = await client.put_shop(shop_id="bh", main_account="bh", business_hours=hours)
    assert stored.business_hours == hours and not stored.recent_contacts_after_hours
    await client.put_agent(shop_id="bh", agent_id="bh:a", max_capacity=5)
    await client.set_presence("bh", "bh:a", ONLINE, at=T0)
    open_answer = await client.dispatch("bh", "b1", "c1", at=T0)
    assert (open_answer.reason, open_answer.agent_id) == (R.REASON_GROUP, "bh:a")
    late = T0 + 12 * 3_600_000  # 2023-11-15 10:13 UTC: closed
    closed = await client.dispatch("bh", "b2", "c2", at=late, trace=True)
    assert (closed.reason, closed.agent_id) == (R.REASON_OFFLINE_MAIN_ACCOUNT, "bh")
    assert list(closed.trace)[:1] == ["online:closed"]
    state = await client.get_shop_state("bh")
    assert state.config.business_hours == hours
    assert not state.open_now and state.HasField("open_now_until")
    await expect_error(
        client.put_shop(
            shop_id="bh",
            main_account="bh",
            business_hours=admin_pb2.BusinessHours(
                weekly=[admin_pb2.WeeklyInterval(day_of_week=9, open_minute=0, close_minute=60)]
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "business_hours.weekly[0].day",
    )
    await expect_error(
        client.put_shop(
            shop_id="bh",
            main_account="bh",
            business_hours=admin_pb2.BusinessHours(exceptions=[admin_pb2.DateException(date="2026-12-25")]),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "business_hours.exceptions[0]",
    )


async def test_a_shop_without_business_hours_is_open(client: AsyncDispatchClient) -> None:
    await make_shop(client, "nh")
    state = await client.get_shop_state("nh")
    assert state.open_now and not state.HasField("open_now_until")
    assert not state.config.HasField("business_hours") or not state.config.business_hours.weekly


def _weekly(days: range, open_minute: int, close_minute: int) -> list[admin_pb2.WeeklyInterval]:
    return [admin_pb2.WeeklyInterval(day_of_week=d, open_minute=open_minute, close_minute=close_minute) for d in days]


@pytest.mark.parametrize("engine", ["compiled", "reference"])
async def test_get_shop_state_shows_each_groups_schedule_and_open_state(
    engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§10 over gRPC: each GroupState carries the group's own schedule (unset without one) and
    open_now at the instant of the shop's open_now (the server's clock, set here to the callers'
    `at`): the shop open and the group's own hours open; without its own, the shop's."""
    if engine == "compiled" and _fastpath.CompiledEngine is None:
        pytest.skip(f"the compiled engine is not built: {_fastpath.COMPILED_IMPORT_ERROR}")
    kind = _fastpath.CompiledEngine if engine == "compiled" else _fastpath.ReferenceEngine
    clock = [T0]
    monkeypatch.setattr(dispatcher.convert, "now_ms", lambda: clock[0])
    # Asia/Shanghai (UTC+8): T0 is Wednesday 2023-11-15 06:13:20 local.
    every_day = range(7)
    shop_hours = admin_pb2.BusinessHours(weekly=_weekly(every_day, 6 * 60, 22 * 60))
    own = {
        "early": admin_pb2.BusinessHours(weekly=_weekly(every_day, 6 * 60, 7 * 60)),
        "day": admin_pb2.BusinessHours(  # Monday to Friday, Thursday 2023-11-16 a holiday
            weekly=_weekly(range(5), 9 * 60, 18 * 60),
            exceptions=[admin_pb2.DateException(date="2023-11-16", closed=True)],
        ),
        "late": admin_pb2.BusinessHours(weekly=_weekly(every_day, 21 * 60, 2 * 60)),  # across midnight
    }
    running = ThreadedServer(kind(0), tick_interval_ms=0).start()  # time moves by the callers' `at` only
    try:
        async with AsyncDispatchClient(running.target, timeout=30) as c:
            await make_shop(c, "gh", agents=(("gh:a", 5),), timezone="Asia/Shanghai", business_hours=shop_hours)
            for group_id, hours in own.items():
                await c.put_group(shop_id="gh", group_id=group_id, members=["gh:a"], business_hours=hours)
            await c.put_group(shop_id="gh", group_id="plain", members=["gh:a"])  # no schedule of its own

            async def state_at(at: int) -> tuple[bool, dict[str, bool]]:
                await c.set_presence("gh", "gh:a", ONLINE, at=at)  # the callers' time, and the shop's clock
                clock[0] = at
                state = await c.get_shop_state("gh")
                assert state.clock.ToMilliseconds() == at
                assert [g.group_id for g in state.groups] == ["early", "day", "late", "plain"]
                for g in state.groups:
                    assert list(g.members) == ["gh:a"]
                    if g.group_id in own:
                        assert g.HasField("business_hours") and g.business_hours == own[g.group_id]
                    else:  # none of its own: unset, and open exactly when the shop is
                        assert not g.HasField("business_hours") and g.open_now == state.open_now
                return state.open_now, {g.group_id: g.open_now for g in state.groups}

            hour = 3_600_000
            # Wednesday 06:13: the shop and "early" are open, "day" is not (closed now while the shop is open).
            assert await state_at(T0) == (True, {"early": True, "day": False, "late": False, "plain": True})
            # 09:13: "day" opens, "early" has closed.
            assert await state_at(T0 + 3 * hour) == (True, {"early": False, "day": True, "late": False, "plain": True})
            # 21:13: only "late" (and the group without a schedule).
            assert await state_at(T0 + 15 * hour) == (
                True,
                {"early": False, "day": False, "late": True, "plain": True},
            )
            # 22:13: the shop has closed; "late"'s own hours are open, but no group is.
            assert await state_at(T0 + 16 * hour) == (
                False,
                {"early": False, "day": False, "late": False, "plain": False},
            )
            # Thursday 01:13: still "late"'s hours (from Wednesday 21:00), the shop still closed.
            assert await state_at(T0 + 19 * hour) == (
                False,
                {"early": False, "day": False, "late": False, "plain": False},
            )
            # Thursday 09:13, a holiday of "day": the shop is open, "day" stays closed.
            assert await state_at(T0 + 27 * hour) == (
                True,
                {"early": False, "day": False, "late": False, "plain": True},
            )
    finally:
        running.stop()
