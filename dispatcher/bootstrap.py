"""Declarative shops/agents/groups file (JSON or TOML) loaded at start-up.

The file holds a list of shops; each shop carries its settings and, nested,
its agents, groups, exclusive-agent pairs and optional initial presence::

    {"shops": [{
        "shop_id": "demo", "main_account": "demo", "strategy": "LEAST_SATURATION",
        "affinity_window": "72h", "offline_rule": "STAGING", "robot_agent_id": "demo:bot",
        "agents": [{"agent_id": "demo:alice", "max_capacity": 5}],
        "groups": [{"group_id": "presale", "members": ["demo:alice"], "order_states": ["NO_ORDER"]}],
        "exclusive_agents": [{"buyer_id": "vip-1", "agent_id": "demo:alice"}],
        "presence": [{"agent_id": "demo:alice", "presence": "ONLINE"}]
    }]}

Keys are the ``dispatch.v1`` field names. Enums are names, with or without
their prefix and in any case (``"least_saturation"``, ``"STRATEGY_FEWEST_TODAY"``)
or numbers. Durations are strings with units (``"72h"``, ``"10m"``,
``"1h30m"``, ``"45s"``, ``"250ms"``) or milliseconds under a ``_ms`` key
(``"offline_grace_ms": 600000``). ``created_at`` is an ISO-8601 time or
``created_at_ms``. Unset fields take the same defaults as over gRPC.
The rules that fire on time (spec §10-§11) are shop keys
``reroute_unanswered_after`` (also a group key), ``max_reroutes``,
``reclaim_after_offline`` and ``max_queue_wait`` (``"3m"``, or ``*_ms``); unset: off.
Business hours (spec §10; a shop key and a group key, in the shop's ``timezone``)
are readable lines, with ``recent_contacts_after_hours`` (a shop key)::

    "business_hours": {
        "weekly": ["mon-fri 09:00-18:00", "sat 10:00-14:00", "fri 22:00-02:00"],
        "exceptions": {"2026-12-25": "closed", "2026-12-24": "09:00-12:00, 14:00-16:00"}
    }

Days are ``mon`` .. ``sun``, ranges (``mon-fri``, ``fri-mon``), lists
(``mon,wed``) or ``daily``; a close at or before the open is the next day
(``22:00-02:00``); ``24:00`` is midnight. ``"weekly"`` may be one string.
Unset or empty: always open.

Order of application: every shop without its robot/proxy references, then
its agents, then the full shop settings, then groups, exclusive pairs and
presence (timed at load). Any error names the file location
(``shops[0].agents[1]: max_capacity=0 is outside 1..1000000``). A shop id may appear
once: a second entry is refused before anything is applied
(``shops[3]: shop 'x' is also shops[0]``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from _fastpath import (
    AgentConfig,
    BusinessHours,
    Client,
    DispatchError,
    GroupConfig,
    MainAccountMode,
    OfflineRule,
    OrderState,
    Presence,
    Role,
    ShopConfig,
    Strategy,
)
from _fastpath.model import AFFINITY_WINDOW_MS_DEFAULT

__all__ = ["BootstrapError", "apply_bootstrap", "check_duplicate_shops", "load_bootstrap", "parse_duration_ms"]


class BootstrapError(ValueError):
    """The bootstrap file is malformed or describes an impossible configuration."""


_SHOP_KEYS = {
    "shop_id", "main_account", "strategy", "affinity_window", "affinity_window_ms", "offline_grace",
    "offline_grace_ms", "affinity_may_exceed_capacity", "exclusive_direct", "robot_first", "robot_agent_id",
    "offline_rule", "proxy_account", "staging_first_cap", "busy_threshold", "main_account_mode",
    "mobile_dispatch", "timezone", "tie_seed", "agents", "groups", "exclusive_agents", "presence",
    "reroute_unanswered_after", "reroute_unanswered_after_ms", "max_reroutes", "reclaim_after_offline",
    "reclaim_after_offline_ms", "max_queue_wait", "max_queue_wait_ms", "business_hours",
    "recent_contacts_after_hours",
}  # fmt: skip
_AGENT_KEYS = {"agent_id", "role", "weight", "max_capacity", "created_at", "created_at_ms", "chat_permission"}
_GROUP_KEYS = {
    "group_id", "members", "order_states", "sources", "robot_enabled", "robot_agent_id", "strategy",
    "reroute_unanswered_after", "reroute_unanswered_after_ms", "business_hours",
}  # fmt: skip
_EXCLUSIVE_KEYS = {"buyer_id", "agent_id"}
_PRESENCE_KEYS = {"agent_id", "presence", "client"}
_PREFIX = {
    Strategy: "STRATEGY_",
    OfflineRule: "OFFLINE_RULE_",
    MainAccountMode: "MAIN_ACCOUNT_MODE_",
    Role: "ROLE_",
    OrderState: "ORDER_STATE_",
    Presence: "PRESENCE_",
    Client: "CLIENT_",
}
_DURATION = re.compile(r"(\d+)(ms|h|m|s|d)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(text: str) -> int:
    """``"72h"``, ``"1h30m"``, ``"250ms"`` → milliseconds."""
    compact = text.replace(" ", "").lower()
    parts = _DURATION.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"{text!r} is not a duration like '72h', '10m', '1h30m', '45s' or '250ms'")
    return sum(int(n) * _UNIT_MS[u] for n, u in parts)


def _enum(value: Any, enum_type: type[enum.IntEnum], where: str) -> int:
    if isinstance(value, bool):
        raise BootstrapError(f"{where}: {value!r} is not a {enum_type.__name__}")
    if isinstance(value, int):
        return value  # the engine checks the range
    if isinstance(value, str):
        name = value.strip().upper()
        prefix = _PREFIX[enum_type]
        name = name.removeprefix(prefix)
        if name in enum_type.__members__ and name != "UNSPECIFIED":
            return int(enum_type[name])
    names = ", ".join(m for m in enum_type.__members__ if m != "UNSPECIFIED")
    raise BootstrapError(f"{where}: {value!r} is not a {enum_type.__name__} (one of {names})")


def _check_keys(obj: Any, allowed: set[str], where: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise BootstrapError(f"{where}: expected a table/object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise BootstrapError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return obj


def _list(obj: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = obj.get(key, [])
    if not isinstance(value, list):
        raise BootstrapError(f"{where}.{key}: expected a list")
    return value


def _duration(obj: Mapping[str, Any], key: str, default: int, where: str) -> int:
    if key in obj and f"{key}_ms" in obj:
        raise BootstrapError(f"{where}: give {key} or {key}_ms, not both")
    if f"{key}_ms" in obj:
        return obj[f"{key}_ms"]  # type: ignore[no-any-return]
    if key in obj:
        if not isinstance(obj[key], str):
            raise BootstrapError(f"{where}.{key}: a duration string like '72h' (or use {key}_ms)")
        try:
            return parse_duration_ms(obj[key])
        except ValueError as exc:
            raise BootstrapError(f"{where}.{key}: {exc}") from None
    return default


_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CLOCK = re.compile(r"^([0-9]{1,2}):([0-9]{2})$")


def _minute(text: str, where: str) -> int:
    match = _CLOCK.match(text.strip())
    if not match or int(match[1]) > 24 or int(match[2]) > 59 or (int(match[1]) == 24 and int(match[2])):
        raise BootstrapError(f"{where}: {text.strip()!r} is not a time HH:MM (00:00 .. 24:00)")
    return int(match[1]) * 60 + int(match[2])


def _intervals(text: str, where: str) -> tuple[tuple[int, int], ...]:
    """``"09:00-12:00, 14:00-18:00"`` -> ((540, 720), (840, 1080))."""
    out = []
    for part in text.split(","):
        start, sep, end = part.partition("-")
        if not sep:
            raise BootstrapError(f"{where}: {part.strip()!r} is not an interval like '09:00-18:00'")
        opens, closes = _minute(start, where) % (24 * 60), _minute(end, where)
        if opens == closes:
            raise BootstrapError(f"{where}: {part.strip()!r} closes when it opens")
        out.append((opens, closes))
    return tuple(out)


def _days(text: str, where: str) -> list[int]:
    days: list[int] = []
    for part in text.lower().split(","):
        part = part.strip()
        if part in ("daily", "everyday"):
            days += range(7)
            continue
        first, sep, last = part.partition("-")
        if first not in _DAYS or (sep and last not in _DAYS):
            raise BootstrapError(f"{where}: {part!r} is not a day (mon..sun), a range (mon-fri) or 'daily'")
        a = _DAYS.index(first)
        b = _DAYS.index(last) if sep else a
        days += [(a + k) % 7 for k in range((b - a) % 7 + 1)]
    return days


def _hours(obj: Mapping[str, Any], where: str) -> BusinessHours:
    """The readable business hours of a shop or group (see the module doc)."""
    if "business_hours" not in obj:
        return BusinessHours()
    where = f"{where}.business_hours"
    hours = _check_keys(obj["business_hours"], {"weekly", "exceptions"}, where)
    lines = hours.get("weekly", [])
    lines = [lines] if isinstance(lines, str) else lines
    if not isinstance(lines, list):
        raise BootstrapError(f"{where}.weekly: a list of lines like 'mon-fri 09:00-18:00'")
    weekly = []
    for i, line in enumerate(lines):
        step = f"{where}.weekly[{i}]"
        if not isinstance(line, str) or len(line.split(None, 1)) != 2:
            raise BootstrapError(f"{step}: {line!r} is not a line like 'mon-fri 09:00-18:00'")
        days, times = line.split(None, 1)
        weekly += [(d, start, end) for d in _days(days, step) for start, end in _intervals(times, step)]
    exceptions = []
    table = hours.get("exceptions", {})
    if not isinstance(table, Mapping):
        raise BootstrapError(f"{where}.exceptions: a table of dates, like {{'2026-12-25': 'closed'}}")
    for date, value in table.items():
        step = f"{where}.exceptions.{date}"
        if not isinstance(value, str):
            raise BootstrapError(f"{step}: 'closed' or intervals like '09:00-12:00'")
        if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", str(date)):
            raise BootstrapError(f"{step}: {date!r} is not a date YYYY-MM-DD")
        try:
            _dt.date.fromisoformat(str(date))
        except ValueError:
            raise BootstrapError(f"{step}: {date!r} is not a date YYYY-MM-DD") from None
        spec = value.strip().lower()
        exceptions.append((str(date), () if spec == "closed" else _intervals(spec, step)))
    try:
        return BusinessHours.of(BusinessHours(tuple(weekly), tuple(exceptions)), where)
    except DispatchError as exc:
        raise BootstrapError(str(exc)) from None


def _time_ms(obj: Mapping[str, Any], key: str, where: str) -> int:
    if key in obj and f"{key}_ms" in obj:
        raise BootstrapError(f"{where}: give {key} or {key}_ms, not both")
    if f"{key}_ms" in obj:
        return obj[f"{key}_ms"]  # type: ignore[no-any-return]
    value = obj.get(key)
    if value is None:
        return 0
    if isinstance(value, _dt.datetime):  # TOML datetimes
        moment = value
    elif isinstance(value, str):
        try:
            moment = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise BootstrapError(f"{where}.{key}: {value!r} is not an ISO-8601 time") from None
    else:
        raise BootstrapError(f"{where}.{key}: an ISO-8601 time (or use {key}_ms)")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.UTC)
    return int(moment.timestamp() * 1000)


def _shop(obj: Mapping[str, Any], where: str) -> ShopConfig:
    return ShopConfig(
        shop_id=obj.get("shop_id", ""),
        main_account=obj.get("main_account", ""),
        strategy=_enum(obj.get("strategy", 1), Strategy, f"{where}.strategy"),
        affinity_window_ms=_duration(obj, "affinity_window", AFFINITY_WINDOW_MS_DEFAULT, where),
        offline_grace_ms=_duration(obj, "offline_grace", 0, where),
        affinity_may_exceed_capacity=obj.get("affinity_may_exceed_capacity", True),
        exclusive_direct=obj.get("exclusive_direct", False),
        robot_first=obj.get("robot_first", False),
        robot_agent_id=obj.get("robot_agent_id", ""),
        offline_rule=_enum(obj.get("offline_rule", 1), OfflineRule, f"{where}.offline_rule"),
        proxy_account=obj.get("proxy_account", ""),
        staging_first_cap=obj.get("staging_first_cap", 100),
        busy_threshold=obj.get("busy_threshold", 4),
        main_account_mode=_enum(obj.get("main_account_mode", 4), MainAccountMode, f"{where}.main_account_mode"),
        mobile_dispatch=obj.get("mobile_dispatch", False),
        timezone=obj.get("timezone", "UTC"),
        tie_seed=obj.get("tie_seed", 0),
        # §10-§11 rules that fire on time: off unless set (durations like "3m").
        reroute_unanswered_after_ms=_duration(obj, "reroute_unanswered_after", 0, where),
        max_reroutes=obj.get("max_reroutes", 1),
        reclaim_after_offline_ms=_duration(obj, "reclaim_after_offline", 0, where),
        max_queue_wait_ms=_duration(obj, "max_queue_wait", 0, where),
        business_hours=_hours(obj, where),
        recent_contacts_after_hours=obj.get("recent_contacts_after_hours", False),
    )


def check_duplicate_shops(shops: list[Any], source: str = "bootstrap") -> None:
    """Refuse a list of shops that names a shop id twice (``shops[3]: shop 'x' is also shops[0]``);
    entries that are not tables, or without a string shop_id, are left to the full check."""
    first: dict[str, int] = {}
    for i, raw in enumerate(shops):
        if not isinstance(raw, Mapping):
            continue
        shop_id = raw.get("shop_id")
        if not isinstance(shop_id, str):
            continue
        if shop_id in first:
            raise BootstrapError(f"{source}: shops[{i}]: shop {shop_id!r} is also shops[{first[shop_id]}]")
        first[shop_id] = i


def load_bootstrap(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``.json`` or ``.toml`` bootstrap file; return its list of shops."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BootstrapError(f"{path}: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() == ".toml":
            data: Any = tomllib.loads(raw.decode("utf-8"))
        elif path.suffix.lower() == ".json":
            data = json.loads(raw)
        else:
            raise BootstrapError(f"{path}: the file name must end in .json or .toml")
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BootstrapError(f"{path}: {exc}") from None
    where = str(path)
    _check_keys(data, {"shops"}, where)
    shops = _list(data, "shops", where)
    check_duplicate_shops(shops, where)  # here too: serve may keep only some shops (a cluster node's)
    return shops


def apply_bootstrap(engine: Any, shops: list[Any], at_ms: int, source: str = "bootstrap") -> dict[str, int]:
    """Put every shop of ``shops`` (as returned by ``load_bootstrap``) into ``engine``.

    Returns how many shops, agents, groups, exclusive pairs and presences were set.
    """
    counts = {"shops": 0, "agents": 0, "groups": 0, "exclusive_agents": 0, "presence": 0}
    check_duplicate_shops(shops, source)  # before anything is applied
    for i, raw in enumerate(shops):
        where = f"{source}: shops[{i}]"
        obj = _check_keys(raw, _SHOP_KEYS, where)
        step = where
        try:
            config = _shop(obj, where)
            # 1. the shop without references to agents that do not exist yet
            bare = dataclasses.replace(
                config,
                robot_first=False,
                robot_agent_id="",
                proxy_account="",
                offline_rule=OfflineRule.MAIN_ACCOUNT
                if config.offline_rule == OfflineRule.PROXY_ACCOUNT
                else config.offline_rule,
            )
            if not (isinstance(config.shop_id, str) and engine.has_shop(config.shop_id)):
                engine.put_shop(bare)
            # 2. its agents
            for j, agent in enumerate(_list(obj, "agents", where)):
                step = f"{where}.agents[{j}]"
                a = _check_keys(agent, _AGENT_KEYS, step)
                engine.put_agent(
                    AgentConfig(
                        shop_id=config.shop_id,
                        agent_id=a.get("agent_id", ""),
                        role=_enum(a.get("role", 0), Role, f"{step}.role") if "role" in a else 0,
                        weight=a.get("weight", 1),
                        max_capacity=a.get("max_capacity", 0),
                        created_at_ms=_time_ms(a, "created_at", step),
                        chat_permission=a.get("chat_permission", True),
                    )
                )
                counts["agents"] += 1
            # 3. the full settings
            step = where
            engine.put_shop(config)
            counts["shops"] += 1
            # 4. groups, exclusive pairs, presence
            for j, group in enumerate(_list(obj, "groups", where)):
                step = f"{where}.groups[{j}]"
                g = _check_keys(group, _GROUP_KEYS, step)
                states = _list(g, "order_states", step)
                engine.put_group(
                    GroupConfig(
                        shop_id=config.shop_id,
                        group_id=g.get("group_id", ""),
                        members=tuple(_list(g, "members", step)),
                        order_states=tuple(
                            _enum(s, OrderState, f"{step}.order_states[{k}]") for k, s in enumerate(states)
                        ),
                        sources=tuple(_list(g, "sources", step)),
                        robot_enabled=g.get("robot_enabled", False),
                        robot_agent_id=g.get("robot_agent_id", ""),
                        strategy=_enum(g["strategy"], Strategy, f"{step}.strategy") if "strategy" in g else 0,
                        reroute_unanswered_after_ms=_duration(g, "reroute_unanswered_after", 0, step),
                        business_hours=_hours(g, step),
                    )
                )
                counts["groups"] += 1
            for j, pair in enumerate(_list(obj, "exclusive_agents", where)):
                step = f"{where}.exclusive_agents[{j}]"
                p = _check_keys(pair, _EXCLUSIVE_KEYS, step)
                engine.set_exclusive_agent(config.shop_id, p.get("buyer_id", ""), p.get("agent_id", ""))
                counts["exclusive_agents"] += 1
            for j, presence in enumerate(_list(obj, "presence", where)):
                step = f"{where}.presence[{j}]"
                p = _check_keys(presence, _PRESENCE_KEYS, step)
                engine.set_presence(
                    config.shop_id,
                    p.get("agent_id", ""),
                    _enum(p.get("presence", "ONLINE"), Presence, f"{step}.presence"),
                    _enum(p.get("client", "DESKTOP"), Client, f"{step}.client"),
                    at_ms,
                )
                counts["presence"] += 1
        except DispatchError as exc:
            raise BootstrapError(f"{step}: {exc}") from None
    return counts
