"""The dispatch engine.

``Engine`` is the compiled engine (``_fastpath._core``) unless the environment
variable ``DISPATCH_ENGINE=reference`` asks for the pure-Python reference, or
the extension is missing (then ``ENGINE_KIND`` says ``"reference"`` and
``COMPILED_IMPORT_ERROR`` says why). ``ReferenceEngine`` is always available.
"""

from __future__ import annotations

import os

from .model import (
    AgentConfig,
    AlreadyExistsError,
    BusinessHours,
    Client,
    ConversationEvent,
    ConversationType,
    DispatchError,
    FailedPreconditionError,
    GroupConfig,
    InvalidArgumentError,
    MainAccountMode,
    NotFoundError,
    OfflineRule,
    OrderState,
    Presence,
    Reason,
    Role,
    ShopConfig,
    Strategy,
    TimerKind,
    WaitKind,
)
from .reference import ReferenceEngine

__all__ = [
    "COMPILED_IMPORT_ERROR",
    "ENGINE_KIND",
    "AgentConfig",
    "AlreadyExistsError",
    "Client",
    "CompiledEngine",
    "ConversationEvent",
    "ConversationType",
    "DispatchError",
    "Engine",
    "FailedPreconditionError",
    "GroupConfig",
    "InvalidArgumentError",
    "MainAccountMode",
    "NotFoundError",
    "OfflineRule",
    "OrderState",
    "Presence",
    "Reason",
    "ReferenceEngine",
    "Role",
    "ShopConfig",
    "Strategy",
    "BusinessHours",
    "TimerKind",
    "WaitKind",
]

COMPILED_IMPORT_ERROR: str | None = None
try:
    from ._core import CompiledEngine
except ImportError as exc:  # the extension was not built
    CompiledEngine = None  # type: ignore[assignment,misc]
    COMPILED_IMPORT_ERROR = str(exc)

if os.environ.get("DISPATCH_ENGINE", "").lower() == "reference" or CompiledEngine is None:
    Engine: type = ReferenceEngine
    ENGINE_KIND = "reference"
else:
    Engine = CompiledEngine
    ENGINE_KIND = "compiled"
