"""Enum arguments by number or by name, full or short, as the bootstrap file takes them.

``order_state=pb.OrderState.ORDER_STATE_NO_ORDER`` (a number), ``"ORDER_STATE_NO_ORDER"``,
``"NO_ORDER"`` and ``"no_order"`` are the same argument: a name is matched without
regard to case or surrounding spaces, with or without the enum's prefix (the enum's
name in UPPER_SNAKE_CASE and ``_``: ``ORDER_STATE_``, ``PRESENCE_``, ``CONVERSATION_EVENT_``).
An unknown name raises ``ValueError`` naming the enum and its values.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final, TypeAlias

from google.protobuf import descriptor

__all__ = ["EnumArg", "coerce_fields", "enum_number", "enum_prefix"]

EnumArg: TypeAlias = int | str
"""An enum argument: its number (``pb.Presence.PRESENCE_ONLINE``) or its name, full or short
(``"PRESENCE_ONLINE"``, ``"ONLINE"``, ``"online"``)."""

_CAMEL: Final = re.compile(r"(?<!^)(?=[A-Z])")


@functools.cache
def enum_prefix(enum: descriptor.EnumDescriptor) -> str:
    """The prefix of the enum's value names: ``OrderState`` -> ``ORDER_STATE_``."""
    return _CAMEL.sub("_", enum.name).upper() + "_"


def enum_number(enum: descriptor.EnumDescriptor, value: Any, what: str = "") -> int:
    """The number of ``value`` (a number, or a full or short name) in ``enum``."""
    if isinstance(value, bool):
        raise ValueError(f"{what or enum.name}: {value!r} is not a {enum.name}")
    if isinstance(value, int):
        return value  # the server checks the range
    if isinstance(value, str):
        name = value.strip().upper()
        for candidate in (name, enum_prefix(enum) + name):
            found = enum.values_by_name.get(candidate)
            if found is not None:
                return int(found.number)
    prefix = enum_prefix(enum)
    names = ", ".join(v.name.removeprefix(prefix) for v in enum.values if v.number != 0)
    raise ValueError(f"{what or enum.name}: {value!r} is not a {enum.name} (one of {names}, with or without {prefix})")


def coerce_fields(message: descriptor.Descriptor, fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` (keywords of ``message``'s constructor) with the enum names made numbers
    (a repeated enum field takes a list of them). Other values are left as they are."""
    out = dict(fields)
    for key, value in fields.items():
        field = message.fields_by_name.get(key)
        if field is None or field.enum_type is None or value is None:
            continue
        what = f"{message.name}.{key}"
        if _repeated(field) and isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
            out[key] = [enum_number(field.enum_type, item, what) for item in value]
        else:
            out[key] = enum_number(field.enum_type, value, what)
    return out


def _repeated(field: descriptor.FieldDescriptor) -> bool:
    is_repeated = getattr(field, "is_repeated", None)  # newer protobuf; ``label`` is deprecated there
    if is_repeated is not None:
        return bool(is_repeated)
    return bool(getattr(field, "label", 0) == descriptor.FieldDescriptor.LABEL_REPEATED)
