"""Validation at the boundary (spec §9, issue 2 "Validation at the boundary").

"Unknown shop, unknown agent, malformed ids, impossible settings: a precise
gRPC status (NOT_FOUND, INVALID_ARGUMENT, FAILED_PRECONDITION) with a message;
never a crash, never a silently wrong assignment." — and the state is unchanged.

Every rejected call below runs against a populated shop; the test compares the
shop's state (``shop_state``), its configuration, the list of shops, the
outbox and a few lookups before and after the call.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest

from _fastpath import (
    AgentConfig,
    AlreadyExistsError,
    Client,
    ConversationEvent,
    ConversationType,
    DispatchError,
    FailedPreconditionError,
    GroupConfig,
    InvalidArgumentError,
    NotFoundError,
    OfflineRule,
    OrderState,
    Presence,
    Reason,
    Role,
    ShopConfig,
    Strategy,
)
from _fastpath.model import MAX_TIME_MS, day_bounds

SHOP = "tb1"
MAIN = "tb1"
A = "tb1:a"
B = "tb1:b"
BOT = "tb1:bot"
PROXY = "svc:proxy"
T0 = 1_700_000_000_000
LATER = T0 + 3_600_000  # rejected calls carry a later time: the clock must not move

LONG = "x" * 129  # 129 bytes
LONG_UTF8 = "字" * 43  # 129 bytes in UTF-8, 43 characters
MAX_OK = "y" * 128
MAX_OK_UTF8 = "字" * 42 + "ab"  # 128 bytes


def populated(engine_cls):
    """A shop with agents A (online, 2 conversations), B (offline), a robot, a proxy,
    a group, an exclusive pair, a queued conversation and a recent contact."""
    engine = engine_cls(seed=5)
    engine.put_shop(ShopConfig(shop_id=SHOP, main_account=MAIN))
    engine.put_agent(AgentConfig(shop_id=SHOP, agent_id=A, max_capacity=2))
    engine.put_agent(AgentConfig(shop_id=SHOP, agent_id=B, max_capacity=5))
    engine.put_agent(AgentConfig(shop_id=SHOP, agent_id=BOT, role=Role.ROBOT))
    engine.put_agent(AgentConfig(shop_id=SHOP, agent_id=PROXY, role=Role.PROXY, max_capacity=5))
    engine.put_group(GroupConfig(shop_id=SHOP, group_id="g", members=(A, B)))
    engine.set_exclusive_agent(SHOP, "vip", A)
    engine.set_presence(SHOP, A, Presence.ONLINE, Client.DESKTOP, T0)
    assert engine.dispatch(SHOP, "buyer-1", "c1", T0)[:2] == (Reason.GROUP, A)
    engine.conversation_event(SHOP, "c1", ConversationEvent.AGENT_REPLY, T0, agent_id=A)
    assert engine.dispatch(SHOP, "buyer-2", "c2", T0)[:2] == (Reason.GROUP, A)
    assert engine.dispatch(SHOP, "buyer-3", "c3", T0)[0] == Reason.QUEUED
    engine.put_shop(ShopConfig(shop_id="other", main_account="other"))
    engine.drain_outbox()
    return engine


def snapshot(engine) -> dict:
    return copy.deepcopy(
        {
            "shops": engine.shop_ids(),
            "state": engine.shop_state(SHOP),
            "other": engine.shop_state("other"),
            "config": engine.shop_config(SHOP),
            "c1": engine.conversation(SHOP, "c1"),
            "c3": engine.conversation(SHOP, "c3"),
            "contact": engine.recent_contact(SHOP, "buyer-1"),
            "exclusive": engine.exclusive_agent(SHOP, "vip"),
        }
    )


def check_rejected(engine_cls, call: Callable, error: type[DispatchError]) -> None:
    engine = populated(engine_cls)
    before = snapshot(engine)
    with pytest.raises(error) as info:
        call(engine)
    assert type(info.value) is error  # the precise class, not a sibling
    assert str(info.value)  # with a message
    assert snapshot(engine) == before
    assert engine.drain_outbox() == []


def shop_cfg(**kw) -> ShopConfig:
    kw.setdefault("shop_id", SHOP)
    kw.setdefault("main_account", MAIN)
    return ShopConfig(**kw)


def agent_cfg(**kw) -> AgentConfig:
    kw.setdefault("shop_id", SHOP)
    kw.setdefault("agent_id", A)
    kw.setdefault("max_capacity", 2)
    return AgentConfig(**kw)


def group_cfg(**kw) -> GroupConfig:
    kw.setdefault("shop_id", SHOP)
    kw.setdefault("group_id", "g")
    kw.setdefault("members", (A, B))
    return GroupConfig(**kw)


def event(engine, conv, ev, **kw):
    return engine.conversation_event(SHOP, conv, ev, LATER, **kw)


# --------------------------------------------------------------- NOT_FOUND

NOT_FOUND: dict[str, Callable] = {
    "dispatch to unknown shop": lambda e: e.dispatch("nope", "buyer-9", "c9", LATER),
    "agent in unknown shop": lambda e: e.put_agent(agent_cfg(shop_id="nope", agent_id="nope:x")),
    "group in unknown shop": lambda e: e.put_group(group_cfg(shop_id="nope", members=())),
    "presence in unknown shop": lambda e: e.set_presence("nope", A, Presence.ONLINE, Client.DESKTOP, LATER),
    "event in unknown shop": lambda e: e.conversation_event("nope", "c1", ConversationEvent.CLOSED, LATER),
    "state of unknown shop": lambda e: e.shop_state("nope"),
    "delete unknown shop": lambda e: e.delete_shop("nope"),
    "presence of unknown agent": lambda e: e.set_presence(SHOP, "tb1:zz", Presence.ONLINE, Client.DESKTOP, LATER),
    "delete unknown agent": lambda e: e.delete_agent(SHOP, "tb1:zz"),
    "agent of another shop": lambda e: e.set_presence("other", A, Presence.ONLINE, Client.DESKTOP, LATER),
    "group with unknown member": lambda e: e.put_group(group_cfg(group_id="g2", members=(A, "tb1:zz"))),
    "delete unknown group": lambda e: e.delete_group(SHOP, "zz"),
    "assigned to unknown agent": lambda e: event(e, "c9", ConversationEvent.ASSIGNED, buyer_id="b9", agent_id="tb1:zz"),
    "event on unknown conversation": lambda e: event(e, "c9", ConversationEvent.BUYER_MESSAGE),
    "reply on unknown conversation": lambda e: event(e, "c9", ConversationEvent.AGENT_REPLY),
    "transfer to unknown agent": lambda e: event(e, "c1", ConversationEvent.TRANSFERRED, to_agent_id="tb1:zz"),
    "transfer to unknown group": lambda e: event(e, "c1", ConversationEvent.TRANSFERRED, to_group_id="zz"),
    "exclusive agent not in the shop": lambda e: e.set_exclusive_agent(SHOP, "buyer-9", "tb1:zz"),
    "exclusive in unknown shop": lambda e: e.set_exclusive_agent("nope", "buyer-9", A),
    "delete missing exclusive pair": lambda e: e.delete_exclusive_agent(SHOP, "buyer-9"),
    "robot agent not in the shop": lambda e: e.put_shop(shop_cfg(robot_first=True, robot_agent_id="tb1:zz")),
    "group robot not in the shop": lambda e: e.put_group(group_cfg(robot_enabled=True, robot_agent_id="tb1:zz")),
    "proxy not in the shop": lambda e: e.put_shop(
        shop_cfg(offline_rule=OfflineRule.PROXY_ACCOUNT, proxy_account="svc:zz")
    ),
    "claim by unknown agent": lambda e: e.claim_from_pool(SHOP, "tb1:zz", LATER),
}


@pytest.mark.parametrize("name", list(NOT_FOUND))
def test_not_found(engine_cls, name):
    check_rejected(engine_cls, NOT_FOUND[name], NotFoundError)


# --------------------------------------------------------------- INVALID_ARGUMENT

INVALID: dict[str, Callable] = {
    # ids: empty, > 128 bytes, control characters
    "empty shop id": lambda e: e.put_shop(shop_cfg(shop_id="", main_account="m")),
    "empty main account": lambda e: e.put_shop(shop_cfg(shop_id="new", main_account="")),
    "129-byte shop id": lambda e: e.put_shop(shop_cfg(shop_id=LONG, main_account="m")),
    "129-byte utf-8 shop id": lambda e: e.put_shop(shop_cfg(shop_id=LONG_UTF8, main_account="m")),
    "129-byte main account": lambda e: e.put_shop(shop_cfg(shop_id="new", main_account=LONG)),
    "newline in shop id": lambda e: e.put_shop(shop_cfg(shop_id="a\nb", main_account="m")),
    "NUL in shop id": lambda e: e.put_shop(shop_cfg(shop_id="a\x00b", main_account="m")),
    "DEL in shop id": lambda e: e.put_shop(shop_cfg(shop_id="a\x7f", main_account="m")),
    "empty agent id": lambda e: e.put_agent(agent_cfg(agent_id="")),
    "129-byte agent id": lambda e: e.put_agent(agent_cfg(agent_id=LONG)),
    "tab in agent id": lambda e: e.put_agent(agent_cfg(agent_id="tb1:\tx")),
    "empty group id": lambda e: e.put_group(group_cfg(group_id="")),
    "129-byte group id": lambda e: e.put_group(group_cfg(group_id=LONG_UTF8)),
    "empty member id": lambda e: e.put_group(group_cfg(members=(A, ""))),
    "empty buyer id": lambda e: e.dispatch(SHOP, "", "c9", LATER),
    "129-byte buyer id": lambda e: e.dispatch(SHOP, LONG, "c9", LATER),
    "empty conversation id": lambda e: e.dispatch(SHOP, "buyer-9", "", LATER),
    "129-byte conversation id": lambda e: e.dispatch(SHOP, "buyer-9", LONG_UTF8, LATER),
    "control char in conversation id": lambda e: e.dispatch(SHOP, "buyer-9", "c\r9", LATER),
    "control char in source": lambda e: e.dispatch(SHOP, "buyer-9", "c9", LATER, source="PRODUCT\x01PAGE"),
    "129-byte source": lambda e: e.dispatch(SHOP, "buyer-9", "c9", LATER, source=LONG),
    "empty shop id on dispatch": lambda e: e.dispatch("", "buyer-9", "c9", LATER),
    "direct without addressed account": lambda e: e.dispatch(
        SHOP, "buyer-9", "c9", LATER, conv_type=ConversationType.SHOP_TO_SHOP, to_account=""
    ),
    "empty buyer on exclusive pair": lambda e: e.set_exclusive_agent(SHOP, "", A),
    "empty conversation id on event": lambda e: e.conversation_event(SHOP, "", ConversationEvent.CLOSED, LATER),
    # numbers
    "weight 0": lambda e: e.put_agent(agent_cfg(weight=0)),
    "weight -1": lambda e: e.put_agent(agent_cfg(weight=-1)),
    "capacity 0": lambda e: e.put_agent(agent_cfg(max_capacity=0)),
    "capacity -3": lambda e: e.put_agent(agent_cfg(max_capacity=-3)),
    "new agent capacity 0": lambda e: e.put_agent(agent_cfg(agent_id="tb1:new", max_capacity=0)),
    "main account capacity 0": lambda e: e.put_agent(agent_cfg(agent_id=MAIN, role=Role.MAIN, max_capacity=0)),
    "negative event time": lambda e: e.dispatch(SHOP, "buyer-9", "c9", -1),
    "affinity window 0": lambda e: e.put_shop(shop_cfg(affinity_window_ms=0)),
    "negative offline grace": lambda e: e.put_shop(shop_cfg(offline_grace_ms=-1)),
    "staging cap 0": lambda e: e.put_shop(shop_cfg(staging_first_cap=0)),
    # enums
    "unknown shop strategy": lambda e: e.put_shop(shop_cfg(strategy=99)),
    "unknown group strategy": lambda e: e.put_group(group_cfg(strategy=6)),
    "unknown offline rule": lambda e: e.put_shop(shop_cfg(offline_rule=9)),
    "unknown main account mode": lambda e: e.put_shop(shop_cfg(main_account_mode=9)),
    "unknown role": lambda e: e.put_agent(agent_cfg(role=9)),
    "unknown group order state": lambda e: e.put_group(group_cfg(order_states=(OrderState.UNPAID, 42))),
    "unknown presence": lambda e: e.set_presence(SHOP, A, 9, Client.DESKTOP, LATER),
    "missing presence": lambda e: e.set_presence(SHOP, A, Presence.UNSPECIFIED, Client.DESKTOP, LATER),
    "unknown client": lambda e: e.set_presence(SHOP, A, Presence.OFFLINE, 9, LATER),
    "unknown conversation type": lambda e: e.dispatch(SHOP, "buyer-9", "c9", LATER, conv_type=9),
    "unknown order state": lambda e: e.dispatch(SHOP, "buyer-9", "c9", LATER, order_state=9),
    "unknown event": lambda e: e.conversation_event(SHOP, "c1", 9, LATER),
    "missing event": lambda e: e.conversation_event(SHOP, "c1", ConversationEvent.UNSPECIFIED, LATER),
    # impossible settings
    "bad time zone": lambda e: e.put_shop(shop_cfg(timezone="Mars/Olympus_Mons")),
    "empty time zone": lambda e: e.put_shop(shop_cfg(timezone="")),
    "robot_first without robot": lambda e: e.put_shop(shop_cfg(robot_first=True)),
    "proxy rule without proxy": lambda e: e.put_shop(shop_cfg(offline_rule=OfflineRule.PROXY_ACCOUNT)),
    "robot agent that is not a robot": lambda e: e.put_shop(shop_cfg(robot_first=True, robot_agent_id=A)),
    "group robot that is not a robot": lambda e: e.put_group(group_cfg(robot_enabled=True, robot_agent_id=B)),
    "proxy account that is not a proxy": lambda e: e.put_shop(
        shop_cfg(offline_rule=OfflineRule.PROXY_ACCOUNT, proxy_account=B)
    ),
    "robot as exclusive agent": lambda e: e.set_exclusive_agent(SHOP, "buyer-9", BOT),
    "robot as group member": lambda e: e.put_group(group_cfg(members=(A, BOT))),
    "role MAIN for a sub-account": lambda e: e.put_agent(agent_cfg(agent_id="tb1:new", role=Role.MAIN)),
    "main account with role SUB": lambda e: e.put_agent(agent_cfg(agent_id=MAIN, role=Role.SUB)),
    "transfer naming agent and group": lambda e: event(
        e, "c1", ConversationEvent.TRANSFERRED, to_agent_id=B, to_group_id="g"
    ),
    "transfer naming neither": lambda e: event(e, "c1", ConversationEvent.TRANSFERRED),
    "transfer to a robot": lambda e: event(e, "c1", ConversationEvent.TRANSFERRED, to_agent_id=BOT),
}


@pytest.mark.parametrize("name", list(INVALID))
def test_invalid_argument(engine_cls, name):
    check_rejected(engine_cls, INVALID[name], InvalidArgumentError)


# --------------------------------------------------------------- ALREADY_EXISTS / FAILED_PRECONDITION

ALREADY_EXISTS: dict[str, Callable] = {
    "dispatch of a live conversation id": lambda e: e.dispatch(SHOP, "buyer-9", "c1", LATER),
    "dispatch of a queued conversation id": lambda e: e.dispatch(SHOP, "buyer-9", "c3", LATER),
    "assigned with a live conversation id": lambda e: event(
        e, "c2", ConversationEvent.ASSIGNED, buyer_id="buyer-9", agent_id=B
    ),
}


@pytest.mark.parametrize("name", list(ALREADY_EXISTS))
def test_already_exists(engine_cls, name):
    check_rejected(engine_cls, ALREADY_EXISTS[name], AlreadyExistsError)


FAILED_PRECONDITION: dict[str, Callable] = {
    "presence on a robot": lambda e: e.set_presence(SHOP, BOT, Presence.ONLINE, Client.DESKTOP, LATER),
    "main account change": lambda e: e.put_shop(shop_cfg(main_account="tb9")),
    "delete the main account": lambda e: e.delete_agent(SHOP, MAIN),
    "delete an agent serving conversations": lambda e: e.delete_agent(SHOP, A),
    "delete a shop with live conversations": lambda e: e.delete_shop(SHOP),
    "reply on a queued conversation": lambda e: event(e, "c3", ConversationEvent.AGENT_REPLY),
    "transfer of a queued conversation": lambda e: event(e, "c3", ConversationEvent.TRANSFERRED, to_agent_id=B),
    "transfer to its own holder": lambda e: event(e, "c1", ConversationEvent.TRANSFERRED, to_agent_id=A),
    "reply by another agent": lambda e: event(e, "c1", ConversationEvent.AGENT_REPLY, agent_id=B),
    "event naming another buyer": lambda e: event(e, "c1", ConversationEvent.CLOSED, buyer_id="buyer-2"),
    "claim from an empty pool": lambda e: e.claim_from_pool(SHOP, B, LATER),
    "group robot without any robot": lambda e: e.put_group(group_cfg(robot_enabled=True)),
}


@pytest.mark.parametrize("name", list(FAILED_PRECONDITION))
def test_failed_precondition(engine_cls, name):
    check_rejected(engine_cls, FAILED_PRECONDITION[name], FailedPreconditionError)


# --------------------------------------------------------------- accepted at the limits


def test_ids_of_exactly_128_bytes_are_accepted(engine_cls):
    """The cap is 128 bytes (UTF-8), inclusive."""
    engine = engine_cls(seed=1)
    engine.put_shop(ShopConfig(shop_id=MAX_OK, main_account=MAX_OK_UTF8))
    engine.put_agent(AgentConfig(shop_id=MAX_OK, agent_id="a" * 128, max_capacity=1))
    engine.set_presence(MAX_OK, "a" * 128, Presence.ONLINE, Client.DESKTOP, T0)
    reason, agent_id, _group, _trace = engine.dispatch(MAX_OK, MAX_OK_UTF8, "c" * 128, T0, source="s" * 128)
    assert (reason, agent_id) == (Reason.GROUP, "a" * 128)


def test_robot_capacity_0_means_no_limit_and_weight_1_capacity_1_are_accepted(engine_cls):
    """§2: weight ≥ 1, capacity ≥ 1; a robot "has no capacity limit unless one is set"."""
    engine = engine_cls(seed=1)
    engine.put_shop(ShopConfig(shop_id=SHOP, main_account=MAIN))
    engine.put_agent(AgentConfig(shop_id=SHOP, agent_id=BOT, role=Role.ROBOT, max_capacity=0))
    engine.put_agent(AgentConfig(shop_id=SHOP, agent_id=A, weight=1, max_capacity=1))
    engine.put_shop(ShopConfig(shop_id=SHOP, main_account=MAIN, robot_first=True, robot_agent_id=BOT))
    engine.set_presence(SHOP, A, Presence.ONLINE, Client.DESKTOP, T0)
    for i in range(3):
        assert engine.dispatch(SHOP, f"b{i}", f"c{i}", T0)[:2] == (Reason.ROBOT, BOT)


def test_unspecified_enums_take_their_documented_defaults(engine_cls):
    """model.py: zero enum values take the documented default (strategy
    LEAST_SATURATION, offline rule MAIN_ACCOUNT, type BUYER_TO_SHOP)."""
    engine = engine_cls(seed=1)
    engine.put_shop(ShopConfig(shop_id=SHOP, main_account=MAIN, strategy=0, offline_rule=0, main_account_mode=0))
    config = engine.shop_config(SHOP)
    assert config.strategy == Strategy.LEAST_SATURATION
    assert config.offline_rule == OfflineRule.MAIN_ACCOUNT
    assert engine.dispatch(SHOP, "b1", "c1", T0, conv_type=ConversationType.UNSPECIFIED)[:2] == (
        Reason.OFFLINE_MAIN_ACCOUNT,
        MAIN,
    )


def test_rejected_dispatch_does_not_consume_a_random_draw(engine_cls):
    """A rejected call leaves the state unchanged, including the tie-breaking PRNG:
    the answers after a rejected dispatch equal those of a run without it."""
    runs = []
    for with_error in (False, True):
        engine = engine_cls(seed=21)
        engine.put_shop(ShopConfig(shop_id=SHOP, main_account=MAIN))
        for agent_id in (A, B):
            engine.put_agent(AgentConfig(shop_id=SHOP, agent_id=agent_id, max_capacity=50))
            engine.set_presence(SHOP, agent_id, Presence.ONLINE, Client.DESKTOP, T0)
        engine.conversation_event(SHOP, "keep", ConversationEvent.ASSIGNED, T0, buyer_id="bk", agent_id=MAIN)
        got = []
        for i in range(10):
            if with_error:
                with pytest.raises(InvalidArgumentError):
                    engine.dispatch(SHOP, f"b{i}", f"c{i}", T0, order_state=77)
                with pytest.raises(AlreadyExistsError):
                    engine.dispatch(SHOP, f"b{i}", "keep", T0)
            got.append(engine.dispatch(SHOP, f"b{i}", f"c{i}", T0)[1])
            engine.conversation_event(SHOP, f"c{i}", ConversationEvent.CLOSED, T0)
        runs.append(got)
    assert runs[0] == runs[1]
    assert set(runs[0]) == {A, B}  # A and B are always tied: every answer was a draw


@pytest.mark.parametrize("zone", ["UTC", "Asia/Shanghai", "America/New_York", "Pacific/Kiritimati", "Etc/GMT+12"])
@pytest.mark.parametrize("at", [0, 1, 1_767_225_600_000, MAX_TIME_MS - 2 * 86_400_000, MAX_TIME_MS])
def test_day_bounds_hold_at_the_edges_of_time(zone, at):
    """The daily reset works from 1970 to the last instant a Timestamp can carry,
    in every zone (east of UTC the last local day is past year 9999)."""
    day, start, end = day_bounds(zone, at)
    assert start <= at < end
    assert 0 < end - start <= 25 * 3_600_000
    if at >= 2 * 86_400_000:
        before, _, before_end = day_bounds(zone, start - 1)
        assert before == day - 1 and before_end == start


def test_engines_dispatch_at_the_last_instant(engine_cls):
    engine = engine_cls()
    engine.put_shop(ShopConfig("s", "m", timezone="Pacific/Kiritimati"))
    engine.put_agent(AgentConfig("s", "a", max_capacity=3))
    engine.set_presence("s", "a", Presence.ONLINE, Client.DESKTOP, MAX_TIME_MS - 5)
    assert engine.dispatch("s", "b", "c", MAX_TIME_MS)[:2] == (Reason.GROUP, "a")
    assert [a["today"] for a in engine.shop_state("s")["agents"] if a["agent_id"] == "a"] == [1]
