"""Operate (issue 13): a batch of any mix of operations read from the wire, in order.

The twin of the compiled ``operations.pyx``. ``operate_wire`` reads an
``OperateRequest`` with the codec of ``_fastpath/wire.py``, applies each
operation exactly as its unary call does (the engine's own ``dispatch``,
``set_presence``, ``conversation_event``, ``claim_from_pool``) and writes the
``OperateResponse``. Invariants: an operation's error changes nothing and
becomes its own result; the hand-outs an operation causes are the outbox
entries it appended, encoded as its ``assignments`` and left in the outbox
for ``drain_outbox`` (the watchers); a batch the codec declines changes
nothing (``None``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..model import DispatchError
from ..wire import (
    OP_DISPATCH,
    OP_REPORT_CONVERSATION,
    OP_SET_PRESENCE,
    WireClaim,
    WireEvent,
    WireItem,
    WirePresence,
    check_operations_size,
    encode_claim_response,
    encode_decision,
    encode_event_response,
    encode_operate_response,
    encode_presence_response,
    encode_result,
    encode_result_error,
    error_code,
    operation_at,
    operations_beyond,
    parse_operate_request,
)

if TYPE_CHECKING:
    from .engine import ReferenceEngine

__all__ = ["operate_wire"]


def operate_wire(
    self: ReferenceEngine, data: bytes, now_ms: int, max_items: int, max_at_ms: int | None = None
) -> tuple[bytes, int, int] | None:
    """``ReferenceEngine.operate_wire``: (response bytes, operations, operations that failed) or None."""
    ops = parse_operate_request(bytes(data))
    if ops is None or operations_beyond(ops, max_at_ms):
        return None
    check_operations_size(len(ops), max_items)
    results = []
    failed = 0
    outbox = self._outbox
    for kind, item in ops:
        self._operations[kind] += 1
        start = len(outbox)
        try:
            if kind == OP_DISPATCH:
                assert isinstance(item, WireItem)
                body = encode_decision(self, item.shop_id, item.conversation_id, self.dispatch(*item.call(now_ms)))
            elif kind == OP_SET_PRESENCE:
                assert isinstance(item, WirePresence)
                at = operation_at(item, now_ms)
                self.set_presence(item.shop_id, item.agent_id, item.presence, item.client, at)
                body = encode_presence_response(outbox[start:])
            elif kind == OP_REPORT_CONVERSATION:
                assert isinstance(item, WireEvent)
                at = operation_at(item, now_ms)
                served = self.conversation_event(
                    item.shop_id, item.conversation_id, item.event, at, item.buyer_id, item.agent_id,
                    item.to_agent_id, item.to_group_id,
                )  # fmt: skip
                body = encode_event_response(served, outbox[start:])
            else:
                assert isinstance(item, WireClaim)
                at = operation_at(item, now_ms)
                conversation_id, buyer_id = self.claim_from_pool(item.shop_id, item.agent_id, at, item.conversation_id)
                body = encode_claim_response(conversation_id, buyer_id, item.agent_id)
        except DispatchError as exc:
            results.append(encode_result_error(error_code(exc), str(exc), exc.details))
            failed += 1
            continue
        results.append(encode_result(kind, body))
    return encode_operate_response(results), len(ops), failed
