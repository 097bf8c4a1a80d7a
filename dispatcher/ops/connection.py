"""The server options every online command takes, the same way: address, TLS/mTLS, token, timeout.

``--target host:port`` (``$DISPATCH_TARGET``, default ``127.0.0.1:50051``);
``--tls`` (the system's CAs), ``--ca FILE`` (the CA that signed the server's
certificate), ``--cert``/``--key`` (a client certificate: mutual TLS), each of the
three implying ``--tls``; ``--server-name`` (the name the server's certificate is
checked against, when the target is an address); ``--token`` (``$DISPATCH_TOKEN``),
sent as the metadata ``authorization: Bearer <token>`` that the server's auth policy
checks (dispatcher/security.py, dispatcher/docs/SECURITY.md); ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import urllib.parse
from pathlib import Path
from typing import Any, Final

import grpc

from ..cluster import shop_of_request

__all__ = [
    "DEFAULT_TARGET",
    "TARGET_ENV",
    "TOKEN_ENV",
    "CallFailed",
    "Connection",
    "OptionsError",
    "UsageError",
    "add_connection_options",
    "connection_from_args",
]

DEFAULT_TARGET: Final = "127.0.0.1:50051"
TARGET_ENV: Final = "DISPATCH_TARGET"
TOKEN_ENV: Final = "DISPATCH_TOKEN"
_MAX_MESSAGE: Final = 64 * 1024 * 1024
"""What the CLI accepts from the server (the server keeps its answers far below it)."""


class UsageError(ValueError):
    """A wrong method name, request or option: exit 2."""


class CallFailed(Exception):
    """A failed RPC; ``report`` is its ``{"code", "message", "details"}``."""

    def __init__(self, report: dict[str, Any]) -> None:
        super().__init__(report["message"])
        self.report = report


class OptionsError(UsageError):
    """The server options are inconsistent, or a TLS file cannot be read."""


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """Add the server options (one argument group) to an online command's parser."""
    group = parser.add_argument_group("server", "where the server is and how to authenticate to it")
    group.add_argument(
        "--target",
        default=os.environ.get(TARGET_ENV) or DEFAULT_TARGET,
        metavar="HOST:PORT",
        help=f"the server [${TARGET_ENV}, else {DEFAULT_TARGET}]",
    )
    group.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's CAs (or --ca)")
    group.add_argument("--ca", type=Path, metavar="FILE", help="PEM CA bundle that signed the server's certificate")
    group.add_argument("--cert", type=Path, metavar="FILE", help="PEM client certificate for mutual TLS (with --key)")
    group.add_argument("--key", type=Path, metavar="FILE", help="PEM private key of --cert")
    group.add_argument(
        "--server-name", metavar="NAME", help="the name the server's certificate must carry [the target's host]"
    )
    group.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV) or None,
        help=f"bearer token, sent as 'authorization: Bearer <token>' [${TOKEN_ENV}; prefer the variable: "
        "arguments show in ps]",
    )
    group.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="deadline of each call [10 for unary calls, none for streams]"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Connection:
    """How to reach the server: open ``channel()`` and pass ``metadata`` with every call."""

    target: str
    credentials: grpc.ChannelCredentials | None
    server_name: str | None = None
    token: str | None = None
    timeout: float | None = None

    @property
    def tls(self) -> bool:
        return self.credentials is not None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def metadata_for(self, request: Any) -> tuple[tuple[str, str], ...]:
        """``metadata`` plus ``x-dispatch-shop`` for the request's shop, so that a cluster's
        HAProxy (dispatcher/docs/CLUSTER.md) sends the call to the shop's node."""
        shop = shop_of_request(request)
        if not shop:
            return self.metadata
        return (*self.metadata, ("x-dispatch-shop", urllib.parse.quote(shop, safe="")))

    def call_timeout(self, streaming: bool = False) -> float | None:
        """``--timeout``, else 10 s for a unary call and none for a stream."""
        if self.timeout is not None:
            return self.timeout
        return None if streaming else 10.0

    def channel(self) -> grpc.Channel:
        options: list[tuple[str, int | str]] = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.enable_retries", 0),
        ]
        if self.credentials is None:
            return grpc.insecure_channel(self.target, options=options)
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return grpc.secure_channel(self.target, self.credentials, options=options)


def _read(path: Path | None, flag: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise OptionsError(f"cannot read {flag} {path}: {exc.strerror or exc}") from None


def connection_from_args(ns: argparse.Namespace) -> Connection:
    """The Connection of the parsed server options; OptionsError names a wrong one."""
    if (ns.cert is None) != (ns.key is None):
        raise OptionsError("--cert and --key go together (a client certificate and its key)")
    if ns.timeout is not None and ns.timeout <= 0:
        raise OptionsError(f"--timeout {ns.timeout:g} must be positive")
    target = str(ns.target).strip()
    if not target:
        raise OptionsError("--target is empty; give host:port")
    tls = bool(ns.tls or ns.ca or ns.cert)
    credentials = None
    if tls:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(ns.ca, "--ca"),
            private_key=_read(ns.key, "--key"),
            certificate_chain=_read(ns.cert, "--cert"),
        )
    elif ns.server_name:
        raise OptionsError("--server-name names the server's certificate: it needs --tls (or --ca)")
    token = ns.token.strip() if ns.token else None
    if token and not tls and not _loopback(target):
        print(f"warning: sending the bearer token to {target} without TLS (give --tls or --ca)", file=sys.stderr)
    return Connection(target, credentials, ns.server_name, token or None, ns.timeout)


def _loopback(target: str) -> bool:
    from ..security import is_loopback

    host = target
    for scheme in ("dns:///", "ipv4:", "ipv6:"):
        host = host.removeprefix(scheme)
    if host.startswith("["):  # [::1]:50051
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:  # host:port (more colons: a bare IPv6 address)
        host = host.split(":", 1)[0]
    return is_loopback(host)
