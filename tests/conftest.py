"""Fixtures shared by the test suite.

``engine_cls`` runs a test once per engine: the pure-Python reference and the
compiled ``_fastpath._core``. A missing compiled engine is a failure, never a
skip: both engines must implement every rule.
"""

from __future__ import annotations

import pytest

import _fastpath


def _compiled() -> type:
    if _fastpath.CompiledEngine is None:
        pytest.fail(f"the compiled engine is not built: {_fastpath.COMPILED_IMPORT_ERROR}")
    return _fastpath.CompiledEngine


@pytest.fixture(params=["reference", "compiled"])
def engine_cls(request: pytest.FixtureRequest) -> type:
    if request.param == "reference":
        return _fastpath.ReferenceEngine
    return _compiled()
