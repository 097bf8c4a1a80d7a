"""The pure-Python reference engine: the routing rules of the spec, written to be read.

It has exactly the API and behaviour of the compiled engine in ``_core.pyx``;
``tests/test_differential.py`` drives both with the same random event streams
and demands identical answers and identical state. Where the two could
disagree only in how they store things (hash tables, heaps), this one uses the
plainest structure (dicts, lists, sorting) so that it stays obviously right.

Section numbers in comments refer to the dispatch rules (spec).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from typing import Any

from .model import (
    DEFAULT_MAIN_CAPACITY,
    N_REASONS,
    N_STRATEGIES,
    SNAPSHOT_FORMAT,
    AgentConfig,
    AlreadyExistsError,
    Client,
    ConversationEvent,
    ConversationType,
    FailedPreconditionError,
    GroupConfig,
    InvalidArgumentError,
    MainAccountMode,
    NotFoundError,
    OfflineRule,
    OrderState,
    Presence,
    Reason,
    Role,
    ShopConfig,
    Strategy,
    WaitKind,
    check_enum,
    check_id,
    check_time,
    day_bounds,
    group_dict,
    shop_seed,
    splitmix64,
)
from .wire import reference_dispatch_batch_wire, reference_dispatch_wire

__all__ = ["ReferenceEngine"]

_NO_TIME = -1


@dataclasses.dataclass(slots=True)
class _Agent:
    agent_id: str
    ordinal: int
    role: int
    weight: int
    max_capacity: int
    created_at_ms: int
    chat_permission: bool
    deleted: bool = False
    presence: int = Presence.OFFLINE
    client: int = Client.DESKTOP
    offline_at_ms: int = _NO_TIME
    active: int = 0
    unread: int = 0
    today: int = 0
    today_day: int = 0
    groups: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(slots=True)
class _Group:
    config: GroupConfig


@dataclasses.dataclass(slots=True)
class _Waiting:
    conversation_id: str
    buyer_id: str
    source: str
    order_state: int
    since_ms: int


@dataclasses.dataclass(slots=True)
class _Conversation:
    buyer_id: str
    agent_id: str | None  # None while waiting
    wait: int = WaitKind.NONE
    unread: bool = False  # the buyer's last message is not answered yet
    forwarded: bool = False


@dataclasses.dataclass(slots=True)
class _RoundRobin:
    order: list[str]  # every pool member, larger capacity first, then ordinal
    credit: dict[str, int]
    full_credit: dict[str, int]
    cursor: int = 0


class _Shop:
    def __init__(self, config: ShopConfig, engine_seed: int) -> None:
        self.config = config
        self.agents: dict[str, _Agent] = {}  # insertion order == ordinal order
        self.groups: dict[str, _Group] = {}  # insertion order == group order
        self.rng = shop_seed(engine_seed, config.shop_id, config.tie_seed)
        self.clock = 0
        self.day = (0, 0, 0)  # (ordinal, start ms, end ms) of the cached local day
        self.waiting: dict[int, deque[_Waiting]] = {
            WaitKind.QUEUE: deque(),
            WaitKind.STAGING: deque(),
            WaitKind.POOL: deque(),
        }
        self.round_robin: dict[str, _RoundRobin] = {}  # "" = shop pool, else group id
        self.live = 0  # conversations assigned or waiting


class ReferenceEngine:
    """All shops of one dispatcher, in plain Python."""

    kind = "reference"

    def __init__(self, seed: int = 0) -> None:
        self._seed = int(seed) & ((1 << 64) - 1)
        self._shops: dict[str, _Shop] = {}
        self._conversations: dict[tuple[str, str], _Conversation] = {}
        self._affinity: dict[tuple[str, str], tuple[str, int]] = {}  # -> (agent, contact time)
        self._exclusive: dict[tuple[str, str], str] = {}
        self._outbox: list[tuple[str, str, str, str, int, int]] = []
        # Decisions made by this object (not state: never exported), [reason][strategy];
        # strategy is the one whose pick chose the agent, 0 when none did.
        self._decisions = [[0] * N_STRATEGIES for _ in range(N_REASONS)]
        self._picked_strategy = 0

    # ------------------------------------------------------------ seed

    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        """Seed for shops created from now on whose tie_seed is 0."""
        self._seed = int(value) & ((1 << 64) - 1)

    # ------------------------------------------------------------ configuration

    def put_shop(self, config: ShopConfig) -> None:
        config = config.normalized()
        shop = self._shops.get(config.shop_id)
        agents = shop.agents if shop else {}
        if shop and shop.config.main_account != config.main_account:
            raise FailedPreconditionError(
                f"shop {config.shop_id!r} has main account {shop.config.main_account!r}; it cannot change"
            )
        if config.robot_agent_id:
            self._check_robot(agents, config.robot_agent_id, "robot_agent_id")
        if config.proxy_account:
            proxy = agents.get(config.proxy_account)
            if proxy is None or proxy.deleted:
                raise NotFoundError(f"proxy_account {config.proxy_account!r} is not an agent of the shop")
            if proxy.role != Role.PROXY:
                raise InvalidArgumentError(f"proxy_account {config.proxy_account!r} does not have role PROXY")
        if shop is None:
            shop = _Shop(config, self._seed)
            self._shops[config.shop_id] = shop
            shop.agents[config.main_account] = _Agent(
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
                shop.day = (0, 0, 0)
            if config.affinity_window_ms != shop.config.affinity_window_ms:
                self._forget_expired(shop)
            shop.config = config
        shop.round_robin.clear()
        self._settle(shop, None)

    def _forget_expired(self, shop: _Shop) -> None:
        """Before the window changes: contacts already past the old window are forgotten.

        A shorter window applies to every contact at once; a longer one extends
        the contacts still alive but never revives forgotten ones (the compiled
        engine reclaims their memory).
        """
        shop_id = shop.config.shop_id
        window = shop.config.affinity_window_ms
        for key in [k for k, (_, t) in self._affinity.items() if k[0] == shop_id and shop.clock - t >= window]:
            del self._affinity[key]

    @staticmethod
    def _check_robot(agents: dict[str, _Agent], robot_id: str, field: str) -> None:
        robot = agents.get(robot_id)
        if robot is None or robot.deleted:
            raise NotFoundError(f"{field} {robot_id!r} is not an agent of the shop")
        if robot.role != Role.ROBOT:
            raise InvalidArgumentError(f"{field} {robot_id!r} does not have role ROBOT")

    def delete_shop(self, shop_id: str) -> None:
        shop = self._shop(shop_id)
        if shop.live:
            raise FailedPreconditionError(
                f"shop {shop_id!r} still has {shop.live} live or waiting conversations; close them first"
            )
        del self._shops[shop_id]
        for table in (self._affinity, self._exclusive):
            for key in [k for k in table if k[0] == shop_id]:
                del table[key]

    def put_agent(self, config: AgentConfig) -> None:
        check_id(config.shop_id, "shop_id")
        shop = self._shop(config.shop_id)
        config = config.normalized(shop.config.main_account)
        agent = shop.agents.get(config.agent_id)
        if agent is not None and not agent.deleted:
            self._check_role_change(shop, agent, config.role)
        if agent is None:
            agent = _Agent(
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
        self._settle(shop, agent)

    def _check_role_change(self, shop: _Shop, agent: _Agent, role: int) -> None:
        if role == agent.role:
            return
        aid = agent.agent_id
        if shop.config.robot_agent_id == aid or any(g.config.robot_agent_id == aid for g in shop.groups.values()):
            raise FailedPreconditionError(f"agent {aid!r} is configured as a robot; it must keep role ROBOT")
        if shop.config.proxy_account == aid:
            raise FailedPreconditionError(f"agent {aid!r} is the shop's proxy account; it must keep role PROXY")
        if role == Role.ROBOT and agent.groups:
            raise FailedPreconditionError(f"agent {aid!r} is a group member; a robot cannot be one")
        if role == Role.ROBOT and agent.active:
            raise FailedPreconditionError(f"agent {aid!r} serves conversations; it cannot become a robot")

    def delete_agent(self, shop_id: str, agent_id: str) -> None:
        shop = self._shop(shop_id)
        agent = self._agent(shop, agent_id)
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
        for gid in agent.groups:
            group = shop.groups[gid]
            members = tuple(m for m in group.config.members if m != agent_id)
            group.config = dataclasses.replace(group.config, members=members)
        agent.groups = []
        agent.deleted = True
        agent.presence = Presence.OFFLINE
        agent.client = Client.DESKTOP
        agent.offline_at_ms = _NO_TIME
        agent.unread = 0
        agent.today = 0
        agent.today_day = 0
        shop.round_robin.clear()
        self._settle(shop, None)

    def put_group(self, config: GroupConfig) -> None:
        config = config.normalized()
        shop = self._shop(config.shop_id)
        for member in config.members:
            agent = self._agent(shop, member)
            if agent.role == Role.ROBOT:
                raise InvalidArgumentError(f"member {member!r} is a robot; use robot_agent_id")
        if config.robot_agent_id:
            self._check_robot(shop.agents, config.robot_agent_id, "robot_agent_id")
        if config.robot_enabled and not (config.robot_agent_id or shop.config.robot_agent_id):
            raise FailedPreconditionError("robot_enabled needs robot_agent_id on the group or the shop")
        old = shop.groups.get(config.group_id)
        if old is not None:
            for member in old.config.members:
                shop.agents[member].groups.remove(config.group_id)
            old.config = config
        else:
            shop.groups[config.group_id] = _Group(config)
        for member in config.members:
            shop.agents[member].groups.append(config.group_id)
        shop.round_robin.clear()
        self._settle(shop, None)

    def delete_group(self, shop_id: str, group_id: str) -> None:
        shop = self._shop(shop_id)
        check_id(group_id, "group_id")
        group = shop.groups.pop(group_id, None)
        if group is None:
            raise NotFoundError(f"group {group_id!r} not found in shop {shop_id!r}")
        for member in group.config.members:
            shop.agents[member].groups.remove(group_id)
        shop.round_robin.clear()
        self._settle(shop, None)

    def set_exclusive_agent(self, shop_id: str, buyer_id: str, agent_id: str) -> None:
        shop = self._shop(shop_id)
        check_id(buyer_id, "buyer_id")
        agent = self._agent(shop, agent_id)
        if agent.role == Role.ROBOT:
            raise InvalidArgumentError(f"agent {agent_id!r} is a robot; it cannot be an exclusive agent")
        self._exclusive[(shop_id, buyer_id)] = agent_id

    def delete_exclusive_agent(self, shop_id: str, buyer_id: str) -> None:
        self._shop(shop_id)
        check_id(buyer_id, "buyer_id")
        if self._exclusive.pop((shop_id, buyer_id), None) is None:
            raise NotFoundError(f"buyer {buyer_id!r} has no exclusive agent in shop {shop_id!r}")

    # ------------------------------------------------------------ events

    def set_presence(self, shop_id: str, agent_id: str, presence: int, client: int, at_ms: int) -> None:
        shop = self._shop(shop_id)
        agent = self._agent(shop, agent_id)
        presence = check_enum(presence, Presence, "presence")
        if presence == Presence.UNSPECIFIED:
            raise InvalidArgumentError("presence is required")
        client = check_enum(client, Client, "client") or Client.DESKTOP
        check_time(at_ms)
        if agent.role == Role.ROBOT:
            raise FailedPreconditionError(f"agent {agent_id!r} is a robot; presence does not apply")
        now = self._advance(shop, at_ms)
        if presence == Presence.OFFLINE and agent.presence != Presence.OFFLINE:
            agent.offline_at_ms = now
        agent.presence = presence
        agent.client = client
        self._settle(shop, agent)

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
        shop = self._shop(shop_id)
        check_id(conversation_id, "conversation_id")
        event = check_enum(event, ConversationEvent, "event")
        check_id(buyer_id, "buyer_id", optional=True)
        check_id(agent_id, "agent_id", optional=True)
        check_id(to_agent_id, "to_agent_id", optional=True)
        check_id(to_group_id, "to_group_id", optional=True)
        check_time(at_ms)
        key = (shop_id, conversation_id)
        if event == ConversationEvent.UNSPECIFIED:
            raise InvalidArgumentError("event is required")
        if event == ConversationEvent.ASSIGNED:
            if key in self._conversations:
                raise AlreadyExistsError(f"conversation {conversation_id!r} already exists in shop {shop_id!r}")
            check_id(buyer_id, "buyer_id")
            agent = self._agent(shop, agent_id)
            if agent.role == Role.ROBOT and agent.max_capacity and agent.active >= agent.max_capacity:
                raise FailedPreconditionError(f"robot {agent_id!r} is at its capacity")
            now = self._advance(shop, at_ms)
            conv = _Conversation(buyer_id=buyer_id, agent_id=None)
            self._conversations[key] = conv
            shop.live += 1
            self._assign(shop, conv, agent, now)
            self._settle(shop, None)
            return agent.agent_id
        conv = self._conversations.get(key)
        if conv is None:
            raise NotFoundError(f"conversation {conversation_id!r} not found in shop {shop_id!r}")
        if buyer_id and buyer_id != conv.buyer_id:
            raise FailedPreconditionError(f"conversation {conversation_id!r} belongs to another buyer")
        if event == ConversationEvent.BUYER_MESSAGE:
            now = self._advance(shop, at_ms)
            if conv.wait == WaitKind.NONE and not conv.unread:
                conv.unread = True
                shop.agents[conv.agent_id].unread += 1
            self._settle(shop, None)
            return None
        if event == ConversationEvent.AGENT_REPLY:
            holder = self._holder(shop, conv, conversation_id, "answer")
            if agent_id and agent_id != holder.agent_id:
                raise FailedPreconditionError(
                    f"conversation {conversation_id!r} is served by {holder.agent_id!r}, not {agent_id!r}"
                )
            now = self._advance(shop, at_ms)
            if conv.unread:
                conv.unread = False
                holder.unread -= 1
            self._remember(shop, conv.buyer_id, holder, now)
            self._settle(shop, holder)
            return None
        if event == ConversationEvent.CLOSED:
            now = self._advance(shop, at_ms)
            del self._conversations[key]
            shop.live -= 1
            if conv.wait != WaitKind.NONE:
                queue = shop.waiting[conv.wait]
                for item in queue:
                    if item.conversation_id == conversation_id:
                        queue.remove(item)
                        break
                self._settle(shop, None)
                return None
            holder = shop.agents[conv.agent_id]
            holder.active -= 1
            if conv.unread:
                holder.unread -= 1
            self._settle(shop, holder)
            return None
        # TRANSFERRED
        holder = self._holder(shop, conv, conversation_id, "transfer")
        if bool(to_agent_id) == bool(to_group_id):
            raise InvalidArgumentError("a transfer names exactly one of to_agent_id and to_group_id")
        if to_agent_id:
            target = self._agent(shop, to_agent_id)
            if target.role == Role.ROBOT:
                raise InvalidArgumentError(f"to_agent_id {to_agent_id!r} is a robot")
            if target is holder:
                raise FailedPreconditionError(f"conversation {conversation_id!r} is already served by {to_agent_id!r}")
            now = self._advance(shop, at_ms)
        else:
            group = shop.groups.get(to_group_id)
            if group is None:
                raise NotFoundError(f"group {to_group_id!r} not found in shop {shop_id!r}")
            candidates = [a for a in self._group_members(shop, group) if a is not holder and self._eligible(shop, a)]
            if not candidates:
                raise FailedPreconditionError(f"no member of group {to_group_id!r} can take a conversation now")
            now = self._advance(shop, at_ms)
            strategy = group.config.strategy or shop.config.strategy
            target = self._pick(shop, strategy, candidates, to_group_id, now)
        holder.active -= 1
        target.active += 1
        self._bump_today(shop, target, now)
        if conv.unread:
            holder.unread -= 1
            target.unread += 1
        conv.agent_id = target.agent_id
        conv.forwarded = True
        self._remember(shop, conv.buyer_id, target, now)
        self._settle(shop, holder)
        return target.agent_id

    def _holder(self, shop: _Shop, conv: _Conversation, conversation_id: str, verb: str) -> _Agent:
        if conv.wait != WaitKind.NONE:
            raise FailedPreconditionError(
                f"conversation {conversation_id!r} is waiting ({WaitKind(conv.wait).name}); nobody can {verb} it yet"
            )
        return shop.agents[conv.agent_id]

    def claim_from_pool(
        self, shop_id: str, agent_id: str, at_ms: int, conversation_id: str = ""
    ) -> tuple[str, str]:
        """An agent (or an administrator on its behalf) takes a conversation from the message pool."""
        shop = self._shop(shop_id)
        agent = self._agent(shop, agent_id)
        check_id(conversation_id, "conversation_id", optional=True)
        check_time(at_ms)
        if agent.role == Role.ROBOT:
            raise InvalidArgumentError(f"agent {agent_id!r} is a robot")
        pool = shop.waiting[WaitKind.POOL]
        if not pool:
            raise FailedPreconditionError(f"the message pool of shop {shop_id!r} is empty")
        item = pool[0]
        if conversation_id:
            for item in pool:
                if item.conversation_id == conversation_id:
                    break
            else:
                raise NotFoundError(f"conversation {conversation_id!r} is not in the message pool")
        now = self._advance(shop, at_ms)
        pool.remove(item)
        conv = self._conversations[(shop_id, item.conversation_id)]
        self._assign(shop, conv, agent, now)
        self._outbox.append(
            (shop_id, item.conversation_id, item.buyer_id, agent.agent_id, int(Reason.OFFLINE_MESSAGE_POOL), now)
        )
        self._settle(shop, None)
        return item.conversation_id, item.buyer_id

    # ------------------------------------------------------------ dispatch

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
    ) -> tuple[int, str | None, str | None, list[str] | None]:
        """Decide who gets a new conversation: (reason, agent_id, group_id, trace)."""
        self._picked_strategy = 0
        result = self._dispatch(
            shop_id, buyer_id, conversation_id, at_ms, conv_type, source, order_state, to_account, trace
        )
        self._decisions[result[0]][self._picked_strategy] += 1
        return result

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

    def decision_counts(self) -> list[list[int]]:
        """Decisions this object made, ``[reason][strategy]``: a copy. Replayed
        journal records count too; these are counters, not state."""
        return [list(row) for row in self._decisions]

    def _dispatch(
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
    ) -> tuple[int, str | None, str | None, list[str] | None]:
        """Decide who gets a new conversation: (reason, agent_id, group_id, trace)."""
        conv_type = check_enum(conv_type, ConversationType, "type") or ConversationType.BUYER_TO_SHOP
        check_id(shop_id, "shop_id")
        if conv_type != ConversationType.BUYER_TO_SHOP:
            # Section 3: point-to-point, no state change.
            check_id(to_account, "to_account")
            return int(Reason.DIRECT), to_account, None, ([f"direct:{to_account}"] if trace else None)
        check_id(buyer_id, "buyer_id")
        check_id(conversation_id, "conversation_id")
        check_id(source, "source", optional=True)
        order_state = check_enum(order_state, OrderState, "order_state")
        check_time(at_ms)
        shop = self._shop(shop_id)
        if (shop_id, conversation_id) in self._conversations:
            raise AlreadyExistsError(f"conversation {conversation_id!r} already exists in shop {shop_id!r}")
        now = self._advance(shop, at_ms)
        tr: list[str] | None = [] if trace else None
        conv = _Conversation(buyer_id=buyer_id, agent_id=None)
        self._conversations[(shop_id, conversation_id)] = conv
        shop.live += 1

        # Step 1: is the shop online?
        if not self._shop_online(shop):
            _note(tr, "online:no")
            return self._offline(shop, conv, conversation_id, source, order_state, now, tr)
        _note(tr, "online:yes")

        found = self._route(shop, buyer_id, source, order_state, now, tr)
        if found is not None:
            reason, agent, group_id = found
            self._assign(shop, conv, agent, now)
            return reason, agent.agent_id, group_id, tr

        # Step 7: everyone is full.
        self._wait(shop, conv, WaitKind.QUEUE, conversation_id, source, order_state, now)
        _note(tr, f"queued:{len(shop.waiting[WaitKind.QUEUE])}")
        return int(Reason.QUEUED), None, None, tr

    def _offline(
        self,
        shop: _Shop,
        conv: _Conversation,
        conversation_id: str,
        source: str,
        order_state: int,
        now: int,
        tr: list[str] | None,
    ) -> tuple[int, str | None, str | None, list[str] | None]:
        """Section 6."""
        rule = shop.config.offline_rule
        _note(tr, f"offline:{OfflineRule(rule).name}")
        if rule == OfflineRule.MAIN_ACCOUNT:
            agent = shop.agents[shop.config.main_account]
            self._assign(shop, conv, agent, now)
            return int(Reason.OFFLINE_MAIN_ACCOUNT), agent.agent_id, None, tr
        if rule == OfflineRule.PROXY_ACCOUNT:
            agent = shop.agents[shop.config.proxy_account]
            self._assign(shop, conv, agent, now)
            return int(Reason.OFFLINE_PROXY_ACCOUNT), agent.agent_id, None, tr
        if rule == OfflineRule.MESSAGE_POOL:
            self._wait(shop, conv, WaitKind.POOL, conversation_id, source, order_state, now)
            return int(Reason.OFFLINE_MESSAGE_POOL), None, None, tr
        self._wait(shop, conv, WaitKind.STAGING, conversation_id, source, order_state, now)
        return int(Reason.OFFLINE_STAGING), None, None, tr

    def _route(
        self, shop: _Shop, buyer_id: str, source: str, order_state: int, now: int, tr: list[str] | None
    ) -> tuple[int, _Agent, str | None] | None:
        """Steps 2 to 6; None when everyone is full."""
        config = shop.config
        key = (config.shop_id, buyer_id)

        # Step 2: recent contact.
        contact = self._affinity.get(key)
        if contact is not None and now - contact[1] >= config.affinity_window_ms:
            del self._affinity[key]  # expired: forget it
            contact = None
        if contact is None:
            _note(tr, "affinity:none")
        else:
            agent = shop.agents.get(contact[0])
            state = self._contact_state(shop, agent, now)
            if state == "unavailable":
                _note(tr, f"affinity:{contact[0]}:unavailable")
            elif not (config.affinity_may_exceed_capacity or _has_room(agent)):
                _note(tr, f"affinity:{contact[0]}:full")
            elif state == "held":
                _note(tr, f"affinity:{contact[0]}:held")
                return int(Reason.AFFINITY_HELD), agent, None
            else:
                _note(tr, f"affinity:{contact[0]}")
                return int(Reason.AFFINITY), agent, None

        # Step 3: exclusive agent.
        if not config.exclusive_direct:
            _note(tr, "exclusive:off")
        else:
            exclusive_id = self._exclusive.get(key)
            agent = shop.agents.get(exclusive_id) if exclusive_id else None
            if exclusive_id is None:
                _note(tr, "exclusive:none")
            elif agent is None or agent.deleted or not self._available(shop, agent):
                _note(tr, f"exclusive:{exclusive_id}:unavailable")
            elif not (config.affinity_may_exceed_capacity or _has_room(agent)):
                _note(tr, f"exclusive:{exclusive_id}:full")
            else:
                _note(tr, f"exclusive:{exclusive_id}")
                return int(Reason.EXCLUSIVE), agent, None

        # Step 4: robot first.
        if not config.robot_first:
            _note(tr, "robot_first:off")
        else:
            robot = shop.agents[config.robot_agent_id]
            if _has_room(robot):
                _note(tr, f"robot_first:{robot.agent_id}")
                return int(Reason.ROBOT), robot, None
            _note(tr, f"robot_first:{robot.agent_id}:full")

        # Step 5: group.
        groups_on = config.main_account_mode != MainAccountMode.ONLY_MAIN and bool(shop.groups)
        if groups_on:
            bound = [
                g
                for g in shop.groups.values()
                if order_state in g.config.order_states or (source and source in g.config.sources)
            ]
            candidates = bound or list(shop.groups.values())
            _note(tr, f"groups:{'bound' if bound else 'unbound'}:{len(candidates)}")
            ready = [g for g in candidates if self._group_robot(shop, g) or self._group_eligible(shop, g)]
            _note(tr, f"groups:ready:{len(ready)}")
            if ready:
                group = ready[self._random(shop, len(ready))]
                gid = group.config.group_id
                _note(tr, f"group:{gid}")
                robot = self._group_robot(shop, group)
                if robot is not None:
                    _note(tr, f"robot:{robot.agent_id}")
                    return int(Reason.ROBOT), robot, gid
                strategy = group.config.strategy or config.strategy
                agent = self._pick(shop, strategy, self._group_eligible(shop, group), gid, now)
                self._picked_strategy = strategy
                _note(tr, f"strategy:{Strategy(strategy).name}:{agent.agent_id}")
                return int(Reason.GROUP), agent, gid
        else:
            _note(tr, "groups:none")

        # Step 6: fallback (or, without groups, the strategy over everyone).
        label = "fallback" if groups_on else "strategy"
        reason = Reason.FALLBACK if groups_on else Reason.GROUP
        eligible = [a for a in self._pool(shop) if self._eligible(shop, a)]
        if eligible:
            agent = self._pick(shop, config.strategy, eligible, "", now)
            self._picked_strategy = config.strategy
            _note(tr, f"{label}:{Strategy(config.strategy).name}:{agent.agent_id}")
            return int(reason), agent, None
        _note(tr, f"{label}:{Strategy(config.strategy).name}:none")
        if config.main_account_mode == MainAccountMode.FALLBACK:
            # Case C: the main account receives only when every other agent is offline.
            main = shop.agents[config.main_account]
            if not any(self._available(shop, a) for a in self._pool(shop)) and self._eligible(shop, main):
                _note(tr, f"fallback:main:{main.agent_id}")
                return int(Reason.FALLBACK), main, None
        return None

    # ------------------------------------------------------------ strategies (section 5)

    def _pick(self, shop: _Shop, strategy: int, candidates: list[_Agent], pool_key: str, now: int) -> _Agent:
        """Pick one of ``candidates`` (non-empty, eligible, in ordinal order)."""
        if strategy == Strategy.LEAST_SATURATION:
            return self._random_min(shop, candidates, lambda a: _Frac(a.active, a.max_capacity))
        if strategy == Strategy.FEWEST_TODAY:
            return self._random_min(shop, candidates, lambda a: self._today(shop, a, now))
        if strategy == Strategy.FEWEST_UNREAD:
            return min(candidates, key=lambda a: (a.unread, a.created_at_ms, a.ordinal))
        if strategy == Strategy.WEIGHTED_BUSYNESS:
            threshold = shop.config.busy_threshold
            calm = [a for a in candidates if a.unread <= threshold]
            if calm:
                return self._random_min(shop, calm, lambda a: (_Frac(a.active, a.weight), -a.weight))
            return self._random_min(shop, candidates, lambda a: (_Frac(a.unread, a.weight), -a.weight))
        return self._round_robin(shop, pool_key, candidates)

    def _random_min(self, shop: _Shop, candidates: list[_Agent], key: Any) -> _Agent:
        best = min(key(a) for a in candidates)
        ties = [a for a in candidates if key(a) == best]
        return ties[self._random(shop, len(ties))]

    def _round_robin(self, shop: _Shop, pool_key: str, candidates: list[_Agent]) -> _Agent:
        """CAPACITY_ROUND_ROBIN: passes over the members in capacity order; full ones sit out."""
        state = shop.round_robin.get(pool_key)
        if state is None:
            if pool_key:
                members = self._group_members(shop, shop.groups[pool_key])
            else:
                members = self._pool(shop)
            members.sort(key=lambda a: (-a.max_capacity, a.ordinal))
            divisor = 0
            for a in members:
                divisor = math.gcd(divisor, a.max_capacity)
            full = {a.agent_id: a.max_capacity // divisor for a in members}
            state = _RoundRobin(order=[a.agent_id for a in members], credit=dict(full), full_credit=full)
            shop.round_robin[pool_key] = state
        able = {a.agent_id for a in candidates}
        order = state.order
        for start, refill in ((state.cursor, False), (0, False), (0, True)):
            if refill:
                state.credit = dict(state.full_credit)
            for i in range(start, len(order)):
                aid = order[i]
                if state.credit[aid] > 0 and aid in able:
                    state.credit[aid] -= 1
                    state.cursor = i + 1
                    return shop.agents[aid]
            state.cursor = 0
        raise AssertionError("round robin found no candidate")  # candidates is never empty

    def _random(self, shop: _Shop, n: int) -> int:
        """A uniform index in [0, n); draws from the shop's PRNG only when there is a choice."""
        if n <= 1:
            return 0
        shop.rng, out = splitmix64(shop.rng)
        return out % n

    # ------------------------------------------------------------ who may receive

    def _counts(self, shop: _Shop, agent: _Agent) -> bool:
        return agent.client != Client.MOBILE or shop.config.mobile_dispatch

    def _available(self, shop: _Shop, agent: _Agent) -> bool:
        """ONLINE (not suspended) on a client that counts, with chat permission."""
        return (
            not agent.deleted
            and agent.role != Role.ROBOT
            and agent.chat_permission
            and agent.presence == Presence.ONLINE
            and self._counts(shop, agent)
        )

    def _eligible(self, shop: _Shop, agent: _Agent) -> bool:
        """May receive a new buyer through a strategy: available and not full."""
        return self._available(shop, agent) and agent.active < agent.max_capacity

    def _contact_state(self, shop: _Shop, agent: _Agent | None, now: int) -> str:
        if agent is None or agent.deleted or not agent.chat_permission or agent.role == Role.ROBOT:
            return "unavailable"
        if agent.presence in (Presence.ONLINE, Presence.SUSPENDED) and self._counts(shop, agent):
            return "present"
        grace = shop.config.offline_grace_ms
        if (
            agent.presence == Presence.OFFLINE
            and grace > 0
            and agent.offline_at_ms != _NO_TIME
            and now - agent.offline_at_ms < grace
        ):
            return "held"
        return "unavailable"

    def _in_pool(self, shop: _Shop, agent: _Agent) -> bool:
        """Member of the shop-wide pool (fallback, or the whole shop without groups)."""
        if agent.deleted or agent.role == Role.ROBOT:
            return False
        mode = shop.config.main_account_mode
        if agent.role == Role.MAIN:
            return mode in (MainAccountMode.ONLY_MAIN, MainAccountMode.MEMBER)
        if mode == MainAccountMode.ONLY_MAIN:
            return False
        if agent.role == Role.PROXY:
            return bool(agent.groups)
        return True

    def _pool(self, shop: _Shop) -> list[_Agent]:
        return [a for a in shop.agents.values() if self._in_pool(shop, a)]

    def _group_members(self, shop: _Shop, group: _Group) -> list[_Agent]:
        """The group's members that strategies may use, in ordinal order."""
        member_ids = set(group.config.members)
        member_mode = shop.config.main_account_mode == MainAccountMode.MEMBER
        return [
            a
            for a in shop.agents.values()
            if a.agent_id in member_ids and (a.role != Role.MAIN or member_mode)
        ]

    def _group_eligible(self, shop: _Shop, group: _Group) -> list[_Agent]:
        return [a for a in self._group_members(shop, group) if self._eligible(shop, a)]

    def _group_robot(self, shop: _Shop, group: _Group) -> _Agent | None:
        if not group.config.robot_enabled:
            return None
        robot_id = group.config.robot_agent_id or shop.config.robot_agent_id
        robot = shop.agents.get(robot_id) if robot_id else None
        if robot is None or robot.deleted or robot.role != Role.ROBOT or not _has_room(robot):
            return None
        return robot

    def _shop_online(self, shop: _Shop) -> bool:
        if any(self._available(shop, a) for a in self._pool(shop)):
            return True
        if shop.config.main_account_mode == MainAccountMode.FALLBACK:
            return self._available(shop, shop.agents[shop.config.main_account])
        return False

    # ------------------------------------------------------------ state changes (section 8)

    def _advance(self, shop: _Shop, at_ms: int) -> int:
        """The shop's clock never goes back: an older event counts as happening now."""
        if at_ms > shop.clock:
            shop.clock = at_ms
        return shop.clock

    def _day(self, shop: _Shop, now: int) -> int:
        day, start, end = shop.day
        if not start <= now < end:
            shop.day = day_bounds(shop.config.timezone, now)
        return shop.day[0]

    def _today(self, shop: _Shop, agent: _Agent, now: int) -> int:
        return agent.today if agent.today_day == self._day(shop, now) else 0

    def _bump_today(self, shop: _Shop, agent: _Agent, now: int) -> None:
        day = self._day(shop, now)
        if agent.today_day != day:
            agent.today_day = day
            agent.today = 0
        agent.today += 1

    def _assign(self, shop: _Shop, conv: _Conversation, agent: _Agent, now: int) -> None:
        conv.agent_id = agent.agent_id
        conv.wait = WaitKind.NONE
        conv.unread = True  # the buyer's opening message awaits a reply
        agent.active += 1
        agent.unread += 1
        self._bump_today(shop, agent, now)

    def _wait(
        self,
        shop: _Shop,
        conv: _Conversation,
        kind: int,
        conversation_id: str,
        source: str,
        order_state: int,
        now: int,
    ) -> None:
        conv.wait = kind
        shop.waiting[kind].append(_Waiting(conversation_id, conv.buyer_id, source, order_state, now))

    def _remember(self, shop: _Shop, buyer_id: str, agent: _Agent, now: int) -> None:
        """The agent spoke to the buyer (or received the conversation by transfer)."""
        if agent.role == Role.ROBOT:
            return  # talking to a robot does not bind the buyer to it
        self._affinity[(shop.config.shop_id, buyer_id)] = (agent.agent_id, now)

    def _settle(self, shop: _Shop, focus: _Agent | None) -> None:
        """Hand out waiting conversations after a change (section 6 staging, step 7 queue)."""
        now = shop.clock
        staging = shop.waiting[WaitKind.STAGING]
        cap = shop.config.staging_first_cap
        if staging and focus is not None and self._available(shop, focus):
            while staging and focus.unread < cap and focus.active < focus.max_capacity:
                item = staging.popleft()
                conv = self._conversations[(shop.config.shop_id, item.conversation_id)]
                self._assign(shop, conv, focus, now)
                self._outbox.append(
                    (shop.config.shop_id, item.conversation_id, item.buyer_id, focus.agent_id,
                     int(Reason.OFFLINE_STAGING), now)
                )
        queue = shop.waiting[WaitKind.QUEUE]
        while queue:
            item = queue[0]
            found = self._route(shop, item.buyer_id, item.source, item.order_state, now, None)
            if found is None:
                break
            queue.popleft()
            reason, agent, _group = found
            conv = self._conversations[(shop.config.shop_id, item.conversation_id)]
            self._assign(shop, conv, agent, now)
            self._outbox.append((shop.config.shop_id, item.conversation_id, item.buyer_id, agent.agent_id, reason, now))

    # ------------------------------------------------------------ reading

    def drain_outbox(self) -> list[tuple[str, str, str, str, int, int]]:
        """Hand-outs made after their Dispatch call: (shop, conversation, buyer, agent, reason, at_ms)."""
        out, self._outbox = self._outbox, []
        return out

    def has_shop(self, shop_id: str) -> bool:
        return shop_id in self._shops

    def shop_ids(self) -> list[str]:
        return sorted(self._shops)

    def shop_config(self, shop_id: str) -> ShopConfig:
        return self._shop(shop_id).config

    def shop_state(self, shop_id: str) -> dict[str, Any]:
        """Everything an operator needs to see why a shop routes as it does."""
        shop = self._shop(shop_id)
        now = shop.clock
        agents = []
        for a in shop.agents.values():
            if a.deleted:
                continue
            agents.append(
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
                    "today": self._today(shop, a, now),
                    "groups": sorted(a.groups),
                }
            )
        groups = [
            {"group_id": g.config.group_id, "members": list(g.config.members)} for g in shop.groups.values()
        ]

        def waiting(kind: int) -> list[dict[str, Any]]:
            return [
                {"conversation_id": w.conversation_id, "buyer_id": w.buyer_id, "since_ms": w.since_ms}
                for w in shop.waiting[kind]
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
        }

    def totals(self) -> dict[str, int]:
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

    def effective_strategy(self, shop_id: str, group_id: str = "") -> int:
        """The strategy that picks within a group (its own, else the shop's), or the shop's."""
        shop = self._shop(shop_id)
        if group_id:
            group = shop.groups.get(group_id)
            if group is None:
                raise NotFoundError(f"group {group_id!r} not found in shop {shop_id!r}")
            if group.config.strategy:
                return int(group.config.strategy)
        return int(shop.config.strategy)

    def conversation(self, shop_id: str, conversation_id: str) -> dict[str, Any] | None:
        self._shop(shop_id)
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

    def recent_contact(self, shop_id: str, buyer_id: str) -> tuple[str, int] | None:
        """The buyer's recent contact in the shop, if younger than the window: (agent_id, contact_at_ms)."""
        shop = self._shop(shop_id)
        check_id(buyer_id, "buyer_id")
        contact = self._affinity.get((shop_id, buyer_id))
        if contact is None or shop.clock - contact[1] >= shop.config.affinity_window_ms:
            return None
        return contact

    def exclusive_agent(self, shop_id: str, buyer_id: str) -> str | None:
        self._shop(shop_id)
        check_id(buyer_id, "buyer_id")
        return self._exclusive.get((shop_id, buyer_id))

    # ------------------------------------------------------------ snapshots

    def export_state(self) -> dict[str, Any]:
        """The whole engine state as plain data (JSON-able), identical for both engines.

        Derived structures (heaps, pools, the day cache) are left out; recent
        contacts already past their window are left out (they are forgotten).
        """
        shops = []
        for shop_id in sorted(self._shops):
            shop = self._shops[shop_id]
            round_robin = []
            for key, rr in sorted(shop.round_robin.items()):
                round_robin.append(
                    {"pool": key, "order": list(rr.order), "credit": [rr.credit[a] for a in rr.order],
                     "cursor": rr.cursor}
                )
            shops.append(
                {
                    "config": dataclasses.asdict(shop.config),
                    "rng": shop.rng,
                    "clock": shop.clock,
                    "live": shop.live,
                    "agents": [
                        [a.agent_id, int(a.role), a.weight, a.max_capacity, a.created_at_ms, a.chat_permission,
                         a.deleted, int(a.presence), int(a.client), a.offline_at_ms, a.active, a.unread,
                         a.today, a.today_day]
                        for a in shop.agents.values()
                    ],
                    "groups": [group_dict(g.config) for g in shop.groups.values()],
                    "round_robin": round_robin,
                    "waiting": {
                        str(int(kind)): [
                            [w.conversation_id, w.buyer_id, w.source, int(w.order_state), w.since_ms]
                            for w in shop.waiting[kind]
                        ]
                        for kind in (WaitKind.QUEUE, WaitKind.STAGING, WaitKind.POOL)
                    },
                }
            )
        conversations = [
            [shop_id, conv_id, c.buyer_id, c.agent_id, int(c.wait), c.unread, c.forwarded]
            for (shop_id, conv_id), c in sorted(self._conversations.items())
        ]
        affinity = []
        for (shop_id, buyer_id), (agent_id, at) in sorted(self._affinity.items()):
            shop = self._shops[shop_id]
            if shop.clock - at < shop.config.affinity_window_ms:
                affinity.append([shop_id, buyer_id, agent_id, at])
        exclusive = [[s, b, a] for (s, b), a in sorted(self._exclusive.items())]
        return {
            "format": SNAPSHOT_FORMAT,
            "seed": self._seed,
            "shops": shops,
            "conversations": conversations,
            "affinity": affinity,
            "exclusive": exclusive,
            "outbox": [list(item) for item in self._outbox],
        }

    def import_state(self, state: dict[str, Any]) -> None:
        """Load an ``export_state()`` (of either engine) into this empty engine."""
        if self._shops or self._conversations or self._affinity or self._exclusive:
            raise FailedPreconditionError("import_state needs an empty engine")
        if state.get("format") != SNAPSHOT_FORMAT:
            raise InvalidArgumentError(f"unknown snapshot format {state.get('format')!r}")
        self._seed = state["seed"]
        for data in state["shops"]:
            config = ShopConfig(**data["config"])
            shop = _Shop(config, self._seed)
            shop.rng = data["rng"]
            shop.clock = data["clock"]
            shop.live = data["live"]
            for ordinal, row in enumerate(data["agents"]):
                (agent_id, role, weight, cap, created, perm, deleted, presence, client, offline_at,
                 active, unread, today, today_day) = row
                shop.agents[agent_id] = _Agent(
                    agent_id=agent_id, ordinal=ordinal, role=role, weight=weight, max_capacity=cap,
                    created_at_ms=created, chat_permission=perm, deleted=deleted, presence=presence,
                    client=client, offline_at_ms=offline_at, active=active, unread=unread, today=today,
                    today_day=today_day,
                )
            for group in data["groups"]:
                config_g = GroupConfig(**{**group, "members": tuple(group["members"]),
                                          "order_states": tuple(group["order_states"]),
                                          "sources": tuple(group["sources"])})
                shop.groups[config_g.group_id] = _Group(config_g)
                for member in config_g.members:
                    shop.agents[member].groups.append(config_g.group_id)
            for rr in data["round_robin"]:
                order = list(rr["order"])
                divisor = 0
                for aid in order:
                    divisor = math.gcd(divisor, shop.agents[aid].max_capacity)
                full = {aid: shop.agents[aid].max_capacity // divisor for aid in order}
                shop.round_robin[rr["pool"]] = _RoundRobin(
                    order=order, credit=dict(zip(order, rr["credit"])), full_credit=full, cursor=rr["cursor"]
                )
            for kind, items in data["waiting"].items():
                shop.waiting[int(kind)].extend(_Waiting(*item) for item in items)
            self._shops[config.shop_id] = shop
        for shop_id, conv_id, buyer_id, agent_id, wait, unread, forwarded in state["conversations"]:
            self._conversations[(shop_id, conv_id)] = _Conversation(
                buyer_id=buyer_id, agent_id=agent_id, wait=wait, unread=unread, forwarded=forwarded
            )
        for shop_id, buyer_id, agent_id, at in state["affinity"]:
            self._affinity[(shop_id, buyer_id)] = (agent_id, at)
        for shop_id, buyer_id, agent_id in state["exclusive"]:
            self._exclusive[(shop_id, buyer_id)] = agent_id
        self._outbox = [tuple(item) for item in state["outbox"]]  # type: ignore[misc]

    # ------------------------------------------------------------ lookups

    def _shop(self, shop_id: str) -> _Shop:
        check_id(shop_id, "shop_id")
        shop = self._shops.get(shop_id)
        if shop is None:
            raise NotFoundError(f"shop {shop_id!r} not found")
        return shop

    def _agent(self, shop: _Shop, agent_id: str) -> _Agent:
        check_id(agent_id, "agent_id")
        agent = shop.agents.get(agent_id)
        if agent is None or agent.deleted:
            raise NotFoundError(f"agent {agent_id!r} not found in shop {shop.config.shop_id!r}")
        return agent


class _Frac:
    """An exact ratio a/b (b >= 1), compared by cross-multiplication as the C engine does."""

    __slots__ = ("num", "den")

    def __init__(self, num: int, den: int) -> None:
        self.num = num
        self.den = den

    def __lt__(self, other: _Frac) -> bool:
        return self.num * other.den < other.num * self.den

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Frac) and self.num * other.den == other.num * self.den

    def __le__(self, other: _Frac) -> bool:
        return not other < self


def _has_room(agent: _Agent) -> bool:
    """Room for one more conversation; a robot with max_capacity 0 has no limit."""
    if agent.role == Role.ROBOT and agent.max_capacity == 0:
        return True
    return agent.active < agent.max_capacity


def _note(tr: list[str] | None, line: str) -> None:
    if tr is not None:
        tr.append(line)
