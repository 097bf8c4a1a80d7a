"""Rules that fire on time (spec §10 re-route and reclaim, §11 ``max_queue_wait``), and time moving without calls.

Every rule is a shop setting, off (0) by default; a shop that uses none never
has a deadline, so nothing here ever runs for it.

Deadlines. A shop keeps its pending deadlines in ``Shop.timers``:
``(TimerKind, key) -> (deadline ms, seq)``, the key a conversation id
(REROUTE, QUEUE) or an agent id (RECLAIM). ``seq`` is the engine-wide order in
which deadlines were set (``Router._timer_seq``): deadlines fire in
(deadline, seq) order, within a shop and across shops, so equal deadlines
fire in the order they were set. Invariant: every pending deadline of a shop
is later than the shop's clock.

When they fire. A deadline fires at the first moment its shop's time passes
it (deadline <= time): before a call with ``at`` applies (``fire_due``, called
by each event once its arguments are valid), or when the engine is told the
time (``tick``: every shop). It fires *at its deadline*: the shop's clock
becomes the deadline (never less than it was), and what it does is timed
then, whatever moved time past it. A shop without a due deadline is not
touched: ``tick`` never moves the clock of a shop by itself.

Tracking. While a shop uses any of the rules (``tracking``), each of its
conversations has a ``Track`` (``Conversation.track``): the source and order
state it was dispatched with (a re-route routes it as that traffic again) and
how many times it was re-routed. A conversation created while the shop did
not track has an empty source and no order state; switching every rule off
drops the tracks (and every deadline of the shop).

- REROUTE (``reroute_unanswered_after_ms``, the agent's group's setting when
  it is in a group that has one, the shortest of them): set when an agent that
  is not a robot receives a conversation (``assign``: dispatch, a hand-out
  from the queue, staging or the pool, ASSIGNED; ``forward``: a transfer; a
  re-route or reclaim) and the conversation was re-routed fewer than
  ``max_reroutes`` times. Its agent's reply, the close, or a transfer clear it.
  Fires: ``reroute`` without that agent; nobody: it stays, and no new deadline.
- RECLAIM (``reclaim_after_offline_ms``): set when an agent goes OFFLINE;
  ONLINE or SUSPENDED before it clears it. Fires: each conversation it holds
  whose buyer awaits a reply (unread), in conversation id order, is routed
  again without it (``max_reroutes`` does not limit a reclaim, nor does a
  reclaim count as a re-route).
- QUEUE (``max_queue_wait_ms``): set when a conversation starts waiting in
  the queue; a hand-out or the close clears it. Fires: it moves to the end of
  the message pool (its place in the queue is given up), with a hand-out
  (agent "", reason QUEUE_TIMEOUT) so that watchers learn it.

- HOURS (business hours, ``hours.py``; key ""): the next opening of the shop
  or one of its groups while conversations wait in its queue or staging.
  Fires: ``hours.fire`` hands them out.

A configuration change applies to what is received (or goes offline, or
starts waiting) after it; a rule switched off clears its pending deadlines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..model import Presence, Reason, Role, TimerKind, WaitKind
from . import hours
from .shop import Agent, Conversation, Shop, Track

if TYPE_CHECKING:
    from .routing import Router

__all__ = [
    "configure",
    "fire_due",
    "next_deadlines",
    "on_assign",
    "on_close",
    "on_presence",
    "on_reply",
    "on_wait",
    "reroute_after",
    "tick",
    "track_new",
    "tracking",
]

# ------------------------------------------------------------------ settings


def tracking(shop: Shop) -> bool:
    """The shop uses a rule that fires on time (so its conversations are tracked)."""
    config = shop.config
    return bool(
        config.reroute_unanswered_after_ms
        or config.reclaim_after_offline_ms
        or config.max_queue_wait_ms
        or any(g.config.reroute_unanswered_after_ms for g in shop.groups.values())
    )


def reroute_after(shop: Shop, agent: Agent) -> int:
    """The re-route delay for what ``agent`` receives: the shortest set by its groups, else the shop's; 0: off."""
    if agent.role == Role.ROBOT:
        return 0  # a robot never times out
    own = [shop.groups[g].config.reroute_unanswered_after_ms for g in agent.groups]
    own = [ms for ms in own if ms > 0]
    return min(own) if own else shop.config.reroute_unanswered_after_ms


def configure(router: Router, shop: Shop) -> None:
    """After any configuration change of ``shop``: start or stop tracking; clear the deadlines of rules now off."""
    shop_id = shop.config.shop_id
    convs = [(cid, c) for (sid, cid), c in router._conversations.items() if sid == shop_id]
    if not tracking(shop):
        shop.timers.clear()
        for _cid, conv in convs:
            conv.track = None
        return
    for cid, conv in convs:
        if conv.track is None:
            conv.track = Track(cid)
            if conv.wait != WaitKind.NONE:
                for item in shop.waiting[conv.wait]:
                    if item.conversation_id == cid:
                        conv.track.source = item.source
                        conv.track.order_state = item.order_state
                        break
    for kind, key in sorted(shop.timers):
        if kind == TimerKind.RECLAIM and not shop.config.reclaim_after_offline_ms:
            del shop.timers[(kind, key)]
        elif kind == TimerKind.QUEUE and not shop.config.max_queue_wait_ms:
            del shop.timers[(kind, key)]
        elif kind == TimerKind.REROUTE:
            conv = router._conversations[(shop_id, key)]
            if not reroute_after(shop, shop.serving_agent(conv)):
                del shop.timers[(kind, key)]


# ------------------------------------------------------------------ setting and clearing deadlines


def _arm(router: Router, shop: Shop, kind: int, key: str, deadline: int) -> None:
    shop.timers[(kind, key)] = (deadline, router._timer_seq)
    router._timer_seq += 1


def track_new(shop: Shop, conversation_id: str, conv: Conversation, source: str, order_state: int) -> None:
    """A new conversation of ``shop`` (before it is assigned or waits): tracked if the shop tracks."""
    if tracking(shop):
        conv.track = Track(conversation_id, source, order_state)


def on_assign(router: Router, shop: Shop, conv: Conversation, agent: Agent, now: int) -> None:
    """``agent`` received ``conv`` (a hand-out or a transfer): its re-route deadline starts."""
    track = conv.track
    if track is None:
        return
    cid = track.conversation_id
    shop.timers.pop((TimerKind.QUEUE, cid), None)
    shop.timers.pop((TimerKind.REROUTE, cid), None)
    delay = reroute_after(shop, agent)
    if delay and track.reroutes < shop.config.max_reroutes:
        _arm(router, shop, TimerKind.REROUTE, cid, now + delay)


def on_wait(router: Router, shop: Shop, conv: Conversation, kind: int, now: int) -> None:
    """``conv`` starts waiting in ``kind``: in the queue, its ``max_queue_wait`` starts."""
    if conv.track is not None and kind == WaitKind.QUEUE and shop.config.max_queue_wait_ms:
        _arm(router, shop, TimerKind.QUEUE, conv.track.conversation_id, now + shop.config.max_queue_wait_ms)


def on_reply(shop: Shop, conv: Conversation) -> None:
    """Its agent replied: no re-route for silence."""
    if conv.track is not None:
        shop.timers.pop((TimerKind.REROUTE, conv.track.conversation_id), None)


def on_close(shop: Shop, conv: Conversation) -> None:
    """Closed: its deadlines go."""
    if conv.track is not None:
        shop.timers.pop((TimerKind.REROUTE, conv.track.conversation_id), None)
        shop.timers.pop((TimerKind.QUEUE, conv.track.conversation_id), None)


def on_presence(router: Router, shop: Shop, agent: Agent, went_offline: bool, now: int) -> None:
    """The agent's presence was set: going OFFLINE starts its reclaim deadline, anything else clears it."""
    if agent.presence != Presence.OFFLINE or agent.deleted:
        shop.timers.pop((TimerKind.RECLAIM, agent.agent_id), None)
    elif went_offline and shop.config.reclaim_after_offline_ms:
        _arm(router, shop, TimerKind.RECLAIM, agent.agent_id, now + shop.config.reclaim_after_offline_ms)


# ------------------------------------------------------------------ firing


def fire_due(router: Router, shop: Shop, at_ms: int) -> int:
    """Fire every deadline of ``shop`` due by ``at_ms`` (deadline <= at_ms), in order; how many fired."""
    fired = 0
    while shop.timers:
        (kind, key), (deadline, _seq) = min(shop.timers.items(), key=lambda kv: kv[1])
        if deadline > at_ms:
            break
        del shop.timers[(kind, key)]
        _fire(router, shop, kind, key, deadline)
        fired += 1
    return fired


def tick(router: Router, now_ms: int) -> int:
    """Fire every deadline of every shop due by ``now_ms``, in (deadline, seq) order; how many fired."""
    fired = 0
    while True:
        best: tuple[tuple[int, int], Shop, tuple[int, str]] | None = None
        for shop in router._shops.values():
            if shop.timers:
                timer, when = min(shop.timers.items(), key=lambda kv: kv[1])
                if best is None or when < best[0]:
                    best = (when, shop, timer)
        if best is None or best[0][0] > now_ms:
            return fired
        (deadline, _seq), shop, (kind, ref) = best
        del shop.timers[(kind, ref)]
        _fire(router, shop, kind, ref, deadline)
        fired += 1


def next_deadlines(shop: Shop, limit: int) -> list[tuple[int, int, str]]:
    """The shop's next ``limit`` pending deadlines: (deadline ms, TimerKind, key), soonest first."""
    items = sorted(shop.timers.items(), key=lambda kv: kv[1])[:limit]
    return [(deadline, int(kind), key) for (kind, key), (deadline, _seq) in items]


def _fire(router: Router, shop: Shop, kind: int, key: str, deadline: int) -> None:
    now = router.advance(shop, deadline)
    shop_id = shop.config.shop_id
    if kind == TimerKind.HOURS:
        hours.fire(router, shop, now)  # §10: the shop or a group opens
    elif kind == TimerKind.REROUTE:
        conv = router._conversations[(shop_id, key)]
        holder = shop.serving_agent(conv)
        reroute(router, shop, key, conv, holder, int(Reason.REROUTED), now)
        router.settle(shop, holder)
    elif kind == TimerKind.RECLAIM:
        agent = shop.agents[key]
        held = sorted(
            cid for (sid, cid), c in router._conversations.items() if sid == shop_id and c.agent_id == key and c.unread
        )
        for cid in held:
            reroute(router, shop, cid, router._conversations[(shop_id, cid)], agent, int(Reason.RECLAIMED), now)
        router.settle(shop, agent)
    else:
        conv = router._conversations[(shop_id, key)]
        queue = shop.waiting[WaitKind.QUEUE]
        for item in queue:
            if item.conversation_id == key:
                break
        queue.remove(item)
        conv.wait = WaitKind.POOL
        shop.waiting[WaitKind.POOL].append(item)
        router._outbox.append((shop_id, key, conv.buyer_id, "", int(Reason.QUEUE_TIMEOUT), now))
        router._decisions[Reason.QUEUE_TIMEOUT][0] += 1
        router.settle(shop, None)


def reroute(
    router: Router, shop: Shop, conversation_id: str, conv: Conversation, holder: Agent, reason: int, now: int
) -> bool:
    """Route ``conv`` again through steps 2-6 without ``holder`` (its affinity skipped too): found, the
    load moves (as a transfer does, but the new agent is not made the recent contact) and a hand-out
    naming ``holder`` goes to the outbox; nobody: it stays. Whether it moved."""
    track = conv.track
    assert track is not None
    # Without the holder: for this routing it has no chat permission (not available, not a contact).
    permitted = holder.chat_permission
    holder.chat_permission = False
    try:
        choice = router.route(shop, conv.buyer_id, track.source, track.order_state, now, None)
    finally:
        holder.chat_permission = permitted
    if choice is None:
        return False
    target = choice.agent
    holder.active -= 1
    target.active += 1
    shop.bump_today(target, now)
    if conv.unread:
        holder.unread -= 1
        target.unread += 1
    conv.agent_id = target.agent_id
    conv.reason = reason
    if reason == Reason.REROUTED:
        track.reroutes += 1
    on_assign(router, shop, conv, target, now)
    router._decisions[reason][choice.strategy] += 1
    router._outbox.append(
        (shop.config.shop_id, conversation_id, conv.buyer_id, target.agent_id, reason, now, holder.agent_id)
    )
    return True
