"""The decision (spec §4, with the offline rule of §6 and the main account of §7) and the state changes it makes (§8).

``Router`` holds the engine-wide tables and applies the rules to them;
``engine.ReferenceEngine`` adds the public calls on top.

- ``decide``: §4 for a valid buyer-to-shop request whose conversation is
  new: step 1 (``eligibility.shop_online``), then ``offline`` or ``route``,
  then step 7 (the queue). It counts the decision.
- ``offline``: §6, the shop's offline rule.
- ``route``: steps 2 to 6; ``settle`` uses it too, for the queue.
- ``assign``, ``wait_in``, ``remember``, ``forget_expired``, ``settle``:
  the state changes of §8 that the rules make; ``advance`` moves a shop's
  clock (it never goes back).

The tables (every key starts with the shop id, so shops never see one
another's entries):

- ``_shops``: shop id -> ``Shop``.
- ``_conversations``: (shop, conversation id) -> ``Conversation``: every
  live conversation, held or waiting; ``Shop.live`` counts a shop's.
- ``_recent_contacts``: (shop, buyer) -> ``RecentContact``. A contact as old
  as the shop's window or older is dead: never used, dropped where it is
  met (``route``), dropped before the window changes (``forget_expired``),
  never exported or read back.
- ``_exclusive_agents``: (shop, buyer) -> agent id. The agent was a
  non-robot agent when the pair was set; step 3 checks it still can receive.
- ``_outbox``: hand-outs made outside a Dispatch call (queue, staging,
  message pool), oldest first, until ``drain_outbox``.
- ``_decisions``: decisions made by this object, ``[reason][strategy]``,
  strategy 0 when no strategy picked the agent. Counters, not state: never
  exported. A retried dispatch (§12) is not a decision: ``_retries`` counts it.

The tables are this package's, not the engine's API: only its parts touch
them.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import NamedTuple, TypeAlias

from ..model import (
    ESTIMATE_BUCKETS_MS,
    MASK64,
    N_ESTIMATE_BUCKETS,
    N_REASONS,
    N_STRATEGIES,
    DispatchError,
    MainAccountMode,
    NotFoundError,
    OfflineRule,
    Reason,
    Role,
    Strategy,
    WaitKind,
)
from . import hours, timers
from .eligibility import (
    available,
    contact_state,
    eligible,
    group_bound,
    group_eligible,
    group_ready,
    group_robot,
    has_room,
    shop_online,
    shop_roster,
)
from .shop import (
    SHOP_ROSTER,
    Agent,
    BuyerKey,
    Conversation,
    ConversationKey,
    HandOut,
    RecentContact,
    Shop,
    Waiting,
    WaitList,
)
from .strategies import pick
from .validation import check_id

__all__ = ["NO_STRATEGY", "Choice", "Decision", "Router"]

Decision: TypeAlias = tuple[int, str | None, str | None, list[str] | None]
"""The answer to a Dispatch: (reason, agent id, group id, trace)."""

NO_STRATEGY = 0
"""The strategy column of ``decision_counts`` when no strategy picked the agent."""


class Choice(NamedTuple):
    """An agent found by ``route``, and why."""

    reason: int
    agent: Agent
    group_id: str | None
    strategy: int  # the strategy whose pick chose the agent, NO_STRATEGY when none did


class Router:
    """The engine-wide tables and the routing rules over them."""

    def __init__(self, seed: int) -> None:
        self._seed = int(seed) & MASK64
        self._shops: dict[str, Shop] = {}
        self._conversations: dict[ConversationKey, Conversation] = {}
        self._recent_contacts: dict[BuyerKey, RecentContact] = {}
        self._exclusive_agents: dict[BuyerKey, str] = {}
        self._outbox: list[HandOut] = []
        self._decisions = [[0] * N_STRATEGIES for _ in range(N_REASONS)]
        self._operations = [0] * 5  # operate_wire operations by kind (wire.OP_*): counters, not state
        self._retries = 0  # dispatches answered as retries (§12): a counter, not state
        self._timer_seq = 0  # the order deadlines were set in (timers.py): state, exported
        self._estimates = [0] * (N_ESTIMATE_BUCKETS + 1)  # estimated waits answered, by bucket: counters
        self._estimates_ms = 0  # and their sum: a counter, not state
        self.foreign_shop: Callable[[str], DispatchError | None] | None = None
        """None, or shop_id -> the error for an unknown shop that another cluster node owns (not state)."""

    # ------------------------------------------------------------ lookups (spec §9: NOT_FOUND)

    def shop_for(self, shop_id: str) -> Shop:
        check_id(shop_id, "shop_id")
        shop = self._shops.get(shop_id)
        if shop is None:
            raise self.missing_shop(shop_id)
        return shop

    def note_estimate(self, eta_ms: int) -> None:
        """Count an estimated wait (ms) written into an answer (§11; a counter, not state)."""
        self._estimates[bisect.bisect_left(ESTIMATE_BUCKETS_MS, eta_ms)] += 1
        self._estimates_ms += eta_ms

    def estimate_counts(self) -> tuple[list[int], int]:
        """Estimated waits written into answers so far: (counts by bucket of
        ``model.ESTIMATE_BUCKETS_MS``, the last one +Inf; their sum in ms)."""
        return list(self._estimates), self._estimates_ms

    def missing_shop(self, shop_id: str) -> DispatchError:
        """The error for an unknown shop: the cluster's (``foreign_shop``) if another node owns it, else NOT_FOUND."""
        if self.foreign_shop is not None:
            error = self.foreign_shop(shop_id)
            if error is not None:
                return error
        return NotFoundError(f"shop {shop_id!r} not found")

    def agent_for(self, shop: Shop, agent_id: str) -> Agent:
        """A live (not deleted) agent of ``shop``."""
        check_id(agent_id, "agent_id")
        agent = shop.agents.get(agent_id)
        if agent is None or agent.deleted:
            raise NotFoundError(f"agent {agent_id!r} not found in shop {shop.config.shop_id!r}")
        return agent

    # ------------------------------------------------------------ time (spec §8)

    def advance(self, shop: Shop, at_ms: int) -> int:
        """The shop's clock never goes back: an older event counts as happening now."""
        shop.clock = max(shop.clock, at_ms)
        return shop.clock

    # ------------------------------------------------------------ the decision (spec §4)

    def decide(
        self,
        shop: Shop,
        buyer_id: str,
        conversation_id: str,
        source: str,
        order_state: int,
        at_ms: int,
        trace: list[str] | None,
        priority: int = 0,
    ) -> Decision:
        """Sections 4 and 6 for a valid buyer-to-shop request whose conversation is new.

        Creates the conversation, assigns it or makes it wait (at ``priority``,
        §11), and counts the decision. ``trace``, if not None, receives the
        decision's trace lines.
        """
        now = self.advance(shop, at_ms)
        conv = Conversation(buyer_id=buyer_id, agent_id=None)
        timers.track_new(shop, conversation_id, conv, source, order_state)
        self._conversations[(shop.config.shop_id, conversation_id)] = conv
        shop.live += 1

        # Step 1: is the shop online (and open, §10 business hours)?
        online = shop_online(shop)
        if not online or not hours.shop_open(shop, now):
            _note(trace, "online:no" if not online else "online:closed")
            if online and shop.config.recent_contacts_after_hours:
                choice = self.affinity(shop, buyer_id, now, trace)
                if choice is not None:
                    self.assign(shop, conv, choice.agent, now)
                    conv.reason = choice.reason
                    self._decisions[choice.reason][NO_STRATEGY] += 1
                    return choice.reason, choice.agent.agent_id, None, trace
            reason, agent_id = self.offline(shop, conv, conversation_id, source, order_state, now, trace, priority)
            self._decisions[reason][NO_STRATEGY] += 1
            return reason, agent_id, None, trace
        _note(trace, "online:yes")

        choice = self.route(shop, buyer_id, source, order_state, now, trace)
        if choice is not None:
            self.assign(shop, conv, choice.agent, now)
            conv.reason = choice.reason
            self._decisions[choice.reason][choice.strategy] += 1
            return choice.reason, choice.agent.agent_id, choice.group_id, trace

        # Step 7: everyone is full.
        self.wait_in(shop, conv, WaitKind.QUEUE, conversation_id, source, order_state, now, priority)
        _note(trace, f"queued:{shop.waiting[WaitKind.QUEUE].position_of_last(priority)}")
        self._decisions[Reason.QUEUED][NO_STRATEGY] += 1
        return int(Reason.QUEUED), None, None, trace

    def offline(
        self,
        shop: Shop,
        conv: Conversation,
        conversation_id: str,
        source: str,
        order_state: int,
        now: int,
        trace: list[str] | None,
        priority: int = 0,
    ) -> tuple[int, str | None]:
        """Section 6, for a shop that is not online: (reason, agent id, or None when it waits)."""
        rule = shop.config.offline_rule
        _note(trace, f"offline:{OfflineRule(rule).name}")
        if rule == OfflineRule.MAIN_ACCOUNT:
            agent = shop.agents[shop.config.main_account]
            self.assign(shop, conv, agent, now)
            conv.reason = int(Reason.OFFLINE_MAIN_ACCOUNT)
            return int(Reason.OFFLINE_MAIN_ACCOUNT), agent.agent_id
        if rule == OfflineRule.PROXY_ACCOUNT:
            agent = shop.agents[shop.config.proxy_account]
            self.assign(shop, conv, agent, now)
            conv.reason = int(Reason.OFFLINE_PROXY_ACCOUNT)
            return int(Reason.OFFLINE_PROXY_ACCOUNT), agent.agent_id
        if rule == OfflineRule.MESSAGE_POOL:
            self.wait_in(shop, conv, WaitKind.POOL, conversation_id, source, order_state, now, priority)
            return int(Reason.OFFLINE_MESSAGE_POOL), None
        self.wait_in(shop, conv, WaitKind.STAGING, conversation_id, source, order_state, now, priority)
        return int(Reason.OFFLINE_STAGING), None

    def route(
        self, shop: Shop, buyer_id: str, source: str, order_state: int, now: int, trace: list[str] | None
    ) -> Choice | None:
        """Steps 2 to 6 for a shop that is online; None when everyone is full."""
        config = shop.config
        key = (config.shop_id, buyer_id)

        # Step 2: recent contact.
        choice = self.affinity(shop, buyer_id, now, trace)
        if choice is not None:
            return choice

        # Step 3: exclusive agent.
        if not config.exclusive_direct:
            _note(trace, "exclusive:off")
        else:
            exclusive_id = self._exclusive_agents.get(key)
            agent = shop.agents.get(exclusive_id) if exclusive_id else None
            if exclusive_id is None:
                _note(trace, "exclusive:none")
            elif agent is None or agent.deleted or not available(shop, agent):
                _note(trace, f"exclusive:{exclusive_id}:unavailable")
            elif not (config.affinity_may_exceed_capacity or has_room(agent)):
                _note(trace, f"exclusive:{exclusive_id}:full")
            else:
                _note(trace, f"exclusive:{exclusive_id}")
                return Choice(int(Reason.EXCLUSIVE), agent, None, NO_STRATEGY)

        # Step 4: robot first.
        if not config.robot_first:
            _note(trace, "robot_first:off")
        else:
            robot = shop.agents[config.robot_agent_id]
            if has_room(robot):
                _note(trace, f"robot_first:{robot.agent_id}")
                return Choice(int(Reason.ROBOT), robot, None, NO_STRATEGY)
            _note(trace, f"robot_first:{robot.agent_id}:full")

        # Step 5: group (case A: chat groups are off).
        groups_on = config.main_account_mode != MainAccountMode.ONLY_MAIN and bool(shop.groups)
        if groups_on:
            bound = [g for g in shop.groups.values() if group_bound(g, source, order_state)]
            candidate_groups = bound or list(shop.groups.values())
            _note(trace, f"groups:{'bound' if bound else 'unbound'}:{len(candidate_groups)}")
            ready = [g for g in candidate_groups if group_ready(shop, g) and hours.group_open(shop, g, now)]
            _note(trace, f"groups:ready:{len(ready)}")
            if ready:
                group = ready[shop.rand_below(len(ready))]
                group_id = group.config.group_id
                _note(trace, f"group:{group_id}")
                robot_of_group = group_robot(shop, group)
                if robot_of_group is not None:
                    _note(trace, f"robot:{robot_of_group.agent_id}")
                    return Choice(int(Reason.ROBOT), robot_of_group, group_id, NO_STRATEGY)
                strategy = group.config.strategy or config.strategy
                agent = pick(shop, strategy, group_eligible(shop, group), group_id, now)
                _note(trace, f"strategy:{Strategy(strategy).name}:{agent.agent_id}")
                return Choice(int(Reason.GROUP), agent, group_id, strategy)
        else:
            _note(trace, "groups:none")

        # Step 6: fallback (or, without groups, the strategy over the whole shop).
        label = "fallback" if groups_on else "strategy"
        reason = Reason.FALLBACK if groups_on else Reason.GROUP
        roster = shop_roster(shop)
        candidates = [a for a in roster if eligible(shop, a)]
        if candidates:
            agent = pick(shop, config.strategy, candidates, SHOP_ROSTER, now)
            _note(trace, f"{label}:{Strategy(config.strategy).name}:{agent.agent_id}")
            return Choice(int(reason), agent, None, config.strategy)
        _note(trace, f"{label}:{Strategy(config.strategy).name}:none")
        if config.main_account_mode == MainAccountMode.FALLBACK:
            # Case C: the main account receives only when every other agent is offline.
            main = shop.agents[config.main_account]
            if not any(available(shop, a) for a in roster) and eligible(shop, main):
                _note(trace, f"fallback:main:{main.agent_id}")
                return Choice(int(Reason.FALLBACK), main, None, NO_STRATEGY)
        return None

    def affinity(self, shop: Shop, buyer_id: str, now: int, trace: list[str] | None) -> Choice | None:
        """Step 2: the buyer's recent contact, if it may receive (also asked while closed, §10)."""
        config = shop.config
        key = (config.shop_id, buyer_id)
        contact = self._recent_contacts.get(key)
        if contact is not None and now - contact.at_ms >= config.affinity_window_ms:
            del self._recent_contacts[key]  # expired: forget it
            contact = None
        if contact is None:
            _note(trace, "affinity:none")
        else:
            agent = shop.agents.get(contact.agent_id)
            state = contact_state(shop, agent, now)
            if agent is None or state == "unavailable":
                _note(trace, f"affinity:{contact.agent_id}:unavailable")
            elif not (config.affinity_may_exceed_capacity or has_room(agent)):
                _note(trace, f"affinity:{contact.agent_id}:full")
            elif state == "held":
                _note(trace, f"affinity:{contact.agent_id}:held")
                return Choice(int(Reason.AFFINITY_HELD), agent, None, NO_STRATEGY)
            else:
                _note(trace, f"affinity:{contact.agent_id}")
                return Choice(int(Reason.AFFINITY), agent, None, NO_STRATEGY)
        return None

    # ------------------------------------------------------------ state changes (spec §8)

    def assign(self, shop: Shop, conv: Conversation, agent: Agent, now: int) -> None:
        """``agent`` receives ``conv``: active +1, today +1, unread +1 (the opening message awaits a reply)."""
        conv.agent_id = agent.agent_id
        conv.wait = WaitKind.NONE
        conv.unread = True
        agent.active += 1
        agent.unread += 1
        shop.bump_today(agent, now)
        if conv.track is not None:
            timers.on_assign(self, shop, conv, agent, now)  # §10: its re-route deadline starts

    def wait_in(
        self,
        shop: Shop,
        conv: Conversation,
        kind: int,
        conversation_id: str,
        source: str,
        order_state: int,
        now: int,
        priority: int = 0,
    ) -> None:
        """``conv`` waits at the end of its priority's FIFO in the shop's queue, staging or message pool (``kind``)."""
        conv.wait = kind
        conv.reason = 0
        shop.waiting[kind].append(Waiting(conversation_id, conv.buyer_id, source, order_state, now, priority))
        if conv.track is not None:
            timers.on_wait(self, shop, conv, kind, now)  # §11: its max_queue_wait starts
        hours.on_wait(self, shop, kind, now)  # §10: handed out at the next opening

    def remember(self, shop: Shop, buyer_id: str, agent: Agent, now: int) -> None:
        """The agent spoke to the buyer (or received the conversation by transfer): its recent contact."""
        if agent.role == Role.ROBOT:
            return  # talking to a robot does not bind the buyer to it
        self._recent_contacts[(shop.config.shop_id, buyer_id)] = RecentContact(agent.agent_id, now)

    def forget_expired(self, shop: Shop) -> None:
        """Before the window changes: contacts already past the old window are forgotten.

        A shorter window applies to every contact at once; a longer one extends
        the contacts still alive but never revives forgotten ones (the compiled
        engine reclaims their memory).
        """
        shop_id = shop.config.shop_id
        window = shop.config.affinity_window_ms
        expired = [
            key
            for key, contact in self._recent_contacts.items()
            if key[0] == shop_id and shop.clock - contact.at_ms >= window
        ]
        for key in expired:
            del self._recent_contacts[key]

    def settle(self, shop: Shop, focus: Agent | None) -> None:
        """Hand out waiting conversations after a change (§6 staging, step 7 queue).

        Staging goes to ``focus`` (the agent the change was about), if it is
        available, up to the staging cap and its capacity; then the queue is
        handed out oldest first, through steps 2 to 6, until its head finds
        nobody. Each hand-out goes to the outbox.
        """
        shop_id = shop.config.shop_id
        now = shop.clock
        if not hours.shop_open(shop, now):
            return  # §10: nothing is handed out while the shop is closed
        staging = shop.waiting[WaitKind.STAGING]
        cap = shop.config.staging_first_cap
        if staging and focus is not None and available(shop, focus):
            while staging and focus.unread < cap and focus.active < focus.max_capacity:
                item = staging.popleft()
                self.handed_out(shop, staging, item.conversation_id, focus, int(Reason.OFFLINE_STAGING), now)
                self._outbox.append(
                    (shop_id, item.conversation_id, item.buyer_id, focus.agent_id, int(Reason.OFFLINE_STAGING), now)
                )
        queue = shop.waiting[WaitKind.QUEUE]
        while queue:
            item = queue[0]
            choice = self.route(shop, item.buyer_id, item.source, item.order_state, now, None)
            if choice is None:
                break
            queue.popleft()
            self.handed_out(shop, queue, item.conversation_id, choice.agent, choice.reason, now)
            self._outbox.append(
                (shop_id, item.conversation_id, item.buyer_id, choice.agent.agent_id, choice.reason, now)
            )

    def handed_out(
        self, shop: Shop, waiting: WaitList, conversation_id: str, agent: Agent, reason: int, now: int
    ) -> None:
        """A conversation taken off ``waiting`` goes to ``agent`` (``reason``): assigned, and
        counted in the list's hand-out rate (§11). The caller appends the outbox entry."""
        conv = self._conversations[(shop.config.shop_id, conversation_id)]
        self.assign(shop, conv, agent, now)
        conv.reason = reason
        waiting.note_handout(now)

    # ------------------------------------------------------------ retries and positions (spec §11, §12)

    def retry_answer(self, shop: Shop, conv: Conversation, conversation_id: str, trace: list[str] | None) -> Decision:
        """A repeated Dispatch of an open conversation with the same buyer (§12): what is
        current for it, changing nothing (not even the clock or the decision counts).
        Held: its agent and the reason it went there (``Conversation.reason``); waiting:
        where it waits (QUEUED, OFFLINE_STAGING, OFFLINE_MESSAGE_POOL). No group."""
        self._retries += 1
        if conv.wait != WaitKind.NONE:
            position = shop.waiting[conv.wait].position(conversation_id)
            _note(trace, f"retry:{WaitKind(conv.wait).name.lower()}:{position}")
            return _WAIT_REASONS[conv.wait], None, None, trace
        _note(trace, f"retry:{conv.agent_id}")
        return int(conv.reason), conv.agent_id, None, trace

    def waiting_place(self, shop: Shop, conversation_id: str) -> tuple[int, int | None] | None:
        """(position, estimated wait in ms or None) of a waiting conversation of ``shop``;
        None when it is not waiting (held, or unknown)."""
        conv = self._conversations.get((shop.config.shop_id, conversation_id))
        if conv is None or conv.wait == WaitKind.NONE:
            return None
        waiting = shop.waiting[conv.wait]
        position = waiting.position(conversation_id)
        return position, waiting.estimate(position)


_WAIT_REASONS: dict[int, int] = {
    WaitKind.QUEUE: int(Reason.QUEUED),
    WaitKind.STAGING: int(Reason.OFFLINE_STAGING),
    WaitKind.POOL: int(Reason.OFFLINE_MESSAGE_POOL),
}
"""The answer's reason for a conversation that waits, by where it waits."""


def _note(trace: list[str] | None, line: str) -> None:
    """Add a line to the decision trace, when one was asked for (spec §9)."""
    if trace is not None:
        trace.append(line)
