"""The blocking client (and the client helpers) against a real server."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
from server_fixtures import T0

from dispatch_client import DispatchClient, dispatch_request, pb, to_timestamp

UTC = dt.UTC


def test_blocking_client_round_trip_with_watch(sync_client: DispatchClient) -> None:
    stored = sync_client.put_shop(
        shop_id="s", main_account="s", offline_grace=dt.timedelta(minutes=10), staging_first_cap=1
    )
    assert stored.offline_grace.ToTimedelta() == dt.timedelta(minutes=10) and stored.staging_first_cap == 1
    sync_client.put_agent(pb.Agent(shop_id="s", agent_id="s:a", max_capacity=1))
    sync_client.set_presence("s", "s:a", pb.Presence.PRESENCE_ONLINE, at=dt.datetime(2024, 1, 1, tzinfo=UTC))
    with sync_client.watch_assignments("s") as watch:
        first = sync_client.dispatch("s", "b1", "c1", at=dt.datetime(2024, 1, 1, 0, 1, tzinfo=UTC))
        assert (first.agent_id, first.reason) == ("s:a", pb.Reason.REASON_GROUP)
        queued = sync_client.dispatch("s", "b2", "c2")
        assert queued.reason == pb.Reason.REASON_QUEUED
        sync_client.report_conversation("s", "c1", pb.ConversationEvent.CONVERSATION_EVENT_CLOSED)
        handed = next(watch)
        assert (handed.conversation_id, handed.agent_id, handed.buyer_id) == ("c2", "s:a", "b2")
    answers = sync_client.dispatch_batch([dispatch_request("s", "b3", "c3"), dispatch_request("s", "b4", "")])
    assert answers[0].reason == pb.Reason.REASON_QUEUED
    assert answers[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    streamed = list(
        sync_client.dispatch_stream([[dispatch_request("s", "b5", "c5")], [dispatch_request("x", "b", "c")]])
    )
    assert streamed[0][0].reason == pb.Reason.REASON_QUEUED
    assert streamed[1][0].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    state = sync_client.get_shop_state("s")
    assert [w.conversation_id for w in state.queue] == ["c3", "c5"]


def test_blocking_errors_are_rpc_errors(sync_client: DispatchClient) -> None:
    with pytest.raises(grpc.RpcError) as info:
        sync_client.dispatch("nope", "b", "c")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        sync_client.put_agent(pb.Agent(shop_id="s"), agent_id="x")


def test_server_clock_is_used_when_at_is_unset(sync_client: DispatchClient) -> None:
    sync_client.put_shop(shop_id="s", main_account="s")
    before = dt.datetime.now(UTC)
    sync_client.put_agent(shop_id="s", agent_id="s:a", max_capacity=1)
    sync_client.set_presence("s", "s:a", pb.Presence.PRESENCE_OFFLINE)
    sync_client.set_presence("s", "s:a", pb.Presence.PRESENCE_ONLINE)
    sync_client.set_presence("s", "s:a", pb.Presence.PRESENCE_OFFLINE)
    offline_at = [a for a in sync_client.get_shop_state("s").agents if a.agent_id == "s:a"][0].offline_at.ToDatetime(
        UTC
    )
    assert before - dt.timedelta(seconds=1) <= offline_at <= dt.datetime.now(UTC) + dt.timedelta(seconds=1)


def test_to_timestamp() -> None:
    assert to_timestamp(None) is None
    assert to_timestamp(T0 + 7).ToMilliseconds() == T0 + 7  # type: ignore[union-attr]
    assert to_timestamp(dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)).seconds == 1  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        to_timestamp(dt.datetime(2024, 1, 1))
    with pytest.raises(TypeError):
        to_timestamp("yesterday")  # type: ignore[arg-type]


def test_priority_position_estimated_wait_and_previous_agent(sync_client: DispatchClient) -> None:
    """Issue 14 through the client: a dispatch with a priority answers its position and estimated
    wait (§11; unary, batch and a §12 retry alike), and a re-route reaches the watchers with the
    previous agent (§10)."""
    c = sync_client
    sec = dt.timedelta(seconds=1)
    t0 = dt.datetime(2024, 1, 1, tzinfo=UTC)
    c.put_shop(shop_id="w", main_account="w:main")
    c.put_agent(shop_id="w", agent_id="w:a", max_capacity=1)
    c.set_presence("w", "w:a", pb.Presence.PRESENCE_ONLINE, at=t0)
    closed = pb.ConversationEvent.CONVERSATION_EVENT_CLOSED
    assert c.dispatch("w", "b0", "busy", at=t0).agent_id == "w:a"
    first = c.dispatch("w", "b1", "q1", at=t0)
    assert (first.reason, first.position, first.HasField("estimated_wait")) == (pb.Reason.REASON_QUEUED, 1, False)
    c.report_conversation("w", "busy", closed, at=t0 + 10 * sec)  # q1 goes out
    c.dispatch("w", "b2", "q2", at=t0 + 10 * sec)
    c.report_conversation("w", "q1", closed, at=t0 + 15 * sec)  # q2 goes out: two hand-outs, 5 s apart
    low = c.dispatch("w", "b3", "q3", at=t0 + 15 * sec)
    assert (low.reason, low.position, low.estimated_wait.ToTimedelta()) == (pb.Reason.REASON_QUEUED, 1, 5 * sec)
    high = c.dispatch("w", "b4", "q4", at=t0 + 15 * sec, priority=9)
    assert (high.reason, high.position, high.estimated_wait.ToTimedelta()) == (pb.Reason.REASON_QUEUED, 1, 5 * sec)
    retry = c.dispatch("w", "b3", "q3", at=t0 + 16 * sec)  # q4 went ahead of it; nothing changes
    assert (retry.reason, retry.position, retry.estimated_wait.ToTimedelta()) == (pb.Reason.REASON_QUEUED, 2, 10 * sec)
    (batched,) = c.dispatch_batch([dispatch_request("w", "b5", "q5", at=t0 + 16 * sec, priority=5)])
    assert (batched.position, batched.estimated_wait.ToTimedelta()) == (2, 10 * sec)
    queue = c.get_shop_state("w").queue
    assert [(q.conversation_id, q.priority, q.position) for q in queue] == [("q4", 9, 1), ("q5", 5, 2), ("q3", 0, 3)]

    c.put_shop(shop_id="r", main_account="r:main", reroute_unanswered_after=dt.timedelta(minutes=1))
    for agent in ("r:a", "r:b"):
        c.put_agent(shop_id="r", agent_id=agent, max_capacity=5)
        c.set_presence("r", agent, pb.Presence.PRESENCE_ONLINE, at=t0)
    with c.watch_assignments("r") as watch:
        held = c.dispatch("r", "rb", "r1", at=t0).agent_id
        # Nobody replies: a call whose `at` is past the deadline (or the server's tick) fires it.
        c.dispatch("r", "rc", "r2", at=t0 + 61 * sec)
        moved = next(watch)
    assert (moved.conversation_id, moved.reason, moved.previous_agent_id) == ("r1", pb.Reason.REASON_REROUTED, held)
    assert moved.agent_id not in ("", held)


def test_blocking_watch_gives_a_burst_one_by_one_in_order(sync_client: DispatchClient) -> None:
    # The client reads WatchAssignmentBatches: a burst arrives as a few
    # messages of many hand-outs, and the watch gives them one at a time.
    sync_client.put_shop(shop_id="s", main_account="s")
    sync_client.put_agent(shop_id="s", agent_id="s:a", max_capacity=1)
    sync_client.set_presence("s", "s:a", pb.Presence.PRESENCE_ONLINE)
    sync_client.dispatch("s", "b-first", "first")
    sync_client.dispatch_batch([dispatch_request("s", f"b{i}", f"c{i:04d}") for i in range(1500)])
    with sync_client.watch_assignments("s") as watch:
        sync_client.put_agent(shop_id="s", agent_id="s:a", max_capacity=1501)  # hands out all 1,500 at once
        got = [next(watch).conversation_id for _ in range(1500)]
    assert got == [f"c{i:04d}" for i in range(1500)]
