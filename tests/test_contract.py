"""The one engine contract (``_fastpath.contract``): both engines satisfy it, and ``DispatchCall``
is the argument list of ``dispatch`` in both."""

from __future__ import annotations

import inspect

import pytest

import _fastpath
from _fastpath.contract import DispatchCall, EngineProtocol


def test_both_engines_satisfy_the_protocol(engine_cls: type) -> None:
    engine = engine_cls(3)
    assert isinstance(engine, EngineProtocol)
    members = {name for name in dir(EngineProtocol) if not name.startswith("_")}
    missing = sorted(name for name in members if not hasattr(engine, name))
    assert not missing, f"{engine_cls.__name__} lacks {missing}"


def test_dispatch_call_is_the_dispatch_signature() -> None:
    params = list(inspect.signature(_fastpath.ReferenceEngine.dispatch).parameters.values())[1:]
    assert [p.name for p in params] == list(DispatchCall._fields)
    defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    assert defaults == DispatchCall._field_defaults


def test_a_dispatch_call_gives_the_same_answer_on_both_engines() -> None:
    answers = []
    for cls in (_fastpath.ReferenceEngine, _fastpath.CompiledEngine):
        engine = cls(3)
        engine.put_shop(_fastpath.ShopConfig("s", "s:main"))
        engine.put_agent(_fastpath.AgentConfig("s", "s:a", max_capacity=3))
        engine.set_presence("s", "s:a", _fastpath.Presence.ONLINE, 1, 1_700_000_000_000)
        call = DispatchCall("s", "b", "c", 1_700_000_000_001, trace=True)
        reason, agent, group, trace = engine.dispatch(*call)
        assert agent == "s:a" and trace
        with pytest.raises(_fastpath.AlreadyExistsError):
            engine.dispatch(*call._replace(buyer_id="other"))
        answers.append((reason, agent, group, trace))
    assert answers[0] == answers[1]
