"""Conversions between ``dispatch.v1`` messages and the engine's records.

Every function here is boundary code: it checks what protobuf cannot (a
Timestamp's nanos, a Duration's sign) and leaves the rest of the validation to
the engine, whose errors already name the offending field.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import operator
import time
from typing import Any, Final

from google.protobuf import duration_pb2, timestamp_pb2

from _fastpath import AgentConfig, BusinessHours, GroupConfig, InvalidArgumentError, ShopConfig, TimerKind
from _fastpath.contract import Assignment
from _fastpath.model import AFFINITY_WINDOW_MS_DEFAULT, NEVER_MS, hours_state, timestamp_to_ms
from _fastpath.wire import WAITING_REASONS

from ._gen.dispatch.v1 import admin_pb2, dispatch_pb2

__all__ = [
    "DEFAULT_BUSY_THRESHOLD",
    "DEFAULT_STAGING_FIRST_CAP",
    "SHOP_STATE_PAGE_BYTES",
    "DEFAULT_WEIGHT",
    "agent_from_pb",
    "assignment_to_pb",
    "check_clock_skew",
    "duration_ms",
    "group_from_pb",
    "hours_from_pb",
    "hours_to_pb",
    "now_ms",
    "shop_config_to_pb",
    "shop_from_pb",
    "shop_state_page",
    "shop_state_to_pb",
    "timestamp",
    "timestamp_ms",
]

DEFAULT_STAGING_FIRST_CAP = 100
DEFAULT_BUSY_THRESHOLD = 4
DEFAULT_WEIGHT = 1
_NANOS_PER_MS = 1_000_000


def now_ms() -> int:
    """The server clock, in milliseconds since the epoch."""
    return time.time_ns() // _NANOS_PER_MS


def timestamp_ms(
    ts: timestamp_pb2.Timestamp, field: str, *, now: int | None = None, max_skew_ms: int | None = None
) -> int:
    """A Timestamp in whole milliseconds (finer nanos are truncated).

    With ``max_skew_ms`` (not ``None``), a time more than that ahead of
    ``now`` (default: the server clock) is refused (``check_clock_skew``)."""
    at_ms = timestamp_to_ms(ts.seconds, ts.nanos, field)
    if max_skew_ms is not None:
        check_clock_skew(at_ms, now_ms() if now is None else now, max_skew_ms, field)
    return at_ms


def _seconds(ms: int) -> str:
    return str(ms // 1000) if ms % 1000 == 0 else f"{ms / 1000:.3f}"


def check_clock_skew(at_ms: int, now: int, max_skew_ms: int | None, field: str = "at") -> int:
    """``at_ms`` unless it is more than ``max_skew_ms`` ahead of ``now`` (the server
    clock; ``None``: no bound), which is INVALID_ARGUMENT naming the bound
    (``--max-clock-skew``). A late time is never refused here: the engine counts
    it as happening at the shop's clock (a shop's clock never goes back)."""
    if max_skew_ms is not None and at_ms - now > max_skew_ms:
        raise InvalidArgumentError(
            f"{field} is {_seconds(at_ms - now)} s ahead of the server clock; "
            f"the bound is {_seconds(max_skew_ms)} s (--max-clock-skew)"
        )
    return at_ms


def duration_ms(d: duration_pb2.Duration, field: str) -> int:
    """A non-negative Duration in whole milliseconds (finer nanos are truncated)."""
    if d.seconds < 0 or d.nanos < 0:
        raise InvalidArgumentError(f"{field} must not be negative")
    if d.nanos >= 1_000_000_000:
        raise InvalidArgumentError(f"{field}.nanos={d.nanos} is outside 0..999999999")
    return d.seconds * 1000 + d.nanos // _NANOS_PER_MS


def timestamp(ms: int) -> timestamp_pb2.Timestamp:
    seconds, millis = divmod(ms, 1000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=millis * _NANOS_PER_MS)


def _duration(ms: int) -> duration_pb2.Duration:
    seconds, millis = divmod(ms, 1000)
    return duration_pb2.Duration(seconds=seconds, nanos=millis * _NANOS_PER_MS)


def shop_from_pb(shop: admin_pb2.ShopConfig) -> ShopConfig:
    """Apply the documented defaults of unset fields; the engine validates the rest."""
    return ShopConfig(
        shop_id=shop.shop_id,
        main_account=shop.main_account,
        strategy=shop.strategy,
        affinity_window_ms=(
            duration_ms(shop.affinity_window, "affinity_window")
            if shop.HasField("affinity_window")
            else AFFINITY_WINDOW_MS_DEFAULT
        ),
        offline_grace_ms=duration_ms(shop.offline_grace, "offline_grace") if shop.HasField("offline_grace") else 0,
        affinity_may_exceed_capacity=(
            shop.affinity_may_exceed_capacity if shop.HasField("affinity_may_exceed_capacity") else True
        ),
        exclusive_direct=shop.exclusive_direct,
        robot_first=shop.robot_first,
        robot_agent_id=shop.robot_agent_id,
        offline_rule=shop.offline_rule,
        proxy_account=shop.proxy_account,
        staging_first_cap=(shop.staging_first_cap if shop.HasField("staging_first_cap") else DEFAULT_STAGING_FIRST_CAP),
        busy_threshold=shop.busy_threshold if shop.HasField("busy_threshold") else DEFAULT_BUSY_THRESHOLD,
        main_account_mode=shop.main_account_mode,
        mobile_dispatch=shop.mobile_dispatch,
        timezone=shop.timezone or "UTC",
        tie_seed=shop.tie_seed,
        reroute_unanswered_after_ms=_optional_ms(shop, "reroute_unanswered_after"),
        max_reroutes=shop.max_reroutes or 1,
        reclaim_after_offline_ms=_optional_ms(shop, "reclaim_after_offline"),
        max_queue_wait_ms=_optional_ms(shop, "max_queue_wait"),
        business_hours=hours_from_pb(shop.business_hours, "business_hours"),
        recent_contacts_after_hours=shop.recent_contacts_after_hours,
    )


def hours_from_pb(hours: admin_pb2.BusinessHours, field: str) -> BusinessHours:
    """Spec §10 business hours; the engine validates the numbers and dates (errors name the field)."""
    exceptions: list[tuple[str, tuple[tuple[int, int], ...]]] = []
    for i, exc in enumerate(hours.exceptions):
        if exc.closed and exc.intervals:
            raise InvalidArgumentError(f"{field}.exceptions[{i}]: closed, yet it has intervals")
        if not exc.closed and not exc.intervals:
            raise InvalidArgumentError(f"{field}.exceptions[{i}]: neither closed nor any interval")
        exceptions.append((exc.date, tuple((iv.open_minute, iv.close_minute) for iv in exc.intervals)))
    return BusinessHours(
        weekly=tuple((w.day_of_week, w.open_minute, w.close_minute) for w in hours.weekly),
        exceptions=tuple(exceptions),
    )


def hours_to_pb(hours: BusinessHours) -> admin_pb2.BusinessHours:
    """The normalized hours (a close after midnight is written as its minute of the next day)."""
    return admin_pb2.BusinessHours(
        weekly=[
            admin_pb2.WeeklyInterval(day_of_week=day, open_minute=start, close_minute=_close_minute(start, end))
            for day, start, end in hours.weekly
        ],
        exceptions=[
            admin_pb2.DateException(
                date=date,
                closed=not intervals,
                intervals=[
                    admin_pb2.DayInterval(open_minute=start, close_minute=_close_minute(start, end))
                    for start, end in intervals
                ],
            )
            for date, intervals in hours.exceptions
        ],
    )


_YEAR_MS: Final = 366 * 24 * 3_600_000
"""open_now_until is shown when the change is within this (hours are looked up about a year ahead)."""


def _close_minute(start: int, end: int) -> int:
    """The wire form of a normalized close: the next day's minute when that reads unambiguously
    (before the open), else as it is (a 24-hour interval from ``start``: start + 1440)."""
    return end - 24 * 60 if 24 * 60 < end < start + 24 * 60 else end


def _optional_ms(message: Any, field: str) -> int:
    """A Duration field in ms; unset: 0 (the rule is off)."""
    return duration_ms(getattr(message, field), field) if message.HasField(field) else 0


def shop_config_to_pb(config: ShopConfig) -> admin_pb2.ShopConfig:
    """The stored configuration, every default spelled out."""
    return admin_pb2.ShopConfig(
        shop_id=config.shop_id,
        main_account=config.main_account,
        strategy=int(config.strategy),  # type: ignore[arg-type]
        affinity_window=_duration(config.affinity_window_ms),
        offline_grace=_duration(config.offline_grace_ms),
        affinity_may_exceed_capacity=config.affinity_may_exceed_capacity,
        exclusive_direct=config.exclusive_direct,
        robot_first=config.robot_first,
        robot_agent_id=config.robot_agent_id,
        offline_rule=int(config.offline_rule),  # type: ignore[arg-type]
        proxy_account=config.proxy_account,
        staging_first_cap=config.staging_first_cap,
        busy_threshold=config.busy_threshold,
        main_account_mode=int(config.main_account_mode),  # type: ignore[arg-type]
        mobile_dispatch=config.mobile_dispatch,
        timezone=config.timezone,
        tie_seed=config.tie_seed,
        reroute_unanswered_after=_duration(config.reroute_unanswered_after_ms),
        max_reroutes=config.max_reroutes,
        reclaim_after_offline=_duration(config.reclaim_after_offline_ms),
        max_queue_wait=_duration(config.max_queue_wait_ms),
        business_hours=hours_to_pb(config.business_hours),
        recent_contacts_after_hours=config.recent_contacts_after_hours,
    )


def agent_from_pb(agent: admin_pb2.Agent) -> AgentConfig:
    return AgentConfig(
        shop_id=agent.shop_id,
        agent_id=agent.agent_id,
        role=agent.role,
        weight=agent.weight if agent.HasField("weight") else DEFAULT_WEIGHT,
        max_capacity=agent.max_capacity,
        created_at_ms=timestamp_ms(agent.created_at, "created_at") if agent.HasField("created_at") else 0,
        chat_permission=agent.chat_permission if agent.HasField("chat_permission") else True,
    )


def group_from_pb(group: admin_pb2.Group) -> GroupConfig:
    return GroupConfig(
        shop_id=group.shop_id,
        group_id=group.group_id,
        members=tuple(group.members),
        order_states=tuple(group.order_states),
        sources=tuple(group.sources),
        robot_enabled=group.robot_enabled,
        robot_agent_id=group.robot_agent_id,
        strategy=group.strategy,
        reroute_unanswered_after_ms=_optional_ms(group, "reroute_unanswered_after"),
        business_hours=hours_from_pb(group.business_hours, "business_hours"),
    )


def assignment_to_pb(item: Assignment) -> dispatch_pb2.Assignment:
    shop_id, conversation_id, buyer_id, agent_id, reason, at_ms = item[:6]
    return dispatch_pb2.Assignment(
        shop_id=shop_id,
        conversation_id=conversation_id,
        buyer_id=buyer_id,
        agent_id=agent_id,
        reason=reason,  # type: ignore[arg-type]
        at=timestamp(at_ms),
        previous_agent_id=item[6] if len(item) > 6 else "",  # §10 re-route / reclaim
    )


_DEADLINE_KINDS: Final = {int(TimerKind.REROUTE): "reroute", int(TimerKind.RECLAIM): "reclaim",
                          int(TimerKind.QUEUE): "queue_timeout", int(TimerKind.HOURS): "opening"}  # fmt: skip


def _deadlines(state: dict[str, Any]) -> list[admin_pb2.Deadline]:
    """GetShopState's next deadlines (spec §10, §11)."""
    return [
        admin_pb2.Deadline(
            at=timestamp(d["at_ms"]),
            kind=_DEADLINE_KINDS[d["kind"]],
            agent_id=d["id"] if d["kind"] == TimerKind.RECLAIM else "",
            conversation_id="" if d["kind"] == TimerKind.RECLAIM else d["id"],
        )
        for d in state.get("next_deadlines", ())
    ]


def _waiting(items: list[dict[str, Any]]) -> list[admin_pb2.WaitingConversation]:
    return [
        admin_pb2.WaitingConversation(
            conversation_id=w["conversation_id"],
            buyer_id=w["buyer_id"],
            since=timestamp(w["since_ms"]),
            priority=w.get("priority", 0),
            position=w.get("position", 0),
        )
        for w in items
    ]


def set_waiting_place(response: dispatch_pb2.DispatchResponse, engine: Any, shop_id: str) -> None:
    """Spec §11: a waiting answer (``wire.WAITING_REASONS``) carries the conversation's position
    and, once the shop's hand-out rate is known, its estimated wait (``engine.waiting_position``);
    the same fields the engine's wire codec writes (``wire.encode_decision``), counted the same
    way (``engine.note_estimate``: the ``dispatch_estimated_wait_seconds`` metric)."""
    if response.reason not in WAITING_REASONS:
        return
    place = engine.waiting_position(shop_id, response.conversation_id)
    if place is None:
        return
    position, eta_ms = place
    response.position = position
    if eta_ms is not None:
        response.estimated_wait.SetInParent()
        response.estimated_wait.FromMilliseconds(eta_ms)
        engine.note_estimate(eta_ms)


def _agent_state(a: dict[str, Any]) -> admin_pb2.AgentState:
    agent = admin_pb2.AgentState(
        agent_id=a["agent_id"],
        role=a["role"],
        presence=a["presence"],
        client=a["client"],
        weight=a["weight"],
        max_capacity=a["max_capacity"],
        created_at=timestamp(a["created_at_ms"]),
        chat_permission=a["chat_permission"],
        active=a["active"],
        unread=a["unread"],
        today=a["today"],
        groups=a["groups"],
    )
    if a["offline_at_ms"] >= 0:
        agent.offline_at.CopyFrom(timestamp(a["offline_at_ms"]))
    return agent


def _group_state(g: dict[str, Any], config: ShopConfig, shop_open: bool, now: int) -> admin_pb2.GroupState:
    """A group with its own schedule (§10; unset without one) and whether it is open at ``now``:
    the shop is open and so are the group's own hours (without them: the shop's answer)."""
    hours: BusinessHours = g["business_hours"]
    group = admin_pb2.GroupState(
        group_id=g["group_id"],
        members=g["members"],
        open_now=shop_open and hours_state(hours, config.timezone, now)[0],  # empty hours: open
    )
    if hours:
        group.business_hours.CopyFrom(hours_to_pb(hours))
    return group


def shop_state_to_pb(state: dict[str, Any], config: ShopConfig, now: int | None = None) -> admin_pb2.ShopState:
    """The whole state (every agent, in the engine's creation order); ``open_now`` of the shop
    and of each group at ``now`` (default: the server's clock, read once)."""
    if now is None:
        now = now_ms()
    is_open, until = hours_state(config.business_hours, config.timezone, now)
    page = admin_pb2.ShopState(
        shop_id=state["shop_id"],
        clock=timestamp(state["clock_ms"]),
        agents=[_agent_state(a) for a in state["agents"]],
        groups=[_group_state(g, config, is_open, now) for g in state["groups"]],
        queue=_waiting(state["queue"]),
        staging=_waiting(state["staging"]),
        pool=_waiting(state["pool"]),
        live_conversations=state["live_conversations"],
        config=shop_config_to_pb(config),
        pending_deadlines=state.get("deadlines", 0),
        next_deadlines=_deadlines(state),
        open_now=is_open,
    )
    if until < min(NEVER_MS, now + _YEAR_MS):
        page.open_now_until.CopyFrom(timestamp(until))
    return page


# --------------------------------------------------------------------- GetShopState pages

SHOP_STATE_PAGE_BYTES: Final = 4 * 1024 * 1024
"""Most bytes of one GetShopState answer the server builds by itself (agents are
added while the page stays under it; at least one agent per page): half the
8 MiB message limit. A shop whose whole state fits is answered whole, as before
paging existed; a bigger one, or a request with page_size or page_token, is
answered in pages of agents in agent_id order."""

_PAGE_TOKEN_TAG: Final = b"shop-state-page/1\x00"
_MAX_PAGE_TOKEN: Final = 1024
_by_id = operator.itemgetter("agent_id")


def _field_size(message: Any) -> int:
    """Bytes of ``message`` as an element of a repeated message field numbered below 16."""
    n: int = message.ByteSize()
    return 1 + max(1, (n.bit_length() + 6) // 7) + n


def _page_token(shop_id: str, last_agent_id: str) -> str:
    raw = _PAGE_TOKEN_TAG + shop_id.encode() + b"\x00" + last_agent_id.encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _token_agent(token: str, shop_id: str) -> str:
    """The agent_id a page token of ``shop_id`` continues after; INVALID_ARGUMENT if it is none."""
    bad = InvalidArgumentError(f"page_token is not a GetShopState page token of shop {shop_id!r}; start without one")
    if len(token) > _MAX_PAGE_TOKEN:
        raise bad
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        shop, last = raw.removeprefix(_PAGE_TOKEN_TAG).decode("utf-8").split("\x00")
    except (ValueError, binascii.Error):  # includes UnicodeDecodeError, a wrong number of parts
        raise bad from None
    if not raw.startswith(_PAGE_TOKEN_TAG) or shop != shop_id or not last or _page_token(shop, last) != token:
        raise bad
    return last


def shop_state_page(
    state: dict[str, Any],
    config: ShopConfig,
    page_size: int = 0,
    page_token: str = "",
    max_bytes: int = SHOP_STATE_PAGE_BYTES,
) -> admin_pb2.ShopState:
    """One GetShopState answer (see GetShopStateRequest in protos/dispatch/v1/admin.proto).

    ``page_size`` 0 and no ``page_token``: the whole state, as ``shop_state_to_pb``,
    if it fits in ``max_bytes``. Otherwise a page: the agents after the token's
    agent in agent_id order, at most ``page_size`` (0: no count limit), while the
    answer stays under ``max_bytes`` (but at least one agent), with
    ``next_page_token`` when more follow. Every other field is whole."""
    if page_size < 0:
        raise InvalidArgumentError(f"page_size={page_size} is negative (0: the default page)")
    shop_id = state["shop_id"]
    after = _token_agent(page_token, shop_id) if page_token else None
    agents = state["agents"]
    page = shop_state_to_pb({**state, "agents": []}, config)
    room = max_bytes - page.ByteSize()
    converted: dict[str, admin_pb2.AgentState] = {}
    if not page_size and after is None:
        whole, left = [], room
        for a in agents:  # stops converting as soon as it cannot fit
            agent = _agent_state(a)
            left -= _field_size(agent)
            if left < 0:
                break
            whole.append(agent)
        else:
            page.agents.extend(whole)
            return page
        converted = {x.agent_id: x for x in whole}
    ordered = sorted(agents, key=_by_id)
    start = 0 if after is None else bisect.bisect_right(ordered, after, key=_by_id)
    room -= 1 + 2 + len(_page_token(shop_id, "x" * 128))  # the next_page_token field (ids are <= 128 bytes)
    limit = page_size or len(ordered)
    chosen: list[admin_pb2.AgentState] = []
    for a in ordered[start : start + limit]:
        agent = converted.get(a["agent_id"]) or _agent_state(a)
        size = _field_size(agent)
        if chosen and size > room:
            break
        chosen.append(agent)
        room -= size
    page.agents.extend(chosen)
    if start + len(chosen) < len(ordered):
        page.next_page_token = _page_token(shop_id, chosen[-1].agent_id)
    return page
