"""Fixtures shared by the test suite.

``engine_cls`` runs a test once per engine: the pure-Python reference and the
compiled ``_fastpath._core``. A missing compiled engine is a failure, never a
skip: both engines must implement every rule.
"""

from __future__ import annotations

import os

import pytest

import _fastpath

pytest_plugins = ["server_fixtures"]  # the shared helpers' fixtures: server, client, sync_client, demo_server


def pytest_sessionstart(session: pytest.Session) -> None:
    """``make test`` sets DISPATCH_EXPECT_COMPILED=1: then a run on the pure-Python fallback
    stops at once instead of passing slowly (and proving nothing about the compiled engine)."""
    if os.environ.get("DISPATCH_EXPECT_COMPILED") == "1" and _fastpath.ENGINE_KIND != "compiled":
        pytest.exit(
            f"DISPATCH_EXPECT_COMPILED=1 but the engine is {_fastpath.ENGINE_KIND!r}: "
            f"the compiled engine did not import ({_fastpath.COMPILED_IMPORT_ERROR})",
            returncode=3,
        )


def _compiled() -> type:
    if _fastpath.CompiledEngine is None:
        pytest.fail(f"the compiled engine is not built: {_fastpath.COMPILED_IMPORT_ERROR}")
    return _fastpath.CompiledEngine


@pytest.fixture(params=["reference", "compiled"])
def engine_cls(request: pytest.FixtureRequest) -> type:
    if request.param == "reference":
        return _fastpath.ReferenceEngine
    return _compiled()
