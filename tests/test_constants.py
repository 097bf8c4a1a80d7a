"""The compiled engine's C constants equal their Python twins in ``_fastpath.model``.

Both engines state every enum number and limit once each: the reference (and
the service layer) in ``model``, the compiled engine in ``constants.pxd``.
``_core.c_constants()`` returns the C values by name; this test holds every
one of them equal to ``model`` so the two can never drift apart.
"""

from __future__ import annotations

import enum

import pytest

import _fastpath
from _fastpath import model, wire

# C enum prefix -> the model IntEnum whose members it numbers (C name = PREFIX_MEMBER).
ENUMS: dict[str, type[enum.IntEnum]] = {
    "REASON": model.Reason,
    "STRATEGY": model.Strategy,
    "OFFLINE": model.OfflineRule,
    "MODE": model.MainAccountMode,
    "PRESENCE": model.Presence,
    "CLIENT": model.Client,
    "ROLE": model.Role,
    "TYPE": model.ConversationType,
    "EVENT": model.ConversationEvent,
    "WAIT": model.WaitKind,
    "TIMER": model.TimerKind,
}

# C limit -> its model twin.
LIMITS: dict[str, int] = {
    "MAX_ID": model.MAX_ID_BYTES,
    "MAX_PRIORITY": model.MAX_PRIORITY,
    "N_PRIORITIES": model.N_PRIORITIES,
    "MAX_TIME": model.MAX_TIME_MS,
    "LATEST_SECONDS": model.LATEST_SECONDS,
    "DEFAULT_MAIN_CAPACITY": model.DEFAULT_MAIN_CAPACITY,
    "N_REASONS": model.N_REASONS,
    "N_STRATEGIES": model.N_STRATEGIES,
    "N_ESTIMATE_BUCKETS": model.N_ESTIMATE_BUCKETS,
    # Operation.kind numbers (issue 13): their twins are in the wire codec.
    "OP_DISPATCH": wire.OP_DISPATCH,
    "OP_SET_PRESENCE": wire.OP_SET_PRESENCE,
    "OP_REPORT_CONVERSATION": wire.OP_REPORT_CONVERSATION,
    "OP_CLAIM_FROM_POOL": wire.OP_CLAIM_FROM_POOL,
    "N_OPERATION_KINDS": len(wire.OPERATION_KINDS),
    # The largest member of an enum (the range check of a caller's number).
    "TYPE_MAX": max(model.ConversationType),
    "PRESENCE_MAX": max(model.Presence),
    "CLIENT_MAX": max(model.Client),
    "EVENT_MAX": max(model.ConversationEvent),
    "ORDER_STATE_MAX": max(model.OrderState),
}


@pytest.fixture(scope="module")
def c_values() -> dict[str, int]:
    if _fastpath.CompiledEngine is None:
        pytest.fail(f"the compiled engine is not built: {_fastpath.COMPILED_IMPORT_ERROR}")
    from _fastpath._core import c_constants

    return c_constants()


def _twin(name: str) -> int:
    if name in LIMITS:
        return int(LIMITS[name])
    prefix, _, member = name.partition("_")
    return int(ENUMS[prefix][member])


def test_every_c_constant_has_a_python_twin_and_equals_it(c_values: dict[str, int]) -> None:
    for name, value in c_values.items():
        assert name in LIMITS or name.partition("_")[0] in ENUMS, f"{name} has no twin in model.py"
        assert value == _twin(name), f"C {name} = {value}, model says {_twin(name)}"


def test_every_limit_is_checked(c_values: dict[str, int]) -> None:
    assert set(LIMITS) <= set(c_values)


@pytest.mark.parametrize("prefix", sorted(ENUMS))
def test_c_enum_numbers_equal_the_model_enums(c_values: dict[str, int], prefix: str) -> None:
    """Every C number names the model member of the same name. The C side states
    only the members it uses, so not every model member needs a C twin."""
    members = {
        name.partition("_")[2]: value
        for name, value in c_values.items()
        if name.partition("_")[0] == prefix and name not in LIMITS
    }
    assert members, f"no C constant numbers {ENUMS[prefix].__name__}"
    for member, value in members.items():
        assert ENUMS[prefix][member] == value, f"{prefix}_{member}"


def test_the_decision_counters_have_the_model_shape() -> None:
    engine = _fastpath.CompiledEngine()
    counts = engine.decision_counts()
    assert len(counts) == model.N_REASONS
    assert all(len(row) == model.N_STRATEGIES for row in counts)
