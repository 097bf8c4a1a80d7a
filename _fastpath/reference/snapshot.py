"""Snapshots: the whole engine state as plain data, and back (``export_state`` / ``import_state``).

Format ``model.SNAPSHOT_FORMAT``, written and read by both engines alike;
``tests/test_differential.py`` swaps engines through it. Shops,
conversations, recent contacts and exclusive pairs are sorted by key, so the
same state always gives the same data.

Added since format 1 was first written, and optional when read (older
snapshots load): a waiting conversation's ``priority`` (6th item; 0), a
conversation's ``reason`` (8th item, §12; ``conversation_reason``) and each
waiting list's hand-out rate (``handout_rate``: [last hand-out ms, mean
interval ms] for the queue, staging and the pool; unknown, -1, when absent).

Left out, because they are derived or not state: the day cache
(``Shop.day``, rebuilt on demand), the agents' group lists (rebuilt from
the groups), each round-robin roster's full credits (recomputed from the
capacities), recent contacts already past their window (forgotten), and the
decision counters.

A shop's ``round_robin`` entries are keyed ``"pool"`` in this format: that
key is the roster (``""`` for the shop-wide roster, else a group id); the
name stays for compatibility with existing snapshots.
"""

from __future__ import annotations

from typing import Any, cast

from ..model import (
    SNAPSHOT_FORMAT,
    FailedPreconditionError,
    GroupConfig,
    InvalidArgumentError,
    Reason,
    ShopConfig,
    WaitKind,
    group_dict,
    shop_dict,
)
from . import timers
from .routing import Router
from .shop import Agent, Conversation, Group, HandOut, RecentContact, RoundRobin, Shop, Track, Waiting
from .strategies import full_credit

__all__ = ["conversation_reason", "export_state", "import_state"]

_WAIT_KINDS = (WaitKind.QUEUE, WaitKind.STAGING, WaitKind.POOL)


def export_state(router: Router) -> dict[str, Any]:
    """The whole engine state as plain data (JSON-able), identical for both engines."""
    shops = [_export_shop(router._shops[shop_id]) for shop_id in sorted(router._shops)]
    conversations = [
        [shop_id, conversation_id, c.buyer_id, c.agent_id, int(c.wait), c.unread, c.forwarded, int(c.reason)]
        for (shop_id, conversation_id), c in sorted(router._conversations.items())
    ]
    recent_contacts = []
    for (shop_id, buyer_id), (agent_id, at_ms) in sorted(router._recent_contacts.items()):
        shop = router._shops[shop_id]
        if shop.clock - at_ms < shop.config.affinity_window_ms:
            recent_contacts.append([shop_id, buyer_id, agent_id, at_ms])
    exclusive = [
        [shop_id, buyer_id, agent_id] for (shop_id, buyer_id), agent_id in sorted(router._exclusive_agents.items())
    ]
    return {
        "format": SNAPSHOT_FORMAT,
        "seed": router._seed,
        "shops": shops,
        "conversations": conversations,
        "affinity": recent_contacts,
        "exclusive": exclusive,
        "outbox": [list(item) for item in router._outbox],
        "timers": _export_timers(router),
    }


def _export_timers(router: Router) -> dict[str, Any]:
    """§10: the deadline order counter, every pending deadline ([shop, kind, key, deadline, seq],
    soonest first) and what tracked conversations remember beyond the defaults
    ([shop, conversation, source, order_state, reroutes], by key)."""
    pending = sorted(
        (
            [shop_id, int(kind), key, deadline, seq]
            for shop_id, shop in router._shops.items()
            for (kind, key), (deadline, seq) in shop.timers.items()
        ),
        key=lambda row: (row[3], row[4]),
    )
    tracked = [
        [shop_id, conversation_id, c.track.source, c.track.order_state, c.track.reroutes]
        for (shop_id, conversation_id), c in sorted(router._conversations.items())
        if c.track is not None and (c.track.source or c.track.order_state or c.track.reroutes)
    ]
    return {"seq": router._timer_seq, "pending": pending, "tracked": tracked}


def _export_shop(shop: Shop) -> dict[str, Any]:
    round_robin = [
        {
            "pool": roster_key,
            "order": list(rr.order),
            "credit": [rr.credit[agent_id] for agent_id in rr.order],
            "cursor": rr.cursor,
        }
        for roster_key, rr in sorted(shop.round_robin.items())
    ]
    return {
        "config": shop_dict(shop.config),
        "rng": shop.rng,
        "clock": shop.clock,
        "live": shop.live,
        "agents": [
            [
                a.agent_id,
                int(a.role),
                a.weight,
                a.max_capacity,
                a.created_at_ms,
                a.chat_permission,
                a.deleted,
                int(a.presence),
                int(a.client),
                a.offline_at_ms,
                a.active,
                a.unread,
                a.today,
                a.today_day,
            ]
            for a in shop.agents.values()
        ],
        "groups": [group_dict(g.config) for g in shop.groups.values()],
        "round_robin": round_robin,
        "waiting": {
            str(int(kind)): [
                [w.conversation_id, w.buyer_id, w.source, int(w.order_state), w.since_ms, w.priority]
                for w in shop.waiting[kind]
            ]
            for kind in _WAIT_KINDS
        },
        "handout_rate": [[shop.waiting[kind].last_handout_ms, shop.waiting[kind].interval_ms] for kind in _WAIT_KINDS],
    }


def import_state(router: Router, state: dict[str, Any]) -> None:
    """Load an ``export_state()`` (of either engine) into ``router``, which must be empty."""
    if router._shops or router._conversations or router._recent_contacts or router._exclusive_agents:
        raise FailedPreconditionError("import_state needs an empty engine")
    if state.get("format") != SNAPSHOT_FORMAT:
        raise InvalidArgumentError(f"unknown snapshot format {state.get('format')!r}")
    router._seed = state["seed"]
    for data in state["shops"]:
        shop = _import_shop(data, router._seed)
        router._shops[shop.config.shop_id] = shop
    for row in state["conversations"]:
        shop_id, conversation_id, buyer_id, agent_id, wait, unread, forwarded = row[:7]
        router._conversations[(shop_id, conversation_id)] = Conversation(
            buyer_id=buyer_id, agent_id=agent_id, wait=wait, unread=unread, forwarded=forwarded,
            reason=conversation_reason(row),
        )  # fmt: skip
    for shop_id, buyer_id, agent_id, at_ms in state["affinity"]:
        router._recent_contacts[(shop_id, buyer_id)] = RecentContact(agent_id, at_ms)
    for shop_id, buyer_id, agent_id in state["exclusive"]:
        router._exclusive_agents[(shop_id, buyer_id)] = agent_id
    router._outbox = [cast(HandOut, tuple(item)) for item in state["outbox"]]
    _import_timers(router, state.get("timers"))


def _import_timers(router: Router, data: dict[str, Any] | None) -> None:
    """§10: tracks for every conversation of a shop that uses timed rules, then what the
    snapshot holds (a snapshot older than the rules has nothing: no deadline pending)."""
    for (shop_id, conversation_id), conv in router._conversations.items():
        if timers.tracking(router._shops[shop_id]):
            conv.track = Track(conversation_id)
    if not data:
        return
    router._timer_seq = data["seq"]
    for shop_id, kind, key, deadline, seq in data["pending"]:
        router._shops[shop_id].timers[(kind, key)] = (deadline, seq)
    for shop_id, conversation_id, source, order_state, reroutes in data["tracked"]:
        track = router._conversations[(shop_id, conversation_id)].track
        assert track is not None
        track.source, track.order_state, track.reroutes = source, order_state, reroutes


def _import_shop(data: dict[str, Any], engine_seed: int) -> Shop:
    shop = Shop(ShopConfig(**data["config"]), engine_seed)
    shop.rng = data["rng"]
    shop.clock = data["clock"]
    shop.live = data["live"]
    for ordinal, row in enumerate(data["agents"]):
        (
            agent_id,
            role,
            weight,
            max_capacity,
            created_at_ms,
            chat_permission,
            deleted,
            presence,
            client,
            offline_at_ms,
            active,
            unread,
            today,
            today_day,
        ) = row
        shop.agents[agent_id] = Agent(
            agent_id=agent_id,
            ordinal=ordinal,
            role=role,
            weight=weight,
            max_capacity=max_capacity,
            created_at_ms=created_at_ms,
            chat_permission=chat_permission,
            deleted=deleted,
            presence=presence,
            client=client,
            offline_at_ms=offline_at_ms,
            active=active,
            unread=unread,
            today=today,
            today_day=today_day,
        )
    for group in data["groups"]:
        config = GroupConfig(
            **{
                **group,
                "members": tuple(group["members"]),
                "order_states": tuple(group["order_states"]),
                "sources": tuple(group["sources"]),
            }
        )
        shop.groups[config.group_id] = Group(config)
        for member in config.members:
            shop.agents[member].groups.append(config.group_id)
    for rr in data["round_robin"]:
        order = list(rr["order"])
        shop.round_robin[rr["pool"]] = RoundRobin(
            order=order,
            credit=dict(zip(order, rr["credit"], strict=False)),
            full_credit=full_credit([shop.agents[agent_id] for agent_id in order]),
            cursor=rr["cursor"],
        )
    for kind, items in data["waiting"].items():
        shop.waiting[int(kind)].extend(Waiting(*item) for item in items)  # no priority (older snapshots): 0
    for kind, (last_handout_ms, interval_ms) in zip(_WAIT_KINDS, data.get("handout_rate", ()), strict=False):
        shop.waiting[kind].last_handout_ms = last_handout_ms
        shop.waiting[kind].interval_ms = interval_ms
    return shop


def conversation_reason(row: list[Any]) -> int:
    """The stored reason of a conversation row (§12). Rows of older snapshots have none:
    a held conversation then answers DIRECT (placed without a record of why), a waiting one 0."""
    if len(row) > 7:
        return int(row[7])
    return int(Reason.DIRECT) if row[3] is not None else 0
