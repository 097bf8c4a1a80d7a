"""Journal records: one per successful mutating engine call, and their replay.

A record is the JSON array ``[op, *arguments]`` of the exact engine call (``op``
is the engine method's name: ``"dispatch"``, ``"set_presence"``, ``"put_shop"``...;
data dirs written before that used ``"d"``, ``"p"``, ``"e"``, ``"c"`` for the four
events, and those are still read),
with the ``at_ms`` the server resolved (never "now"), or, for a
``DispatchBatch``/``DispatchStream`` batch the engine read from the wire, a
binary record holding the request bytes and the batch's ``now`` (one record per
batch, not per item). A unary ``Dispatch`` the engine read from the wire is
recorded as the one-item batch of its request (``batch_of_one``): the batch
path decides an ordinary item exactly as the unary path does. Replaying the records
in order on the state of a snapshot rebuilds exactly the state that was built
live (the engine is deterministic).

``JournaledEngine`` wraps an engine: its mutating methods call the engine and,
when the call succeeded, append the record *synchronously*, in the same
event-loop step, so the journal order is the order in which the engine applied
the calls. Failed calls (``DispatchError``) change nothing and write nothing;
non buyer-to-shop dispatches (``DIRECT``) and retried dispatches of an open
conversation (spec §12, seen as the engine's ``retry_count`` moving) change
nothing and write nothing. Inside a wire or operate batch record a retry is
replayed with the batch, and answers (and changes) the same on replay.
A dispatch record carries its priority (spec §11) as a 10th argument, after
the trace (always False), only when it is not 0.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from typing import Any, Final

from _fastpath import AgentConfig, GroupConfig, Reason, ShopConfig
from _fastpath.contract import DispatchCall, EngineProtocol
from _fastpath.wire import batch_of_one, response_reason

__all__ = ["READ_ONLY", "JournaledEngine", "RecordError", "apply_record", "encode"]


class RecordError(ValueError):
    """A record that passed its CRC but cannot be applied: the journal does not match the engine."""


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False).encode

_BUYER_TO_SHOP: Final = (0, 1)  # UNSPECIFIED is treated as BUYER_TO_SHOP

READ_ONLY: Final = frozenset(
    {
        "kind", "seed", "has_shop", "shop_ids", "shop_config", "shop_state", "conversation",
        "recent_contact", "exclusive_agent", "table_sizes", "export_state", "drain_outbox",
        "totals", "effective_strategy", "decision_counts", "operation_counts", "pending_deadlines",
        "waiting_position", "retry_count", "estimate_counts", "note_estimate",
    }
)  # fmt: skip
"""Engine attributes the wrapper passes through. Anything else fails loudly, so a
new mutating engine method cannot be called without being journaled."""


def encode(record: list[Any]) -> bytes:
    return _dumps(record).encode()


class JournaledEngine:
    """An engine whose successful mutating calls are appended to a journal."""

    __slots__ = ("engine", "_append", "_check")

    def __init__(
        self, engine: EngineProtocol, append: Callable[[bytes], int], check: Callable[[], None] | None = None
    ) -> None:
        self.engine = engine
        self._append = append
        self._check = check if check is not None else _writable
        """Raises (``JournalUnavailable``) when a record could not be made durable now: called
        *before* the engine, so a refused call changes nothing."""

    def __getattr__(self, name: str) -> Any:
        if name in READ_ONLY:
            return getattr(self.engine, name)
        raise AttributeError(
            f"JournaledEngine has no {name!r}: a mutating engine call must be journaled "
            "(add it to dispatcher/durability/records.py)"
        )

    @property
    def foreign_shop(self) -> Any:
        """The engine's cluster hook (not state, so not journaled)."""
        return self.engine.foreign_shop

    @foreign_shop.setter
    def foreign_shop(self, hook: Any) -> None:
        self.engine.foreign_shop = hook

    # ---------------------------------------------------------------- configuration

    def put_shop(self, config: ShopConfig) -> None:
        self._check()
        self.engine.put_shop(config)
        self._append(encode(["put_shop", dataclasses.asdict(config)]))

    def delete_shop(self, shop_id: str) -> None:
        self._check()
        self.engine.delete_shop(shop_id)
        self._append(encode(["delete_shop", shop_id]))

    def put_agent(self, config: AgentConfig) -> None:
        self._check()
        self.engine.put_agent(config)
        self._append(encode(["put_agent", dataclasses.asdict(config)]))

    def delete_agent(self, shop_id: str, agent_id: str) -> None:
        self._check()
        self.engine.delete_agent(shop_id, agent_id)
        self._append(encode(["delete_agent", shop_id, agent_id]))

    def put_group(self, config: GroupConfig) -> None:
        self._check()
        self.engine.put_group(config)
        self._append(encode(["put_group", dataclasses.asdict(config)]))

    def delete_group(self, shop_id: str, group_id: str) -> None:
        self._check()
        self.engine.delete_group(shop_id, group_id)
        self._append(encode(["delete_group", shop_id, group_id]))

    def set_exclusive_agent(self, shop_id: str, buyer_id: str, agent_id: str) -> None:
        self._check()
        self.engine.set_exclusive_agent(shop_id, buyer_id, agent_id)
        self._append(encode(["set_exclusive_agent", shop_id, buyer_id, agent_id]))

    def delete_exclusive_agent(self, shop_id: str, buyer_id: str) -> None:
        self._check()
        self.engine.delete_exclusive_agent(shop_id, buyer_id)
        self._append(encode(["delete_exclusive_agent", shop_id, buyer_id]))

    # ---------------------------------------------------------------- time (spec §10)

    def tick(self, now_ms: int) -> int:
        """The server's clock ticking: every shop's deadlines due by ``now_ms`` fire. Recorded
        (``["tick", now_ms]``) only when one fired, so replay fires exactly the same ones."""
        self._check()
        fired = self.engine.tick(now_ms)
        if fired:
            self._append(encode(["tick", now_ms]))
        return fired

    def tick_shop(self, shop_id: str, at_ms: int) -> int:
        self._check()
        fired = self.engine.tick_shop(shop_id, at_ms)
        if fired:
            self._append(encode(["tick_shop", shop_id, at_ms]))
        return fired

    def _due_first(self, shop_id: str, at_ms: int) -> None:
        """A call with ``at`` first fires its shop's deadlines due by then, as a record of its
        own: the call may then be refused (not recorded) or be a retry (not recorded), and
        replay still fires them at the same point."""
        if self.engine.tick_shop(shop_id, at_ms):
            self._append(encode(["tick_shop", shop_id, at_ms]))

    # ---------------------------------------------------------------- events

    def set_presence(self, shop_id: str, agent_id: str, presence: int, client: int, at_ms: int) -> None:
        self._check()
        self._due_first(shop_id, at_ms)
        self.engine.set_presence(shop_id, agent_id, presence, client, at_ms)
        self._append(_dumps(["set_presence", shop_id, agent_id, int(presence), int(client), at_ms]).encode())

    def conversation_event(
        self,
        shop_id: str,
        conversation_id: str,
        event: int,
        at_ms: int,
        buyer_id: str = "",
        agent_id: str = "",
        to_agent_id: str = "",
        to_group_id: str = "",
    ) -> str | None:
        self._check()
        self._due_first(shop_id, at_ms)
        result = self.engine.conversation_event(
            shop_id, conversation_id, event, at_ms, buyer_id, agent_id, to_agent_id, to_group_id
        )
        self._append(
            _dumps(
                [
                    "conversation_event",
                    shop_id,
                    conversation_id,
                    int(event),
                    at_ms,
                    buyer_id,
                    agent_id,
                    to_agent_id,
                    to_group_id,
                ]
            ).encode()
        )
        return result

    def claim_from_pool(self, shop_id: str, agent_id: str, at_ms: int, conversation_id: str = "") -> tuple[str, str]:
        self._check()
        self._due_first(shop_id, at_ms)
        result = self.engine.claim_from_pool(shop_id, agent_id, at_ms, conversation_id)
        self._append(_dumps(["claim_from_pool", shop_id, agent_id, at_ms, conversation_id]).encode())
        return result

    def dispatch(
        self,
        shop_id: str,
        buyer_id: str,
        conversation_id: str,
        at_ms: int,
        conv_type: int = 1,
        source: str = "",
        order_state: int = 0,
        to_account: str = "",
        trace: bool = False,
        priority: int = 0,
    ) -> tuple[int, str | None, str | None, list[str] | None]:
        self._check()
        call = DispatchCall(
            shop_id, buyer_id, conversation_id, at_ms, int(conv_type), source, int(order_state), to_account, trace,
            priority,
        )  # fmt: skip
        if conv_type in _BUYER_TO_SHOP:
            self._due_first(shop_id, at_ms)
        retries = self.engine.retry_count()
        result = self.engine.dispatch(*call)
        # A retry of an open conversation (§12) changes nothing: not recorded, like DIRECT.
        if conv_type in _BUYER_TO_SHOP and self.engine.retry_count() == retries:
            # The trace changes nothing: recorded as False, and left out with a priority of 0
            # (the record of data dirs written before priorities).
            args = list(call[:8]) if not priority else [*call[:8], False, priority]
            self._append(_dumps(["dispatch", *args]).encode())
        return result

    def dispatch_batch_wire(
        self, data: bytes, now_ms: int, max_items: int, max_at_ms: int | None = None
    ) -> tuple[bytes, int] | None:
        self._check()
        # max_at_ms (the server's clock bound) is not recorded: a batch with an item
        # beyond it is declined (None, not journaled), so replay needs no bound.
        answer = self.engine.dispatch_batch_wire(data, now_ms, max_items, max_at_ms)
        if answer is not None:  # None: nothing was read, nothing changed
            self._append(b"".join((_WIRE_BATCH, now_ms.to_bytes(8, "big", signed=True), data)))
        return answer

    def dispatch_wire(self, data: bytes, now_ms: int, max_at_ms: int | None = None) -> bytes | None:
        self._check()
        retries = self.engine.retry_count()
        answer = self.engine.dispatch_wire(data, now_ms, max_at_ms)
        # Journaled as the one-item batch that decides it alike; point-to-point
        # (DIRECT) answers and retries (§12) change nothing and write nothing, as in dispatch().
        if answer is not None and response_reason(answer) != Reason.DIRECT and self.engine.retry_count() == retries:
            self._append(b"".join((_WIRE_BATCH, now_ms.to_bytes(8, "big", signed=True), batch_of_one(data))))
        return answer

    def operate_wire(
        self, data: bytes, now_ms: int, max_items: int, max_at_ms: int | None = None
    ) -> tuple[bytes, int, int] | None:
        self._check()
        # One record per batch, as for dispatch_batch_wire: failed operations fail again on
        # replay, identically, and change nothing either time; max_at_ms is not recorded (a
        # batch with an operation beyond it is declined, None, and not journaled).
        answer = self.engine.operate_wire(data, now_ms, max_items, max_at_ms)
        if answer is not None:
            self._append(b"".join((_OPERATE_BATCH, now_ms.to_bytes(8, "big", signed=True), data)))
        return answer


def _writable() -> None:
    return None


_OPERATE_BATCH: Final = b"\x00O"
"""Binary record: an OperateRequest as received, replayed with operate_wire (same header
as ``_WIRE_BATCH``: the batch's ``now_ms``, 8 bytes big-endian, then the request bytes)."""

_WIRE_BATCH: Final = b"\x00B"
"""Binary record: a DispatchBatchRequest as received, replayed with dispatch_batch_wire.
Its 2-byte tag is followed by the batch's ``now_ms`` (8 bytes, big-endian) and the
request bytes. JSON records start with ``[``, so the first byte tells them apart."""


def _group(data: dict[str, Any]) -> GroupConfig:
    return GroupConfig(
        **{**data, "members": tuple(data["members"]), "order_states": tuple(data["order_states"]),
           "sources": tuple(data["sources"])}
    )  # fmt: skip


_APPLY: Final[dict[str, Callable[[Any, list[Any]], Any]]] = {
    "dispatch": lambda e, a: e.dispatch(*a),
    "set_presence": lambda e, a: e.set_presence(*a),
    "conversation_event": lambda e, a: e.conversation_event(*a),
    "claim_from_pool": lambda e, a: e.claim_from_pool(*a),
    "put_shop": lambda e, a: e.put_shop(ShopConfig(**a[0])),
    "delete_shop": lambda e, a: e.delete_shop(*a),
    "put_agent": lambda e, a: e.put_agent(AgentConfig(**a[0])),
    "delete_agent": lambda e, a: e.delete_agent(*a),
    "put_group": lambda e, a: e.put_group(_group(a[0])),
    "delete_group": lambda e, a: e.delete_group(*a),
    "set_exclusive_agent": lambda e, a: e.set_exclusive_agent(*a),
    "delete_exclusive_agent": lambda e, a: e.delete_exclusive_agent(*a),
    "tick": lambda e, a: e.tick(*a),
    "tick_shop": lambda e, a: e.tick_shop(*a),
}

_APPLY.update(
    {  # the one-letter names of data dirs written before the records were named in words
        "d": _APPLY["dispatch"],
        "p": _APPLY["set_presence"],
        "e": _APPLY["conversation_event"],
        "c": _APPLY["claim_from_pool"],
    }
)

_loads = json.JSONDecoder().decode


def apply_record(engine: Any, payload: bytes | memoryview) -> None:
    """Re-issue the engine call of one record. Raises RecordError if it does not apply."""
    if payload[:2] == _WIRE_BATCH:
        _apply_wire_batch(engine, bytes(payload[2:]))
        return
    if payload[:2] == _OPERATE_BATCH:
        _apply_operate_batch(engine, bytes(payload[2:]))
        return
    try:
        record = _loads(str(payload, "utf-8"))
        fn = _APPLY[record[0]]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise RecordError(f"undecodable record: {exc}") from exc
    try:
        fn(engine, record[1:])
    except Exception as exc:  # DispatchError or a malformed argument list
        raise RecordError(f"record {record[0]!r} does not apply: {type(exc).__name__}: {exc}") from exc


def _apply_wire_batch(engine: Any, body: bytes) -> None:
    if len(body) < 8:
        raise RecordError("undecodable record: a wire batch record shorter than its header")
    try:
        answer = engine.dispatch_batch_wire(body[8:], int.from_bytes(body[:8], "big", signed=True), sys.maxsize)
    except Exception as exc:
        raise RecordError(f"record 'wire batch' does not apply: {type(exc).__name__}: {exc}") from exc
    if answer is None:
        raise RecordError("record 'wire batch' does not apply: the engine did not read the batch")


def _apply_operate_batch(engine: Any, body: bytes) -> None:
    if len(body) < 8:
        raise RecordError("undecodable record: an operate batch record shorter than its header")
    try:
        answer = engine.operate_wire(body[8:], int.from_bytes(body[:8], "big", signed=True), sys.maxsize)
    except Exception as exc:
        raise RecordError(f"record 'operate batch' does not apply: {type(exc).__name__}: {exc}") from exc
    if answer is None:
        raise RecordError("record 'operate batch' does not apply: the engine did not read the batch")
