"""The inputs of ``dispatcher simulate``: a synthetic workload (TOML) and variants (what-ifs).

Everything is validated here, and every error names its place (``file: shops[0].agents[1].
reply_delay.mean_s: ...``), so the command prints one line and never a traceback.
The format is documented in dispatcher/docs/SIMULATE.md.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import random
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from _fastpath import (
    AgentConfig,
    DispatchError,
    GroupConfig,
    OfflineRule,
    OrderState,
    Presence,
    Role,
    ShopConfig,
    Strategy,
)

__all__ = [
    "Arrival",
    "Distribution",
    "Behaviour",
    "PresenceChange",
    "Scenario",
    "Variant",
    "WorkloadError",
    "apply_variant",
    "load_variants",
    "load_workload",
    "parse_variants",
    "parse_workload",
]

HOUR_MS: Final = 3_600_000
DAY_MS: Final = 24 * HOUR_MS
DEFAULT_START: Final = "2024-05-01T00:00:00Z"


class WorkloadError(ValueError):
    """A workload, variants file or journal that cannot be simulated; the message names the place."""


# ------------------------------------------------------------------ model


@dataclasses.dataclass(frozen=True, slots=True)
class Distribution:
    """A duration distribution in ms: ``fixed``, ``exponential``, ``lognormal``, ``uniform`` or
    ``empirical`` (samples recorded in a journal)."""

    kind: str
    mean_ms: float
    sigma: float = 0.5
    low_ms: float = 0.0
    high_ms: float = 0.0
    samples: tuple[int, ...] = ()

    def sample(self, rng: random.Random) -> int:
        kind = self.kind
        if kind == "exponential":
            return int(rng.expovariate(1.0 / self.mean_ms)) if self.mean_ms > 0 else 0
        if kind == "lognormal":
            if self.mean_ms <= 0:
                return 0
            mu = math.log(self.mean_ms) - self.sigma * self.sigma / 2
            return int(rng.lognormvariate(mu, self.sigma))
        if kind == "uniform":
            return int(rng.uniform(self.low_ms, self.high_ms))
        if kind == "empirical" and self.samples:
            return self.samples[int(rng.random() * len(self.samples))]
        return int(self.mean_ms)

    def describe(self) -> str:
        if self.kind == "empirical":
            return f"empirical (n={len(self.samples)}, mean {self.mean_ms / 1000:.1f}s)"
        return f"{self.kind} (mean {self.mean_ms / 1000:.1f}s)"


@dataclasses.dataclass(frozen=True, slots=True)
class Behaviour:
    """How one agent works: the delay of each reply and the time it keeps a conversation."""

    reply_delay: Distribution
    handle_time: Distribution


@dataclasses.dataclass(frozen=True, slots=True)
class Arrival:
    """A conversation that opens: the buyer's first message, to be dispatched."""

    at_ms: int
    shop_id: str
    buyer_id: str
    conversation_id: str
    source: str = ""
    order_state: int = 0
    priority: int = 0
    messages: int = 1
    """Buyer messages in the conversation, the first included (each gets a reply)."""


@dataclasses.dataclass(frozen=True, slots=True)
class PresenceChange:
    at_ms: int
    shop_id: str
    agent_id: str
    presence: int
    client: int = 1


@dataclasses.dataclass(slots=True)
class Scenario:
    """One simulated period: the configuration, who comes and goes, and the traffic."""

    name: str
    start_ms: int
    end_ms: int
    shops: list[ShopConfig]
    agents: list[AgentConfig]
    groups: list[GroupConfig]
    exclusives: list[tuple[str, str, str]]
    behaviour: dict[tuple[str, str], Behaviour]
    default_behaviour: dict[str, Behaviour]
    """Per shop: for an agent without its own (e.g. the main account)."""
    presence: list[PresenceChange]
    arrivals: list[Arrival]
    seed: int = 0
    tick_ms: int = 1_000
    sample_ms: int = 60_000
    drain_ms: int = 4 * HOUR_MS
    """How long after ``end_ms`` open conversations may still finish (nothing new arrives)."""
    variants: list[Variant] = dataclasses.field(default_factory=list)
    engine_state: dict[str, Any] | None = None
    """A journal's starting engine state (snapshot), imported before the configuration."""

    def behaviour_of(self, shop_id: str, agent_id: str) -> Behaviour:
        found = self.behaviour.get((shop_id, agent_id))
        return found if found is not None else self.default_behaviour[shop_id]


@dataclasses.dataclass(frozen=True, slots=True)
class Variant:
    """A what-if: overrides applied to the base configuration. An empty one is the baseline."""

    name: str
    shop: dict[str, Any] = dataclasses.field(default_factory=dict)
    """ShopConfig fields for every shop (``strategy = "FEWEST_TODAY"``...)."""
    shops: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    agents: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """agent id → ``capacity``/``weight``/``role``/``chat_permission``."""
    groups: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """group id → GroupConfig fields (``members``, ``order_states``, ``sources``, ``strategy``...)."""

    def describe(self) -> str:
        parts = [f"{k}={_show(v)}" for k, v in self.shop.items()]
        parts += [f"{s}.{k}={_show(v)}" for s, kv in self.shops.items() for k, v in kv.items()]
        parts += [f"{a}.{k}={_show(v)}" for a, kv in self.agents.items() for k, v in kv.items()]
        parts += [f"group {g}.{k}={_show(v)}" for g, kv in self.groups.items() for k, v in kv.items()]
        return ", ".join(parts) or "(the configuration as given)"


def _show(value: Any) -> str:
    return str(value)


# ------------------------------------------------------------------ parsing helpers


class _Place:
    """Where a value is, for error messages: ``file: shops[0].agents[1].capacity``."""

    def __init__(self, source: str, path: str = "") -> None:
        self.source = source
        self.path = path

    def __truediv__(self, key: str | int) -> _Place:
        if isinstance(key, int):
            return _Place(self.source, f"{self.path}[{key}]")
        return _Place(self.source, f"{self.path}.{key}" if self.path else key)

    def error(self, message: str) -> WorkloadError:
        where = f"{self.source}: {self.path}" if self.path else self.source
        return WorkloadError(f"{where}: {message}")


def _table(value: Any, place: _Place, allowed: frozenset[str] | None = None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise place.error(f"must be a table, not {type(value).__name__}")
    if allowed is not None:
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise place.error(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    return value


def _list(value: Any, place: _Place) -> list[Any]:
    if not isinstance(value, list):
        raise place.error(f"must be an array, not {type(value).__name__}")
    return value


def _str(value: Any, place: _Place) -> str:
    if not isinstance(value, str) or not value:
        raise place.error("must be a non-empty string")
    return value


def _int(value: Any, place: _Place, low: int = 0, high: int = 2**63 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise place.error(f"must be an integer, not {value!r}")
    if not low <= value <= high:
        raise place.error(f"must be in {low}..{high}, not {value}")
    return value


def _num(value: Any, place: _Place, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise place.error(f"must be a number, not {value!r}")
    if value < low:
        raise place.error(f"must be at least {low}, not {value}")
    return float(value)


def _enum(value: Any, enum: Any, place: _Place) -> int:
    if isinstance(value, str):
        try:
            return int(enum[value.upper()])
        except KeyError:
            names = ", ".join(m.name for m in enum if m.value)
            raise place.error(f"unknown value {value!r} (one of {names})") from None
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return int(enum(value))
        except ValueError:
            raise place.error(f"unknown value {value}") from None
    raise place.error(f"must be a name, not {value!r}")


def _time_of_day(value: Any, place: _Place) -> int:
    """``"08:30"`` → ms after the day's start."""
    text = _str(value, place)
    try:
        hh, mm = text.split(":")
        hours, minutes = int(hh), int(mm)
    except ValueError:
        raise place.error(f'must be a time of day like "08:30", not {text!r}') from None
    if not (0 <= hours <= 24 and 0 <= minutes < 60) or hours * 60 + minutes > 24 * 60:
        raise place.error(f"{text!r} is not a time of day (00:00..24:00)")
    return (hours * 60 + minutes) * 60_000


def _instant(value: Any, place: _Place) -> int:
    if isinstance(value, dt.datetime):
        when = value
    else:
        try:
            when = dt.datetime.fromisoformat(_str(value, place).replace("z", "Z"))
        except ValueError:
            raise place.error(f"{value!r} is not an RFC 3339 time like {DEFAULT_START}") from None
    if when.tzinfo is None:
        raise place.error("the time needs a time zone (Z or +08:00)")
    return int(when.timestamp() * 1000)


_DIST_KEYS: Final = frozenset({"dist", "mean_s", "sigma", "low_s", "high_s"})
_DISTS: Final = ("fixed", "exponential", "lognormal", "uniform")


def _distribution(value: Any, place: _Place) -> Distribution:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Distribution("fixed", _num(value, place) * 1000)
    data = _table(value, place, _DIST_KEYS)
    kind = data.get("dist", "exponential")
    if kind not in _DISTS:
        raise (place / "dist").error(f"unknown distribution {kind!r} (one of {', '.join(_DISTS)})")
    if kind == "uniform":
        if "low_s" not in data or "high_s" not in data:
            raise place.error("a uniform distribution needs low_s and high_s")
        low = _num(data["low_s"], place / "low_s") * 1000
        high = _num(data["high_s"], place / "high_s") * 1000
        if high < low:
            raise (place / "high_s").error("must be at least low_s")
        return Distribution(kind, (low + high) / 2, low_ms=low, high_ms=high)
    if "mean_s" not in data:
        raise place.error("needs mean_s (seconds)")
    sigma = _num(data.get("sigma", 0.5), place / "sigma")
    return Distribution(kind, _num(data["mean_s"], place / "mean_s") * 1000, sigma=sigma)


def _weights(value: Any, place: _Place, enum: Any | None) -> list[tuple[Any, float]]:
    """``{NAME = share, ...}`` → [(value, share)], normalised."""
    data = _table(value, place)
    out: list[tuple[Any, float]] = []
    for key, share in data.items():
        item: Any = _enum(key, enum, place / key) if enum is not None else key
        out.append((item, _num(share, place / key)))
    total = sum(s for _, s in out)
    if not out or total <= 0:
        raise place.error("needs at least one positive share")
    return [(k, s / total) for k, s in out]


def _pick(rng: random.Random, choices: list[tuple[Any, float]]) -> Any:
    x = rng.random()
    for item, share in choices:
        x -= share
        if x < 0:
            return item
    return choices[-1][0]


# ------------------------------------------------------------------ variants

_SHOP_FIELDS: Final = frozenset(f.name for f in dataclasses.fields(ShopConfig)) - {"shop_id", "main_account"}
_GROUP_FIELDS: Final = frozenset({"members", "order_states", "sources", "robot_enabled", "robot_agent_id", "strategy",
                                  "reroute_unanswered_after_ms"})  # fmt: skip
_AGENT_FIELDS: Final = frozenset({"capacity", "weight", "role", "chat_permission", "reply_delay", "handle_time"})
_VARIANT_KEYS: Final = frozenset({"name", "strategy", "shop", "shops", "agents", "groups"})
_SHOP_ENUMS: Final[dict[str, Any]] = {
    "strategy": Strategy, "offline_rule": OfflineRule,
}  # fmt: skip


def _shop_overrides(data: Any, place: _Place) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in _table(data, place, _SHOP_FIELDS).items():
        enum = _SHOP_ENUMS.get(key)
        out[key] = _enum(value, enum, place / key) if enum is not None else value
    return out


def _group_overrides(data: Any, place: _Place) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in _table(data, place, _GROUP_FIELDS).items():
        if key == "strategy":
            out[key] = _enum(value, Strategy, place / key)
        elif key == "order_states":
            out[key] = tuple(_enum(v, OrderState, place / key / i) for i, v in enumerate(_list(value, place / key)))
        elif key in ("members", "sources"):
            out[key] = tuple(_str(v, place / key / i) for i, v in enumerate(_list(value, place / key)))
        else:
            out[key] = value
    return out


def _agent_overrides(data: Any, place: _Place) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in _table(data, place, _AGENT_FIELDS).items():
        if key in ("capacity", "weight"):
            out[key] = _int(value, place / key, 0 if key == "capacity" else 1)
        elif key == "role":
            out[key] = _enum(value, Role, place / key)
        elif key in ("reply_delay", "handle_time"):
            out[key] = _distribution(value, place / key)
        else:
            out[key] = value
    return out


def parse_variants(items: Any, place: _Place) -> list[Variant]:
    variants: list[Variant] = []
    seen: set[str] = set()
    for i, raw in enumerate(_list(items, place)):
        where = place / i
        data = _table(raw, where, _VARIANT_KEYS)
        name = _str(data.get("name", f"variant{i + 1}"), where / "name")
        if name in seen:
            raise (where / "name").error(f"variant {name!r} is given twice")
        seen.add(name)
        shop = _shop_overrides(data.get("shop", {}), where / "shop")
        if "strategy" in data:
            shop["strategy"] = _enum(data["strategy"], Strategy, where / "strategy")
        shops = {
            k: _shop_overrides(v, where / "shops" / k)
            for k, v in _table(data.get("shops", {}), where / "shops").items()
        }
        agents = {
            k: _agent_overrides(v, where / "agents" / k)
            for k, v in _table(data.get("agents", {}), where / "agents").items()
        }
        groups = {
            k: _group_overrides(v, where / "groups" / k)
            for k, v in _table(data.get("groups", {}), where / "groups").items()
        }
        variants.append(Variant(name, shop, shops, agents, groups))
    return variants


def load_variants(path: Path) -> list[Variant]:
    data = _read_toml(path)
    place = _Place(str(path))
    _table(data, place, frozenset({"variants"}))
    if "variants" not in data:
        raise place.error("no [[variants]]")
    return parse_variants(data["variants"], place / "variants")


def apply_variant(scenario: Scenario, variant: Variant) -> Scenario:
    """The scenario with the variant's overrides; raises WorkloadError naming a bad override."""
    place = _Place(f"variant {variant.name!r}")
    shop_ids = {s.shop_id for s in scenario.shops}
    for shop_id in variant.shops:
        if shop_id not in shop_ids:
            raise (place / "shops").error(f"unknown shop {shop_id!r}")
    agent_ids = {a.agent_id for a in scenario.agents}
    for agent_id in variant.agents:
        if agent_id not in agent_ids:
            raise (place / "agents").error(f"unknown agent {agent_id!r}")
    group_ids = {g.group_id for g in scenario.groups}
    for group_id in variant.groups:
        if group_id not in group_ids:
            raise (place / "groups").error(f"unknown group {group_id!r}")
    shops = [dataclasses.replace(s, **{**variant.shop, **variant.shops.get(s.shop_id, {})}) for s in scenario.shops]
    agents: list[AgentConfig] = []
    behaviour = dict(scenario.behaviour)
    for agent in scenario.agents:
        over = variant.agents.get(agent.agent_id, {})
        fields = {k: v for k, v in over.items() if k in ("weight", "role", "chat_permission")}
        if "capacity" in over:
            fields["max_capacity"] = over["capacity"]
        agents.append(dataclasses.replace(agent, **fields))
        if "reply_delay" in over or "handle_time" in over:
            old = scenario.behaviour_of(agent.shop_id, agent.agent_id)
            behaviour[(agent.shop_id, agent.agent_id)] = Behaviour(
                over.get("reply_delay", old.reply_delay), over.get("handle_time", old.handle_time)
            )
    groups = [dataclasses.replace(g, **variant.groups.get(g.group_id, {})) for g in scenario.groups]
    out = dataclasses.replace(scenario, name=variant.name, shops=shops, agents=agents, groups=groups,
                              behaviour=behaviour)  # fmt: skip
    _validate_configs(out, place)
    return out


def _validate_configs(scenario: Scenario, place: _Place) -> None:
    mains = {s.shop_id: s.main_account for s in scenario.shops}
    try:
        for shop in scenario.shops:
            shop.normalized()
    except DispatchError as exc:
        raise (place / "shop").error(str(exc)) from None
    for agent in scenario.agents:
        try:
            agent.normalized(mains[agent.shop_id])
        except DispatchError as exc:
            raise (place / "agents" / agent.agent_id).error(str(exc)) from None
    for group in scenario.groups:
        try:
            group.normalized()
        except DispatchError as exc:
            raise (place / "groups" / group.group_id).error(str(exc)) from None


# ------------------------------------------------------------------ workload files


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise WorkloadError(f"{path}: no such file") from None
    except OSError as exc:
        raise WorkloadError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise WorkloadError(f"{path}: not valid TOML: {exc}") from None


_TOP_KEYS: Final = frozenset({"simulation", "shops", "variants"})
_SIM_KEYS: Final = frozenset({"seed", "start", "hours", "tick_s", "sample_s", "drain_hours"})
_SHOP_KEYS: Final = frozenset({"shop_id", "main_account", "settings", "agents", "groups", "arrivals", "exclusive",
                               "default_reply_delay", "default_handle_time"})  # fmt: skip
_AGENT_KEYS: Final = frozenset({"agent_id", "capacity", "weight", "role", "chat_permission", "created_at_s",
                                "reply_delay", "handle_time", "online"})  # fmt: skip
_ARRIVAL_KEYS: Final = frozenset({"total", "hourly", "returning_share", "buyers", "sources", "order_states",
                                  "messages", "priority"})  # fmt: skip
_DEFAULT_REPLY: Final = Distribution("exponential", 30_000.0)
_DEFAULT_HANDLE: Final = Distribution("lognormal", 600_000.0)


def load_workload(path: Path, seed: int | None = None) -> Scenario:
    """A synthetic workload file (and its ``[[variants]]``, if any); raises WorkloadError."""
    return parse_workload(_read_toml(path), str(path), seed)


def parse_workload(data: Mapping[str, Any], source: str = "workload", seed: int | None = None) -> Scenario:
    place = _Place(source)
    _table(dict(data), place, _TOP_KEYS)
    sim = _table(data.get("simulation", {}), place / "simulation", _SIM_KEYS)
    run_seed = seed if seed is not None else _int(sim.get("seed", 1), place / "simulation" / "seed")
    start = _instant(sim.get("start", DEFAULT_START), place / "simulation" / "start")
    hours = _num(sim.get("hours", 24), place / "simulation" / "hours", 0.001)
    tick_ms = int(_num(sim.get("tick_s", 1), place / "simulation" / "tick_s", 0.001) * 1000)
    sample_ms = int(_num(sim.get("sample_s", 60), place / "simulation" / "sample_s", 1) * 1000)
    drain_ms = int(_num(sim.get("drain_hours", 4), place / "simulation" / "drain_hours") * HOUR_MS)
    end = start + int(hours * HOUR_MS)
    shops_raw = _list(data.get("shops", []), place / "shops")
    if not shops_raw:
        raise place.error("no [[shops]]: a workload needs at least one shop with agents and arrivals")
    rng = random.Random(run_seed)
    scenario = Scenario("base", start, end, [], [], [], [], {}, {}, [], [], seed=run_seed, tick_ms=tick_ms,
                        sample_ms=sample_ms, drain_ms=drain_ms)  # fmt: skip
    seen_shops: set[str] = set()
    for i, raw in enumerate(shops_raw):
        _parse_shop(raw, place / "shops" / i, scenario, rng, seen_shops)
    scenario.arrivals.sort(key=lambda a: a.at_ms)
    scenario.presence.sort(key=lambda p: p.at_ms)
    if not scenario.arrivals:
        raise (place / "shops").error("the workload has no arrivals (every arrivals.total is 0)")
    _validate_configs(scenario, place)
    if "variants" in data:
        scenario.variants = parse_variants(data["variants"], place / "variants")
    return scenario


def _parse_shop(raw: Any, place: _Place, scenario: Scenario, rng: random.Random, seen: set[str]) -> None:
    data = _table(raw, place, _SHOP_KEYS)
    shop_id = _str(data.get("shop_id"), place / "shop_id")
    if shop_id in seen:
        raise (place / "shop_id").error(f"shop {shop_id!r} is given twice")
    seen.add(shop_id)
    main = _str(data.get("main_account", shop_id), place / "main_account")
    settings = _shop_overrides(data.get("settings", {}), place / "settings")
    shop = ShopConfig(shop_id, main, **settings)
    scenario.shops.append(shop)
    default = Behaviour(
        _distribution(data.get("default_reply_delay", {"dist": "exponential", "mean_s": 30}),
                      place / "default_reply_delay"),
        _distribution(data.get("default_handle_time", {"dist": "lognormal", "mean_s": 600}),
                      place / "default_handle_time"),
    )  # fmt: skip
    scenario.default_behaviour[shop_id] = default
    agents_raw = _list(data.get("agents", []), place / "agents")
    if not agents_raw:
        raise (place / "agents").error("a shop needs at least one agent")
    agent_ids: set[str] = set()
    for j, araw in enumerate(agents_raw):
        where = place / "agents" / j
        a = _table(araw, where, _AGENT_KEYS)
        agent_id = _str(a.get("agent_id"), where / "agent_id")
        if agent_id in agent_ids:
            raise (where / "agent_id").error(f"agent {agent_id!r} is given twice")
        agent_ids.add(agent_id)
        role = _enum(a["role"], Role, where / "role") if "role" in a else 0
        scenario.agents.append(
            AgentConfig(
                shop_id,
                agent_id,
                role=role,
                weight=_int(a.get("weight", 1), where / "weight", 1),
                max_capacity=_int(a.get("capacity", 10), where / "capacity", 0),
                created_at_ms=int(_num(a.get("created_at_s", j), where / "created_at_s") * 1000),
                chat_permission=bool(a.get("chat_permission", True)),
            )
        )
        scenario.behaviour[(shop_id, agent_id)] = Behaviour(
            _distribution(a["reply_delay"], where / "reply_delay") if "reply_delay" in a else default.reply_delay,
            _distribution(a["handle_time"], where / "handle_time") if "handle_time" in a else default.handle_time,
        )
        online = a.get("online", [["00:00", "24:00"]])
        for k, span in enumerate(_list(online, where / "online")):
            spot = where / "online" / k
            pair = _list(span, spot)
            if len(pair) != 2:
                raise spot.error('must be ["HH:MM", "HH:MM"] (online from, to)')
            since, until = _time_of_day(pair[0], spot / 0), _time_of_day(pair[1], spot / 1)
            if until <= since:
                raise spot.error("the end must be after the start")
            for day in range(0, max(1, math.ceil((scenario.end_ms - scenario.start_ms) / DAY_MS))):
                base = scenario.start_ms + day * DAY_MS
                scenario.presence.append(PresenceChange(base + since, shop_id, agent_id, Presence.ONLINE))
                if until < DAY_MS:
                    scenario.presence.append(PresenceChange(base + until, shop_id, agent_id, Presence.OFFLINE))
    for j, graw in enumerate(_list(data.get("groups", []), place / "groups")):
        where = place / "groups" / j
        g = _table(graw, where, _GROUP_FIELDS | {"group_id"})
        group_id = _str(g.get("group_id"), where / "group_id")
        over = _group_overrides({k: v for k, v in g.items() if k != "group_id"}, where)
        for member in over.get("members", ()):
            if member not in agent_ids and member != main:
                raise (where / "members").error(f"unknown agent {member!r}")
        scenario.groups.append(GroupConfig(shop_id, group_id, **over))
    for buyer, agent in _table(data.get("exclusive", {}), place / "exclusive").items():
        scenario.exclusives.append((shop_id, buyer, _str(agent, place / "exclusive" / buyer)))
    _arrivals(data.get("arrivals"), place / "arrivals", shop_id, scenario, rng)


def _arrivals(raw: Any, place: _Place, shop_id: str, scenario: Scenario, rng: random.Random) -> None:
    if raw is None:
        raise place.error("missing: a shop needs [shops.arrivals] (total, hourly rate curve)")
    data = _table(raw, place, _ARRIVAL_KEYS)
    total = _int(data.get("total", 0), place / "total")
    hourly = [
        _num(v, place / "hourly" / i) for i, v in enumerate(_list(data.get("hourly", [1.0] * 24), place / "hourly"))
    ]
    if not hourly or sum(hourly) <= 0:
        raise (place / "hourly").error("needs at least one positive rate")
    returning = _num(data.get("returning_share", 0.0), place / "returning_share")
    if returning > 1:
        raise (place / "returning_share").error("is a share: 0..1")
    sources = _weights(data["sources"], place / "sources", None) if "sources" in data else [("", 1.0)]
    states = (
        _weights(data["order_states"], place / "order_states", OrderState) if "order_states" in data else [(0, 1.0)]
    )
    messages = data.get("messages", 3)
    mean_messages = _num(messages, place / "messages", 1)
    priority = _int(data.get("priority", 0), place / "priority", 0, 9)
    # The rate curve repeats every len(hourly) hours; arrival times follow it piecewise.
    span = scenario.end_ms - scenario.start_ms
    slots = max(1, math.ceil(span / HOUR_MS))
    weights = [hourly[h % len(hourly)] * min(HOUR_MS, span - h * HOUR_MS) / HOUR_MS for h in range(slots)]
    cumulative: list[float] = []
    acc = 0.0
    for w in weights:
        acc += w
        cumulative.append(acc)
    buyers: list[str] = []
    times = sorted(_draw_time(rng, cumulative, scenario.start_ms, span) for _ in range(total))
    for n, at in enumerate(times):
        if buyers and rng.random() < returning:
            buyer = buyers[int(rng.random() * len(buyers))]
        else:
            buyer = f"buyer{len(buyers) + 1}"
            buyers.append(buyer)
        count = 1 + _poisson(rng, mean_messages - 1)
        scenario.arrivals.append(
            Arrival(at, shop_id, buyer, f"{shop_id}/c{n + 1}", _pick(rng, sources), _pick(rng, states), priority, count)
        )


def _draw_time(rng: random.Random, cumulative: list[float], start: int, span: int) -> int:
    x = rng.random() * cumulative[-1]
    lo, hi = 0, len(cumulative) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cumulative[mid] <= x:
            lo = mid + 1
        else:
            hi = mid
    return min(start + span - 1, start + lo * HOUR_MS + int(rng.random() * min(HOUR_MS, span - lo * HOUR_MS)))


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit and k < 1000:
        k += 1
        p *= rng.random()
    return k
