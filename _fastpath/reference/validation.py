"""Validation at the boundary (spec §9: a precise error, and the state unchanged).

Every public call checks all its arguments before it changes anything; a
refusal is one of the typed errors of ``_fastpath.model`` with the message
both engines give. The checks themselves (``check_id``, ``check_time``,
``check_enum``) live in ``model``, shared with the configuration records and
the compiled engine's messages; this part re-exports them and names the enum
arguments of the engine's calls with their defaults.

Looking an id up (unknown shop, unknown agent: NOT_FOUND) is
``routing.Router.shop_for`` / ``agent_for``.
"""

from __future__ import annotations

from ..model import (
    Client,
    ConversationEvent,
    ConversationType,
    InvalidArgumentError,
    OrderState,
    Presence,
    check_enum,
    check_id,
    check_priority,
    check_time,
)

__all__ = [
    "check_client",
    "check_conversation_type",
    "check_enum",
    "check_event",
    "check_id",
    "check_order_state",
    "check_presence",
    "check_priority",
    "check_time",
]


def check_presence(value: object) -> int:
    """A presence to set: a ``Presence`` other than UNSPECIFIED."""
    presence = check_enum(value, Presence, "presence")
    if presence == Presence.UNSPECIFIED:
        raise InvalidArgumentError("presence is required")
    return presence


def check_client(value: object) -> int:
    """A ``Client``; UNSPECIFIED means DESKTOP."""
    return check_enum(value, Client, "client") or Client.DESKTOP


def check_conversation_type(value: object) -> int:
    """A ``ConversationType``; UNSPECIFIED means BUYER_TO_SHOP."""
    return check_enum(value, ConversationType, "type") or ConversationType.BUYER_TO_SHOP


def check_order_state(value: object) -> int:
    """An ``OrderState``; UNSPECIFIED is valid and matches no group binding."""
    return check_enum(value, OrderState, "order_state")


def check_event(value: object) -> int:
    """A ``ConversationEvent`` number. UNSPECIFIED passes here: ``conversation_event``
    refuses it only after its other arguments are checked, as the compiled engine does."""
    return check_enum(value, ConversationEvent, "event")
