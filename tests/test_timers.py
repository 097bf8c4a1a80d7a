"""Scenario tests of the rules that fire on time (spec §10 re-route and reclaim, §11 max_queue_wait).

Each runs against both engines (``engine_cls``). The helpers and conventions
are those of ``test_engine_scenarios.py`` (shop ``tb1``, agents ``tb1:a``...).
"""

from __future__ import annotations

import datetime
import json
import zoneinfo

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

from _fastpath import (
    AgentConfig,
    BusinessHours,
    GroupConfig,
    InvalidArgumentError,
    OfflineRule,
    Presence,
    Reason,
    ShopConfig,
    TimerKind,
)


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


def check_tracks(engine):
    """The compiled engine's §10 track lists agree with its conversations (timerheap.pxd)."""
    if hasattr(engine, "_check_timers"):
        engine._check_timers()


def test_reclaim_moves_what_the_agent_holds_after_transfers_closes_reroutes_and_handouts(engine_cls):
    """Every path that gives or takes a conversation keeps the compiled engine's per-agent
    list (what a reclaim looks at) in step: a reclaim moves exactly the unread conversations
    the agent holds, in conversation id order (UTF-8 byte order is code point order: "é1"
    after "c9")."""
    engine = fresh(engine_cls, reclaim_after_offline_ms=10 * MIN)
    add_agent(engine, A, cap=4)
    add_agent(engine, B, cap=10)
    add_agent(engine, C, cap=1)
    add_group(engine, "g", [C], reroute_unanswered_after_ms=2 * MIN)  # only C's conversations time out
    for conv, agent in (("c5", B), ("c3", B), ("c9", A), ("é1", B), ("c7", A)):
        engine.conversation_event(SHOP, conv, 5, T0, buyer_id=f"buyer-{conv}", agent_id=agent)  # ASSIGNED
    check_tracks(engine)
    assert transfer(engine, "c5", to_agent=A) == A  # out of B's list, into A's
    close(engine, "c7")  # out of A's list
    check_tracks(engine)
    presence(engine, B, Presence.OFFLINE, at=T0 + 1)  # B's reclaim deadline: 10 min
    engine.conversation_event(SHOP, "c1", 5, T0 + 1, buyer_id="buyer-c1", agent_id=C)
    assert engine.tick(T0 + 2 * MIN + 1) == 1  # c1: C -> A (re-routed; B is offline)
    assert engine.drain_outbox() == [(SHOP, "c1", "buyer-c1", A, int(Reason.REROUTED), T0 + 2 * MIN + 1, C)]
    presence(engine, B, Presence.ONLINE, at=T0 + 3 * MIN)  # cancels B's reclaim
    presence(engine, B, Presence.OFFLINE, at=T0 + 3 * MIN)  # and starts a new one (13 min)
    check_tracks(engine)
    # A hand-out from the queue: A (4: c5, c9, c1, c8) and C (c0) are full, B is offline.
    engine.conversation_event(SHOP, "c8", 5, T0 + 3 * MIN, buyer_id="buyer-c8", agent_id=A)
    engine.conversation_event(SHOP, "c0", 5, T0 + 3 * MIN, buyer_id="buyer-c0", agent_id=C)
    reply(engine, "c0", at=T0 + 3 * MIN)  # no re-route for c0
    assert picked(dispatch(engine, "c6", "buyer-c6", at=T0 + 3 * MIN))[0] == Reason.QUEUED
    close(engine, "c8", at=T0 + 4 * MIN)  # c6: the queue -> A
    assert engine.drain_outbox()[0][:4] == (SHOP, "c6", "buyer-c6", A)
    reply(engine, "c9", at=T0 + 4 * MIN)  # c9 is answered: a reclaim leaves it with A
    check_tracks(engine)
    # Tracking off and on again (every rule off, then reclaim on): the lists are rebuilt.
    engine.put_shop(ShopConfig(SHOP, MAIN))
    add_group(engine, "g", [C])
    check_tracks(engine)
    engine.put_shop(ShopConfig(SHOP, MAIN, reclaim_after_offline_ms=10 * MIN))
    check_tracks(engine)
    assert engine.pending_deadlines() == 0  # B's reclaim went with the rule
    presence(engine, B, Presence.ONLINE, at=T0 + 5 * MIN)
    presence(engine, A, Presence.OFFLINE, at=T0 + 5 * MIN)
    assert engine.tick(T0 + 15 * MIN) == 1
    assert engine.drain_outbox() == [
        (SHOP, conv, f"buyer-{conv}", B, int(Reason.RECLAIMED), T0 + 15 * MIN, A) for conv in ("c1", "c5", "c6")
    ]
    assert conv_agent(engine, "c9") == A
    check_tracks(engine)
    # B now holds c1, c3, c5, c6 and é1; A comes back and B goes: everything moves to A, in id order.
    presence(engine, A, Presence.ONLINE, at=T0 + 16 * MIN)
    presence(engine, B, Presence.OFFLINE, at=T0 + 16 * MIN)
    assert engine.tick(T0 + 26 * MIN) == 1
    moved = [item[1] for item in engine.drain_outbox()]
    assert moved == ["c1", "c3", "c5", "c6", "é1"][: len(moved)] and len(moved) == 3  # A has room for 3 (c9 + 3)
    check_tracks(engine)
    # A snapshot, in either engine, rebuilds the lists; closing everything empties them.
    import _fastpath

    state = json.loads(json.dumps(engine.export_state()))
    for other_cls in (_fastpath.ReferenceEngine, _fastpath.CompiledEngine):
        other = other_cls()
        other.import_state(state)
        check_tracks(other)
        for conv in ("c1", "c3", "c5", "c6", "c9", "c0", "é1"):
            close(other, conv, at=T0 + 30 * MIN)
        check_tracks(other)
        assert other.totals()["live_conversations"] == 0


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


# ----------------------------------------------------------------- business hours (§10)


def utc_ms(*args, tz="UTC"):
    return int(datetime.datetime(*args, tzinfo=zoneinfo.ZoneInfo(tz)).timestamp() * 1000)


def weekly(days, start, end):
    """(day, open minute, close minute) rows for ``days`` (0 = Monday)."""
    return tuple((d, start, end) for d in days)


def hours_shop(engine_cls, hours, tz="UTC", **settings):
    return fresh(engine_cls, business_hours=hours, timezone=tz, **settings)


def reason_of(result):
    return result[0]


def test_schedule_across_midnight(engine_cls):
    # Friday 22:00 - Saturday 02:00 only (2026-11-27 is a Friday).
    engine = hours_shop(engine_cls, BusinessHours(weekly=((4, 22 * 60, 2 * 60),)))
    add_agent(engine, A, at=utc_ms(2026, 11, 27, 20, 0))
    closed = dispatch(engine, "c1", "buyer1", at=utc_ms(2026, 11, 27, 21, 59), trace=True)
    assert picked(closed) == (Reason.OFFLINE_MAIN_ACCOUNT, MAIN, None)
    assert closed[3][:2] == ["online:closed", "offline:MAIN_ACCOUNT"]
    assert picked(dispatch(engine, "c2", "buyer2", at=utc_ms(2026, 11, 27, 22, 0)))[:2] == (Reason.GROUP, A)
    assert picked(dispatch(engine, "c3", "buyer3", at=utc_ms(2026, 11, 28, 1, 59)))[:2] == (Reason.GROUP, A)
    assert reason_of(dispatch(engine, "c4", "buyer4", at=utc_ms(2026, 11, 28, 2, 0))) == Reason.OFFLINE_MAIN_ACCOUNT
    assert reason_of(dispatch(engine, "c5", "buyer5", at=utc_ms(2026, 12, 4, 23, 30))) == Reason.GROUP


@pytest.mark.parametrize(
    ("closed_at", "open_at"),
    [
        # Spring forward (2026-03-29): 09:00 CEST is 07:00 UTC, not 08:00.
        (utc_ms(2026, 3, 29, 6, 59), utc_ms(2026, 3, 29, 7, 0)),
        # Fall back (2026-10-25): 09:00 CET is 08:00 UTC again.
        (utc_ms(2026, 10, 25, 7, 59), utc_ms(2026, 10, 25, 8, 0)),
    ],
)
def test_schedule_across_a_dst_change(engine_cls, closed_at, open_at):
    engine = hours_shop(engine_cls, BusinessHours(weekly=weekly(range(7), 9 * 60, 18 * 60)), tz="Europe/Berlin")
    add_agent(engine, A, at=closed_at - MIN)
    assert reason_of(dispatch(engine, "c1", "buyer1", at=closed_at)) == Reason.OFFLINE_MAIN_ACCOUNT
    assert picked(dispatch(engine, "c2", "buyer2", at=open_at))[:2] == (Reason.GROUP, A)


def test_holiday_exception_and_special_hours(engine_cls):
    hours = BusinessHours(
        weekly=weekly(range(7), 0, 24 * 60),
        exceptions=(("2026-12-24", ((9 * 60, 12 * 60),)), ("2026-12-25", ())),
    )
    engine = hours_shop(engine_cls, hours)
    add_agent(engine, A, at=utc_ms(2026, 12, 23, 0, 0))
    assert reason_of(dispatch(engine, "c1", "b1", at=utc_ms(2026, 12, 23, 23, 0))) == Reason.GROUP
    assert reason_of(dispatch(engine, "c2", "b2", at=utc_ms(2026, 12, 24, 8, 0))) == Reason.OFFLINE_MAIN_ACCOUNT
    assert reason_of(dispatch(engine, "c3", "b3", at=utc_ms(2026, 12, 24, 11, 0))) == Reason.GROUP
    assert reason_of(dispatch(engine, "c4", "b4", at=utc_ms(2026, 12, 25, 12, 0))) == Reason.OFFLINE_MAIN_ACCOUNT
    assert reason_of(dispatch(engine, "c5", "b5", at=utc_ms(2026, 12, 26, 0, 0))) == Reason.GROUP


def test_staging_and_queue_open_at_the_first_minute_of_business(engine_cls):
    # Monday to Friday 09:00-18:00; 2026-11-28 is a Saturday.
    hours = BusinessHours(weekly=weekly(range(5), 9 * 60, 18 * 60))
    engine = hours_shop(engine_cls, hours, offline_rule=OfflineRule.STAGING)
    fri = utc_ms(2026, 11, 27, 17, 0)
    add_agent(engine, A, cap=1, at=fri)
    add_agent(engine, B, cap=1, at=fri)
    assert reason_of(dispatch(engine, "q0", "buyer0", at=fri)) == Reason.GROUP
    assert reason_of(dispatch(engine, "q1", "buyer1", at=fri)) == Reason.GROUP
    assert reason_of(dispatch(engine, "q2", "buyer2", at=fri)) == Reason.QUEUED
    # Saturday: closed, so staging even though agents are online; room made while closed
    # (a close, a capacity raise) hands nothing out.
    sat = utc_ms(2026, 11, 28, 10, 0)
    assert reason_of(dispatch(engine, "s1", "buyer4", at=sat)) == Reason.OFFLINE_STAGING
    assert reason_of(dispatch(engine, "s2", "buyer5", at=sat + MIN, priority=5)) == Reason.OFFLINE_STAGING
    close(engine, "q1", at=sat + 2 * MIN)
    for agent_id in (A, B):
        engine.put_agent(AgentConfig(shop_id=SHOP, agent_id=agent_id, max_capacity=5))
    assert waiting(engine, "queue") == ["q2"]
    assert waiting(engine, "staging") == ["s2", "s1"]
    assert engine.drain_outbox() == []
    monday = utc_ms(2026, 11, 30, 9, 0)
    assert engine.shop_state(SHOP)["next_deadlines"] == [{"at_ms": monday, "kind": int(TimerKind.HOURS), "id": ""}]
    assert engine.tick(monday - 1) == 0
    # The first minute of business, with no call: staging (priority first, then oldest), then the queue.
    assert engine.tick(monday) == 1
    handed = engine.drain_outbox()
    assert [(h[1], h[4], h[5]) for h in handed] == [
        ("s2", Reason.OFFLINE_STAGING, monday),
        ("s1", Reason.OFFLINE_STAGING, monday),
        ("q2", Reason.GROUP, monday),
    ]
    assert waiting(engine, "staging") == waiting(engine, "queue") == []
    assert engine.shop_state(SHOP)["deadlines"] == 0


def test_closed_shop_answers_the_offline_rule_and_honours_contacts_if_asked(engine_cls):
    hours = BusinessHours(weekly=weekly(range(7), 9 * 60, 18 * 60))
    for after_hours, expected in ((False, (Reason.OFFLINE_MAIN_ACCOUNT, MAIN)), (True, (Reason.AFFINITY, A))):
        engine = hours_shop(engine_cls, hours, recent_contacts_after_hours=after_hours)
        day = utc_ms(2026, 11, 30, 10, 0)
        add_agent(engine, A, at=day)
        dispatch(engine, "c1", "buyer1", at=day)
        reply(engine, "c1", A, at=day + MIN)
        close(engine, "c1", at=day + 2 * MIN)
        night = utc_ms(2026, 11, 30, 20, 0)
        assert picked(dispatch(engine, "c2", "buyer1", at=night))[:2] == expected
        # A buyer without a recent contact gets the offline rule either way.
        assert picked(dispatch(engine, "c3", "buyer2", at=night))[:2] == (Reason.OFFLINE_MAIN_ACCOUNT, MAIN)


def test_closed_group_is_not_a_candidate(engine_cls):
    engine = fresh(engine_cls)
    day = utc_ms(2026, 11, 30, 10, 0)
    add_agent(engine, A, at=day)
    add_agent(engine, B, at=day)
    add_group(engine, "day", [A], business_hours=BusinessHours(weekly=weekly(range(7), 9 * 60, 18 * 60)))
    add_group(engine, "always", [B])
    night = utc_ms(2026, 11, 30, 20, 0)
    for i in range(6):
        result = dispatch(engine, f"n{i}", f"night{i}", at=night, trace=True)
        assert picked(result) == (Reason.GROUP, B, "always")
        assert "groups:ready:1" in result[3]
    groups = {picked(dispatch(engine, f"d{i}", f"day{i}", at=utc_ms(2026, 12, 1, 10, 0)))[2] for i in range(12)}
    assert groups == {"day", "always"}


def test_business_hours_survive_a_snapshot_and_old_snapshots_are_always_open(engine_cls):
    import _fastpath

    other_engine_cls = (
        _fastpath.CompiledEngine if engine_cls is _fastpath.ReferenceEngine else _fastpath.ReferenceEngine
    )
    hours = BusinessHours(weekly=weekly(range(5), 9 * 60, 18 * 60))
    engine = hours_shop(engine_cls, hours, offline_rule=OfflineRule.STAGING)
    add_agent(engine, A, at=utc_ms(2026, 11, 28, 10, 0))
    dispatch(engine, "s1", "buyer1", at=utc_ms(2026, 11, 28, 10, 0))
    state = json.loads(json.dumps(engine.export_state()))
    other = other_engine_cls()
    other.import_state(state)
    assert other.export_state() == state
    assert other.shop_config(SHOP).business_hours == hours
    assert other.tick(utc_ms(2026, 11, 30, 9, 0)) == 1
    # A snapshot older than business hours: no schedule, always open.
    del state["shops"][0]["config"]["business_hours"]
    del state["shops"][0]["config"]["recent_contacts_after_hours"]
    state["timers"]["pending"] = []
    old = engine_cls()
    old.import_state(state)
    assert not old.shop_config(SHOP).business_hours


def test_business_hours_validation(engine_cls):
    engine = engine_cls()
    with pytest.raises(InvalidArgumentError, match=r"business_hours.weekly\[0\].day"):
        engine.put_shop(ShopConfig(SHOP, MAIN, business_hours=BusinessHours(weekly=((7, 0, 60),))))
    with pytest.raises(InvalidArgumentError, match=r"business_hours.exceptions\[0\].date"):
        engine.put_shop(ShopConfig(SHOP, MAIN, business_hours=BusinessHours(exceptions=(("2026-13-01", ()),))))
    with pytest.raises(InvalidArgumentError, match="close equals the open"):
        engine.put_shop(ShopConfig(SHOP, MAIN, business_hours=BusinessHours(weekly=((0, 60, 60),))))
    with pytest.raises(InvalidArgumentError, match="recent_contacts_after_hours"):
        engine.put_shop(ShopConfig(SHOP, MAIN, recent_contacts_after_hours=1))  # type: ignore[arg-type]
