"""The conversation-level discrete-event simulation of one variant, through the real engine.

Events (a heap ordered by time, then by the order they were scheduled) are: arrivals (the
buyer's first message: ``dispatch``), presence changes, agent replies (``AGENT_REPLY`` after
the agent's reply delay), further buyer messages, closes (``CLOSED``), the engine's clock
(``tick``, only when a timed rule is on) and samples of the state. After every engine call
the outbox is drained: a queued, staged or re-routed conversation handed to an agent then
proceeds like a dispatched one. Everything random comes from one ``random.Random(seed)``,
so a run is reproducible.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections.abc import Callable
from typing import Any, Final

import _fastpath
from _fastpath import ConversationEvent, DispatchError, OfflineRule, Presence, Reason, Role

from .workload import Scenario, WorkloadError

__all__ = ["Run", "simulate"]

_ARRIVE: Final = 0
_PRESENCE: Final = 1
_REPLY: Final = 2
_BUYER: Final = 3
_CLOSE: Final = 4
_TICK: Final = 5
_SAMPLE: Final = 6

_AGENT_REPLY: Final = int(ConversationEvent.AGENT_REPLY)
_BUYER_MESSAGE: Final = int(ConversationEvent.BUYER_MESSAGE)
_CLOSED: Final = int(ConversationEvent.CLOSED)
_ONLINE: Final = int(Presence.ONLINE)
_REROUTED: Final = int(Reason.REROUTED)
_RECLAIMED: Final = int(Reason.RECLAIMED)
_QUEUE_TIMEOUT: Final = int(Reason.QUEUE_TIMEOUT)
_POOLED: Final = frozenset({int(Reason.OFFLINE_MESSAGE_POOL), _QUEUE_TIMEOUT})


class _Conv:
    __slots__ = ("arrival", "agent", "gen", "assigned_at", "first_reply_at", "left", "unread", "closed", "gap")

    def __init__(self, arrival: Any) -> None:
        self.arrival = arrival
        self.agent = ""
        self.gen = 0
        self.assigned_at = -1
        self.first_reply_at = -1
        self.left = arrival.messages - 1  # buyer messages still to come after the first
        self.unread = True
        self.closed = False
        self.gap = 0  # time between a reply and the buyer's next message (handle time / messages)


@dataclasses.dataclass(slots=True)
class Run:
    """What one variant's simulation observed (metrics.py turns it into numbers)."""

    name: str
    scenario: Scenario
    wait_assign_ms: list[int] = dataclasses.field(default_factory=list)
    wait_reply_ms: list[int] = dataclasses.field(default_factory=list)
    never_assigned: int = 0
    never_replied: int = 0
    conversations: int = 0
    reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    """The first decision of each conversation, by reason name."""
    returning: int = 0
    """Dispatches of a buyer with a recent contact inside the affinity window."""
    affinity_hits: int = 0
    exclusive_hits: int = 0
    reroutes: int = 0
    reclaims: int = 0
    queue_timeouts: int = 0
    pool_claims: int = 0
    received: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    """(shop, agent) → conversations received (dispatch, hand-out, re-route)."""
    sample_t: list[int] = dataclasses.field(default_factory=list)
    load: dict[tuple[str, str], list[int]] = dataclasses.field(default_factory=dict)
    """(shop, agent) → active conversations at each sample."""
    waiting: list[int] = dataclasses.field(default_factory=list)
    """Conversations waiting (queue + staging + pool, every shop) at each sample."""
    online_samples: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    full_samples: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    busy_samples: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    decisions: list[tuple[str, str, int, str]] = dataclasses.field(default_factory=list)
    """(shop, conversation, reason, agent) of every dispatch, in order (kept when asked)."""
    engine_calls: int = 0


def _timed_rules(scenario: Scenario) -> bool:
    return any(
        s.reroute_unanswered_after_ms or s.reclaim_after_offline_ms or s.max_queue_wait_ms or s.business_hours
        for s in scenario.shops
    ) or any(g.reroute_unanswered_after_ms or g.business_hours for g in scenario.groups)


def _build_engine(scenario: Scenario) -> Any:
    engine = _fastpath.Engine(scenario.seed)
    if scenario.engine_state is not None:
        engine.import_state(scenario.engine_state)
    try:
        for shop in scenario.shops:  # first without the accounts it names (they are agents of it)
            engine.put_shop(dataclasses.replace(shop, robot_first=False, robot_agent_id="", proxy_account="",
                                                offline_rule=OfflineRule.MAIN_ACCOUNT))  # fmt: skip
        for agent in scenario.agents:
            engine.put_agent(agent)
        for shop in scenario.shops:
            engine.put_shop(shop)
        for group in scenario.groups:
            engine.put_group(group)
        for shop_id, buyer, agent_id in scenario.exclusives:
            engine.set_exclusive_agent(shop_id, buyer, agent_id)
    except DispatchError as exc:
        raise WorkloadError(f"{scenario.name}: the engine refused the configuration: {exc}") from None
    return engine


def simulate(
    scenario: Scenario, *, progress: Callable[[float], None] | None = None, keep_decisions: bool = False
) -> Run:
    """Run one variant (``scenario`` with its overrides applied) and return what it observed."""
    engine = _build_engine(scenario)
    rng = random.Random(scenario.seed)
    run = Run(scenario.name, scenario)
    heap: list[tuple[int, int, int, Any, int]] = []
    seq = 0
    push = heapq.heappush
    for a in scenario.arrivals:
        heap.append((a.at_ms, seq, _ARRIVE, a, 0))
        seq += 1
    for p in scenario.presence:
        heap.append((p.at_ms, seq, _PRESENCE, p, 0))
        seq += 1
    heapq.heapify(heap)
    start, end = scenario.start_ms, scenario.end_ms
    stop = end + scenario.drain_ms
    timed = _timed_rules(scenario)
    if timed:
        push(heap, (start, seq, _TICK, None, 0))
        seq += 1
    push(heap, (start, seq, _SAMPLE, None, 0))
    seq += 1

    convs: dict[tuple[str, str], _Conv] = {}
    online: set[tuple[str, str]] = set()
    deferred: dict[tuple[str, str], list[_Conv]] = {}  # replies held until the agent is back online
    pool: dict[str, list[str]] = {}  # shop → conversations in its message pool, oldest first
    capacity = {(a.shop_id, a.agent_id): a.max_capacity for a in scenario.agents}
    needs_presence = {(a.shop_id, a.agent_id) for a in scenario.agents if a.role != int(Role.ROBOT)}
    busy_threshold = {s.shop_id: s.busy_threshold for s in scenario.shops}
    windows = {s.shop_id: s.affinity_window_ms for s in scenario.shops}
    behaviours: dict[tuple[str, str], Any] = {}
    for s in scenario.shops:
        for agent in engine.shop_state(s.shop_id)["agents"]:
            key = (s.shop_id, agent["agent_id"])
            behaviours[key] = scenario.behaviour_of(*key)
            run.received[key] = 0
            run.load[key] = []
    reasons: dict[int, str] = {int(r): r.name for r in Reason}
    tick_ms = scenario.tick_ms
    sample_ms = scenario.sample_ms
    calls = 0
    next_report = start
    report_every = max(1, (stop - start) // 200)

    def behaviour(key: tuple[str, str]) -> Any:
        found = behaviours.get(key)
        if found is None:
            found = behaviours[key] = scenario.behaviour_of(*key)
            run.received.setdefault(key, 0)
        return found

    def assign(conv: _Conv, agent_id: str, now: int) -> None:
        nonlocal seq
        a = conv.arrival
        key = (a.shop_id, agent_id)
        conv.agent = agent_id
        conv.gen += 1
        run.received[key] = run.received.get(key, 0) + 1
        b = behaviour(key)
        if conv.assigned_at < 0:
            conv.assigned_at = now
            run.wait_assign_ms.append(now - a.at_ms)
            conv.gap = max(1, b.handle_time.sample(rng) // a.messages)
        if conv.unread:
            push(heap, (now + b.reply_delay.sample(rng), seq, _REPLY, conv, conv.gen))
            seq += 1

    def handouts(now: int) -> None:
        for item in engine.drain_outbox():
            conv = convs.get((item[0], item[1]))
            if conv is None or conv.closed:
                continue
            reason = item[4]
            if reason == _REROUTED:
                run.reroutes += 1
            elif reason == _RECLAIMED:
                run.reclaims += 1
            agent_id = item[3]
            if not agent_id:  # QUEUE_TIMEOUT: to the message pool
                run.queue_timeouts += reason == _QUEUE_TIMEOUT
                conv.agent = ""
                conv.gen += 1
                pool.setdefault(item[0], []).append(item[1])
                continue
            assign(conv, agent_id, now)

    def claim(shop_id: str, agent_id: str, now: int) -> None:
        """An online agent with room takes the oldest conversation of its shop's pool."""
        nonlocal calls
        waiting = pool.get(shop_id)
        while waiting:
            conv_id = waiting[0]
            conv = convs[(shop_id, conv_id)]
            if conv.closed or conv.agent:
                waiting.pop(0)
                continue
            state = engine.conversation(shop_id, conv_id)
            if state is None or state.get("agent_id"):
                waiting.pop(0)
                continue
            active = engine_active(shop_id, agent_id)
            if active >= capacity.get((shop_id, agent_id), 1 << 30):
                return
            try:
                engine.claim_from_pool(shop_id, agent_id, now, conv_id)
            except DispatchError:
                return
            calls += 1
            waiting.pop(0)
            run.pool_claims += 1
            assign(conv, agent_id, now)
            handouts(now)

    def engine_active(shop_id: str, agent_id: str) -> int:
        for agent in engine.shop_state(shop_id)["agents"]:
            if agent["agent_id"] == agent_id:
                return int(agent["active"])
        return 0

    while heap:
        now, _, kind, obj, gen = heapq.heappop(heap)
        if now > stop:
            break
        if progress is not None and now >= next_report:
            progress(min(1.0, (now - start) / (stop - start)))
            next_report = now + report_every
        if kind == _REPLY:
            conv = obj
            if conv.closed or gen != conv.gen or not conv.agent:
                continue
            key = (conv.arrival.shop_id, conv.agent)
            if key not in online and key in needs_presence:
                deferred.setdefault(key, []).append(conv)
                continue
            if timed:
                engine.tick_shop(key[0], now)
                handouts(now)
                if gen != conv.gen:
                    continue
            engine.conversation_event(key[0], conv.arrival.conversation_id, _AGENT_REPLY, now, "", conv.agent)
            calls += 1
            conv.unread = False
            if conv.first_reply_at < 0:
                conv.first_reply_at = now
                run.wait_reply_ms.append(now - conv.arrival.at_ms)
            push(heap, (now + conv.gap, seq, _BUYER if conv.left > 0 else _CLOSE, conv, 0))
            seq += 1
            handouts(now)
        elif kind == _BUYER:
            conv = obj
            if conv.closed:
                continue
            a = conv.arrival
            if timed:
                engine.tick_shop(a.shop_id, now)
                handouts(now)
            engine.conversation_event(a.shop_id, a.conversation_id, _BUYER_MESSAGE, now, a.buyer_id)
            calls += 1
            conv.left -= 1
            conv.unread = True
            if conv.agent:
                b = behaviour((a.shop_id, conv.agent))
                push(heap, (now + b.reply_delay.sample(rng), seq, _REPLY, conv, conv.gen))
                seq += 1
            handouts(now)
        elif kind == _CLOSE:
            conv = obj
            if conv.closed:
                continue
            a = conv.arrival
            if timed:
                engine.tick_shop(a.shop_id, now)
                handouts(now)
            engine.conversation_event(a.shop_id, a.conversation_id, _CLOSED, now)
            calls += 1
            conv.closed = True
            agent_id = conv.agent
            handouts(now)
            if agent_id and pool.get(a.shop_id):
                claim(a.shop_id, agent_id, now)
        elif kind == _ARRIVE:
            a = obj
            if timed:
                engine.tick_shop(a.shop_id, now)
                handouts(now)
            conv = _Conv(a)
            convs[(a.shop_id, a.conversation_id)] = conv
            run.conversations += 1
            recent = engine.recent_contact(a.shop_id, a.buyer_id)
            returning = recent is not None and now - recent[1] < windows[a.shop_id]
            reason, agent_id, _group, _trace = engine.dispatch(
                a.shop_id, a.buyer_id, a.conversation_id, now, 1, a.source, a.order_state, "", False, a.priority
            )
            calls += 1
            name = reasons.get(reason, str(reason))
            run.reasons[name] = run.reasons.get(name, 0) + 1
            if returning:
                run.returning += 1
                run.affinity_hits += name in ("AFFINITY", "AFFINITY_HELD")
            run.exclusive_hits += name == "EXCLUSIVE"
            if keep_decisions:
                run.decisions.append((a.shop_id, a.conversation_id, reason, agent_id or ""))
            if agent_id:
                assign(conv, agent_id, now)
            elif reason in _POOLED:
                pool.setdefault(a.shop_id, []).append(a.conversation_id)
            handouts(now)
        elif kind == _PRESENCE:
            p = obj
            key = (p.shop_id, p.agent_id)
            if timed:
                engine.tick_shop(p.shop_id, now)
                handouts(now)
            engine.set_presence(p.shop_id, p.agent_id, p.presence, p.client, now)
            calls += 1
            if p.presence == _ONLINE:
                online.add(key)
                for conv in deferred.pop(key, ()):  # it answers what waited for it
                    if not conv.closed and conv.agent == p.agent_id:
                        b = behaviour(key)
                        push(heap, (now + b.reply_delay.sample(rng), seq, _REPLY, conv, conv.gen))
                        seq += 1
            else:
                online.discard(key)
            handouts(now)
            if p.presence == _ONLINE and pool.get(p.shop_id):
                claim(p.shop_id, p.agent_id, now)
        elif kind == _TICK:
            if engine.tick(now):
                calls += 1
                handouts(now)
            if now + tick_ms <= stop:
                push(heap, (now + tick_ms, seq, _TICK, None, 0))
                seq += 1
        else:  # _SAMPLE
            if now <= end:
                _sample(engine, scenario, run, now, busy_threshold)
                push(heap, (now + sample_ms, seq, _SAMPLE, None, 0))
                seq += 1
    for conv in convs.values():
        run.never_assigned += conv.assigned_at < 0
        run.never_replied += conv.first_reply_at < 0
    run.engine_calls = calls
    if progress is not None:
        progress(1.0)
    return run


def _sample(
    engine: Any,
    scenario: Scenario,
    run: Run,
    now: int,
    busy_threshold: dict[str, int],
) -> None:
    run.sample_t.append(now)
    waiting = 0
    for shop in scenario.shops:
        state = engine.shop_state(shop.shop_id)
        waiting += len(state["queue"]) + len(state["staging"]) + len(state["pool"])
        threshold = busy_threshold[shop.shop_id]
        for agent in state["agents"]:
            key = (shop.shop_id, agent["agent_id"])
            series = run.load.get(key)
            if series is None:
                series = run.load[key] = [0] * (len(run.sample_t) - 1)
            active = agent["active"]
            series.append(active)
            if agent["presence"] == _ONLINE:
                run.online_samples[key] = run.online_samples.get(key, 0) + 1
                if active >= agent["max_capacity"]:
                    run.full_samples[key] = run.full_samples.get(key, 0) + 1
                if agent["unread"] > threshold:
                    run.busy_samples[key] = run.busy_samples.get(key, 0) + 1
    run.waiting.append(waiting)
