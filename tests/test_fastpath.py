"""The package boundary of the engine: which engine is in use, and the C tables' guarantees."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import _fastpath
from _fastpath import AgentConfig, ConversationEvent, Presence, Reason, ShopConfig

HOUR = 3_600_000


def test_the_engine_in_use_is_the_one_expected() -> None:
    """`make test` sets DISPATCH_EXPECT_COMPILED=1: a silent fallback to Python fails here (and
    in conftest, for the whole session). Without it, the package only has to tell the truth."""
    if os.environ.get("DISPATCH_EXPECT_COMPILED") == "1":
        assert _fastpath.COMPILED_IMPORT_ERROR is None
        assert _fastpath.ENGINE_KIND == "compiled"
        assert _fastpath.Engine is _fastpath.CompiledEngine
        assert _fastpath.Engine().kind == "compiled"
        assert _fastpath.CompiledEngine.__module__ == "_fastpath._core"
    else:
        assert _fastpath.Engine().kind == _fastpath.ENGINE_KIND
        assert (_fastpath.CompiledEngine is None) == (_fastpath.COMPILED_IMPORT_ERROR is not None)


BLOCK_COMPILED = """
import sys
class _Block:
    def find_spec(self, name, path, target=None):
        if name == "_fastpath._core":
            raise ImportError("the compiled engine is hidden by the test")
sys.meta_path.insert(0, _Block())
"""


def _without_compiled(tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    (tmp_path / "sitecustomize.py").write_text(BLOCK_COMPILED)
    return {**os.environ, "PYTHONPATH": str(tmp_path), **env}


def test_expect_compiled_turns_a_fallback_into_a_failure(tmp_path: Path) -> None:
    here = Path(__file__)
    test = f"{here}::test_the_engine_in_use_is_the_one_expected"
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test]
    expecting = _without_compiled(tmp_path, {"DISPATCH_EXPECT_COMPILED": "1"})
    failed = subprocess.run(args, env=expecting, capture_output=True, text=True, cwd=here.parents[1])
    assert failed.returncode != 0 and "compiled engine" in failed.stdout, failed.stdout[-2000:]
    relaxed = _without_compiled(tmp_path, {"DISPATCH_EXPECT_COMPILED": ""})
    passed = subprocess.run(args, env=relaxed, capture_output=True, text=True, cwd=here.parents[1])
    assert passed.returncode == 0, passed.stdout[-2000:]


def test_a_server_that_falls_back_to_the_reference_engine_says_so(tmp_path: Path) -> None:
    from dispatcher.testing import ServerProcess

    for asked, expect_warning in (("", True), ("reference", False)):
        env = _without_compiled(tmp_path, {"DISPATCH_ENGINE": asked})
        env.pop("DISPATCH_EXPECT_COMPILED", None)
        server = ServerProcess("serve", "--port", "0", "--no-auth", "--log-format", "json", env=env)
        try:
            server.port()
            warnings = server.events("engine.fallback")
            assert bool(warnings) == expect_warning, server.lines
            if warnings:
                assert warnings[0]["level"] == "warning" and "hidden by the test" in warnings[0]["reason"]
            assert server.events("server.started")[0]["engine"] == "reference"
        finally:
            server.finish(signal.SIGTERM)


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
def test_a_shop_that_never_waits_holds_no_waiting_list_storage(engine_name: str) -> None:
    """A marketplace has millions of shops: one that never queues must not carry a deque per
    priority level of its three waiting lists (~760 bytes each, ~23 KB a shop), as it once did.
    Python-heap bytes per shop of 2 agents, measured with tracemalloc (the C arrays are not in
    it): ~1.6 KB compiled, ~2.5 KB reference; 10 KB would mean storage made ahead of need."""
    import tracemalloc

    engine = getattr(_fastpath, engine_name)(seed=1)

    def shop(i: int) -> None:
        engine.put_shop(ShopConfig(f"s{i}", f"s{i}:main"))
        for a in ("a", "b"):
            engine.put_agent(AgentConfig(f"s{i}", a, max_capacity=5))
            engine.set_presence(f"s{i}", a, Presence.ONLINE, 1, 0)

    shop(-1)  # the engine's own first-use allocations happen before measuring
    tracemalloc.start()
    try:
        for i in range(300):
            shop(i)
        per_shop = tracemalloc.get_traced_memory()[0] / 300
    finally:
        tracemalloc.stop()
    assert per_shop < 10_000, per_shop
    # Waiting still works once it is needed: both agents full, then a queue of two with priority.
    for n in range(10):
        engine.dispatch("s0", f"b{n}", f"c{n}", 10)
    answers = [engine.dispatch("s0", f"w{p}", f"cw{p}", 20, priority=p)[0] for p in (1, 7)]
    assert answers == [Reason.QUEUED, Reason.QUEUED]
    assert [engine.waiting_position("s0", c)[0] for c in ("cw7", "cw1")] == [1, 2]  # priority first


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
