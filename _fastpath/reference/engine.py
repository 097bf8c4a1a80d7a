"""``ReferenceEngine``: the public calls (spec §8 configuration and events, §3-§4 dispatch, §9 reads).

Every call validates all its arguments first (``validation``, and the
lookups of ``Router``), so that a refusal leaves the state unchanged; then
it advances the shop's clock, applies the change, and lets the shop
``settle`` (hand out what was waiting). The rules themselves are in
``routing`` (the decision), ``eligibility`` and ``strategies``; the state
shapes and their invariants in ``shop``; the snapshot format in
``snapshot``; the wire codec in ``_fastpath.wire``.

The API is that of ``CompiledEngine`` (``_fastpath/_core.pyi``), call for
call, answer for answer and error message for error message.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..model import (
    DEFAULT_MAIN_CAPACITY,
    MASK64,
    MAX_TIME_MS,
    AgentConfig,
    AlreadyExistsError,
    Client,
    ConversationEvent,
    ConversationType,
    FailedPreconditionError,
    GroupConfig,
    InvalidArgumentError,
    NotFoundError,
    OrderState,
    Presence,
    Reason,
    Role,
    ShopConfig,
    WaitKind,
    shop_seed,
)
from ..wire import reference_dispatch_batch_wire, reference_dispatch_wire
from . import hours, operations, reads, snapshot, timers
from .eligibility import eligible, group_roster
from .reads import NEXT_DEADLINES
from .routing import NO_STRATEGY, Decision, Router
from .shop import NO_DAY, NO_TIME, Agent, Conversation, Group, HandOut, Shop
from .strategies import pick
from .validation import (
    check_client,
    check_conversation_type,
    check_event,
    check_id,
    check_order_state,
    check_presence,
    check_priority,
    check_time,
)

__all__ = ["NEXT_DEADLINES", "ReferenceEngine"]


class ReferenceEngine(Router):
    """All shops of one dispatcher, in plain Python."""

    kind = "reference"

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)

    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        """Seed for shops created from now on whose tie_seed is 0."""
        self._seed = int(value) & MASK64

    # ------------------------------------------------------------ configuration (spec §8)

    def put_shop(self, config: ShopConfig) -> None:
        config = config.normalized()
        shop = self._shops.get(config.shop_id)
        agents = shop.agents if shop else {}
        if shop and shop.config.main_account != config.main_account:
            raise FailedPreconditionError(
                f"shop {config.shop_id!r} has main account {shop.config.main_account!r}; it cannot change"
            )
        if config.robot_agent_id:
            _check_robot(agents, config.robot_agent_id, "robot_agent_id")
        if config.proxy_account:
            proxy = agents.get(config.proxy_account)
            if proxy is None or proxy.deleted:
                raise NotFoundError(f"proxy_account {config.proxy_account!r} is not an agent of the shop")
            if proxy.role != Role.PROXY:
                raise InvalidArgumentError(f"proxy_account {config.proxy_account!r} does not have role PROXY")
        if shop is None:
            shop = Shop(config, self._seed)
            self._shops[config.shop_id] = shop
            shop.agents[config.main_account] = Agent(
                agent_id=config.main_account,
                ordinal=0,
                role=Role.MAIN,
                weight=1,
                max_capacity=DEFAULT_MAIN_CAPACITY,
                created_at_ms=0,
                chat_permission=True,
            )
        else:
            if config.tie_seed != shop.config.tie_seed:
                shop.rng = shop_seed(self._seed, config.shop_id, config.tie_seed)
            if config.timezone != shop.config.timezone:
                shop.day = NO_DAY
            if config.affinity_window_ms != shop.config.affinity_window_ms:
                self.forget_expired(shop)
            shop.config = config
        shop.round_robin.clear()
        timers.configure(self, shop)
        hours.configure(self, shop)
        self.settle(shop, None)

    def delete_shop(self, shop_id: str) -> None:
        shop = self.shop_for(shop_id)
        if shop.live:
            raise FailedPreconditionError(
                f"shop {shop_id!r} still has {shop.live} live or waiting conversations; close them first"
            )
        del self._shops[shop_id]
        for key in [k for k in self._recent_contacts if k[0] == shop_id]:
            del self._recent_contacts[key]
        for key in [k for k in self._exclusive_agents if k[0] == shop_id]:
            del self._exclusive_agents[key]

    def put_agent(self, config: AgentConfig) -> None:
        check_id(config.shop_id, "shop_id")
        shop = self.shop_for(config.shop_id)
        config = config.normalized(shop.config.main_account)
        agent = shop.agents.get(config.agent_id)
        if agent is not None and not agent.deleted:
            _check_role_change(shop, agent, config.role)
        if agent is None:
            agent = Agent(
                agent_id=config.agent_id,
                ordinal=len(shop.agents),
                role=config.role,
                weight=config.weight,
                max_capacity=config.max_capacity,
                created_at_ms=config.created_at_ms,
                chat_permission=config.chat_permission,
            )
            shop.agents[config.agent_id] = agent
        else:
            agent.deleted = False
            agent.role = config.role
            agent.weight = config.weight
            agent.max_capacity = config.max_capacity
            agent.created_at_ms = config.created_at_ms
            agent.chat_permission = config.chat_permission
        shop.round_robin.clear()
        timers.configure(self, shop)
        hours.configure(self, shop)
        self.settle(shop, agent)

    def delete_agent(self, shop_id: str, agent_id: str) -> None:
        shop = self.shop_for(shop_id)
        agent = self.agent_for(shop, agent_id)
        config = shop.config
        if agent_id == config.main_account:
            raise FailedPreconditionError(f"agent {agent_id!r} is the main account; delete the shop instead")
        if agent_id in (config.robot_agent_id, config.proxy_account) or any(
            g.config.robot_agent_id == agent_id for g in shop.groups.values()
        ):
            raise FailedPreconditionError(f"agent {agent_id!r} is configured as the shop's robot or proxy")
        if agent.active:
            raise FailedPreconditionError(
                f"agent {agent_id!r} serves {agent.active} conversations; transfer or close them first"
            )
        for group_id in agent.groups:
            group = shop.groups[group_id]
            members = tuple(m for m in group.config.members if m != agent_id)
            group.config = dataclasses.replace(group.config, members=members)
        agent.groups = []
        agent.deleted = True
        agent.presence = Presence.OFFLINE
        agent.client = Client.DESKTOP
        agent.offline_at_ms = NO_TIME
        agent.unread = 0
        agent.today = 0
        agent.today_day = 0
        shop.round_robin.clear()
        timers.on_presence(self, shop, agent, False, shop.clock)
        timers.configure(self, shop)
        hours.configure(self, shop)
        self.settle(shop, None)

    def put_group(self, config: GroupConfig) -> None:
        config = config.normalized()
        shop = self.shop_for(config.shop_id)
        for member in config.members:
            agent = self.agent_for(shop, member)
            if agent.role == Role.ROBOT:
                raise InvalidArgumentError(f"member {member!r} is a robot; use robot_agent_id")
        if config.robot_agent_id:
            _check_robot(shop.agents, config.robot_agent_id, "robot_agent_id")
        if config.robot_enabled and not (config.robot_agent_id or shop.config.robot_agent_id):
            raise FailedPreconditionError("robot_enabled needs robot_agent_id on the group or the shop")
        old = shop.groups.get(config.group_id)
        if old is not None:
            for member in old.config.members:
                shop.agents[member].groups.remove(config.group_id)
            old.config = config
        else:
            shop.groups[config.group_id] = Group(config)
        for member in config.members:
            shop.agents[member].groups.append(config.group_id)
        shop.round_robin.clear()
        timers.configure(self, shop)
        hours.configure(self, shop)
        self.settle(shop, None)

    def delete_group(self, shop_id: str, group_id: str) -> None:
        shop = self.shop_for(shop_id)
        check_id(group_id, "group_id")
        group = shop.groups.pop(group_id, None)
        if group is None:
            raise NotFoundError(f"group {group_id!r} not found in shop {shop_id!r}")
        for member in group.config.members:
            shop.agents[member].groups.remove(group_id)
        shop.round_robin.clear()
        timers.configure(self, shop)
        hours.configure(self, shop)
        self.settle(shop, None)

    def set_exclusive_agent(self, shop_id: str, buyer_id: str, agent_id: str) -> None:
        shop = self.shop_for(shop_id)
        check_id(buyer_id, "buyer_id")
        agent = self.agent_for(shop, agent_id)
        if agent.role == Role.ROBOT:
            raise InvalidArgumentError(f"agent {agent_id!r} is a robot; it cannot be an exclusive agent")
        self._exclusive_agents[(shop_id, buyer_id)] = agent_id

    def delete_exclusive_agent(self, shop_id: str, buyer_id: str) -> None:
        self.shop_for(shop_id)
        check_id(buyer_id, "buyer_id")
        if self._exclusive_agents.pop((shop_id, buyer_id), None) is None:
            raise NotFoundError(f"buyer {buyer_id!r} has no exclusive agent in shop {shop_id!r}")

    # ------------------------------------------------------------ events (spec §8)

    def set_presence(self, shop_id: str, agent_id: str, presence: int, client: int, at_ms: int) -> None:
        shop = self.shop_for(shop_id)
        agent = self.agent_for(shop, agent_id)
        presence = check_presence(presence)
        client = check_client(client)
        check_time(at_ms)
        if agent.role == Role.ROBOT:
            raise FailedPreconditionError(f"agent {agent_id!r} is a robot; presence does not apply")
        timers.fire_due(self, shop, at_ms)
        now = self.advance(shop, at_ms)
        went_offline = presence == Presence.OFFLINE and agent.presence != Presence.OFFLINE
        if went_offline:
            agent.offline_at_ms = now
        agent.presence = presence
        agent.client = client
        timers.on_presence(self, shop, agent, went_offline, now)
        self.settle(shop, agent)

    def conversation_event(
        self,
        shop_id: str,
        conversation_id: str,
        event: int,
        at_ms: int,
        buyer_id: str = "",
        agent_id: str = "",
        to_agent_id: str = "",
        to_group_id: str = "",
    ) -> str | None:
        """Apply one IM-side conversation event (section 8).

        Returns the receiving agent for TRANSFERRED and ASSIGNED, else None.
        """
        shop = self.shop_for(shop_id)
        check_id(conversation_id, "conversation_id")
        event = check_event(event)
        check_id(buyer_id, "buyer_id", optional=True)
        check_id(agent_id, "agent_id", optional=True)
        check_id(to_agent_id, "to_agent_id", optional=True)
        check_id(to_group_id, "to_group_id", optional=True)
        check_time(at_ms)
        if event == ConversationEvent.UNSPECIFIED:
            raise InvalidArgumentError("event is required")
        timers.fire_due(self, shop, at_ms)  # §10: what time passing did comes first
        if event == ConversationEvent.ASSIGNED:
            return self._assigned(shop, conversation_id, at_ms, buyer_id, agent_id)
        conv = self._conversations.get((shop_id, conversation_id))
        if conv is None:
            raise NotFoundError(f"conversation {conversation_id!r} not found in shop {shop_id!r}")
        if buyer_id and buyer_id != conv.buyer_id:
            raise FailedPreconditionError(f"conversation {conversation_id!r} belongs to another buyer")
        if event == ConversationEvent.BUYER_MESSAGE:
            self._buyer_message(shop, conv, at_ms)
            return None
        if event == ConversationEvent.AGENT_REPLY:
            self._agent_reply(shop, conv, conversation_id, at_ms, agent_id)
            return None
        if event == ConversationEvent.CLOSED:
            self._closed(shop, conv, conversation_id, at_ms)
            return None
        return self._transfer(shop, conv, conversation_id, at_ms, to_agent_id, to_group_id)

    def _assigned(self, shop: Shop, conversation_id: str, at_ms: int, buyer_id: str, agent_id: str) -> str:
        """ASSIGNED: a new conversation given to ``agent_id`` outside the dispatcher."""
        key = (shop.config.shop_id, conversation_id)
        if key in self._conversations:
            raise AlreadyExistsError(f"conversation {conversation_id!r} already exists in shop {shop.config.shop_id!r}")
        check_id(buyer_id, "buyer_id")
        agent = self.agent_for(shop, agent_id)
        if agent.role == Role.ROBOT and agent.max_capacity and agent.active >= agent.max_capacity:
            raise FailedPreconditionError(f"robot {agent_id!r} is at its capacity")
        now = self.advance(shop, at_ms)
        conv = Conversation(buyer_id=buyer_id, agent_id=None)
        self._conversations[key] = conv
        shop.live += 1
        timers.track_new(shop, conversation_id, conv, "", 0)
        self.assign(shop, conv, agent, now)
        conv.reason = int(Reason.DIRECT)  # given to that agent directly, outside the dispatcher
        self.settle(shop, None)
        return agent.agent_id

    def _buyer_message(self, shop: Shop, conv: Conversation, at_ms: int) -> None:
        """BUYER_MESSAGE: unread +1 if the conversation had been answered (nothing while it waits)."""
        self.advance(shop, at_ms)
        if conv.wait == WaitKind.NONE and not conv.unread:
            conv.unread = True
            shop.serving_agent(conv).unread += 1
        self.settle(shop, None)

    def _agent_reply(self, shop: Shop, conv: Conversation, conversation_id: str, at_ms: int, agent_id: str) -> None:
        """AGENT_REPLY: unread -1; the holder becomes the buyer's recent contact."""
        holder = self._holder_of(shop, conv, conversation_id, "answer")
        if agent_id and agent_id != holder.agent_id:
            raise FailedPreconditionError(
                f"conversation {conversation_id!r} is served by {holder.agent_id!r}, not {agent_id!r}"
            )
        now = self.advance(shop, at_ms)
        if conv.unread:
            conv.unread = False
            holder.unread -= 1
        timers.on_reply(shop, conv)
        self.remember(shop, conv.buyer_id, holder, now)
        self.settle(shop, holder)

    def _closed(self, shop: Shop, conv: Conversation, conversation_id: str, at_ms: int) -> None:
        """CLOSED: the conversation ends, held (active -1, unread -1 if unanswered) or waiting."""
        self.advance(shop, at_ms)
        del self._conversations[(shop.config.shop_id, conversation_id)]
        shop.live -= 1
        timers.on_close(shop, conv)
        if conv.wait != WaitKind.NONE:
            waiting = shop.waiting[conv.wait]
            for item in waiting:
                if item.conversation_id == conversation_id:
                    waiting.remove(item)
                    break
            self.settle(shop, None)
            return
        holder = shop.serving_agent(conv)
        holder.active -= 1
        if conv.unread:
            holder.unread -= 1
        self.settle(shop, holder)

    def _transfer(
        self, shop: Shop, conv: Conversation, conversation_id: str, at_ms: int, to_agent_id: str, to_group_id: str
    ) -> str:
        """TRANSFERRED: the load moves to an agent, or to a member of a group picked by its strategy;
        the receiver becomes the buyer's recent contact."""
        holder = self._holder_of(shop, conv, conversation_id, "transfer")
        if bool(to_agent_id) == bool(to_group_id):
            raise InvalidArgumentError("a transfer names exactly one of to_agent_id and to_group_id")
        if to_agent_id:
            target = self.agent_for(shop, to_agent_id)
            if target.role == Role.ROBOT:
                raise InvalidArgumentError(f"to_agent_id {to_agent_id!r} is a robot")
            if target is holder:
                raise FailedPreconditionError(f"conversation {conversation_id!r} is already served by {to_agent_id!r}")
            now = self.advance(shop, at_ms)
        else:
            group = shop.groups.get(to_group_id)
            if group is None:
                raise NotFoundError(f"group {to_group_id!r} not found in shop {shop.config.shop_id!r}")
            candidates = [a for a in group_roster(shop, group) if a is not holder and eligible(shop, a)]
            if not candidates:
                raise FailedPreconditionError(f"no member of group {to_group_id!r} can take a conversation now")
            now = self.advance(shop, at_ms)
            strategy = group.config.strategy or shop.config.strategy
            target = pick(shop, strategy, candidates, to_group_id, now)
        holder.active -= 1
        target.active += 1
        shop.bump_today(target, now)
        if conv.unread:
            holder.unread -= 1
            target.unread += 1
        conv.agent_id = target.agent_id
        conv.forwarded = True
        if conv.track is not None:
            timers.on_assign(self, shop, conv, target, now)  # §10: the receiver's re-route deadline starts
        self.remember(shop, conv.buyer_id, target, now)
        self.settle(shop, holder)
        return target.agent_id

    def _holder_of(self, shop: Shop, conv: Conversation, conversation_id: str, verb: str) -> Agent:
        """The agent serving ``conv``; FAILED_PRECONDITION while it waits (nobody can ``verb`` it yet)."""
        if conv.wait != WaitKind.NONE:
            raise FailedPreconditionError(
                f"conversation {conversation_id!r} is waiting ({WaitKind(conv.wait).name}); nobody can {verb} it yet"
            )
        return shop.serving_agent(conv)

    def claim_from_pool(self, shop_id: str, agent_id: str, at_ms: int, conversation_id: str = "") -> tuple[str, str]:
        """An agent (or an administrator on its behalf) takes a conversation from the message pool (§6)."""
        shop = self.shop_for(shop_id)
        agent = self.agent_for(shop, agent_id)
        check_id(conversation_id, "conversation_id", optional=True)
        check_time(at_ms)
        if agent.role == Role.ROBOT:
            raise InvalidArgumentError(f"agent {agent_id!r} is a robot")
        timers.fire_due(self, shop, at_ms)  # §11: a queue timeout due by now is in the pool first
        message_pool = shop.waiting[WaitKind.POOL]
        if not message_pool:
            raise FailedPreconditionError(f"the message pool of shop {shop_id!r} is empty")
        item = message_pool[0]
        if conversation_id:
            for item in message_pool:
                if item.conversation_id == conversation_id:
                    break
            else:
                raise NotFoundError(f"conversation {conversation_id!r} is not in the message pool")
        now = self.advance(shop, at_ms)
        message_pool.remove(item)
        self.handed_out(shop, message_pool, item.conversation_id, agent, int(Reason.OFFLINE_MESSAGE_POOL), now)
        self._outbox.append(
            (shop_id, item.conversation_id, item.buyer_id, agent.agent_id, int(Reason.OFFLINE_MESSAGE_POOL), now)
        )
        self.settle(shop, None)
        return item.conversation_id, item.buyer_id

    # ------------------------------------------------------------ dispatch (spec §3, §4)

    def dispatch(
        self,
        shop_id: str,
        buyer_id: str,
        conversation_id: str,
        at_ms: int,
        conv_type: int = ConversationType.BUYER_TO_SHOP,
        source: str = "",
        order_state: int = OrderState.UNSPECIFIED,
        to_account: str = "",
        trace: bool = False,
        priority: int = 0,
    ) -> Decision:
        """Decide who gets a new conversation: (reason, agent_id, group_id, trace).

        A repeated dispatch of a conversation that is still open, with the same
        buyer, answers what is current for it and changes nothing (§12,
        ``Router.retry_answer``); another buyer: ALREADY_EXISTS. ``priority``
        (0..9, §11) orders it among the waiting if it has to wait."""
        conv_type = check_conversation_type(conv_type)
        check_id(shop_id, "shop_id")
        if conv_type != ConversationType.BUYER_TO_SHOP:
            # Section 3: point-to-point, no state change.
            check_id(to_account, "to_account")
            self._decisions[Reason.DIRECT][NO_STRATEGY] += 1
            return int(Reason.DIRECT), to_account, None, ([f"direct:{to_account}"] if trace else None)
        check_id(buyer_id, "buyer_id")
        check_id(conversation_id, "conversation_id")
        check_id(source, "source", optional=True)
        order_state = check_order_state(order_state)
        check_time(at_ms)
        priority = check_priority(priority)
        shop = self.shop_for(shop_id)
        timers.fire_due(self, shop, at_ms)  # §10: what time passing did comes first
        conv = self._conversations.get((shop_id, conversation_id))
        if conv is not None:
            if conv.buyer_id != buyer_id:
                raise AlreadyExistsError(f"conversation {conversation_id!r} already exists in shop {shop_id!r}")
            return self.retry_answer(shop, conv, conversation_id, [] if trace else None)
        return self.decide(shop, buyer_id, conversation_id, source, order_state, at_ms, [] if trace else None, priority)

    def waiting_position(self, shop_id: str, conversation_id: str) -> tuple[int, int | None] | None:
        """Where a waiting conversation stands (§11): (position, 1 = next; estimated wait in
        ms, None while the shop's hand-out rate of that list is unknown), or None when it
        does not wait (held, closed, unknown). Changes nothing."""
        shop = self.shop_for(shop_id)
        check_id(conversation_id, "conversation_id")
        return self.waiting_place(shop, conversation_id)

    def dispatch_batch_wire(
        self, data: bytes, now_ms: int, max_items: int, max_at_ms: int | None = None
    ) -> tuple[bytes, int] | None:
        """A serialized ``DispatchBatchRequest`` in, its ``DispatchBatchResponse`` out.

        Returns (response bytes, number of items that failed), or ``None``,
        with nothing changed, when the bytes are not a batch this codec reads
        (see ``_fastpath.wire``). Items without ``at`` take ``now_ms``. More
        than ``max_items`` items: InvalidArgumentError, nothing changed. An
        item whose ``at`` is later than ``max_at_ms`` (``None``: no bound)
        makes it ``None`` too (``_fastpath.wire.at_beyond``)."""
        return reference_dispatch_batch_wire(self, data, now_ms, max_items, max_at_ms)

    def dispatch_wire(self, data: bytes, now_ms: int, max_at_ms: int | None = None) -> bytes | None:
        """A serialized ``DispatchRequest`` in, its ``DispatchResponse`` out (unary
        ``Dispatch``); ``None``, with nothing changed, lets the caller take the
        object path (here: for bytes the reader declines, or an ``at`` later
        than ``max_at_ms``, ``None``: no bound). Refusals raise
        the typed error ``dispatch`` raises. A request without ``at`` takes ``now_ms``."""
        return reference_dispatch_wire(self, data, now_ms, max_at_ms)

    def operate_wire(
        self, data: bytes, now_ms: int, max_items: int, max_at_ms: int | None = None
    ) -> tuple[bytes, int, int] | None:
        """A serialized ``OperateRequest`` in, its ``OperateResponse`` out (issue 13).

        Returns (response bytes, operations, operations that failed), or ``None``,
        with nothing changed, when the bytes are not a batch this codec reads (see
        ``_fastpath.wire``: an operation with no kind or two, anything unusual) or an
        operation's ``at`` is later than ``max_at_ms``. More than ``max_items``
        operations: InvalidArgumentError, nothing changed. Each operation runs as its
        unary call does; its error (the typed error's code and message) becomes its
        own result. Its hand-outs are its answer's ``assignments`` and stay in the
        outbox for the caller's ``drain_outbox`` (the watchers)."""
        return operations.operate_wire(self, data, now_ms, max_items, max_at_ms)

    # ------------------------------------------------------------ time (spec §10)

    def tick(self, now_ms: int) -> int:
        """The engine's time is ``now_ms``: fire every deadline of every shop due by then
        (``timers.tick``), each at its own deadline; how many fired. A shop without a due
        deadline is not touched (its clock moves only by its own events)."""
        check_time(now_ms)
        return timers.tick(self, now_ms)

    def tick_shop(self, shop_id: str, at_ms: int) -> int:
        """Fire the deadlines of one shop due by ``at_ms`` (what a call with that ``at``
        does first); how many fired. An unknown shop or an invalid time fires nothing."""
        shop = self._shops.get(shop_id) if isinstance(shop_id, str) else None
        if shop is None or not isinstance(at_ms, int) or isinstance(at_ms, bool) or not 0 <= at_ms <= MAX_TIME_MS:
            return 0
        return timers.fire_due(self, shop, at_ms)

    def pending_deadlines(self) -> int:
        """Deadlines pending in every shop (a gauge)."""
        return sum(len(shop.timers) for shop in self._shops.values())

    def operation_counts(self) -> list[int]:
        """Operations this object applied through ``operate_wire``, by kind (``wire.OP_*``;
        index 0 unused): a copy. Counters, not state."""
        return list(self._operations)

    def retry_count(self) -> int:
        """Dispatches this object answered as retries of an open conversation (§12; not
        decisions: ``decision_counts`` does not move). A counter, not state."""
        return self._retries

    def decision_counts(self) -> list[list[int]]:
        """Decisions this object made, ``[reason][strategy]``: a copy. Replayed
        journal records count too; these are counters, not state."""
        return [list(row) for row in self._decisions]

    # ------------------------------------------------------------ reads (spec §9)

    def drain_outbox(self) -> list[HandOut]:
        """Hand-outs made after their Dispatch call: (shop, conversation, buyer, agent, reason, at_ms)."""
        out, self._outbox = self._outbox, []
        return out

    def has_shop(self, shop_id: str) -> bool:
        return shop_id in self._shops

    def shop_ids(self) -> list[str]:
        return sorted(self._shops)

    def shop_config(self, shop_id: str) -> ShopConfig:
        return self.shop_for(shop_id).config

    def shop_state(self, shop_id: str) -> dict[str, Any]:
        """Everything an operator needs to see why a shop routes as it does (reads.py)."""
        return reads.read_shop_state(self, shop_id)

    def totals(self) -> dict[str, int]:
        """Engine-wide counts for gauges: shops, agents online/suspended, live and waiting conversations."""
        return reads.read_totals(self)

    def effective_strategy(self, shop_id: str, group_id: str = "") -> int:
        """The strategy that picks within a group (its own, else the shop's), or the shop's."""
        return reads.read_effective_strategy(self, shop_id, group_id)

    def conversation(self, shop_id: str, conversation_id: str) -> dict[str, Any] | None:
        return reads.read_conversation(self, shop_id, conversation_id)

    def recent_contact(self, shop_id: str, buyer_id: str) -> tuple[str, int] | None:
        """The buyer's recent contact in the shop, if younger than the window: (agent_id, contact_at_ms)."""
        return reads.read_recent_contact(self, shop_id, buyer_id)

    def exclusive_agent(self, shop_id: str, buyer_id: str) -> str | None:
        return reads.read_exclusive_agent(self, shop_id, buyer_id)

    # ------------------------------------------------------------ snapshots

    def export_state(self) -> dict[str, Any]:
        """The whole engine state as plain data (JSON-able), identical for both engines.

        Derived structures (heaps, rosters, the day cache) are left out; recent
        contacts already past their window are left out (they are forgotten).
        """
        return snapshot.export_state(self)

    def import_state(self, state: dict[str, Any]) -> None:
        """Load an ``export_state()`` (of either engine) into this empty engine."""
        snapshot.import_state(self, state)


def _check_robot(agents: dict[str, Agent], robot_id: str, field: str) -> None:
    """``robot_id``, named by a shop or group setting ``field``, is a live agent with role ROBOT."""
    robot = agents.get(robot_id)
    if robot is None or robot.deleted:
        raise NotFoundError(f"{field} {robot_id!r} is not an agent of the shop")
    if robot.role != Role.ROBOT:
        raise InvalidArgumentError(f"{field} {robot_id!r} does not have role ROBOT")


def _check_role_change(shop: Shop, agent: Agent, role: int) -> None:
    """``put_agent`` may change a live agent's role only when nothing depends on the old one."""
    if role == agent.role:
        return
    agent_id = agent.agent_id
    if shop.config.robot_agent_id == agent_id or any(g.config.robot_agent_id == agent_id for g in shop.groups.values()):
        raise FailedPreconditionError(f"agent {agent_id!r} is configured as a robot; it must keep role ROBOT")
    if shop.config.proxy_account == agent_id:
        raise FailedPreconditionError(f"agent {agent_id!r} is the shop's proxy account; it must keep role PROXY")
    if role == Role.ROBOT and agent.groups:
        raise FailedPreconditionError(f"agent {agent_id!r} is a group member; a robot cannot be one")
    if role == Role.ROBOT and agent.active:
        raise FailedPreconditionError(f"agent {agent_id!r} serves conversations; it cannot become a robot")
