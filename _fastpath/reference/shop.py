"""Shop storage: the records the other parts read and write (spec §2; the clock and daily reset of §8).

A ``Shop`` holds one shop's configuration, its agents and groups, the
conversations waiting in it, the capacity-round-robin state of its rosters,
its clock, its cached local day and its tie-breaking PRNG. The engine-wide
records (``Conversation``, ``RecentContact``, ``HandOut``) are defined here
too; the tables that hold them belong to ``routing.Router``.

Invariants:

- ``Shop.agents`` is in ordinal order: an agent's ``ordinal`` is its position
  in the dict and never changes. A deleted agent stays in the dict, marked
  ``deleted``, and a later ``put_agent`` revives it at the same ordinal. The
  main account is created with the shop, at ordinal 0.
- ``Shop.groups`` is in the order the groups were first created.
- ``Agent.groups`` names exactly the groups whose ``config.members`` list the
  agent; a deleted agent is in none.
- ``Agent.active`` counts the conversations the agent holds, and
  ``Agent.unread`` those of them whose ``Conversation.unread`` is set.
- ``Shop.live`` counts the shop's conversations, held or waiting. A waiting
  conversation (``Conversation.wait`` is not ``NONE``, ``agent_id`` is None)
  is in exactly one ``WaitList`` of ``Shop.waiting``, the one its ``wait``
  names: in the FIFO of its priority, in arrival order (spec §11).
- ``Shop.clock`` never goes back (``Router.advance``). ``Shop.day`` caches the
  shop-local day of some earlier instant; ``day_of`` refreshes it on demand.
- ``Shop.round_robin`` is derived state, keyed by roster (``SHOP_ROSTER`` or a
  group id): every configuration change clears it, and the next
  round-robin pick over a roster rebuilds that roster's entry.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterable, Iterator
from typing import NamedTuple, TypeAlias

from ..model import (
    MAX_TIME_MS,
    N_PRIORITIES,
    Client,
    GroupConfig,
    Presence,
    ShopConfig,
    WaitKind,
    day_bounds,
    shop_seed,
    splitmix64,
)

__all__ = [
    "NO_DAY",
    "NO_TIME",
    "SHOP_ROSTER",
    "Agent",
    "BuyerKey",
    "Conversation",
    "ConversationKey",
    "Group",
    "HandOut",
    "RecentContact",
    "RoundRobin",
    "Shop",
    "Track",
    "WaitList",
    "Waiting",
]

NO_TIME = -1
"""``Agent.offline_at_ms`` of an agent that has not gone offline since it was created (or deleted)."""

NO_DAY = (0, 0, 0)
"""``Shop.day`` before the first lookup, and after a change of time zone."""

SHOP_ROSTER = ""
"""The key of the shop-wide roster in ``Shop.round_robin`` (a group's roster is keyed by its id)."""

BuyerKey: TypeAlias = tuple[str, str]
"""(shop id, buyer id): the key of recent contacts and exclusive agents."""

ConversationKey: TypeAlias = tuple[str, str]
"""(shop id, conversation id)."""

HandOut: TypeAlias = tuple[str, str, str, str, int, int] | tuple[str, str, str, str, int, int, str]
"""A conversation handed out after its Dispatch call: (shop, conversation, buyer, agent, reason, at_ms),
and, for a re-route or reclaim (§10), the agent it was taken from (previous agent id)."""


@dataclasses.dataclass(slots=True)
class Agent:
    """An account of the shop that can receive conversations (the main account, a sub-account, a proxy, a robot)."""

    agent_id: str
    ordinal: int  # position in Shop.agents: the final tie-break of FEWEST_UNREAD and round robin
    role: int
    weight: int
    max_capacity: int  # a robot's 0 means "no limit"
    created_at_ms: int
    chat_permission: bool
    deleted: bool = False
    presence: int = Presence.OFFLINE
    client: int = Client.DESKTOP
    offline_at_ms: int = NO_TIME  # when it last went OFFLINE
    active: int = 0  # conversations it holds
    unread: int = 0  # of those, the ones whose buyer awaits a reply
    today: int = 0  # conversations received on the local day ``today_day``
    today_day: int = 0  # day ordinal of ``today``; 0 before the first
    groups: list[str] = dataclasses.field(default_factory=list)  # ids of the groups it is a member of


@dataclasses.dataclass(slots=True)
class Group:
    config: GroupConfig  # normalized; members are existing, non-robot agents


@dataclasses.dataclass(slots=True)
class Waiting:
    """A conversation that nobody could take, as it waits in the queue, staging or the message pool."""

    conversation_id: str
    buyer_id: str
    source: str
    order_state: int
    since_ms: int
    priority: int = 0  # 0..MAX_PRIORITY (spec §11); snapshots older than it have none: 0


class WaitList:
    """One waiting list of a shop (the queue, staging or the message pool), spec §4 step 7, §6, §11.

    One FIFO per priority level: conversations are handed out highest priority
    first, then oldest first (in the order they arrived in this list). A
    conversation's *position* is 1 + the number of conversations of the list
    that would be handed out before it (every one of a higher priority, and
    the older ones of its own).

    It also keeps the list's hand-out rate, for the estimated wait (§11): the
    time of the last hand-out and an exponentially weighted mean of the time
    between two hand-outs, ``interval = (7 * interval + dt) // 8`` (the first
    sample is taken as it is), in the shop's clock (event times, never the
    wall clock). Both are -1 until known: the interval needs two hand-outs.
    The estimated wait of position p is ``min(p * interval, MAX_TIME_MS)``.

    The deque-like surface (``append``, ``popleft``, ``[0]``, ``remove``,
    iteration, ``len``) is in hand-out order, so the rules read it as they read
    a single FIFO.
    """

    __slots__ = ("levels", "n", "last_handout_ms", "interval_ms")

    def __init__(self) -> None:
        # A level's deque is made by its first append: an empty deque is ~760 bytes,
        # and most shops never wait (None: the level never held an item).
        self.levels: list[deque[Waiting] | None] = [None] * N_PRIORITIES
        self.n = 0
        self.last_handout_ms = -1  # shop clock of the last hand-out; -1: none yet
        self.interval_ms = -1  # mean time between hand-outs; -1: unknown

    def __len__(self) -> int:
        return self.n

    def __bool__(self) -> bool:
        return self.n > 0

    def __iter__(self) -> Iterator[Waiting]:
        for level in reversed(self.levels):
            if level is not None:
                yield from level

    def __getitem__(self, index: int) -> Waiting:
        if index != 0 or not self.n:
            raise IndexError("a WaitList is read at its head only ([0])")
        return self.head()

    def head(self) -> Waiting:
        """The conversation handed out next (the list must not be empty)."""
        for level in reversed(self.levels):
            if level:
                return level[0]
        raise IndexError("head of an empty WaitList")

    def append(self, item: Waiting) -> None:
        level = self.levels[item.priority]
        if level is None:
            level = self.levels[item.priority] = deque()
        level.append(item)
        self.n += 1

    def extend(self, items: Iterable[Waiting]) -> None:
        for item in items:
            self.append(item)

    def popleft(self) -> Waiting:
        for level in reversed(self.levels):
            if level:
                self.n -= 1
                return level.popleft()
        raise IndexError("pop from an empty WaitList")

    def remove(self, item: Waiting) -> None:
        level = self.levels[item.priority]
        if level is None:
            raise ValueError("WaitList.remove(item): item not in list")
        level.remove(item)
        self.n -= 1

    def oldest(self) -> Waiting | None:
        """The conversation that has waited longest (smallest ``since_ms``; ties: higher priority)."""
        best: Waiting | None = None
        for level in reversed(self.levels):
            if level and (best is None or level[0].since_ms < best.since_ms):
                best = level[0]
        return best

    def position_of_last(self, priority: int) -> int:
        """The position of the conversation just appended at ``priority``."""
        return sum(len(level) for level in self.levels[priority:] if level is not None)

    def position(self, conversation_id: str) -> int:
        """The position of a conversation of this list (1 = next), 0 if it is not in it."""
        for i, item in enumerate(self, 1):
            if item.conversation_id == conversation_id:
                return i
        return 0

    def note_handout(self, now: int) -> None:
        """A conversation left this list for an agent at ``now`` (the shop's clock)."""
        if self.last_handout_ms >= 0:
            dt = now - self.last_handout_ms
            self.interval_ms = dt if self.interval_ms < 0 else (7 * self.interval_ms + dt) // 8
        self.last_handout_ms = now

    def estimate(self, position: int) -> int | None:
        """The estimated wait in ms of ``position``; None while the rate is unknown."""
        if self.interval_ms < 0:
            return None
        return min(position * self.interval_ms, MAX_TIME_MS)


@dataclasses.dataclass(slots=True)
class Conversation:
    buyer_id: str
    agent_id: str | None  # the holder; None while waiting
    wait: int = WaitKind.NONE
    unread: bool = False  # the buyer's last message is not answered yet
    forwarded: bool = False  # transferred at least once
    reason: int = 0  # held: why it went to an agent (the answer to a retried Dispatch, §12); waiting: 0
    track: Track | None = None  # while its shop uses a timed rule (§10, timers.py)


@dataclasses.dataclass(slots=True)
class Track:
    """What a shop that uses rules that fire on time (§10, ``timers``) remembers of a conversation."""

    conversation_id: str
    source: str = ""  # the source and order state it was dispatched with: a re-route routes it so again
    order_state: int = 0
    reroutes: int = 0  # times re-routed for silence (max_reroutes)


class RecentContact(NamedTuple):
    """The last agent that spoke to a buyer in a shop (or received it by transfer), and when."""

    agent_id: str
    at_ms: int


@dataclasses.dataclass(slots=True)
class RoundRobin:
    """CAPACITY_ROUND_ROBIN state of one roster (spec §5)."""

    order: list[str]  # every roster member, larger capacity first, then ordinal
    credit: dict[str, int]  # turns left in this cycle
    full_credit: dict[str, int]  # turns per cycle: capacity / gcd of the capacities
    cursor: int = 0  # where the current pass goes on


class Shop:
    """One shop: configuration, agents, groups, waiting conversations, clock, day cache, PRNG."""

    def __init__(self, config: ShopConfig, engine_seed: int) -> None:
        self.config = config
        self.agents: dict[str, Agent] = {}  # insertion order == ordinal order
        self.groups: dict[str, Group] = {}  # insertion order == group order
        self.rng = shop_seed(engine_seed, config.shop_id, config.tie_seed)
        self.clock = 0
        self.day = NO_DAY  # (ordinal, start ms, end ms) of the cached local day
        self.waiting: dict[int, WaitList] = {
            WaitKind.QUEUE: WaitList(),
            WaitKind.STAGING: WaitList(),
            WaitKind.POOL: WaitList(),
        }
        self.round_robin: dict[str, RoundRobin] = {}  # SHOP_ROSTER or a group id -> state
        self.live = 0  # conversations held or waiting
        # Pending deadlines (§10, timers.py): (TimerKind, conversation or agent id) -> (deadline ms, seq).
        self.timers: dict[tuple[int, str], tuple[int, int]] = {}
        # §10 business hours (hours.py): "" or "group:<id>" -> (open, until ms): a cache, not state.
        self.hours_cache: dict[str, tuple[bool, int]] = {}

    def serving_agent(self, conv: Conversation) -> Agent:
        """The agent that holds ``conv`` (which must not be waiting)."""
        assert conv.agent_id is not None, "a waiting conversation has no holder"
        return self.agents[conv.agent_id]

    # ------------------------------------------------------------ time (spec §2, §8)

    def day_of(self, now: int) -> int:
        """The ordinal of the shop-local day containing ``now`` (cached until the day ends)."""
        _ordinal, start, end = self.day
        if not start <= now < end:
            self.day = day_bounds(self.config.timezone, now)
        return self.day[0]

    def today_of(self, agent: Agent, now: int) -> int:
        """Conversations ``agent`` received today (spec §2: reset at 00:00 in the shop's time zone)."""
        return agent.today if agent.today_day == self.day_of(now) else 0

    def bump_today(self, agent: Agent, now: int) -> None:
        """``agent`` received a conversation at ``now``."""
        day = self.day_of(now)
        if agent.today_day != day:
            agent.today_day = day
            agent.today = 0
        agent.today += 1

    # ------------------------------------------------------------ chance (spec §5, §4 step 5)

    def rand_below(self, n: int) -> int:
        """A uniform index in [0, n); draws from the shop's PRNG only when there is a choice."""
        if n <= 1:
            return 0
        self.rng, out = splitmix64(self.rng)
        return out % n
