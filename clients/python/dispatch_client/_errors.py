"""One exception hierarchy for every failure of a call, whatever path it took.

Every method of the clients (blocking, async, cluster; unary, batched, streamed)
raises a ``DispatchError`` instead of grpc's raw ``_InactiveRpcError`` /
``AioRpcError``. The class says the status code (``NotFound``, ``InvalidArgument``,
... one per ``grpc.StatusCode``); a call that went in a batch raises an
``OperationError`` of that code (``isinstance(e, NotFound) and isinstance(e,
OperationError)``); a WRONG_NODE refusal of a cluster node is a ``WrongNodeError``
(a ``FailedPrecondition``) that names the owner.

A ``DispatchError`` is still a ``grpc.RpcError`` (and a ``grpc.aio.AioRpcError``) with
grpc's accessors, so code written against the raw errors keeps working:

- ``e.code()`` — the ``grpc.StatusCode`` (also ``e.status_code``);
- ``e.details()`` — the message (grpc's name for it; also ``e.message``), with a hint
  appended where the client knows a likely cause;
- ``e.error_details`` — the decoded details of the rich ``google.rpc.Status``
  (``google.rpc.ErrorInfo``, ``BadRequest``...; an ``Any`` whose type is unknown stays packed);
- ``e.status`` — that ``google.rpc.Status`` (code, the server's message, packed details);
- ``e.trailing_metadata()`` — with the status under ``grpc-status-details-bin`` when it
  has details, as gRPC sends it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, ClassVar, Final, TypeVar, cast

import grpc
from google.protobuf import any_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped,unused-ignore]

__all__ = [
    "ERROR_DOMAIN",
    "WRONG_NODE",
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "DataLoss",
    "DeadlineExceeded",
    "DispatchError",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OperationError",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "WrongNode",
    "WrongNodeError",
    "error_for",
    "error_from_rpc",
    "error_of",
    "raises_dispatch_errors",
    "wrong_node_of",
]

WRONG_NODE: Final = "WRONG_NODE"
"""``google.rpc.ErrorInfo.reason`` of a call sent to a node that does not own its shop."""
ERROR_DOMAIN: Final = "dispatch.v1"
"""``google.rpc.ErrorInfo.domain`` of the server's own error details."""
DETAILS_KEY: Final = "grpc-status-details-bin"
_CODE_BY_NUMBER: Final = {code.value[0]: code for code in grpc.StatusCode}
_AGENT_NOT_FOUND: Final = re.compile(r"^agent (['\"])(?P<agent>.*?)\1 not found in shop (['\"])(?P<shop>.*?)\3")


def code_of_number(number: int) -> grpc.StatusCode:
    """The ``grpc.StatusCode`` of a ``google.rpc.Status.code`` (UNKNOWN for a number gRPC lacks)."""
    return _CODE_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


# ---------------------------------------------------------------- WRONG_NODE


@dataclasses.dataclass(frozen=True, slots=True)
class WrongNode:
    """What a WRONG_NODE refusal says: the shop, its partition, the owner and its address,
    and the epoch of the refusing node's map."""

    shop_id: str
    partition: int
    owner: str
    owner_address: str
    epoch: int


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def _wrong_node_in_details(details: tuple[Message, ...]) -> WrongNode | None:
    for info in details:
        if not isinstance(info, error_details_pb2.ErrorInfo):
            continue
        if info.reason != WRONG_NODE or info.domain != ERROR_DOMAIN:
            continue
        meta = info.metadata
        return WrongNode(
            shop_id=meta.get("shop_id", ""),
            partition=_int(meta.get("partition", "")),
            owner=meta.get("owner", ""),
            owner_address=meta.get("owner_address", ""),
            epoch=_int(meta.get("epoch", "")),
        )
    return None


def wrong_node_in(status: status_pb2.Status) -> WrongNode | None:
    """The WRONG_NODE refusal a ``google.rpc.Status`` carries (FAILED_PRECONDITION with the
    ErrorInfo), or None."""
    if status.code != grpc.StatusCode.FAILED_PRECONDITION.value[0]:
        return None
    return _wrong_node_in_details(decode_details(status))


# ---------------------------------------------------------------- the rich status


def _decode(packed: any_pb2.Any) -> Message:
    """An ``Any`` of the status details unpacked into its message, when its type is known here."""
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(packed.TypeName())
    except KeyError:
        return packed
    message = message_factory.GetMessageClass(descriptor)()
    try:
        return message if packed.Unpack(message) else packed
    except DecodeError:
        return packed


def decode_details(status: status_pb2.Status) -> tuple[Message, ...]:
    """The details of a ``google.rpc.Status``, unpacked (``ErrorInfo``, ``BadRequest``...)."""
    return tuple(_decode(packed) for packed in status.details)


def status_in_metadata(metadata: Any) -> status_pb2.Status | None:
    """The rich ``google.rpc.Status`` in a call's trailing metadata (``grpc-status-details-bin``)."""
    for key, value in metadata or ():
        if key == DETAILS_KEY and isinstance(value, bytes):
            try:
                return cast(status_pb2.Status, status_pb2.Status.FromString(value))
            except DecodeError:
                return None
    return None


def _hint(code: grpc.StatusCode, message: str) -> str:
    """A likely cause the client can name for an error, or ''."""
    if code == grpc.StatusCode.NOT_FOUND:
        found = _AGENT_NOT_FOUND.match(message)
        if found is not None and ":" not in found["agent"]:
            return f"agent ids carry their shop's prefix, e.g. '{found['shop']}:{found['agent']}'"
    return ""


# ---------------------------------------------------------------- the hierarchy


class DispatchError(grpc.aio.AioRpcError):
    """A call failed: the base of every error the clients raise for a status.

    ``code()`` / ``status_code``: the ``grpc.StatusCode``; ``details()`` / ``message``: the
    message (with a hint the client adds where it knows a likely cause: ``hint``);
    ``error_details``: the decoded details of the rich ``google.rpc.Status`` (``status``).
    It subclasses ``grpc.aio.AioRpcError``, so ``grpc.RpcError``: ``except grpc.RpcError``
    and the accessors of grpc's errors keep working."""

    CODE: ClassVar[grpc.StatusCode | None] = None
    """The status code of the subclass (None for the base classes)."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str = "",
        status: status_pb2.Status | None = None,
        *,
        debug_error_string: str | None = None,
    ) -> None:
        if status is None:
            status = status_pb2.Status(code=code.value[0], message=message)
        self.status_code = code
        """The ``grpc.StatusCode`` (as ``code()``)."""
        self.status: status_pb2.Status = status
        """The ``google.rpc.Status``: code, the server's message, the packed details."""
        self.error_details: tuple[Message, ...] = decode_details(status)
        """The status details, decoded (``google.rpc.ErrorInfo``, ``BadRequest``...)."""
        self.hint = _hint(code, message)
        """A likely cause of the error, added to ``message`` ('' when there is none)."""
        self.message = f"{message}; {self.hint}" if self.hint else message
        """The message (as ``details()``), with the ``hint`` when there is one."""
        trailing = grpc.aio.Metadata()
        if status.details:
            trailing = grpc.aio.Metadata((DETAILS_KEY, status.SerializeToString()))
        super().__init__(
            code, grpc.aio.Metadata(), trailing, self.message, debug_error_string or f"{type(self).__name__}"
        )

    def __str__(self) -> str:
        return f"{self.status_code.name}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status_code.name}, {self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self).__name__, self.status_code.name, self.status.SerializeToString()))


def _rebuild(kind: str, code: str, status: bytes) -> DispatchError:
    message = status_pb2.Status.FromString(status)
    return error_for(
        grpc.StatusCode[code], message.message, message, batched=issubclass(_CLASS_BY_NAME[kind], OperationError)
    )


class OperationError(DispatchError):
    """The error of one call that went in a batch (automatic batching, ``pipeline()``,
    ``operate``): the code and message its unary form would have raised. It is also the
    class of its code: ``isinstance(e, NotFound)``."""


class Cancelled(DispatchError):
    """CANCELLED: the call was cancelled (e.g. the client was closed before the answer came)."""

    CODE = grpc.StatusCode.CANCELLED


class Unknown(DispatchError):
    """UNKNOWN."""

    CODE = grpc.StatusCode.UNKNOWN


class InvalidArgument(DispatchError):
    """INVALID_ARGUMENT: a malformed request; the message names the field."""

    CODE = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(DispatchError):
    """DEADLINE_EXCEEDED: no answer in time; the call may or may not have been applied."""

    CODE = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(DispatchError):
    """NOT_FOUND: the shop, agent, group or conversation does not exist."""

    CODE = grpc.StatusCode.NOT_FOUND


class AlreadyExists(DispatchError):
    """ALREADY_EXISTS: e.g. a conversation id another buyer uses."""

    CODE = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(DispatchError):
    """PERMISSION_DENIED: the caller's token does not allow this call."""

    CODE = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(DispatchError):
    """RESOURCE_EXHAUSTED: the server is at a limit (flow control, too many streams): back off."""

    CODE = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(DispatchError):
    """FAILED_PRECONDITION: the state does not allow the call (or WRONG_NODE: ``WrongNodeError``)."""

    CODE = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(DispatchError):
    """ABORTED."""

    CODE = grpc.StatusCode.ABORTED


class OutOfRange(DispatchError):
    """OUT_OF_RANGE."""

    CODE = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(DispatchError):
    """UNIMPLEMENTED: the server lacks the method (an older server)."""

    CODE = grpc.StatusCode.UNIMPLEMENTED


class Internal(DispatchError):
    """INTERNAL."""

    CODE = grpc.StatusCode.INTERNAL


class Unavailable(DispatchError):
    """UNAVAILABLE: the server cannot be reached, or a stream broke; may or may not have been applied."""

    CODE = grpc.StatusCode.UNAVAILABLE


class DataLoss(DispatchError):
    """DATA_LOSS."""

    CODE = grpc.StatusCode.DATA_LOSS


class Unauthenticated(DispatchError):
    """UNAUTHENTICATED: no valid token."""

    CODE = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: Final[dict[grpc.StatusCode, type[DispatchError]]] = {
    cls.CODE: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
    if cls.CODE is not None
}
_BATCHED_BY_CODE: Final[dict[grpc.StatusCode, type[OperationError]]] = {
    code: cast(
        type[OperationError],
        type(
            f"{cls.__name__}OperationError",
            (OperationError, cls),
            {"__doc__": f"{code.name} for a call that went in a batch.", "__module__": __name__},
        ),
    )
    for code, cls in _BY_CODE.items()
}


class WrongNodeError(OperationError, FailedPrecondition):
    """A call refused as WRONG_NODE: the node does not own the call's shop (FAILED_PRECONDITION
    with a ``google.rpc.ErrorInfo``). The cluster clients refresh their map and retry such a
    call once on the owner; this is raised when that retry is refused too (or by a plain
    client sent to the wrong node). ``owner``, ``owner_address``, ``epoch``, ``shop_id``,
    ``partition``: what the refusing node said (``wrong_node``)."""

    CODE = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(
        self,
        details: str,
        wrong_node: WrongNode | None = None,
        status: status_pb2.Status | None = None,
        *,
        debug_error_string: str | None = None,
    ) -> None:
        super().__init__(grpc.StatusCode.FAILED_PRECONDITION, details, status, debug_error_string=debug_error_string)
        if wrong_node is None:
            wrong_node = _wrong_node_in_details(self.error_details) or WrongNode("", 0, "", "", 0)
        self.wrong_node = wrong_node
        self.shop_id = wrong_node.shop_id
        self.partition = wrong_node.partition
        self.owner = wrong_node.owner
        """The node the refusing node says owns the shop."""
        self.owner_address = wrong_node.owner_address
        self.epoch = wrong_node.epoch

    @classmethod
    def of(cls, error: grpc.RpcError, wrong_node: WrongNode) -> WrongNodeError:
        """A WrongNodeError for a call's error (raw or not) that carried ``wrong_node``."""
        if isinstance(error, WrongNodeError):
            return error
        converted = error_from_rpc(error)
        return cls(converted.message, wrong_node, converted.status)


_CLASS_BY_NAME: Final[dict[str, type[DispatchError]]] = {
    cls.__name__: cls
    for cls in (DispatchError, OperationError, WrongNodeError, *_BY_CODE.values(), *_BATCHED_BY_CODE.values())
}


def error_for(
    code: grpc.StatusCode,
    message: str,
    status: status_pb2.Status | None = None,
    *,
    batched: bool = False,
    debug_error_string: str | None = None,
) -> DispatchError:
    """The error of ``code``: its class (an ``OperationError`` of it when ``batched``), or a
    ``WrongNodeError`` when the status carries a WRONG_NODE refusal."""
    if status is not None and status.details and code == grpc.StatusCode.FAILED_PRECONDITION:
        wrong = wrong_node_in(status)
        if wrong is not None:
            return WrongNodeError(message, wrong, status, debug_error_string=debug_error_string)
    cls: type[DispatchError] = (
        _BATCHED_BY_CODE.get(code, OperationError) if batched else _BY_CODE.get(code, DispatchError)
    )
    return cls(code, message, status, debug_error_string=debug_error_string)


def error_of(status: status_pb2.Status) -> OperationError:
    """The exception for a batched call's ``google.rpc.Status`` (``OperationResult.error``)."""
    return cast(OperationError, error_for(code_of_number(status.code), status.message, status, batched=True))


def error_from_rpc(error: BaseException) -> DispatchError:
    """The ``DispatchError`` for a raw ``grpc.RpcError`` (a ``DispatchError`` is returned as it is)."""
    if isinstance(error, DispatchError):
        return error
    code_of = getattr(error, "code", None)
    details_of = getattr(error, "details", None)
    trailing_of = getattr(error, "trailing_metadata", None)
    debug_of = getattr(error, "debug_error_string", None)
    code = code_of() if callable(code_of) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    message = (details_of() if callable(details_of) else None) or ""
    status = status_in_metadata(trailing_of() if callable(trailing_of) else None)
    debug = debug_of() if callable(debug_of) else None
    return error_for(code, message, status, debug_error_string=debug if isinstance(debug, str) else None)


def status_of(error: BaseException) -> status_pb2.Status:
    """The ``google.rpc.Status`` of any call error (raw or converted)."""
    return error_from_rpc(error).status


def wrong_node_of(error: BaseException | status_pb2.Status | None) -> WrongNode | None:
    """The WRONG_NODE refusal in a call's error (a ``DispatchError`` or a raw ``grpc.RpcError``)
    or in a batch item's ``error`` (a ``google.rpc.Status``); None for anything else."""
    if isinstance(error, WrongNodeError):
        return error.wrong_node
    if isinstance(error, DispatchError):
        return None
    if isinstance(error, status_pb2.Status):
        return wrong_node_in(error)
    if isinstance(error, grpc.RpcError):
        status = status_in_metadata(_trailing(error))
        return wrong_node_in(status) if status is not None else None
    return None


def _trailing(error: grpc.RpcError) -> Any:
    trailing = getattr(error, "trailing_metadata", None)
    return trailing() if callable(trailing) else None


# ---------------------------------------------------------------- translating the raw errors

_F = TypeVar("_F", bound=Callable[..., Any])


def _convert(exc: grpc.RpcError) -> DispatchError:
    return error_from_rpc(exc)


def raises_dispatch_errors(fn: _F) -> _F:
    """Wrap a client method (plain, coroutine, generator or async generator) so that a raw
    ``grpc.RpcError`` leaving it becomes its ``DispatchError`` (the raw one stays reachable
    as ``__context__``)."""
    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def async_gen(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            inner = fn(*args, **kwargs)
            try:
                async for item in inner:
                    yield item
            except grpc.RpcError as exc:
                if isinstance(exc, DispatchError):
                    raise
                raise _convert(exc) from None
            finally:
                await inner.aclose()

        return cast(_F, async_gen)
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def coroutine(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except grpc.RpcError as exc:
                if isinstance(exc, DispatchError):
                    raise
                raise _convert(exc) from None

        return cast(_F, coroutine)
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(*args: Any, **kwargs: Any) -> Iterator[Any]:
            inner = fn(*args, **kwargs)
            try:
                yield from inner
            except grpc.RpcError as exc:
                if isinstance(exc, DispatchError):
                    raise
                raise _convert(exc) from None
            finally:
                inner.close()

        return cast(_F, generator)

    @functools.wraps(fn)
    def plain(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as exc:
            if isinstance(exc, DispatchError):
                raise
            raise _convert(exc) from None

    return cast(_F, plain)
