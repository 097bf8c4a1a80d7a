"""Tables for people: plain aligned columns, times in UTC, a shop's state as ``shop show`` prints it."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from typing import Any, Final

from google.protobuf import duration_pb2, json_format, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from .._gen.dispatch.v1 import admin_pb2, common_pb2

_OFFLINE: Final = common_pb2.PRESENCE_OFFLINE

__all__ = [
    "format_duration",
    "format_hours",
    "format_ms",
    "format_timestamp",
    "message_dict",
    "message_json",
    "pairs",
    "render_shop_state",
    "shop_summary_row",
    "table",
]

_DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_MINUTES: Final = 24 * 60


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Left-aligned columns two spaces apart; the header in capitals; no trailing blanks."""
    text_rows = [[str(cell) for cell in row] for row in rows]
    all_rows = [[h.upper() for h in headers], *text_rows]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in all_rows]
    return "\n".join(lines)


def pairs(rows: Iterable[tuple[str, object]]) -> str:
    """``name  value`` lines, the values aligned (no header)."""
    items = [(name, str(value)) for name, value in rows]
    width = max((len(name) for name, _ in items), default=0)
    return "\n".join(f"{name.ljust(width)}  {value}".rstrip() for name, value in items)


def message_dict(message: Message, *, defaults: bool = False) -> dict[str, Any]:
    """A message as JSON data: proto field names, enum names, Timestamps in RFC 3339."""
    out: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=defaults
    )
    return out


def message_json(message: Message, *, compact: bool = False, defaults: bool = False) -> str:
    """``MessageToJson`` with proto field names: indented, or one line (``compact``)."""
    if compact:
        return json.dumps(message_dict(message, defaults=defaults), ensure_ascii=False, separators=(",", ":"))
    return json_format.MessageToJson(
        message,
        preserving_proto_field_name=True,
        indent=2,
        ensure_ascii=False,
        always_print_fields_with_no_presence=defaults,
    )


def format_ms(ms: int | None) -> str:
    """Epoch milliseconds as RFC 3339 UTC (``2024-05-01T12:00:00.250Z``); ``-`` for None."""
    if ms is None:
        return "-"
    try:
        when = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms"
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{ms % 1000:03d}Z" if ms % 1000 else f"{text}Z"


def format_timestamp(ts: timestamp_pb2.Timestamp) -> str:
    return format_ms(ts.seconds * 1000 + ts.nanos // 1_000_000)


def format_duration(d: duration_pb2.Duration) -> str:
    """``72h``, ``1h30m``, ``250ms``; ``0`` for none (as the bootstrap file writes them)."""
    ms = d.seconds * 1000 + d.nanos // 1_000_000
    if ms == 0:
        return "0"
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        if ms >= size:
            parts.append(f"{ms // size}{unit}")
            ms %= size
    return "".join(parts)


def _minute(m: int) -> str:
    if m > _DAY_MINUTES:  # the next day's minute (1441 .. 2880)
        return f"{_minute(m - _DAY_MINUTES)}(+1d)"
    return f"{m // 60:02d}:{m % 60:02d}"


def _days(days: list[int]) -> str:
    """``mon-fri``, ``mon,wed``, ``daily``."""
    if days == list(range(7)):
        return "daily"
    runs: list[list[int]] = []
    for d in sorted(days):
        if runs and runs[-1][-1] == d - 1:
            runs[-1].append(d)
        else:
            runs.append([d])
    return ",".join(_DAYS[r[0]] if len(r) == 1 else f"{_DAYS[r[0]]}-{_DAYS[r[-1]]}" for r in runs)


def format_hours(hours: admin_pb2.BusinessHours) -> str:
    """Business hours as the bootstrap file writes them: ``mon-fri 09:00-18:00; 2026-12-25 closed``."""
    if not hours.weekly and not hours.exceptions:
        return "always open"
    by_interval: dict[tuple[int, int], list[int]] = {}
    for w in hours.weekly:
        by_interval.setdefault((w.open_minute, w.close_minute), []).append(w.day_of_week)
    parts = [f"{_days(days)} {_minute(a)}-{_minute(b)}" for (a, b), days in by_interval.items()]
    if not hours.weekly:
        parts.append("daily 00:00-24:00")  # no weekly interval: every day not named below is open
    for e in hours.exceptions:
        spans = ", ".join(f"{_minute(i.open_minute)}-{_minute(i.close_minute)}" for i in e.intervals)
        parts.append(f"{e.date} {'closed' if e.closed else spans}")
    return "; ".join(parts)


def _enum_name(field: Any, value: int) -> str:
    enum = field.enum_type
    assert enum is not None
    item = enum.values_by_number.get(value)
    if item is None:
        return str(value)
    prefix = "".join(c if c.islower() or c.isdigit() else f"_{c}" for c in enum.name).upper().lstrip("_") + "_"
    name: str = item.name
    return name.removeprefix(prefix)


def _setting(config: Message, field: FieldDescriptor) -> str:
    value = getattr(config, field.name)
    if field.message_type is not None:
        if not config.HasField(field.name):
            return "unset"
        if isinstance(value, duration_pb2.Duration):
            return format_duration(value)
        if isinstance(value, admin_pb2.BusinessHours):
            return format_hours(value)
        return json.dumps(message_dict(value), ensure_ascii=False)
    if field.enum_type is not None:
        return _enum_name(field, int(value))
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str) and not value:
        return '""'
    return str(value)


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _short(field: str, message: Message, value: int) -> str:
    return _enum_name(message.DESCRIPTOR.fields_by_name[field], value)


def render_shop_state(state: admin_pb2.ShopState) -> str:
    """A shop's state for people: the summary, agents, groups, what waits, deadlines, settings."""
    config = state.config
    tz = config.timezone or "UTC"
    open_text = _yes(state.open_now)
    if state.HasField("open_now_until"):
        open_text += f" (until {format_timestamp(state.open_now_until)})"
    waiting = len(state.queue) + len(state.staging) + len(state.pool)
    out = [
        f"shop {state.shop_id}",
        pairs(
            [
                ("clock", format_timestamp(state.clock)),
                ("open now", f"{open_text}, time zone {tz}"),
                ("live conversations", state.live_conversations),
                (
                    "waiting",
                    f"{waiting} (queue {len(state.queue)}, staging {len(state.staging)}, pool {len(state.pool)})",
                ),
                ("pending deadlines", state.pending_deadlines),
            ]
        ),
        "",
        f"agents ({len(state.agents)})",
    ]
    if state.agents:
        rows: list[tuple[object, ...]] = []
        for a in state.agents:
            load = f"{a.active}/{a.max_capacity}" if a.max_capacity else f"{a.active}/no limit"
            rows.append(
                (
                    a.agent_id,
                    _short("role", a, a.role),
                    _short("presence", a, a.presence),
                    _short("client", a, a.client),
                    load,
                    a.unread,
                    a.today,
                    a.weight,
                    _yes(a.chat_permission),
                    ",".join(a.groups) or "-",
                    format_timestamp(a.offline_at) if a.HasField("offline_at") and a.presence == _OFFLINE else "-",
                )
            )
        headers = ("agent", "role", "presence", "client", "active/max", "unread", "today", "weight", "chat")
        out.append(table((*headers, "groups", "offline since"), rows))
    out += ["", f"groups ({len(state.groups)})"]
    if state.groups:
        out.append(
            table(
                ("group", "open", "members", "hours"),
                [
                    (
                        g.group_id,
                        _yes(g.open_now),
                        ",".join(g.members) or "-",
                        format_hours(g.business_hours) if g.HasField("business_hours") else "the shop's",
                    )
                    for g in state.groups
                ],
            )
        )
    out += ["", f"waiting ({waiting})"]
    if waiting:
        waits: list[tuple[object, ...]] = [
            (name, w.position, w.conversation_id, w.buyer_id, w.priority, format_timestamp(w.since))
            for name, items in (("queue", state.queue), ("staging", state.staging), ("pool", state.pool))
            for w in items
        ]
        out.append(table(("list", "position", "conversation", "buyer", "priority", "since"), waits))
    out += ["", f"deadlines ({state.pending_deadlines} pending)"]
    if state.next_deadlines:
        out.append(
            table(
                ("at", "kind", "conversation / agent"),
                [
                    (format_timestamp(d.at), d.kind, d.conversation_id or d.agent_id or "-")
                    for d in state.next_deadlines
                ],
            )
        )
    out += ["", "settings"]
    out.append(pairs((f.name, _setting(config, f)) for f in config.DESCRIPTOR.fields))
    return "\n".join(out)


def shop_summary_row(state: admin_pb2.ShopState) -> tuple[object, ...]:
    """One line of ``dispatcher shops --long``."""
    online = sum(1 for a in state.agents if a.presence == 1)  # PRESENCE_ONLINE
    return (
        state.shop_id,
        len(state.agents),
        online,
        state.live_conversations,
        len(state.queue),
        len(state.staging),
        len(state.pool),
        _yes(state.open_now),
    )
