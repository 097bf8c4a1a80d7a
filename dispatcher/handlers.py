"""Small typed helpers over grpc's method handlers (the stubs don't know they are namedtuples)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias, cast

import grpc

__all__ = ["Context", "Handler", "replace_handler"]

if TYPE_CHECKING:  # generic only in the stubs
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
    """A method handler of any request and response type."""
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
    """The context of a grpc.aio call of any request and response type."""
else:
    Handler = grpc.RpcMethodHandler
    Context = grpc.aio.ServicerContext


def replace_handler(handler: Handler, **behaviours: Any) -> Handler:
    """``handler`` with some of its behaviours (``unary_unary=...``) or (de)serializers replaced.
    At run time grpc's handlers are ``collections.namedtuple`` instances: ``_replace`` keeps the rest."""
    return cast(Handler, cast(Any, handler)._replace(**behaviours))
