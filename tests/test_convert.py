"""dispatcher.convert: protobuf <-> engine records, and the defaults proto3 cannot express as zero."""

from __future__ import annotations

import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from _fastpath import AgentConfig, BusinessHours, InvalidArgumentError, ShopConfig
from dispatcher._gen.dispatch.v1 import admin_pb2
from dispatcher.convert import (
    agent_from_pb,
    assignment_to_pb,
    duration_ms,
    group_from_pb,
    hours_from_pb,
    hours_to_pb,
    shop_config_to_pb,
    shop_from_pb,
    timestamp,
    timestamp_ms,
)


def test_unset_fields_take_the_documented_defaults() -> None:
    config = shop_from_pb(admin_pb2.ShopConfig(shop_id="s", main_account="m"))
    assert config.affinity_window_ms == 72 * 3_600_000
    assert config.offline_grace_ms == 0
    assert config.affinity_may_exceed_capacity is True
    assert config.staging_first_cap == 100
    assert config.busy_threshold == 4
    assert config.timezone == "UTC"
    assert config.normalized() == ShopConfig("s", "m").normalized()
    agent = agent_from_pb(admin_pb2.Agent(shop_id="s", agent_id="a", max_capacity=3))
    assert (agent.weight, agent.chat_permission, agent.created_at_ms) == (1, True, 0)


def test_explicit_zero_and_false_are_kept() -> None:
    pb = admin_pb2.ShopConfig(
        shop_id="s",
        main_account="m",
        staging_first_cap=0,
        busy_threshold=0,
        affinity_may_exceed_capacity=False,
        affinity_window=duration_pb2.Duration(seconds=60),
    )
    config = shop_from_pb(pb)
    assert (config.staging_first_cap, config.busy_threshold) == (0, 0)
    assert config.affinity_may_exceed_capacity is False
    assert config.affinity_window_ms == 60_000
    agent = agent_from_pb(admin_pb2.Agent(shop_id="s", agent_id="a", max_capacity=3, weight=0, chat_permission=False))
    assert (agent.weight, agent.chat_permission) == (0, False)  # the engine then rejects weight 0


def test_stored_config_round_trips_with_every_default_spelled_out() -> None:
    config = ShopConfig("s", "m", offline_grace_ms=600_000, tie_seed=9, timezone="Asia/Shanghai").normalized()
    pb = shop_config_to_pb(config)
    assert pb.HasField("staging_first_cap") and pb.HasField("affinity_window")
    assert shop_from_pb(pb) == config


def test_times_are_milliseconds_and_bad_ones_are_invalid_arguments() -> None:
    assert timestamp_ms(timestamp_pb2.Timestamp(seconds=5, nanos=999_999), "at") == 5_000
    assert timestamp_ms(timestamp(1_767_225_600_123), "at") == 1_767_225_600_123
    with pytest.raises(InvalidArgumentError, match="at.nanos"):
        timestamp_ms(timestamp_pb2.Timestamp(seconds=5, nanos=-1), "at")
    with pytest.raises(InvalidArgumentError, match="at.seconds"):
        timestamp_ms(timestamp_pb2.Timestamp(seconds=10**12), "at")
    assert duration_ms(duration_pb2.Duration(seconds=2, nanos=5_000_000), "d") == 2_005
    with pytest.raises(InvalidArgumentError, match="negative"):
        duration_ms(duration_pb2.Duration(seconds=-1), "d")


def test_groups_and_assignments() -> None:
    group = group_from_pb(
        admin_pb2.Group(
            shop_id="s", group_id="g", members=["a", "b"], order_states=[2, 3], sources=["ORDER_PAGE"], strategy=4
        )
    )
    assert (group.members, group.order_states, group.sources, group.strategy) == (
        ("a", "b"),
        (2, 3),
        ("ORDER_PAGE",),
        4,
    )
    pb = assignment_to_pb(("s", "c", "b", "a", 12, 1_500))
    assert (pb.shop_id, pb.conversation_id, pb.buyer_id, pb.agent_id, pb.reason) == ("s", "c", "b", "a", 12)
    assert timestamp_ms(pb.at, "at") == 1_500
    assert isinstance(agent_from_pb(admin_pb2.Agent(shop_id="s", agent_id="a")), AgentConfig)


def test_business_hours_round_trip_through_the_proto() -> None:
    hours = BusinessHours.of(
        BusinessHours(
            weekly=((0, 600, 600 + 1440), (1, 1320, 120), (2, 0, 1440), (3, 540, 1080)),
            exceptions=(("2026-01-01", ()), ("2026-01-02", ((1380, 60),))),
        ),
        "business_hours",
    )
    pb = hours_to_pb(hours)
    assert [(w.open_minute, w.close_minute) for w in pb.weekly] == [(600, 2040), (1320, 120), (0, 1440), (540, 1080)]
    assert pb.exceptions[0].closed and not pb.exceptions[1].closed
    assert BusinessHours.of(hours_from_pb(pb, "business_hours"), "business_hours") == hours
