"""Reads (spec §9): what an operator or a caller may look at, never changing state.

The twin of the compiled ``reads.pyx``: a shop's whole state (agents, groups
with their own schedules, waiting lists with positions, pending deadlines),
engine-wide totals for the gauges, one conversation, a buyer's recent contact
and exclusive agent, and the strategy in effect. ``ReferenceEngine``'s read methods call these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..model import NotFoundError, Presence, Role, WaitKind
from . import timers
from .validation import check_id

if TYPE_CHECKING:
    from .engine import ReferenceEngine

NEXT_DEADLINES = 10
"""``shop_state()`` lists this many of the shop's next deadlines."""

__all__ = [
    "NEXT_DEADLINES",
    "read_conversation",
    "read_effective_strategy",
    "read_exclusive_agent",
    "read_recent_contact",
    "read_shop_state",
    "read_totals",
]


def read_shop_state(self: ReferenceEngine, shop_id: str) -> dict[str, Any]:
    """Everything an operator needs to see why a shop routes as it does."""
    shop = self.shop_for(shop_id)
    now = shop.clock
    agents = [
        {
            "agent_id": a.agent_id,
            "role": a.role,
            "presence": a.presence,
            "client": a.client,
            "weight": a.weight,
            "max_capacity": a.max_capacity,
            "created_at_ms": a.created_at_ms,
            "chat_permission": a.chat_permission,
            "offline_at_ms": a.offline_at_ms,
            "active": a.active,
            "unread": a.unread,
            "today": shop.today_of(a, now),
            "groups": sorted(a.groups),
        }
        for a in shop.agents.values()
        if not a.deleted
    ]
    # §10: each group's own schedule (empty: none, it follows the shop's); open or closed is
    # judged by the caller at its own instant (model.hours_state), as for the shop's.
    groups = [
        {"group_id": g.config.group_id, "members": list(g.config.members), "business_hours": g.config.business_hours}
        for g in shop.groups.values()
    ]

    def waiting(kind: int) -> list[dict[str, Any]]:
        return [
            {
                "conversation_id": w.conversation_id,
                "buyer_id": w.buyer_id,
                "since_ms": w.since_ms,
                "priority": w.priority,
                "position": position,
            }
            for position, w in enumerate(shop.waiting[kind], 1)
        ]

    return {
        "shop_id": shop_id,
        "clock_ms": now,
        "agents": agents,
        "groups": groups,
        "queue": waiting(WaitKind.QUEUE),
        "staging": waiting(WaitKind.STAGING),
        "pool": waiting(WaitKind.POOL),
        "live_conversations": shop.live,
        "deadlines": len(shop.timers),
        "next_deadlines": [
            {"at_ms": at, "kind": kind, "id": key} for at, kind, key in timers.next_deadlines(shop, NEXT_DEADLINES)
        ],
    }


def read_totals(self: ReferenceEngine) -> dict[str, int]:
    """Engine-wide counts for gauges: shops, agents online/suspended, live and waiting conversations."""
    out = dict.fromkeys(
        ("shops", "agents_online", "agents_suspended", "live_conversations", "queue", "staging", "pool"), 0
    )
    for shop in self._shops.values():
        out["shops"] += 1
        out["live_conversations"] += shop.live
        out["queue"] += len(shop.waiting[WaitKind.QUEUE])
        out["staging"] += len(shop.waiting[WaitKind.STAGING])
        out["pool"] += len(shop.waiting[WaitKind.POOL])
        for a in shop.agents.values():
            if a.deleted or a.role == Role.ROBOT:
                continue
            if a.presence == Presence.ONLINE:
                out["agents_online"] += 1
            elif a.presence == Presence.SUSPENDED:
                out["agents_suspended"] += 1
    return out


def read_effective_strategy(self: ReferenceEngine, shop_id: str, group_id: str) -> int:
    """The strategy that picks within a group (its own, else the shop's), or the shop's."""
    shop = self.shop_for(shop_id)
    if group_id:
        group = shop.groups.get(group_id)
        if group is None:
            raise NotFoundError(f"group {group_id!r} not found in shop {shop_id!r}")
        if group.config.strategy:
            return int(group.config.strategy)
    return int(shop.config.strategy)


def read_conversation(self: ReferenceEngine, shop_id: str, conversation_id: str) -> dict[str, Any] | None:
    self.shop_for(shop_id)
    check_id(conversation_id, "conversation_id")
    conv = self._conversations.get((shop_id, conversation_id))
    if conv is None:
        return None
    return {
        "buyer_id": conv.buyer_id,
        "agent_id": conv.agent_id,
        "wait": conv.wait,
        "unread": conv.unread,
        "forwarded": conv.forwarded,
    }


def read_recent_contact(self: ReferenceEngine, shop_id: str, buyer_id: str) -> tuple[str, int] | None:
    """The buyer's recent contact in the shop, if younger than the window: (agent_id, contact_at_ms)."""
    shop = self.shop_for(shop_id)
    check_id(buyer_id, "buyer_id")
    contact = self._recent_contacts.get((shop_id, buyer_id))
    if contact is None or shop.clock - contact.at_ms >= shop.config.affinity_window_ms:
        return None
    return contact.agent_id, contact.at_ms


def read_exclusive_agent(self: ReferenceEngine, shop_id: str, buyer_id: str) -> str | None:
    self.shop_for(shop_id)
    check_id(buyer_id, "buyer_id")
    return self._exclusive_agents.get((shop_id, buyer_id))
