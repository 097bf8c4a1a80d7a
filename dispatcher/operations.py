"""``Operate`` / ``OperateStream``: a batch of any mix of operations, applied in order (issue 13).

This is the *object path*: the request is parsed by the protobuf runtime and each
operation calls the engine exactly as its unary RPC does, with the same checks
(clock bound, caller scope) and the same errors, which land in that operation's
``OperationResult.error`` instead of ending the call. The engine's wire reader
(``operate_wire``) takes the ordinary batches without building these objects;
this path is its reference and its fallback.

Hand-outs an operation causes (a presence change draining the queue, a close
letting a queued conversation through) are drained right after it: they are
that operation's ``assignments``, and they go to WatchAssignments subscribers
like every other hand-out (``flush``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import grpc
from google.protobuf import any_pb2
from google.rpc import status_pb2

from _fastpath import DispatchError
from _fastpath.contract import DispatchCall, EngineProtocol
from _fastpath.model import InvalidArgumentError, timestamp_to_ms

from ._gen.dispatch.v1 import dispatch_pb2
from .convert import check_clock_skew, set_waiting_place

__all__ = ["KINDS", "OperationContext", "apply_operations", "check_kinds", "status_of"]

KINDS: Final = ("dispatch", "set_presence", "report_conversation", "claim_from_pool")
"""The operation kinds, as the ``Operation.kind`` oneof names them (also the metric label)."""

_CODES: Final = {code.name: code.value[0] for code in grpc.StatusCode}
_CODE_NAMES: Final = {code.value[0]: code.name for code in grpc.StatusCode}


def status_of(exc: DispatchError) -> status_pb2.Status:
    """The google.rpc.Status of an engine error: the code and message its unary form would give."""
    return status_pb2.Status(
        code=_CODES.get(exc.grpc_status, _CODES["INTERNAL"]),
        message=str(exc),
        details=[any_pb2.Any.FromString(d) for d in exc.details],
    )


class OperationContext:
    """What applying operations needs from the server around the engine."""

    __slots__ = ("engine", "flush", "max_skew_ms", "check_shop", "counts", "errors")

    def __init__(
        self,
        engine: EngineProtocol,
        flush: Callable[[], list[dispatch_pb2.Assignment]],
        max_skew_ms: int | None,
        check_shop: Callable[[str], None] | None = None,
        counts: dict[str, int] | None = None,
        errors: Any = None,
    ) -> None:
        self.engine = engine
        self.flush = flush
        """Drains the engine's outbox: the hand-outs of the operation just applied (and publishes them)."""
        self.max_skew_ms = max_skew_ms
        self.check_shop = check_shop
        """Raises PermissionDenied for a shop the caller may not touch; None: any shop."""
        self.counts = counts if counts is not None else dict.fromkeys(KINDS, 0)
        """Operations applied, by kind (successful or not)."""
        self.errors = errors
        """A Counter of error codes by name, or None."""


def _at(request: Any, now: int, max_skew_ms: int | None) -> int:
    if not request.HasField("at"):
        return now
    return check_clock_skew(timestamp_to_ms(request.at.seconds, request.at.nanos, "at"), now, max_skew_ms)


def _dispatch(ctx: OperationContext, op: dispatch_pb2.DispatchRequest, now: int) -> dispatch_pb2.OperationResult:
    call = DispatchCall(
        op.shop_id, op.buyer_id, op.conversation_id, _at(op, now, ctx.max_skew_ms), op.type, op.source,
        op.order_state, op.to_account, op.trace, op.priority,
    )  # fmt: skip
    reason, agent_id, group_id, trace = ctx.engine.dispatch(*call)
    ctx.flush()  # a dispatch hands out nothing but itself; keep the outbox empty between operations
    response = dispatch_pb2.DispatchResponse(
        agent_id=agent_id or "",
        reason=reason,  # type: ignore[arg-type]  # an int from the engine; mypy-protobuf wants its NewType
        group_id=group_id or "",
        conversation_id=op.conversation_id,
    )
    if trace:
        response.trace.extend(trace)
    set_waiting_place(response, ctx.engine, op.shop_id)  # counts its estimated wait in the engine
    return dispatch_pb2.OperationResult(dispatch=response)


def _set_presence(ctx: OperationContext, op: dispatch_pb2.SetPresenceRequest, now: int) -> dispatch_pb2.OperationResult:
    ctx.engine.set_presence(op.shop_id, op.agent_id, op.presence, op.client, _at(op, now, ctx.max_skew_ms))
    return dispatch_pb2.OperationResult(set_presence=dispatch_pb2.SetPresenceResponse(assignments=ctx.flush()))


def _report(
    ctx: OperationContext, op: dispatch_pb2.ReportConversationRequest, now: int
) -> dispatch_pb2.OperationResult:
    agent_id = ctx.engine.conversation_event(
        op.shop_id,
        op.conversation_id,
        op.event,
        _at(op, now, ctx.max_skew_ms),
        buyer_id=op.buyer_id,
        agent_id=op.agent_id,
        to_agent_id=op.to_agent_id,
        to_group_id=op.to_group_id,
    )
    response = dispatch_pb2.ReportConversationResponse(agent_id=agent_id or "", assignments=ctx.flush())
    return dispatch_pb2.OperationResult(report_conversation=response)


def _claim(ctx: OperationContext, op: dispatch_pb2.ClaimFromPoolRequest, now: int) -> dispatch_pb2.OperationResult:
    conversation_id, buyer_id = ctx.engine.claim_from_pool(
        op.shop_id, op.agent_id, _at(op, now, ctx.max_skew_ms), op.conversation_id
    )
    ctx.flush()  # the claim is its own answer
    response = dispatch_pb2.ClaimFromPoolResponse(
        conversation_id=conversation_id, buyer_id=buyer_id, agent_id=op.agent_id
    )
    return dispatch_pb2.OperationResult(claim_from_pool=response)


_APPLY: Final[dict[str, Callable[[OperationContext, Any, int], dispatch_pb2.OperationResult]]] = {
    "dispatch": _dispatch,
    "set_presence": _set_presence,
    "report_conversation": _report,
    "claim_from_pool": _claim,
}


def check_kinds(operations: Sequence[dispatch_pb2.Operation]) -> None:
    """Every operation has a kind: else INVALID_ARGUMENT for the whole call, before anything runs."""
    for i, op in enumerate(operations):
        if op.WhichOneof("kind") is None:
            raise InvalidArgumentError(f"operations[{i}] has no kind (set one of {', '.join(KINDS)})")


def apply_operations(
    ctx: OperationContext, operations: Sequence[dispatch_pb2.Operation], now: int, limit: int | None = None
) -> dispatch_pb2.OperateResponse:
    """Apply ``operations`` in order; one result each. ``now`` is the batch's reading of the clock,
    used for every operation without ``at``. Engine errors become the operation's ``error``;
    anything else (a journal that cannot write) propagates and ends the call. Operations from
    index ``limit`` on are not applied: each answers RESOURCE_EXHAUSTED (flow control)."""
    check_kinds(operations)
    out = dispatch_pb2.OperateResponse()
    results = out.results
    counts = ctx.counts
    check_shop = ctx.check_shop
    for index, op in enumerate(operations):
        if limit is not None and index >= limit:
            message = (
                f"the server has too many operations in flight; operations[{index}:] were not applied, "
                "retry them with backoff"
            )
            for _ in range(index, len(operations)):
                results.add(error=status_pb2.Status(code=_CODES["RESOURCE_EXHAUSTED"], message=message))
            if ctx.errors is not None:
                ctx.errors["RESOURCE_EXHAUSTED"] += len(operations) - index
            break
        kind = op.WhichOneof("kind")
        assert kind is not None
        counts[kind] += 1
        body = getattr(op, kind)
        try:
            if check_shop is not None:
                check_shop(body.shop_id)
            result = _APPLY[kind](ctx, body, now)
        except DispatchError as exc:
            ctx.flush()
            status = status_of(exc)
            if ctx.errors is not None:
                ctx.errors[_CODE_NAMES.get(status.code, "UNKNOWN")] += 1
            results.add(error=status)
            continue
        results.append(result)
    return out
