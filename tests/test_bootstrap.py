"""The declarative bootstrap file (JSON and TOML) applied to an engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import _fastpath
from _fastpath import OfflineRule, Presence, Reason, Role
from dispatcher.bootstrap import BootstrapError, apply_bootstrap, load_bootstrap, parse_duration_ms

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "dispatcher" / "demo_bootstrap.json"
T0 = 1_700_000_000_000

TOML = """
[[shops]]
shop_id = "t"
main_account = "t"
strategy = "strategy_fewest_unread"
affinity_window = "1h30m"
offline_grace_ms = 600000
robot_first = true
robot_agent_id = "t:bot"
offline_rule = "PROXY_ACCOUNT"
proxy_account = "t:proxy"
busy_threshold = 0

[[shops.agents]]
agent_id = "t:bot"
role = "ROBOT"

[[shops.agents]]
agent_id = "t:proxy"
role = "proxy"
max_capacity = 50

[[shops.agents]]
agent_id = "t:a"
max_capacity = 3
created_at = 2024-01-01T00:00:00Z

[[shops.groups]]
group_id = "g"
members = ["t:a"]
order_states = ["UNPAID", 5]

[[shops.presence]]
agent_id = "t:a"
presence = "SUSPENDED"
client = "MOBILE"
"""


def _load(tmp_path: Path, name: str, text: str) -> _fastpath.ReferenceEngine:
    path = tmp_path / name
    path.write_text(text)
    engine = _fastpath.ReferenceEngine(0)
    apply_bootstrap(engine, load_bootstrap(path), T0, str(path))
    return engine


def test_demo_file_gives_a_working_shop() -> None:
    engine = _fastpath.ReferenceEngine(0)
    counts = apply_bootstrap(engine, load_bootstrap(DEMO), T0)
    assert counts == {"shops": 1, "agents": 5, "groups": 2, "exclusive_agents": 1, "presence": 3}
    state = engine.shop_state("demo")
    online = sorted(a["agent_id"] for a in state["agents"] if a["presence"] == Presence.ONLINE)
    assert online == ["demo:alice", "demo:bob", "demo:carol"]
    assert engine.shop_config("demo").offline_rule == OfflineRule.STAGING
    reason, agent, group, _ = engine.dispatch("demo", "b", "c", T0, order_state=5)
    assert (reason, agent, group) == (Reason.GROUP, "demo:carol", "aftersale")
    assert engine.exclusive_agent("demo", "vip-buyer") == "demo:carol"


def test_toml_with_robot_and_proxy_references(tmp_path: Path) -> None:
    engine = _load(tmp_path, "shops.toml", TOML)
    config = engine.shop_config("t")
    assert (config.robot_agent_id, config.proxy_account, config.robot_first) == ("t:bot", "t:proxy", True)
    assert (config.affinity_window_ms, config.offline_grace_ms, config.busy_threshold) == (90 * 60_000, 600_000, 0)
    assert config.strategy == _fastpath.Strategy.FEWEST_UNREAD
    agents = {a["agent_id"]: a for a in engine.shop_state("t")["agents"]}
    assert agents["t:a"]["created_at_ms"] == 1_704_067_200_000
    assert agents["t:a"]["presence"] == Presence.SUSPENDED
    assert agents["t:proxy"]["role"] == Role.PROXY
    # nobody online: the proxy rule applies
    assert engine.dispatch("t", "b", "c", T0)[:2] == (Reason.OFFLINE_PROXY_ACCOUNT, "t:proxy")


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"shops": [{"shop_id": "x", "main_account": "x", "agnets": []}]}, ["shops[0]", "agnets"]),
        (
            {"shops": [{"shop_id": "x", "main_account": "x", "strategy": "FASTEST"}]},
            ["shops[0].strategy", "FASTEST", "LEAST_SATURATION"],
        ),
        (
            {"shops": [{"shop_id": "x", "main_account": "x", "agents": [{"agent_id": "x:a", "max_capacity": 0}]}]},
            ["shops[0].agents[0]", "max_capacity"],
        ),
        (
            {"shops": [{"shop_id": "x", "main_account": "x", "affinity_window": "3 days"}]},
            ["affinity_window", "3 days"],
        ),
        (
            {"shops": [{"shop_id": "x", "main_account": "x", "groups": [{"group_id": "g", "members": ["ghost"]}]}]},
            ["groups[0]", "ghost"],
        ),
        (
            {"shops": [{"shop_id": "x", "main_account": "x", "presence": [{"agent_id": "x", "presence": "AWAY"}]}]},
            ["presence[0].presence", "AWAY"],
        ),
        ({"shops": [{"shop_id": "", "main_account": "x"}]}, ["shops[0]", "shop_id"]),
        ({"shop": []}, ["shop"]),
    ],
)
def test_errors_name_the_location(tmp_path: Path, doc: dict, words: list[str]) -> None:
    with pytest.raises(BootstrapError) as info:
        _load(tmp_path, "bad.json", json.dumps(doc))
    for word in words:
        assert word in str(info.value)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(BootstrapError, match="must end in"):
        _load(tmp_path, "shops.yaml", "shops: []")
    with pytest.raises(BootstrapError, match="bad.json"):
        _load(tmp_path, "bad.json", "{not json")
    with pytest.raises(BootstrapError, match="missing.json"):
        load_bootstrap(tmp_path / "missing.json")


def test_parse_duration() -> None:
    assert parse_duration_ms("72h") == 72 * 3_600_000
    assert parse_duration_ms("1h30m") == 90 * 60_000
    assert parse_duration_ms("250ms") == 250
    assert parse_duration_ms("1d 2s") == 86_400_000 + 2000
    for bad in ("", "10", "h", "1x", "-5m"):
        with pytest.raises(ValueError):
            parse_duration_ms(bad)


def test_business_hours_in_readable_form(tmp_path: Path) -> None:
    doc = {
        "shops": [
            {
                "shop_id": "h",
                "main_account": "h",
                "timezone": "Europe/Berlin",
                "recent_contacts_after_hours": True,
                "business_hours": {
                    "weekly": ["mon-fri 09:00-18:00", "sat 10:00-14:00", "fri 22:00-02:00"],
                    "exceptions": {"2026-12-25": "closed", "2026-12-24": "09:00-12:00, 14:00-16:00"},
                },
                "agents": [{"agent_id": "h:a", "max_capacity": 2}],
                "groups": [{"group_id": "g", "members": ["h:a"], "business_hours": {"weekly": "daily 00:00-24:00"}}],
            }
        ]
    }
    engine = _load(tmp_path, "hours.json", json.dumps(doc))
    config = engine.shop_config("h")
    assert config.recent_contacts_after_hours
    assert config.business_hours.weekly == (
        *((d, 540, 1080) for d in range(4)),
        (4, 540, 1080),
        (4, 1320, 1560),
        (5, 600, 840),
    )
    assert config.business_hours.exceptions == (("2026-12-24", ((540, 720), (840, 960))), ("2026-12-25", ()))


@pytest.mark.parametrize(
    ("hours", "words"),
    [
        ({"weekly": ["mon-fry 09:00-18:00"]}, ["shops[0].business_hours.weekly[0]", "mon-fry"]),
        ({"weekly": ["mon 09:00-18:00", "tue 9-18"]}, ["shops[0].business_hours.weekly[1]", "'9'"]),
        ({"weekly": ["sat 10:00-10:00"]}, ["business_hours.weekly[0]", "closes when it opens"]),
        ({"exceptions": {"2026-02-30": "closed"}}, ["business_hours.exceptions.2026-02-30", "not a date"]),
        ({"exceptions": {"2026-02-20": 5}}, ["business_hours.exceptions.2026-02-20", "closed"]),
        ({"weekdays": []}, ["shops[0].business_hours", "weekdays"]),
    ],
)
def test_business_hours_errors_name_the_place(tmp_path: Path, hours: dict, words: list[str]) -> None:
    doc = {"shops": [{"shop_id": "x", "main_account": "x", "business_hours": hours}]}
    with pytest.raises(BootstrapError) as info:
        _load(tmp_path, "bad.json", json.dumps(doc))
    for word in words:
        assert word in str(info.value)


def test_demo_shop_shows_business_hours_and_a_reroute() -> None:
    engine = _fastpath.ReferenceEngine(0)
    apply_bootstrap(engine, load_bootstrap(DEMO), T0, str(DEMO))
    config = engine.shop_config("demo")
    assert config.business_hours.exceptions == (("2099-12-25", ()),)
    assert config.reroute_unanswered_after_ms == 3 * 60_000


# ------------------------------------------------------------------ duplicate shops (issue 16)


def test_a_shop_named_twice_is_refused_naming_both_places(tmp_path: Path) -> None:
    shops = [{"shop_id": f"s{i}", "main_account": f"s{i}"} for i in range(3)] + [{"shop_id": "s0", "main_account": "z"}]
    path = tmp_path / "twice.json"
    path.write_text(json.dumps({"shops": shops}))
    with pytest.raises(BootstrapError) as info:
        load_bootstrap(path)
    assert str(info.value) == f"{path}: shops[3]: shop 's0' is also shops[0]"
    toml = tmp_path / "twice.toml"
    toml.write_text('[[shops]]\nshop_id = "x"\nmain_account = "x"\n\n[[shops]]\nshop_id = "x"\nmain_account = "x"\n')
    with pytest.raises(BootstrapError, match=r"shops\[1\]: shop 'x' is also shops\[0\]"):
        load_bootstrap(toml)
    # apply_bootstrap refuses too (a list from elsewhere), before applying anything.
    engine = _fastpath.ReferenceEngine(0)
    with pytest.raises(BootstrapError) as applied:
        apply_bootstrap(engine, shops, T0, "inline")
    assert str(applied.value) == "inline: shops[3]: shop 's0' is also shops[0]"
    assert engine.shop_ids() == []
    # Distinct ids (and entries the full check refuses for other reasons) are not duplicates.
    assert apply_bootstrap(_fastpath.ReferenceEngine(0), shops[:3], T0)["shops"] == 3
