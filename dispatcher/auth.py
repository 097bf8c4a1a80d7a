"""Caller identity and scopes: who may call which RPC for which shops.

A caller authenticates with a bearer token (metadata ``authorization: Bearer
<token>``) or with its mTLS client certificate (its CN or a SAN). The policy
file (TOML or JSON) maps each identity to roles and shops::

    # dispatch-auth.toml -- tokens are stored only as sha256 hex digests
    # (`dispatcher hash-token` prints one).
    [[callers]]
    name = "im-gateway-eu"                 # shown in PERMISSION_DENIED messages, never a secret
    token_sha256 = "9f86d081884c7d65..."   # sha256(token), 64 hex digits
    roles = ["dispatch", "read"]
    shops = ["shop-a", "shop-b"]           # or "*" for every shop

    [[callers]]
    name = "gateway-a"
    cert = "gateway-a.dispatch.internal"   # mTLS client certificate CN or SAN
    roles = ["dispatch"]
    shops = ["shop-a"]

Roles: ``dispatch`` (hot path and IM events), ``admin`` (configuration RPCs),
``read`` (GetShopState, ListShops, GetConversation, GetBuyer,
WatchAssignments). A role grants only its own RPCs.

Tokens are looked up by their sha256 digest and confirmed with
``hmac.compare_digest``; the plaintext is never stored, logged or kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import secrets
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from _fastpath import DispatchError

__all__ = [
    "ALL_SHOPS",
    "ROLES",
    "AuthPolicy",
    "Caller",
    "PermissionDeniedError",
    "PolicyError",
    "UnauthenticatedError",
    "hash_token",
    "new_token",
]

ROLES: Final = frozenset({"dispatch", "admin", "read"})
ALL_SHOPS: Final = "*"
_HEX: Final = frozenset("0123456789abcdef")


class UnauthenticatedError(DispatchError):
    grpc_status = "UNAUTHENTICATED"


class PermissionDeniedError(DispatchError):
    grpc_status = "PERMISSION_DENIED"


class PolicyError(ValueError):
    """The policy file is malformed; the message names the place."""


def hash_token(token: str) -> str:
    """The sha256 hex digest stored in the policy file for ``token``."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_token() -> str:
    """A fresh random bearer token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Caller:
    """An authenticated identity with its roles and shop scope."""

    name: str
    roles: frozenset[str]
    shops: frozenset[str] | None  # None: every shop ("*")
    token_digest: bytes | None = None
    cert: str | None = None

    def may(self, shop_id: str) -> bool:
        return self.shops is None or shop_id in self.shops

    def check_shop(self, shop_id: str) -> None:
        # An empty id touches no shop; it is left to the request's own validation.
        if self.shops is not None and shop_id and shop_id not in self.shops:
            raise PermissionDeniedError(f"caller {self.name!r} may not touch shop {shop_id!r}")

    def check_role(self, role: str, method: str) -> None:
        if role not in self.roles:
            raise PermissionDeniedError(f"caller {self.name!r} lacks the {role!r} role needed by {method}")


class AuthPolicy:
    """The loaded policy, with precomputed lookups for the hot path."""

    def __init__(self, callers: Iterable[Caller]) -> None:
        self.callers = tuple(callers)
        self._by_digest: dict[bytes, Caller] = {}
        self._by_cert: dict[str, Caller] = {}
        for caller in self.callers:
            if caller.token_digest is not None:
                if caller.token_digest in self._by_digest:
                    raise PolicyError(f"callers {caller.name!r}: token_sha256 is used by another caller")
                self._by_digest[caller.token_digest] = caller
            if caller.cert is not None:
                if caller.cert in self._by_cert:
                    raise PolicyError(f"callers {caller.name!r}: cert {caller.cert!r} is used by another caller")
                self._by_cert[caller.cert] = caller

    @property
    def uses_certs(self) -> bool:
        return bool(self._by_cert)

    # ---------------------------------------------------------------- loading

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "policy") -> AuthPolicy:
        if not isinstance(data, Mapping):
            raise PolicyError(f"{where}: the top level must be a table/object")
        unknown = set(data) - {"callers"}
        if unknown:
            raise PolicyError(f"{where}: unknown keys {sorted(unknown)}; expected 'callers'")
        entries = data.get("callers", [])
        if not isinstance(entries, list):
            raise PolicyError(f"{where}: callers must be a list")
        return cls(_caller(entry, f"{where}: callers[{i}]") for i, entry in enumerate(entries))

    @classmethod
    def load(cls, path: str | Path) -> AuthPolicy:
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise PolicyError(f"{path}: {exc.strerror or exc}") from None
        try:
            if path.suffix.lower() == ".json":
                data = json.loads(raw)
            else:
                data = tomllib.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise PolicyError(f"{path}: {exc}") from None
        return cls.from_mapping(data, str(path))

    # ---------------------------------------------------------------- lookup

    def by_token(self, token: str) -> Caller | None:
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        caller = self._by_digest.get(digest)
        # The dict lookup is keyed by a digest (its timing says nothing usable
        # about the token); the constant-time comparison confirms the match.
        if caller is not None and caller.token_digest is not None and hmac.compare_digest(caller.token_digest, digest):
            return caller
        return None

    def by_cert(self, identities: Iterable[str]) -> Caller | None:
        for identity in identities:
            caller = self._by_cert.get(identity)
            if caller is not None:
                return caller
        return None


_CALLER_KEYS: Final = frozenset({"name", "token_sha256", "cert", "roles", "shops"})


def _caller(entry: Any, where: str) -> Caller:
    if not isinstance(entry, Mapping):
        raise PolicyError(f"{where}: must be a table/object")
    if "token" in entry:
        raise PolicyError(f"{where}: plaintext 'token' is not accepted; store token_sha256 (dispatcher hash-token)")
    unknown = set(entry) - _CALLER_KEYS
    if unknown:
        raise PolicyError(f"{where}: unknown keys {sorted(unknown)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise PolicyError(f"{where}: name is required")
    digest: bytes | None = None
    token_hex = entry.get("token_sha256")
    if token_hex is not None:
        if not isinstance(token_hex, str) or len(token_hex) != 64 or not set(token_hex.lower()) <= _HEX:
            raise PolicyError(f"{where}: token_sha256 must be 64 hex digits (sha256 of the token)")
        digest = bytes.fromhex(token_hex)
    cert = entry.get("cert")
    if cert is not None and (not isinstance(cert, str) or not cert):
        raise PolicyError(f"{where}: cert must be a non-empty string (the certificate's CN or a SAN)")
    if digest is None and cert is None:
        raise PolicyError(f"{where}: needs token_sha256 or cert")
    roles = entry.get("roles")
    if not isinstance(roles, list) or not roles or not all(isinstance(r, str) for r in roles):
        raise PolicyError(f"{where}: roles must be a non-empty list of {sorted(ROLES)}")
    bad = set(roles) - ROLES
    if bad:
        raise PolicyError(f"{where}: unknown roles {sorted(bad)}; known: {sorted(ROLES)}")
    shops_value = entry.get("shops")
    shops: frozenset[str] | None
    if shops_value == ALL_SHOPS or shops_value == [ALL_SHOPS]:
        shops = None
    elif isinstance(shops_value, list) and all(isinstance(s, str) and s and s != ALL_SHOPS for s in shops_value):
        shops = frozenset(shops_value)
    else:
        raise PolicyError(f'{where}: shops must be "*" or a list of shop ids')
    return Caller(name=name, roles=frozenset(roles), shops=shops, token_digest=digest, cert=cert)
