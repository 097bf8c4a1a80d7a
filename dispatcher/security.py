"""Transport security and the per-RPC guard: TLS/mTLS credentials, caller
authentication and scopes, and safe request decoding.

``SecurityGuard.wrap`` wraps every method handler once, when its service is
registered (``GuardedServer``), so the per-call cost is a metadata scan, a dict
lookup and a set membership test, and no grpc.aio interceptor runs per call:

- A request whose bytes do not decode answers INVALID_ARGUMENT (gRPC itself
  would answer UNKNOWN).
- With a policy: UNAUTHENTICATED when the caller presents no known
  credentials; PERMISSION_DENIED when its roles lack the RPC's role or its
  shops lack the request's shop. DispatchBatch/DispatchStream check each item
  in the servicer (``item_scope()``), so one out-of-scope item fails alone.
  ListShops answers only the caller's shops; WatchAssignments of every shop
  (no ``shop_ids``) needs ``shops = "*"``.

Concurrency: unary calls and streams have limits of their own. A unary call
over ``max_concurrent_rpcs`` calls in progress, or a stream (server, client or
bidirectional: WatchAssignments, DispatchStream, reflection) over
``max_concurrent_streams`` open streams, answers RESOURCE_EXHAUSTED at once, so
open streams can never lock out unary and Admin calls. Health is public and
answers even at both limits.

Nothing is logged per call; denials are counted in the server's counters.
"""

from __future__ import annotations

import collections
import contextvars
import dataclasses
import inspect
import ipaddress
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, Final, cast

import grpc

from .auth import AuthPolicy, Caller, PermissionDeniedError, UnauthenticatedError
from .handlers import Context, Handler

__all__ = [
    "PUBLIC_SERVICES",
    "RULES",
    "Rule",
    "GuardedServer",
    "SecurityGuard",
    "is_loopback",
    "item_scope",
    "malformed_message",
    "server_credentials",
]

_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("dispatch_caller", default=None)


def item_scope() -> Caller | None:
    """The caller of the current RPC when its shops are limited (None: every shop is allowed)."""
    caller = _CALLER.get()
    return caller if caller is not None and caller.shops is not None else None


def _shop_id(request: Any) -> tuple[str, ...]:
    return (request.shop_id,)


def _none(request: Any) -> tuple[str, ...]:
    return ()


def _filter_shops(caller: Caller, response: Any) -> Any:
    if caller.shops is None:
        return response
    return type(response)(shop_ids=[s for s in response.shop_ids if s in caller.shops])


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """What an RPC needs: a role, and the shops its request touches."""

    role: str
    shops: Callable[[Any], Iterable[str]] = _shop_id
    watch: bool = False  # empty shop_ids means every shop
    post: Callable[[Caller, Any], Any] | None = None  # filters the response by the caller's scope


_D: Final = "/dispatch.v1.Dispatch/"
_A: Final = "/dispatch.v1.Admin/"
RULES: Final[dict[str, Rule]] = {
    # Dispatch (read from the wire by the engine) and the items of batches and
    # streams are checked against the caller's shops in the servicer.
    _D + "Dispatch": Rule("dispatch", _none),
    _D + "DispatchBatch": Rule("dispatch", _none),
    _D + "DispatchStream": Rule("dispatch", _none),
    _D + "Operate": Rule("dispatch", _none),
    _D + "OperateStream": Rule("dispatch", _none),
    _D + "SetPresence": Rule("dispatch"),
    _D + "ReportConversation": Rule("dispatch"),
    _D + "ClaimFromPool": Rule("dispatch"),
    _D + "WatchAssignments": Rule("read", lambda r: r.shop_ids, watch=True),
    _D + "WatchAssignmentBatches": Rule("read", lambda r: r.shop_ids, watch=True),
    _A + "PutShop": Rule("admin", lambda r: (r.shop.shop_id,)),
    _A + "DeleteShop": Rule("admin"),
    _A + "PutAgent": Rule("admin", lambda r: (r.agent.shop_id,)),
    _A + "DeleteAgent": Rule("admin"),
    _A + "PutGroup": Rule("admin", lambda r: (r.group.shop_id,)),
    _A + "DeleteGroup": Rule("admin"),
    _A + "SetExclusiveAgent": Rule("admin"),
    _A + "DeleteExclusiveAgent": Rule("admin"),
    _A + "GetShopState": Rule("read"),
    _A + "ListShops": Rule("read", _none, post=_filter_shops),
    _A + "GetConversation": Rule("read"),
    _A + "GetBuyer": Rule("read"),
    # Every caller of a cluster needs its map, whatever its roles (dispatcher/cluster.py).
    "/dispatch.v1.Cluster/GetClusterMap": Rule("", _none),
}
"""Every RPC of dispatch.v1 and what it needs."""

PUBLIC_SERVICES: Final = ("/grpc.health.v1.Health/",)
"""Methods any client may call without credentials (health probes)."""

_OTHER: Final = Rule("admin", _none)
"""Any other registered method (e.g. reflection) needs an authenticated admin."""


class _Malformed:
    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _not_valid(type_name: str) -> str:
    return f"the request is not a valid {type_name} message"


def malformed_message(message_type: Any) -> str:
    """The INVALID_ARGUMENT text for bytes that are not a ``message_type`` (a generated protobuf class)."""
    return _not_valid(message_type.DESCRIPTOR.full_name)


def _safe(deserializer: Callable[[bytes], Any] | None, type_name: str) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception:
            return _Malformed(_not_valid(type_name))

    return decode


def _type_name(deserializer: Any) -> str:
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", "protobuf")


class SecurityGuard:
    """Safe decoding for every RPC; authentication and scopes when a policy is given.

    ``wrap(method, handler)`` returns the guarded handler of one method; it is
    applied once per method at registration (``GuardedServer``).
    """

    def __init__(
        self,
        policy: AuthPolicy | None,
        errors: collections.Counter[str] | None = None,
        max_concurrent_rpcs: int | None = None,
        max_concurrent_streams: int | None = None,
    ) -> None:
        self._policy = policy
        self._errors: collections.Counter[str] = errors if errors is not None else collections.Counter()
        self._limit = max_concurrent_rpcs
        self._stream_limit = max_concurrent_streams
        self.active = 0  # unary calls of this server in progress
        self.streams = 0  # streams of this server open (a limit of their own)

    # ---------------------------------------------------------------- checks

    def _authenticate(self, context: Context) -> Caller:
        policy = self._policy
        assert policy is not None
        metadata: Any = context.invocation_metadata() or ()
        for key, value in metadata:
            if key == "authorization":
                if not isinstance(value, str) or value[:7].lower() != "bearer ":
                    raise UnauthenticatedError("the authorization metadata must be 'Bearer <token>'")
                caller = policy.by_token(value[7:].strip())
                if caller is None:
                    raise UnauthenticatedError("the bearer token is not known")
                return caller
        if policy.uses_certs:
            auth = context.auth_context()
            identities = [v.decode("utf-8", "replace") for v in auth.get("x509_subject_alternative_name", ())]
            identities += [v.decode("utf-8", "replace") for v in auth.get("x509_common_name", ())]
            caller = policy.by_cert(identities)
            if caller is not None:
                return caller
            if identities:
                raise UnauthenticatedError("the client certificate's identity is not in the auth policy")
        raise UnauthenticatedError(
            "no credentials: send 'authorization: Bearer <token>' metadata or a client certificate"
        )

    def _authorize(self, rule: Rule, method: str, request: Any, context: Context) -> Caller:
        caller = self._authenticate(context)
        if rule.role:  # "" (GetClusterMap): any authenticated caller
            caller.check_role(rule.role, method)
        if rule.watch and not request.shop_ids and caller.shops is not None:
            raise PermissionDeniedError(f'caller {caller.name!r} may not watch every shop (it needs shops = "*")')
        for shop_id in rule.shops(request):
            caller.check_shop(shop_id)
        return caller

    async def _enter(self, context: Context) -> None:
        """Take a unary call's concurrency slot, or answer RESOURCE_EXHAUSTED at
        once. Every call that enters must ``_leave``; the event loop is
        single-threaded, so the counter needs no lock."""
        if self._limit is not None and self.active >= self._limit:
            self._errors["RESOURCE_EXHAUSTED"] += 1
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the server is at its limit of {self._limit} concurrent RPCs; retry with backoff",
            )
        self.active += 1

    def _leave(self) -> None:
        self.active -= 1

    async def _enter_stream(self, context: Context) -> None:
        """Take a stream's slot (not a unary call's), or answer RESOURCE_EXHAUSTED at once."""
        if self._stream_limit is not None and self.streams >= self._stream_limit:
            self._errors["RESOURCE_EXHAUSTED"] += 1
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the server is at its limit of {self._stream_limit} open streams; retry with backoff",
            )
        self.streams += 1

    def _leave_stream(self) -> None:
        self.streams -= 1

    async def _guard(self, rule: Rule | None, method: str, request: Any, context: Context) -> Caller | None:
        """Abort the call when its request is malformed or its caller may not make it."""
        if type(request) is _Malformed:
            self._errors["INVALID_ARGUMENT"] += 1
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        if rule is None or self._policy is None:
            return None
        try:
            caller = self._authorize(rule, method, request, context)
        except (UnauthenticatedError, PermissionDeniedError) as exc:
            code = (
                grpc.StatusCode.UNAUTHENTICATED
                if isinstance(exc, UnauthenticatedError)
                else grpc.StatusCode.PERMISSION_DENIED
            )
            self._errors[code.name] += 1
            await context.abort(code, str(exc))
        _CALLER.set(caller)
        return caller

    # ---------------------------------------------------------------- wrapping

    def wrap(self, method: str, handler: Handler) -> Handler:
        """``handler`` of ``method`` (\"/package.Service/Method\") behind the guard."""
        if method.startswith(PUBLIC_SERVICES):
            rule: Rule | None = None
        else:
            rule = RULES.get(method, _OTHER)
        deserializer = _safe(handler.request_deserializer, _type_name(handler.request_deserializer))
        serializer = handler.response_serializer
        guard = self._guard
        post = rule.post if rule is not None else None
        if rule is None:  # public (health) methods answer even at the concurrency limits

            async def enter(context: Context) -> None:
                return None

            def leave() -> None:
                return None

        elif handler.unary_unary is not None:
            enter, leave = self._enter, self._leave
        else:  # streams: a limit of their own, so they never take the unary calls' slots
            enter, leave = self._enter_stream, self._leave_stream

        if handler.unary_unary is not None:
            inner_uu: Any = handler.unary_unary

            async def unary_unary(request: Any, context: Context) -> Any:
                await enter(context)
                try:
                    caller = await guard(rule, method, request, context)
                    response = await inner_uu(request, context)
                finally:
                    leave()
                if post is not None and caller is not None:
                    response = post(caller, response)
                return response

            return grpc.unary_unary_rpc_method_handler(unary_unary, deserializer, serializer)

        if handler.unary_stream is not None:
            inner_us: Any = handler.unary_stream
            if inspect.iscoroutinefunction(inner_us):  # writes with context.write (WatchAssignments)

                async def unary_stream_writer(request: Any, context: Context) -> None:
                    await enter(context)
                    try:
                        await guard(rule, method, request, context)
                        await inner_us(request, context)
                    finally:
                        leave()

                return grpc.unary_stream_rpc_method_handler(unary_stream_writer, deserializer, serializer)
            if not inspect.isasyncgenfunction(inner_us):
                return handler  # not a shape this server registers; left as is

            async def unary_stream(request: Any, context: Context) -> AsyncIterator[Any]:
                await enter(context)
                try:
                    await guard(rule, method, request, context)
                    async for response in inner_us(request, context):
                        yield response
                finally:
                    leave()

            return grpc.unary_stream_rpc_method_handler(unary_stream, deserializer, serializer)

        async def checked(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
            async for request in requests:
                if type(request) is _Malformed:
                    self._errors["INVALID_ARGUMENT"] += 1
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
                yield request

        if handler.stream_stream is not None:
            inner_ss: Any = handler.stream_stream
            if not inspect.isasyncgenfunction(inner_ss):
                return handler

            async def stream_stream(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
                await enter(context)
                try:
                    await guard(rule, method, None, context)
                    async for response in inner_ss(checked(requests, context), context):
                        yield response
                finally:
                    leave()

            return grpc.stream_stream_rpc_method_handler(stream_stream, deserializer, serializer)

        inner_su: Any = handler.stream_unary
        if inner_su is None or not inspect.iscoroutinefunction(inner_su):
            return handler

        async def stream_unary(requests: AsyncIterator[Any], context: Context) -> Any:
            await enter(context)
            try:
                await guard(rule, method, None, context)
                return await inner_su(checked(requests, context), context)
            finally:
                leave()

        return grpc.stream_unary_rpc_method_handler(stream_unary, deserializer, serializer)


# -------------------------------------------------------------------- registration

HandlerWrapper = Callable[[str, Handler], Handler]


class _WrappedGeneric(grpc.GenericRpcHandler):
    """A generic handler whose answers are wrapped (once per method: cached)."""

    def __init__(self, inner: grpc.GenericRpcHandler, wrap: HandlerWrapper) -> None:
        self._inner = inner
        self._wrap = wrap
        self._cache: dict[str, Handler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        method = handler_call_details.method
        wrapped = self._cache.get(method)
        if wrapped is None:
            handler = self._inner.service(handler_call_details)
            if handler is None:
                return None  # UNIMPLEMENTED; unknown names are never cached
            wrapped = self._cache[method] = self._wrap(method, handler)
        return wrapped


class GuardedServer:
    """Stands in for a ``grpc.aio.Server`` while services register on it:
    every method handler reaches the server wrapped by ``wrap``.

    The wrapping happens once per method, at registration, instead of in a
    ``grpc.aio`` server interceptor, whose per-call coroutine chain cost more
    than the servicer itself (bench/ANALYSIS.md). Generated ``add_*_to_server``
    functions call both registration methods, and both get wrapped handlers.
    grpc.aio 1.76 asks the generic handlers on every call, in registration
    order; a wrapped one answers from its per-method cache (one dict lookup).
    """

    def __init__(self, server: grpc.aio.Server, wrap: HandlerWrapper) -> None:
        self.server = server
        self._wrap = wrap

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Handler]) -> None:
        wrap = self._wrap
        cast(Any, self.server).add_registered_method_handlers(  # grpc.aio has it; the stubs lack it
            service, {name: wrap(f"/{service}/{name}", handler) for name, handler in handlers.items()}
        )

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self.server.add_generic_rpc_handlers(tuple(_WrappedGeneric(h, self._wrap) for h in generic_rpc_handlers))


# -------------------------------------------------------------------- transport


def server_credentials(
    cert: str | Path, key: str | Path, client_ca: str | Path | None = None
) -> grpc.ServerCredentials:
    """TLS credentials from PEM files; with ``client_ca``, clients must present a certificate it signed (mTLS)."""
    pair = (Path(key).read_bytes(), Path(cert).read_bytes())
    root = Path(client_ca).read_bytes() if client_ca is not None else None
    return grpc.ssl_server_credentials([pair], root_certificates=root, require_client_auth=root is not None)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
