"""The package boundary of the engine: which engine is in use, and the C tables' guarantees."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import _fastpath
from _fastpath import AgentConfig, ConversationEvent, Presence, ShopConfig

HOUR = 3_600_000


def test_compiled_engine_is_the_default_when_expected() -> None:
    """`make test` sets DISPATCH_EXPECT_COMPILED=1: a silent fallback to Python fails here."""
    if os.environ.get("DISPATCH_EXPECT_COMPILED") != "1":
        # Outside `make test` the expectation is explicit: the extension is built in this repo.
        assert _fastpath.CompiledEngine is not None, _fastpath.COMPILED_IMPORT_ERROR
    assert _fastpath.COMPILED_IMPORT_ERROR is None
    assert _fastpath.ENGINE_KIND == "compiled"
    assert _fastpath.Engine is _fastpath.CompiledEngine
    assert _fastpath.Engine().kind == "compiled"
    assert _fastpath.CompiledEngine.__module__ == "_fastpath._core"


def test_environment_variable_forces_the_reference_engine() -> None:
    code = "import _fastpath; print(_fastpath.ENGINE_KIND, _fastpath.Engine.__name__)"
    env = {**os.environ, "DISPATCH_ENGINE": "reference"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["reference", "ReferenceEngine"]


def test_hash_collisions_never_return_another_key() -> None:
    from _fastpath._core import _colliding_keys_roundtrip

    keys = [f"buyer-{i}" for i in range(300)] + ["", "x" * 128, "买家-é"]
    found = _colliding_keys_roundtrip(keys, 0xDEADBEEF)
    for i, (key, payload) in enumerate(found):
        assert payload == (None if i % 3 == 0 else i), key


def test_expired_recent_contacts_are_reclaimed() -> None:
    """The affinity table holds live contacts only: expired ones are swept as new ones arrive."""
    engine = _fastpath.CompiledEngine(seed=1)
    engine.put_shop(ShopConfig("s", "m", affinity_window_ms=HOUR))
    engine.put_agent(AgentConfig("s", "a", max_capacity=1_000_000))
    engine.set_presence("s", "a", Presence.ONLINE, 1, 0)

    def talk(prefix: str, at: int, n: int) -> None:
        for i in range(n):
            conv = f"{prefix}-{i}"
            engine.dispatch("s", f"{prefix}-buyer-{i}", conv, at)
            engine.conversation_event("s", conv, ConversationEvent.AGENT_REPLY, at)
            engine.conversation_event("s", conv, ConversationEvent.CLOSED, at)

    talk("old", 1_000, 5_000)
    assert engine.table_sizes()["affinity"] == 5_000
    talk("new", 1_000 + 2 * HOUR, 5_000)  # the old contacts are now past the window
    sizes = engine.table_sizes()
    assert sizes["affinity"] <= 5_000 + 10, sizes
    assert sizes["conversations"] == 0
    assert engine.recent_contact("s", "old-buyer-1") is None
    assert engine.recent_contact("s", "new-buyer-1") == ("a", 1_000 + 2 * HOUR)


@pytest.mark.parametrize("engine_name", ["ReferenceEngine", "CompiledEngine"])
def test_deleting_a_shop_forgets_its_buyers(engine_name: str) -> None:
    engine = getattr(_fastpath, engine_name)()
    engine.put_shop(ShopConfig("s", "m"))
    engine.put_agent(AgentConfig("s", "a", max_capacity=5))
    engine.set_presence("s", "a", Presence.ONLINE, 1, 0)
    engine.set_exclusive_agent("s", "b", "a")
    engine.dispatch("s", "b", "c", 10)
    engine.conversation_event("s", "c", ConversationEvent.AGENT_REPLY, 20)
    engine.conversation_event("s", "c", ConversationEvent.CLOSED, 30)
    engine.delete_shop("s")
    engine.put_shop(ShopConfig("s", "m"))
    engine.put_agent(AgentConfig("s", "a", max_capacity=5))
    assert engine.recent_contact("s", "b") is None
    assert engine.exclusive_agent("s", "b") is None
