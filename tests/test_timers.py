"""Scenario tests of the rules that fire on time (spec §10 re-route and reclaim, §11 max_queue_wait).

Each runs against both engines (``engine_cls``). The helpers and conventions
are those of ``test_engine_scenarios.py`` (shop ``tb1``, agents ``tb1:a``...).
"""

from __future__ import annotations

import json

import pytest
from test_engine_scenarios import (
    BOT,
    MAIN,
    MIN,
    SHOP,
    T0,
    A,
    B,
    C,
    add_agent,
    add_group,
    buyer_message,
    close,
    dispatch,
    fresh,
    load,
    picked,
    presence,
    reply,
    transfer,
    waiting,
)

from _fastpath import GroupConfig, OfflineRule, Presence, Reason, ShopConfig, TimerKind


def conv_agent(engine, conv):
    return engine.conversation(SHOP, conv)["agent_id"]


# ----------------------------------------------------------------- re-route (§10)


def test_rules_are_off_by_default_and_time_alone_changes_nothing(engine_cls):
    engine = fresh(engine_cls)
    add_agent(engine, A)
    add_agent(engine, B)
    dispatch(engine, "c1", "buyer1")
    before = engine.export_state()
    assert engine.tick(T0 + 400 * MIN) == 0
    assert engine.export_state() == before
    assert engine.shop_state(SHOP)["deadlines"] == 0
    assert engine.pending_deadlines() == 0


def test_unanswered_conversation_is_rerouted_once_without_its_agent(engine_cls):
    engine = fresh(engine_cls, reroute_unanswered_after_ms=3 * MIN)
    add_agent(engine, A, cap=1)
    add_agent(engine, B, cap=1)
    add_agent(engine, C, cap=1)
    first = picked(dispatch(engine, "c1", "buyer1"))[1]
    assert engine.shop_state(SHOP)["next_deadlines"] == [
        {"at_ms": T0 + 3 * MIN, "kind": int(TimerKind.REROUTE), "id": "c1"}
    ]
    assert engine.tick(T0 + 3 * MIN - 1) == 0
    assert engine.tick(T0 + 3 * MIN) == 1
    (handout,) = engine.drain_outbox()
    second = handout[3]
    assert handout == (SHOP, "c1", "buyer1", second, int(Reason.REROUTED), T0 + 3 * MIN, first)
    assert second != first
    assert load(engine, first)[:2] == (0, 0)
    assert load(engine, second)[:2] == (1, 1)
    # Not made the recent contact: it has not spoken yet.
    assert engine.recent_contact(SHOP, "buyer1") is None
    # A second silence does not move it again (max_reroutes 1).
    assert engine.shop_state(SHOP)["deadlines"] == 0
    assert engine.tick(T0 + 60 * MIN) == 0
    assert conv_agent(engine, "c1") == second
    assert engine.decision_counts()[Reason.REROUTED][1] == 1


def test_max_reroutes_two_moves_it_twice(engine_cls):
    engine = fresh(engine_cls, reroute_unanswered_after_ms=MIN, max_reroutes=2)
    for agent in (A, B, C):
        add_agent(engine, agent, cap=1)
    dispatch(engine, "c1", "buyer1")
    assert engine.tick(T0 + 10 * MIN) == 2  # at T0+1m, then at T0+2m
    assert [h[4] for h in engine.drain_outbox()] == [int(Reason.REROUTED)] * 2
    assert engine.shop_state(SHOP)["deadlines"] == 0


def test_a_reply_in_time_cancels_the_reroute(engine_cls):
    engine = fresh(engine_cls, reroute_unanswered_after_ms=3 * MIN)
    add_agent(engine, A)
    add_agent(engine, B)
    agent = picked(dispatch(engine, "c1", "buyer1"))[1]
    reply(engine, "c1", at=T0 + MIN)
    buyer_message(engine, "c1", at=T0 + 2 * MIN)
    assert engine.tick(T0 + 60 * MIN) == 0
    assert conv_agent(engine, "c1") == agent


def test_reroute_when_nobody_else_can_take_it_stays(engine_cls):
    engine = fresh(engine_cls, reroute_unanswered_after_ms=3 * MIN)
    add_agent(engine, A, cap=1)
    add_agent(engine, B, cap=1)
    dispatch(engine, "c1", "buyer1")
    dispatch(engine, "c2", "buyer2")
    holder = conv_agent(engine, "c1")
    assert engine.tick(T0 + 3 * MIN) == 2  # both fire; everyone else is full
    assert engine.drain_outbox() == []
    assert conv_agent(engine, "c1") == holder
    assert engine.shop_state(SHOP)["deadlines"] == 0  # it stays, with no new deadline


def test_an_event_with_a_later_at_fires_the_due_deadline_first(engine_cls):
    engine = fresh(engine_cls, reroute_unanswered_after_ms=3 * MIN)
    add_agent(engine, A, cap=1)
    add_agent(engine, B, cap=1)
    first = picked(dispatch(engine, "c1", "buyer1"))[1]
    # The reply comes after the deadline: the re-route happened first, so it is refused.
    with pytest.raises(Exception, match="is served by"):
        reply(engine, "c1", agent_id=first, at=T0 + 4 * MIN)
    assert conv_agent(engine, "c1") != first
    (handout,) = engine.drain_outbox()
    assert handout[5] == T0 + 3 * MIN  # timed at its deadline, not at the event


def test_group_override_and_robots_never_time_out(engine_cls):
    engine = fresh(engine_cls, robot_agent_id="", reroute_unanswered_after_ms=0)
    add_agent(engine, A, cap=1)
    add_agent(engine, B, cap=1)
    add_group(engine, "fast", [A, B], reroute_unanswered_after_ms=MIN)
    dispatch(engine, "c1", "buyer1")
    assert engine.shop_state(SHOP)["deadlines"] == 1
    engine.put_group(GroupConfig(SHOP, "fast", members=(A, B)))  # the rule off: its deadline goes
    assert engine.shop_state(SHOP)["deadlines"] == 0


def test_transfer_restarts_the_clock_for_the_receiver(engine_cls):
    engine = fresh(engine_cls, reroute_unanswered_after_ms=3 * MIN)
    add_agent(engine, A)
    add_agent(engine, B)
    first = picked(dispatch(engine, "c1", "buyer1"))[1]
    other = B if first == A else A
    transfer(engine, "c1", at=T0 + 2 * MIN, to_agent=other)
    assert engine.shop_state(SHOP)["next_deadlines"][0]["at_ms"] == T0 + 5 * MIN
    close(engine, "c1", at=T0 + 3 * MIN)
    assert engine.shop_state(SHOP)["deadlines"] == 0


# ----------------------------------------------------------------- reclaim (§10)


def test_offline_agent_is_reclaimed_of_its_unanswered_conversations(engine_cls):
    engine = fresh(engine_cls, reclaim_after_offline_ms=10 * MIN)
    add_agent(engine, A, cap=2)
    add_agent(engine, B, cap=5, online=False)
    engine.conversation_event(SHOP, "c1", 5, T0, buyer_id="buyer1", agent_id=A)  # ASSIGNED
    engine.conversation_event(SHOP, "c2", 5, T0, buyer_id="buyer2", agent_id=A)
    reply(engine, "c2", at=T0)  # answered: stays with A
    presence(engine, B, Presence.ONLINE, at=T0 + MIN)
    presence(engine, A, Presence.OFFLINE, at=T0 + 2 * MIN)
    assert engine.tick(T0 + 12 * MIN - 1) == 0
    assert engine.tick(T0 + 12 * MIN) == 1
    (handout,) = engine.drain_outbox()
    assert handout == (SHOP, "c1", "buyer1", B, int(Reason.RECLAIMED), T0 + 12 * MIN, A)
    assert conv_agent(engine, "c2") == A


def test_reclaim_cancelled_by_coming_back(engine_cls):
    engine = fresh(engine_cls, reclaim_after_offline_ms=10 * MIN)
    add_agent(engine, A)
    add_agent(engine, B)
    engine.conversation_event(SHOP, "c1", 5, T0, buyer_id="buyer1", agent_id=A)
    presence(engine, A, Presence.OFFLINE, at=T0 + MIN)
    assert engine.shop_state(SHOP)["deadlines"] == 1
    presence(engine, A, Presence.ONLINE, at=T0 + 5 * MIN)
    assert engine.shop_state(SHOP)["deadlines"] == 0
    assert engine.tick(T0 + 60 * MIN) == 0
    assert conv_agent(engine, "c1") == A


# ----------------------------------------------------------------- max_queue_wait (§11)


def test_queue_timeout_moves_the_conversation_to_the_message_pool(engine_cls):
    engine = fresh(engine_cls, max_queue_wait_ms=5 * MIN)
    add_agent(engine, A, cap=1)
    dispatch(engine, "c1", "buyer1")
    assert picked(dispatch(engine, "c2", "buyer2", at=T0 + MIN))[0] == Reason.QUEUED
    assert engine.tick(T0 + 6 * MIN) == 1
    assert engine.drain_outbox() == [(SHOP, "c2", "buyer2", "", int(Reason.QUEUE_TIMEOUT), T0 + 6 * MIN)]
    assert waiting(engine, "queue") == []
    assert waiting(engine, "pool") == ["c2"]
    assert engine.claim_from_pool(SHOP, A, T0 + 7 * MIN) == ("c2", "buyer2")


def test_handed_out_in_time_clears_the_queue_timeout(engine_cls):
    engine = fresh(engine_cls, max_queue_wait_ms=5 * MIN)
    add_agent(engine, A, cap=1)
    dispatch(engine, "c1", "buyer1")
    dispatch(engine, "c2", "buyer2")
    close(engine, "c1", at=T0 + MIN)
    assert conv_agent(engine, "c2") == A
    assert engine.tick(T0 + 60 * MIN) == 0


# ----------------------------------------------------------------- snapshots


def test_pending_deadlines_survive_a_snapshot_in_either_engine(engine_cls):
    import _fastpath

    engine = fresh(engine_cls, reroute_unanswered_after_ms=3 * MIN, reclaim_after_offline_ms=MIN)
    add_agent(engine, A, cap=1)
    add_agent(engine, B, cap=1)
    dispatch(engine, "c1", "buyer1", source="PRODUCT_PAGE", order_state=2)
    presence(engine, B, Presence.OFFLINE, at=T0 + 1)
    state = json.loads(json.dumps(engine.export_state()))
    for other_cls in (_fastpath.ReferenceEngine, _fastpath.CompiledEngine):
        other = other_cls()
        other.import_state(state)
        assert other.export_state() == state
        assert other.shop_state(SHOP)["next_deadlines"] == engine.shop_state(SHOP)["next_deadlines"]


def test_old_snapshots_without_timers_load(engine_cls):
    engine = fresh(engine_cls, max_queue_wait_ms=MIN)
    add_agent(engine, A, cap=1)
    dispatch(engine, "c1", "buyer1")
    state = engine.export_state()
    state.pop("timers")
    other = engine_cls()
    other.import_state(state)
    assert other.shop_state(SHOP)["deadlines"] == 0


def test_config_validation(engine_cls):
    engine = engine_cls()
    with pytest.raises(Exception, match="max_reroutes"):
        engine.put_shop(ShopConfig(SHOP, MAIN, max_reroutes=0))
    with pytest.raises(Exception, match="reroute_unanswered_after"):
        engine.put_shop(ShopConfig(SHOP, MAIN, reroute_unanswered_after_ms=-1))
    _ = (BOT, OfflineRule)
