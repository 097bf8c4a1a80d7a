"""Conversions between ``dispatch.v1`` messages and the engine's records.

Every function here is boundary code: it checks what protobuf cannot (a
Timestamp's nanos, a Duration's sign) and leaves the rest of the validation to
the engine, whose errors already name the offending field.
"""

from __future__ import annotations

import time
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

from _fastpath import AgentConfig, GroupConfig, InvalidArgumentError, ShopConfig
from _fastpath.model import AFFINITY_WINDOW_MS_DEFAULT, timestamp_to_ms

from ._gen.dispatch.v1 import admin_pb2, dispatch_pb2

__all__ = [
    "DEFAULT_BUSY_THRESHOLD",
    "DEFAULT_STAGING_FIRST_CAP",
    "DEFAULT_WEIGHT",
    "agent_from_pb",
    "assignment_to_pb",
    "duration_ms",
    "group_from_pb",
    "now_ms",
    "shop_config_to_pb",
    "shop_from_pb",
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


def timestamp_ms(ts: timestamp_pb2.Timestamp, field: str) -> int:
    """A Timestamp in whole milliseconds (finer nanos are truncated)."""
    return timestamp_to_ms(ts.seconds, ts.nanos, field)


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
        staging_first_cap=(
            shop.staging_first_cap if shop.HasField("staging_first_cap") else DEFAULT_STAGING_FIRST_CAP
        ),
        busy_threshold=shop.busy_threshold if shop.HasField("busy_threshold") else DEFAULT_BUSY_THRESHOLD,
        main_account_mode=shop.main_account_mode,
        mobile_dispatch=shop.mobile_dispatch,
        timezone=shop.timezone or "UTC",
        tie_seed=shop.tie_seed,
    )


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
    )


def assignment_to_pb(item: tuple[str, str, str, str, int, int]) -> dispatch_pb2.Assignment:
    shop_id, conversation_id, buyer_id, agent_id, reason, at_ms = item
    return dispatch_pb2.Assignment(
        shop_id=shop_id,
        conversation_id=conversation_id,
        buyer_id=buyer_id,
        agent_id=agent_id,
        reason=reason,  # type: ignore[arg-type]
        at=timestamp(at_ms),
    )


def _waiting(items: list[dict[str, Any]]) -> list[admin_pb2.WaitingConversation]:
    return [
        admin_pb2.WaitingConversation(
            conversation_id=w["conversation_id"], buyer_id=w["buyer_id"], since=timestamp(w["since_ms"])
        )
        for w in items
    ]


def shop_state_to_pb(state: dict[str, Any], config: ShopConfig) -> admin_pb2.ShopState:
    agents = []
    for a in state["agents"]:
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
        agents.append(agent)
    return admin_pb2.ShopState(
        shop_id=state["shop_id"],
        clock=timestamp(state["clock_ms"]),
        agents=agents,
        groups=[admin_pb2.GroupState(group_id=g["group_id"], members=g["members"]) for g in state["groups"]],
        queue=_waiting(state["queue"]),
        staging=_waiting(state["staging"]),
        pool=_waiting(state["pool"]),
        live_conversations=state["live_conversations"],
        config=shop_config_to_pb(config),
    )
