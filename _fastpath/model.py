"""Vocabulary shared by both engines: enums, configuration records, errors.

Everything here is boundary code (configuration, validation, time zones); the
per-decision path never calls into this module except for the rare cases
documented in each engine (a shop's local day rolling over).

Numeric values of the enums equal the ``dispatch.v1`` protobuf enum numbers,
so the service layer converts between them with ``int()``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import re
import zoneinfo
from collections.abc import Iterator
from typing import Any, Final

__all__ = [
    "AFFINITY_WINDOW_MS_DEFAULT",
    "DEFAULT_MAIN_CAPACITY",
    "MAX_CAPACITY",
    "MAX_DURATION_MS",
    "MAX_ID_BYTES",
    "MAX_PRIORITY",
    "MAX_REROUTES",
    "MAX_TIME_MS",
    "MAX_WEIGHT",
    "N_PRIORITIES",
    "ESTIMATE_BUCKETS_MS",
    "N_ESTIMATE_BUCKETS",
    "N_REASONS",
    "N_STRATEGIES",
    "SNAPSHOT_FORMAT",
    "AgentConfig",
    "AlreadyExistsError",
    "BusinessHours",
    "Client",
    "ConversationEvent",
    "ConversationType",
    "DispatchError",
    "FailedPreconditionError",
    "GroupConfig",
    "InvalidArgumentError",
    "MainAccountMode",
    "NotFoundError",
    "OfflineRule",
    "OrderState",
    "Presence",
    "Reason",
    "Role",
    "ShopConfig",
    "Strategy",
    "TimerKind",
    "WaitKind",
    "check_enum",
    "check_id",
    "check_priority",
    "check_time",
    "day_bounds",
    "fnv1a64",
    "group_dict",
    "hours_dict",
    "shop_dict",
    "hours_next_opening",
    "hours_state",
    "splitmix64",
    "shop_seed",
    "timestamp_to_ms",
]

MAX_ID_BYTES: Final = 128
"""Every id (shop, agent, buyer, conversation, group, source) is 1..128 UTF-8 bytes."""

HOUR_MS: Final = 3_600_000
AFFINITY_WINDOW_MS_DEFAULT: Final = 72 * HOUR_MS
MAX_DURATION_MS: Final = 366 * 24 * HOUR_MS
"""Longest affinity window or offline grace accepted (one year)."""

MAX_WEIGHT: Final = 1_000_000
MAX_REROUTES: Final = 100
"""Largest ``max_reroutes`` (spec §10): times one conversation may be routed again for silence."""
MAX_CAPACITY: Final = 1_000_000
MAX_TIME_MS: Final = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z: the last instant a protobuf Timestamp can hold."""
MIN_TIME_MS: Final = 0
LATEST_SECONDS: Final = 253_402_300_799
"""9999-12-31T23:59:59Z: the latest Timestamp.seconds accepted (the last whole second of MAX_TIME_MS)."""

MAX_PRIORITY: Final = 9
"""A dispatch's ``priority`` is 0..9 (spec §11); waiting conversations go highest first."""
N_PRIORITIES: Final = MAX_PRIORITY + 1
"""Priority levels: one FIFO per level in every waiting list."""


class Reason(enum.IntEnum):
    """Why a conversation went where it went (``dispatch.v1.Reason``)."""

    UNSPECIFIED = 0
    DIRECT = 1
    OFFLINE_MAIN_ACCOUNT = 2
    OFFLINE_PROXY_ACCOUNT = 3
    OFFLINE_MESSAGE_POOL = 4
    OFFLINE_STAGING = 5
    AFFINITY = 6
    AFFINITY_HELD = 7
    EXCLUSIVE = 8
    ROBOT = 9
    GROUP = 10
    FALLBACK = 11
    QUEUED = 12
    REROUTED = 13  # §10: its agent did not reply in time; routed again without it
    RECLAIMED = 14  # §10: its agent stayed offline too long; routed again without it
    QUEUE_TIMEOUT = 15  # §11: it waited max_queue_wait in the queue; moved to the message pool


class Strategy(enum.IntEnum):
    UNSPECIFIED = 0  # on a group: use the shop's strategy
    LEAST_SATURATION = 1
    FEWEST_TODAY = 2
    CAPACITY_ROUND_ROBIN = 3
    FEWEST_UNREAD = 4
    WEIGHTED_BUSYNESS = 5


class OfflineRule(enum.IntEnum):
    UNSPECIFIED = 0  # treated as MAIN_ACCOUNT
    MAIN_ACCOUNT = 1
    PROXY_ACCOUNT = 2
    MESSAGE_POOL = 3
    STAGING = 4


class MainAccountMode(enum.IntEnum):
    """Spec section 7, cases A-D."""

    UNSPECIFIED = 0  # treated as MEMBER
    ONLY_MAIN = 1  # A: chat groups off, only the main account receives
    EXCLUDED = 2  # B: the main account receives nothing unless forwarded
    FALLBACK = 3  # C: only when every other agent is offline and it is online
    MEMBER = 4  # D: an ordinary agent


class Presence(enum.IntEnum):
    UNSPECIFIED = 0
    ONLINE = 1
    SUSPENDED = 2
    OFFLINE = 3


class Client(enum.IntEnum):
    UNSPECIFIED = 0  # treated as DESKTOP
    DESKTOP = 1
    MOBILE = 2


class Role(enum.IntEnum):
    UNSPECIFIED = 0  # SUB, or MAIN for the shop's main account
    MAIN = 1
    SUB = 2
    PROXY = 3
    ROBOT = 4


class ConversationType(enum.IntEnum):
    UNSPECIFIED = 0  # treated as BUYER_TO_SHOP
    BUYER_TO_SHOP = 1
    SHOP_TO_SHOP = 2
    PLATFORM_TO_SHOP = 3
    BUYER_TO_BUYER = 4


class OrderState(enum.IntEnum):
    UNSPECIFIED = 0  # no order state known: matches no group binding
    NO_ORDER = 1
    UNPAID = 2
    PAID_UNSHIPPED = 3
    SHIPPED = 4
    AFTER_SALE = 5


class ConversationEvent(enum.IntEnum):
    UNSPECIFIED = 0
    BUYER_MESSAGE = 1
    AGENT_REPLY = 2
    CLOSED = 3
    TRANSFERRED = 4
    ASSIGNED = 5  # assigned outside the dispatcher (e.g. by an administrator)


class TimerKind(enum.IntEnum):
    """What a pending deadline (spec §10, §11) does when the shop's time passes it."""

    REROUTE = 1  # a conversation's holder has not replied: route it again without it
    RECLAIM = 2  # an agent has been offline: route its unanswered conversations again
    QUEUE = 3  # a conversation has waited max_queue_wait in the queue: to the message pool
    HOURS = 4  # §10 business hours: the shop (or one of its groups) opens while conversations wait (key "")


class WaitKind(enum.IntEnum):
    """Where a conversation that nobody could take is waiting."""

    NONE = 0
    QUEUE = 1
    STAGING = 2
    POOL = 3


# --------------------------------------------------------------------- errors


N_REASONS: Final = max(Reason) + 1
N_STRATEGIES: Final = max(Strategy) + 1
"""Shape of ``decision_counts()``: [reason][strategy], strategy 0 = none picked."""
ESTIMATE_BUCKETS_MS: Final = (
    5_000, 15_000, 30_000, 60_000, 120_000, 300_000, 600_000, 1_800_000, 3_600_000, 7_200_000, 14_400_000, 86_400_000,
)  # fmt: skip
"""Upper bounds (inclusive, ms) of the engines' counts of the estimated waits they answered
(§11; ``estimate_counts``; the ``dispatch_estimated_wait_seconds`` buckets); one more: +Inf."""
N_ESTIMATE_BUCKETS: Final = len(ESTIMATE_BUCKETS_MS)

DEFAULT_MAIN_CAPACITY: Final = 100
"""Capacity of a main account that was never configured with put_agent."""

SNAPSHOT_FORMAT: Final = "dispatch-engine-state/1"
"""The ``format`` of ``export_state()``: both engines write and read it."""


class DispatchError(Exception):
    """Base of the engine's typed errors; ``grpc_status`` names the gRPC code."""

    grpc_status: str = "UNKNOWN"
    details: tuple[bytes, ...] = ()
    """Serialized ``google.protobuf.Any`` messages for ``google.rpc.Status.details`` (e.g. a cluster's WRONG_NODE)."""


class InvalidArgumentError(DispatchError):
    grpc_status = "INVALID_ARGUMENT"


class NotFoundError(DispatchError):
    grpc_status = "NOT_FOUND"


class FailedPreconditionError(DispatchError):
    grpc_status = "FAILED_PRECONDITION"


class AlreadyExistsError(DispatchError):
    grpc_status = "ALREADY_EXISTS"


def check_id(value: object, field: str, *, optional: bool = False) -> str:
    """Validate an id: a str of 1..128 UTF-8 bytes without control characters."""
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{field} must be a string")
    if not value:
        if optional:
            return value
        raise InvalidArgumentError(f"{field} is required")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgumentError(f"{field} is not valid UTF-8") from None
    if size > MAX_ID_BYTES:
        raise InvalidArgumentError(f"{field} is {size} bytes; the limit is {MAX_ID_BYTES}")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise InvalidArgumentError(f"{field} contains a control character")
    return value


def check_time(at_ms: object, field: str = "at") -> int:
    if not isinstance(at_ms, int) or isinstance(at_ms, bool):
        raise InvalidArgumentError(f"{field} must be an integer number of milliseconds")
    if not MIN_TIME_MS <= at_ms <= MAX_TIME_MS:
        raise InvalidArgumentError(f"{field}={at_ms} ms is outside 1970-01-01..9999-12-31")
    return at_ms


def check_priority(value: object) -> int:
    """A dispatch's priority (spec §11): an int in 0..MAX_PRIORITY."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgumentError("priority must be an integer")
    if not 0 <= value <= MAX_PRIORITY:
        raise InvalidArgumentError(f"priority={value} is outside 0..{MAX_PRIORITY}")
    return value


def timestamp_to_ms(seconds: int, nanos: int, field: str) -> int:
    """A protobuf Timestamp's (seconds, nanos) in whole milliseconds (finer nanos are truncated).

    Checks what protobuf does not (nanos in range, no time after year 9999);
    the engine's ``check_time`` rejects times before the epoch."""
    if not 0 <= nanos < 1_000_000_000:
        raise InvalidArgumentError(f"{field}.nanos={nanos} is outside 0..999999999")
    if seconds > LATEST_SECONDS:
        raise InvalidArgumentError(f"{field}.seconds={seconds} is after 9999-12-31T23:59:59Z, the latest time accepted")
    return seconds * 1000 + nanos // 1_000_000


def check_enum(value: object, enum_type: type[enum.IntEnum], field: str) -> int:
    """An enum number sent by a caller: an int that names a member of ``enum_type``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgumentError(f"{field} must be an integer enum value")
    try:
        return int(enum_type(value))
    except ValueError:
        raise InvalidArgumentError(f"{field}={value} is not a valid {enum_type.__name__}") from None


def _check_int(value: object, field: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgumentError(f"{field} must be an integer")
    if not lo <= value <= hi:
        raise InvalidArgumentError(f"{field}={value} is outside {lo}..{hi}")
    return value


def _check_enum(value: object, enum_type: type[enum.IntEnum], field: str) -> int:
    try:
        return int(enum_type(value))  # type: ignore[arg-type]  # any object: a bad one raises below
    except (ValueError, TypeError):
        raise InvalidArgumentError(f"{field}={value!r} is not a valid {enum_type.__name__}") from None


# --------------------------------------------------------------------- config


DAY_MINUTES: Final = 24 * 60
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


@dataclasses.dataclass(frozen=True, slots=True)
class BusinessHours:
    """§10 opening hours, in the shop's time zone. Empty (no weekly interval and no
    exception): always open. No weekly interval but exceptions: every other day is open
    all day. An interval is (open minute, close minute) of its local day; a close at or
    before the open is on the next day (22:00-02:00 spans midnight); normalized, the
    close is in (open, open + 1440]. An exception replaces the intervals that start on
    its date (an overnight interval of the day before still ends as it would).
    """

    weekly: tuple[tuple[int, int, int], ...] = ()  # (day of week 0=Monday..6, open minute, close minute)
    exceptions: tuple[tuple[str, tuple[tuple[int, int], ...]], ...] = ()  # (YYYY-MM-DD, intervals; (): closed)

    def __bool__(self) -> bool:
        return bool(self.weekly or self.exceptions)

    @staticmethod
    def of(value: object, field: str) -> BusinessHours:
        """Validate ``value`` (a BusinessHours, or its ``dataclasses.asdict`` form) and normalize it."""
        if value is None:
            return BusinessHours()
        if isinstance(value, BusinessHours):
            weekly_in, exceptions_in = value.weekly, value.exceptions
        elif isinstance(value, dict) and set(value) <= {"weekly", "exceptions"}:
            weekly_in, exceptions_in = value.get("weekly", ()), value.get("exceptions", ())
        else:
            raise InvalidArgumentError(f"{field} must be a BusinessHours")
        weekly = []
        for i, row in enumerate(_seq(weekly_in, f"{field}.weekly")):
            place = f"{field}.weekly[{i}]"
            row = _seq(row, place)
            if len(row) != 3:
                raise InvalidArgumentError(f"{place} must be (day, open minute, close minute)")
            day = _check_int(row[0], f"{place}.day", 0, 6)
            weekly.append((day, *_interval(row[1], row[2], place)))
        exceptions: dict[str, tuple[tuple[int, int], ...]] = {}
        for i, row in enumerate(_seq(exceptions_in, f"{field}.exceptions")):
            place = f"{field}.exceptions[{i}]"
            row = _seq(row, place)
            if len(row) != 2 or not isinstance(row[0], str):
                raise InvalidArgumentError(f"{place} must be (date, intervals)")
            date = row[0]
            try:
                if not _DATE.match(date):
                    raise ValueError
                _dt.date.fromisoformat(date)
            except ValueError:
                raise InvalidArgumentError(f"{place}.date={date!r} is not a date YYYY-MM-DD") from None
            if date in exceptions:
                raise InvalidArgumentError(f"{place}.date={date} is given twice")
            intervals = [
                _interval(*_pair(iv, f"{place}.intervals[{j}]"), f"{place}.intervals[{j}]")
                for j, iv in enumerate(_seq(row[1], f"{place}.intervals"))
            ]
            exceptions[date] = tuple(sorted(set(intervals)))
        return BusinessHours(tuple(sorted(set(weekly))), tuple(sorted(exceptions.items())))


def _seq(value: object, field: str) -> tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):
        raise InvalidArgumentError(f"{field} must be a list")
    return tuple(value)


def _pair(value: object, field: str) -> tuple[Any, Any]:
    row = _seq(value, field)
    if len(row) != 2:
        raise InvalidArgumentError(f"{field} must be (open minute, close minute)")
    return row[0], row[1]


def _interval(open_minute: object, close_minute: object, field: str) -> tuple[int, int]:
    start = _check_int(open_minute, f"{field}.open_minute", 0, DAY_MINUTES - 1)
    end = _check_int(close_minute, f"{field}.close_minute", 0, 2 * DAY_MINUTES)
    if end == start:
        raise InvalidArgumentError(f"{field}: the close equals the open")
    if end < start:
        end += DAY_MINUTES  # across midnight
    if end > start + DAY_MINUTES:
        raise InvalidArgumentError(f"{field}: an interval is at most 24 hours")
    return start, end


@dataclasses.dataclass(frozen=True, slots=True)
class ShopConfig:
    """A shop and its settings. Unset (zero) enum values take the documented default."""

    shop_id: str
    main_account: str
    strategy: int = Strategy.LEAST_SATURATION
    affinity_window_ms: int = AFFINITY_WINDOW_MS_DEFAULT
    offline_grace_ms: int = 0
    affinity_may_exceed_capacity: bool = True
    exclusive_direct: bool = False
    robot_first: bool = False
    robot_agent_id: str = ""
    offline_rule: int = OfflineRule.MAIN_ACCOUNT
    proxy_account: str = ""
    staging_first_cap: int = 100
    busy_threshold: int = 4
    main_account_mode: int = MainAccountMode.MEMBER
    mobile_dispatch: bool = False
    timezone: str = "UTC"
    tie_seed: int = 0
    # §10-§11 rules that fire on time; 0 = off (the default).
    reroute_unanswered_after_ms: int = 0
    max_reroutes: int = 1
    reclaim_after_offline_ms: int = 0
    max_queue_wait_ms: int = 0
    # §10 business hours (empty: always open) and whether recent contacts are honoured while closed.
    business_hours: BusinessHours = BusinessHours()
    recent_contacts_after_hours: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.business_hours, BusinessHours):  # a snapshot's dict form
            object.__setattr__(self, "business_hours", BusinessHours.of(self.business_hours, "business_hours"))

    def normalized(self) -> ShopConfig:
        """Validate every field; return a copy with defaults applied to unset enums."""
        check_id(self.shop_id, "shop_id")
        check_id(self.main_account, "main_account")
        strategy = _check_enum(self.strategy, Strategy, "strategy") or Strategy.LEAST_SATURATION
        offline_rule = _check_enum(self.offline_rule, OfflineRule, "offline_rule") or OfflineRule.MAIN_ACCOUNT
        mode = _check_enum(self.main_account_mode, MainAccountMode, "main_account_mode") or MainAccountMode.MEMBER
        _check_int(self.affinity_window_ms, "affinity_window", 1, MAX_DURATION_MS)
        _check_int(self.offline_grace_ms, "offline_grace", 0, MAX_DURATION_MS)
        _check_int(self.staging_first_cap, "staging_first_cap", 1, MAX_CAPACITY)
        _check_int(self.busy_threshold, "busy_threshold", 0, MAX_CAPACITY)
        _check_int(self.tie_seed, "tie_seed", 0, 2**64 - 1)
        _check_int(self.reroute_unanswered_after_ms, "reroute_unanswered_after", 0, MAX_DURATION_MS)
        _check_int(self.max_reroutes, "max_reroutes", 1, MAX_REROUTES)
        _check_int(self.reclaim_after_offline_ms, "reclaim_after_offline", 0, MAX_DURATION_MS)
        _check_int(self.max_queue_wait_ms, "max_queue_wait", 0, MAX_DURATION_MS)
        check_id(self.robot_agent_id, "robot_agent_id", optional=True)
        check_id(self.proxy_account, "proxy_account", optional=True)
        if self.robot_first and not self.robot_agent_id:
            raise InvalidArgumentError("robot_first needs robot_agent_id")
        if offline_rule == OfflineRule.PROXY_ACCOUNT and not self.proxy_account:
            raise InvalidArgumentError("offline_rule PROXY_ACCOUNT needs proxy_account")
        if not isinstance(self.timezone, str) or not self.timezone:
            raise InvalidArgumentError("timezone must be an IANA time zone name")
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise InvalidArgumentError(f"timezone {self.timezone!r} is not a known IANA time zone") from None
        for name in (
            "affinity_may_exceed_capacity",
            "exclusive_direct",
            "robot_first",
            "mobile_dispatch",
            "recent_contacts_after_hours",
        ):
            if not isinstance(getattr(self, name), bool):
                raise InvalidArgumentError(f"{name} must be a boolean")
        hours = BusinessHours.of(self.business_hours, "business_hours")
        return dataclasses.replace(
            self, strategy=strategy, offline_rule=offline_rule, main_account_mode=mode, business_hours=hours
        )


@dataclasses.dataclass(frozen=True, slots=True)
class AgentConfig:
    """An account that can receive conversations.

    ``max_capacity`` must be >= 1, except for robots, where 0 means "no limit".
    """

    shop_id: str
    agent_id: str
    role: int = Role.SUB
    weight: int = 1
    max_capacity: int = 0
    created_at_ms: int = 0
    chat_permission: bool = True

    def normalized(self, main_account: str) -> AgentConfig:
        check_id(self.shop_id, "shop_id")
        check_id(self.agent_id, "agent_id")
        role = _check_enum(self.role, Role, "role")
        is_main = self.agent_id == main_account
        if role == Role.UNSPECIFIED:
            role = Role.MAIN if is_main else Role.SUB
        if is_main and role != Role.MAIN:
            raise InvalidArgumentError(f"agent {self.agent_id!r} is the shop's main account; its role must be MAIN")
        if role == Role.MAIN and not is_main:
            raise InvalidArgumentError(f"role MAIN is reserved for the main account {main_account!r}")
        _check_int(self.weight, "weight", 1, MAX_WEIGHT)
        lowest = 0 if role == Role.ROBOT else 1
        _check_int(self.max_capacity, "max_capacity", lowest, MAX_CAPACITY)
        check_time(self.created_at_ms, "created_at")
        if not isinstance(self.chat_permission, bool):
            raise InvalidArgumentError("chat_permission must be a boolean")
        return dataclasses.replace(self, role=role)


@dataclasses.dataclass(frozen=True, slots=True)
class GroupConfig:
    """A named set of agents, optionally bound to order states and/or entry sources."""

    shop_id: str
    group_id: str
    members: tuple[str, ...] = ()
    order_states: tuple[int, ...] = ()
    sources: tuple[str, ...] = ()
    robot_enabled: bool = False
    robot_agent_id: str = ""
    strategy: int = Strategy.UNSPECIFIED
    reroute_unanswered_after_ms: int = 0  # §10: 0 = the shop's setting
    business_hours: BusinessHours = BusinessHours()  # §10: its own opening hours (shop's time zone); empty: open

    def __post_init__(self) -> None:
        if not isinstance(self.business_hours, BusinessHours):  # a snapshot's dict form
            object.__setattr__(self, "business_hours", BusinessHours.of(self.business_hours, "business_hours"))

    def normalized(self) -> GroupConfig:
        check_id(self.shop_id, "shop_id")
        check_id(self.group_id, "group_id")
        members = tuple(dict.fromkeys(check_id(m, "members[]") for m in self.members))
        states = []
        for state in self.order_states:
            value = _check_enum(state, OrderState, "order_states[]")
            if value == OrderState.UNSPECIFIED:
                raise InvalidArgumentError("order_states[] may not be ORDER_STATE_UNSPECIFIED")
            states.append(value)
        sources = tuple(dict.fromkeys(check_id(s, "sources[]") for s in self.sources))
        check_id(self.robot_agent_id, "robot_agent_id", optional=True)
        strategy = _check_enum(self.strategy, Strategy, "strategy")
        _check_int(self.reroute_unanswered_after_ms, "reroute_unanswered_after", 0, MAX_DURATION_MS)
        if not isinstance(self.robot_enabled, bool):
            raise InvalidArgumentError("robot_enabled must be a boolean")
        return dataclasses.replace(
            self,
            members=members,
            order_states=tuple(sorted(set(states))),
            sources=sources,
            strategy=strategy,
            business_hours=BusinessHours.of(self.business_hours, "business_hours"),
        )


# ----------------------------------------------------------- time and chance


def day_bounds(timezone: str, at_ms: int) -> tuple[int, int, int]:
    """The shop-local day containing ``at_ms``: (day ordinal, start ms, end ms).

    Both engines call this only when an event falls outside the cached day of
    its shop, i.e. about once per shop per day.
    """
    tz = zoneinfo.ZoneInfo(timezone)
    try:
        local = _dt.datetime.fromtimestamp(at_ms / 1000, tz)
        day = local.date()
        start = _dt.datetime(day.year, day.month, day.day, tzinfo=tz)
        nxt = day + _dt.timedelta(days=1)
        end = _dt.datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz)
        ordinal, start_ms, end_ms = day.toordinal(), int(start.timestamp()) * 1000, int(end.timestamp()) * 1000
    except OverflowError:
        # The last local day datetime can represent (or the first one it cannot,
        # east of UTC at 9999-12-31): whole days at the offset in force two days before.
        probe = _dt.datetime.fromtimestamp((at_ms - 2 * DAY_MS) / 1000, tz)
        offset_ms = int(probe.utcoffset().total_seconds() * 1000)  # type: ignore[union-attr]
        index = (at_ms + offset_ms) // DAY_MS
        ordinal = _EPOCH_ORDINAL + index
        start_ms = index * DAY_MS - offset_ms
        end_ms = start_ms + DAY_MS
    # fromtimestamp rounds; keep the invariant start <= at < end exact.
    if at_ms < start_ms:
        start_ms = at_ms
    if at_ms >= end_ms:
        end_ms = at_ms + 1
    return ordinal, start_ms, end_ms


DAY_MS: Final = 24 * HOUR_MS
_EPOCH_ORDINAL: Final = _dt.date(1970, 1, 1).toordinal()

HOURS_HORIZON_DAYS: Final = 400
"""How far ahead the business hours are searched: an answer that holds longer is re-checked then."""
NEVER_MS: Final = MAX_TIME_MS + 1
"""An instant after every time the engine accepts."""


def _local_ms(tz: zoneinfo.ZoneInfo, day: _dt.date, minute: int) -> int:
    """The instant of local wall time ``day`` + ``minute`` (a time skipped by DST counts at the
    offset before the change; a repeated one at its first occurrence)."""
    day = day + _dt.timedelta(days=minute // DAY_MINUTES)
    minute %= DAY_MINUTES
    local = _dt.datetime(day.year, day.month, day.day, minute // 60, minute % 60, tzinfo=tz)
    return int(local.timestamp()) * 1000


def _open_runs(hours: BusinessHours, timezone: str, at_ms: int) -> Iterator[tuple[int, int]]:
    """The opening intervals [start, end) in ms, merged, in order, from the local day before
    ``at_ms`` on, for HOURS_HORIZON_DAYS days (the last run may end at the horizon)."""
    tz = zoneinfo.ZoneInfo(timezone)
    weekly: dict[int, list[tuple[int, int]]] = {}
    for weekday, start, end in hours.weekly:
        weekly.setdefault(weekday, []).append((start, end))
    exceptions = dict(hours.exceptions)
    every_day = [(0, DAY_MINUTES)] if not hours.weekly else []
    run: tuple[int, int] | None = None
    try:
        day = _dt.datetime.fromtimestamp(at_ms / 1000, tz).date() - _dt.timedelta(days=1)
        for _ in range(HOURS_HORIZON_DAYS):
            if day.year >= 9999:
                break
            found = exceptions.get(day.isoformat())
            intervals = found if found is not None else weekly.get(day.weekday(), every_day)
            for start_minute, end_minute in intervals:
                start, end = _local_ms(tz, day, start_minute), _local_ms(tz, day, end_minute)
                if end <= start:
                    continue
                if run is not None and start <= run[1]:
                    run = (run[0], max(run[1], end))
                else:
                    if run is not None:
                        yield run
                    run = (start, end)
            day += _dt.timedelta(days=1)
    except (OverflowError, ValueError):
        pass
    if run is not None:
        yield run


def hours_state(hours: BusinessHours, timezone: str, at_ms: int) -> tuple[bool, int]:
    """Whether business hours are open at ``at_ms``, and until when that holds at least
    (a later instant; NEVER_MS: for good). Empty hours: always open."""
    if not hours:
        return True, NEVER_MS
    last = at_ms + 1
    for start, end in _open_runs(hours, timezone, at_ms):
        last = end
        if end <= at_ms:
            continue
        if start <= at_ms:
            return True, end
        return False, start
    return False, max(last, at_ms + DAY_MS)


def hours_next_opening(hours: BusinessHours, timezone: str, after_ms: int) -> int | None:
    """The first instant after ``after_ms`` at which the hours open (closed just before), or None."""
    if not hours:
        return None
    for start, _end in _open_runs(hours, timezone, after_ms):
        if start > after_ms:
            return start if start <= MAX_TIME_MS else None
    return None


MASK64: Final = (1 << 64) - 1


def splitmix64(state: int) -> tuple[int, int]:
    """One step of SplitMix64: (new state, output). Both engines implement exactly this."""
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & MASK64
    return h


def shop_seed(engine_seed: int, shop_id: str, tie_seed: int) -> int:
    """Initial PRNG state of a shop: its tie_seed, else derived from the engine seed."""
    if tie_seed:
        return tie_seed & MASK64
    return (engine_seed ^ fnv1a64(shop_id.encode("utf-8"))) & MASK64


def hours_dict(hours: BusinessHours) -> dict[str, Any]:
    """Business hours as they are stored in ``export_state()`` (lists, not tuples)."""
    return {
        "weekly": [list(row) for row in hours.weekly],
        "exceptions": [[date, [list(iv) for iv in intervals]] for date, intervals in hours.exceptions],
    }


def shop_dict(config: ShopConfig) -> dict[str, Any]:
    """A shop's configuration as it is stored in ``export_state()``."""
    data = dataclasses.asdict(config)
    data["business_hours"] = hours_dict(config.business_hours)
    return data


def group_dict(config: GroupConfig) -> dict[str, Any]:
    """A group's configuration as it is stored in ``export_state()`` (lists, not tuples)."""
    data = dataclasses.asdict(config)
    for key in ("members", "order_states", "sources"):
        data[key] = list(data[key])
    data["business_hours"] = hours_dict(config.business_hours)
    return data
