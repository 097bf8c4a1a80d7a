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

Order of application: every shop without its robot/proxy references, then
its agents, then the full shop settings, then groups, exclusive pairs and
presence (timed at load). Any error names the file location
(``shops[0].agents[1]: max_capacity=0 is outside 1..1000000``).
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

__all__ = ["BootstrapError", "apply_bootstrap", "load_bootstrap", "parse_duration_ms"]


class BootstrapError(ValueError):
    """The bootstrap file is malformed or describes an impossible configuration."""


_SHOP_KEYS = {
    "shop_id", "main_account", "strategy", "affinity_window", "affinity_window_ms", "offline_grace",
    "offline_grace_ms", "affinity_may_exceed_capacity", "exclusive_direct", "robot_first", "robot_agent_id",
    "offline_rule", "proxy_account", "staging_first_cap", "busy_threshold", "main_account_mode",
    "mobile_dispatch", "timezone", "tie_seed", "agents", "groups", "exclusive_agents", "presence",
    "reroute_unanswered_after", "reroute_unanswered_after_ms", "max_reroutes", "reclaim_after_offline",
    "reclaim_after_offline_ms", "max_queue_wait", "max_queue_wait_ms",
}  # fmt: skip
_AGENT_KEYS = {"agent_id", "role", "weight", "max_capacity", "created_at", "created_at_ms", "chat_permission"}
_GROUP_KEYS = {
    "group_id", "members", "order_states", "sources", "robot_enabled", "robot_agent_id", "strategy",
    "reroute_unanswered_after", "reroute_unanswered_after_ms",
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
    )


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
    return _list(data, "shops", where)


def apply_bootstrap(engine: Any, shops: list[Any], at_ms: int, source: str = "bootstrap") -> dict[str, int]:
    """Put every shop of ``shops`` (as returned by ``load_bootstrap``) into ``engine``.

    Returns how many shops, agents, groups, exclusive pairs and presences were set.
    """
    counts = {"shops": 0, "agents": 0, "groups": 0, "exclusive_agents": 0, "presence": 0}
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
