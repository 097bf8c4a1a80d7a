"""Transport security and hostile input.

- mTLS end to end through ``dispatcher serve`` with certificates made here
  (never committed): no client certificate, or one from another CA, is
  refused; a certificate scoped to shop A cannot dispatch, read or watch shop B.
- TLS without client certificates; the start-up configuration checks.
- Hostile input: each malformed request gets a precise status and changes nothing.
- Deadlines: an expired call does not reach the engine.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from server_fixtures import T0, Proc, ThreadedServer

from dispatcher._gen.dispatch.v1 import admin_pb2, admin_pb2_grpc, common_pb2, dispatch_pb2, dispatch_pb2_grpc
from dispatcher.auth import hash_token
from dispatcher.security import server_credentials
from dispatcher.server import AssignmentHub, CallCore, Counters

IA = grpc.StatusCode.INVALID_ARGUMENT
NF = grpc.StatusCode.NOT_FOUND
FP = grpc.StatusCode.FAILED_PRECONDITION
AE = grpc.StatusCode.ALREADY_EXISTS
PD = grpc.StatusCode.PERMISSION_DENIED

# ------------------------------------------------------------------ certificates


@dataclass
class Pem:
    cert: bytes
    key: bytes

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        cert, key = directory / f"{name}.crt", directory / f"{name}.key"
        cert.write_bytes(self.cert)
        key.write_bytes(self.key)
        return cert, key


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str) -> tuple[Pem, Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return _pem(cert, key), key, cert


def make_leaf(ca_key: Any, ca_cert: x509.Certificate, cn: str, *, server: bool) -> Pem:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return _pem(builder.sign(ca_key, hashes.SHA256()), key)


def _pem(cert: x509.Certificate, key: Any) -> Pem:
    return Pem(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


@dataclass
class Pki:
    dir: Path
    ca: Pem
    server: Pem
    clients: dict[str, Pem]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, ca_key, ca_cert = make_ca("dispatch test CA")
    _, rogue_key, rogue_cert = make_ca("rogue CA")
    clients = {cn: make_leaf(ca_key, ca_cert, cn, server=False) for cn in ("gateway-a", "gateway-b", "ops", "stranger")}
    clients["rogue"] = make_leaf(rogue_key, rogue_cert, "ops", server=False)  # the right name, the wrong CA
    pki = Pki(directory, ca, make_leaf(ca_key, ca_cert, "localhost", server=True), clients)
    (directory / "ca.crt").write_bytes(ca.cert)
    pki.server.write(directory, "server")
    return pki


def channel(target: str, pki: Pki, client: str | None) -> grpc.Channel:
    pem = pki.clients[client] if client else None
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert,
        private_key=pem.key if pem else None,
        certificate_chain=pem.cert if pem else None,
    )
    return grpc.secure_channel(target, creds, options=[("grpc.ssl_target_name_override", "localhost")])


# ------------------------------------------------------------------ mTLS end to end

TOKEN = "tls-token-5f0c"
POLICY = f"""
[[callers]]
name = "gateway-a"
cert = "gateway-a"
roles = ["dispatch", "read"]
shops = ["a"]

[[callers]]
name = "gateway-b"
cert = "gateway-b"
roles = ["dispatch", "read"]
shops = ["b"]

[[callers]]
name = "ops"
cert = "ops"
roles = ["dispatch", "admin", "read"]
shops = "*"

[[callers]]
name = "reader-with-token"
token_sha256 = "{hash_token(TOKEN)}"
roles = ["read"]
shops = ["b"]
"""


def _code(fn: Any) -> grpc.StatusCode:
    try:
        fn()
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _watch_code(stub: dispatch_pb2_grpc.DispatchStub, shops: list[str]) -> grpc.StatusCode:
    call = stub.WatchAssignments(dispatch_pb2.WatchAssignmentsRequest(shop_ids=shops), timeout=10)
    if ("dispatch-watch", "subscribed") in tuple(call.initial_metadata() or ()):
        call.cancel()
        return grpc.StatusCode.OK
    return call.code()  # type: ignore[no-any-return]


def test_mtls_end_to_end_scopes_callers_to_their_shops(pki: Pki) -> None:
    policy = pki.dir / "policy.toml"
    policy.write_text(POLICY)
    d = pki.dir
    proc = Proc(
        "serve", "--port", "0", "--log-format", "json", "--stats-interval", "0",
        "--tls-cert", str(d / "server.crt"), "--tls-key", str(d / "server.key"),
        "--client-ca", str(d / "ca.crt"), "--auth-policy", str(policy),
        env={"DISPATCH_NO_AUTH": "0"},
    )  # fmt: skip
    try:
        target = f"127.0.0.1:{proc.port()}"
        with channel(target, pki, "ops") as ops_channel:
            ops_d, ops_a = dispatch_pb2_grpc.DispatchStub(ops_channel), admin_pb2_grpc.AdminStub(ops_channel)
            for shop in ("a", "b"):
                ops_a.PutShop(
                    admin_pb2.PutShopRequest(shop=admin_pb2.ShopConfig(shop_id=shop, main_account=shop)), timeout=10
                )
                ops_a.PutAgent(
                    admin_pb2.PutAgentRequest(agent=admin_pb2.Agent(shop_id=shop, agent_id=f"{shop}:x", max_capacity=9))
                )
                ops_d.SetPresence(dispatch_pb2.SetPresenceRequest(shop_id=shop, agent_id=f"{shop}:x", presence=1))
            before_b = ops_a.GetShopState(admin_pb2.GetShopStateRequest(shop_id="b"))

            # No client certificate, a certificate of another CA, or plaintext: refused at the handshake.
            for refused in (channel(target, pki, None), channel(target, pki, "rogue"), grpc.insecure_channel(target)):
                with refused:
                    code = _code(
                        lambda: admin_pb2_grpc.AdminStub(refused).ListShops(admin_pb2.ListShopsRequest(), timeout=5)
                    )
                    assert code == grpc.StatusCode.UNAVAILABLE
            # A certificate of the right CA whose identity is not in the policy.
            with channel(target, pki, "stranger") as stranger:
                code = _code(
                    lambda: admin_pb2_grpc.AdminStub(stranger).ListShops(admin_pb2.ListShopsRequest(), timeout=5)
                )
                assert code == grpc.StatusCode.UNAUTHENTICATED

            with channel(target, pki, "gateway-a") as a_channel:
                a_d, a_a = dispatch_pb2_grpc.DispatchStub(a_channel), admin_pb2_grpc.AdminStub(a_channel)
                ok = a_d.Dispatch(
                    dispatch_pb2.DispatchRequest(shop_id="a", buyer_id="b1", conversation_id="c1"), timeout=10
                )
                assert ok.agent_id == "a:x"
                assert a_a.GetShopState(admin_pb2.GetShopStateRequest(shop_id="a")).live_conversations == 1
                assert _watch_code(a_d, ["a"]) == grpc.StatusCode.OK
                # Shop B: no dispatch, no read, no watch, no configuration.
                assert (
                    _code(
                        lambda: a_d.Dispatch(
                            dispatch_pb2.DispatchRequest(shop_id="b", buyer_id="b1", conversation_id="c1")
                        )
                    )
                    == PD
                )
                assert (
                    _code(
                        lambda: a_d.SetPresence(
                            dispatch_pb2.SetPresenceRequest(shop_id="b", agent_id="b:x", presence=3)
                        )
                    )
                    == PD
                )
                assert _code(lambda: a_a.GetShopState(admin_pb2.GetShopStateRequest(shop_id="b"))) == PD
                assert _code(lambda: a_a.GetBuyer(admin_pb2.GetBuyerRequest(shop_id="b", buyer_id="b1"))) == PD
                assert _watch_code(a_d, ["b"]) == PD
                assert _watch_code(a_d, []) == PD  # every shop needs "*"
                assert (
                    _code(
                        lambda: a_a.PutShop(
                            admin_pb2.PutShopRequest(shop=admin_pb2.ShopConfig(shop_id="a", main_account="a"))
                        )
                    )
                    == PD
                )
                assert list(a_a.ListShops(admin_pb2.ListShopsRequest()).shop_ids) == ["a"]
                batch = dispatch_pb2.DispatchBatchRequest(
                    requests=[
                        dispatch_pb2.DispatchRequest(shop_id=s, buyer_id="bb", conversation_id="cb") for s in ("a", "b")
                    ]
                )
                items = a_d.DispatchBatch(batch).responses
                assert [r.error.code for r in items] == [0, PD.value[0]]

            with channel(target, pki, "gateway-b") as b_channel:
                b_d = dispatch_pb2_grpc.DispatchStub(b_channel)
                assert (
                    _code(
                        lambda: b_d.Dispatch(
                            dispatch_pb2.DispatchRequest(shop_id="a", buyer_id="b9", conversation_id="c9")
                        )
                    )
                    == PD
                )

            after_b = ops_a.GetShopState(admin_pb2.GetShopStateRequest(shop_id="b"))
            assert after_b == before_b

            # A bearer token over the same mTLS connection names its own (narrower) caller.
            token_md = (("authorization", f"Bearer {TOKEN}"),)
            assert ops_a.GetShopState(admin_pb2.GetShopStateRequest(shop_id="b"), metadata=token_md).shop_id == "b"
            assert (
                _code(lambda: ops_a.GetShopState(admin_pb2.GetShopStateRequest(shop_id="a"), metadata=token_md)) == PD
            )
            assert (
                _code(
                    lambda: ops_a.GetShopState(
                        admin_pb2.GetShopStateRequest(shop_id="b"),
                        metadata=(("authorization", "Bearer " + TOKEN + "x"),),
                    )
                )
                == grpc.StatusCode.UNAUTHENTICATED
            )
        assert proc.finish(signal.SIGTERM) == 0
    finally:
        if proc.popen.poll() is None:
            proc.popen.kill()
    started = [e for e in proc.events() if e["event"] == "server.started"][0]
    assert (started["transport"], started["auth"], started["level"]) == ("mtls", "policy", "info")
    text = "".join(proc.lines)
    assert TOKEN not in text and hash_token(TOKEN) not in text  # tokens are never logged


def test_tls_without_client_certificates(pki: Pki) -> None:
    creds = server_credentials(pki.dir / "server.crt", pki.dir / "server.key")
    running = ThreadedServer(credentials=creds).start()
    try:
        with channel(running.target, pki, None) as tls:
            assert (
                list(admin_pb2_grpc.AdminStub(tls).ListShops(admin_pb2.ListShopsRequest(), timeout=10).shop_ids) == []
            )
        with grpc.insecure_channel(running.target) as plain:
            assert (
                _code(lambda: admin_pb2_grpc.AdminStub(plain).ListShops(admin_pb2.ListShopsRequest(), timeout=5))
                == grpc.StatusCode.UNAVAILABLE
            )
    finally:
        running.stop()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--host", "0.0.0.0", "--no-auth"], "not a loopback address"),
        (["--tls-cert", "x.crt", "--no-auth"], "go together"),
        (["--client-ca", "ca.crt", "--no-auth"], "needs --tls-cert"),
        ([], "--no-auth explicitly"),
        (["--no-auth", "--auth-policy", "p.toml"], "exclude each other"),
        (["--auth-policy", "/nonexistent/policy.toml"], "auth policy"),
    ],
)
def test_unsafe_or_inconsistent_start_up_is_refused(args: list[str], words: str) -> None:
    proc = Proc("serve", "--port", "0", *args, env={"DISPATCH_NO_AUTH": "0"})
    assert proc.finish() == 2
    errors = [e for e in proc.events() if e["event"] == "security.config_invalid"]
    assert errors and words in errors[0]["error"], proc.lines


def test_plaintext_and_no_auth_are_announced_at_start() -> None:
    proc = Proc(
        "serve",
        "--port",
        "0",
        "--log-format",
        "json",
        "--no-auth",
        "--stats-interval",
        "0",
        env={"DISPATCH_NO_AUTH": "0"},
    )
    try:
        proc.port()
        assert proc.finish(signal.SIGTERM) == 0
    finally:
        if proc.popen.poll() is None:
            proc.popen.kill()
    started = [e for e in proc.events() if e["event"] == "server.started"][0]
    assert (started["level"], started["transport"], started["auth"]) == ("warning", "insecure", "off")
    assert any("plaintext" in w for w in started["security_warnings"])
    assert any("authentication is off" in w for w in started["security_warnings"])


# ------------------------------------------------------------------ hostile input


@pytest.fixture
def hostile(request: pytest.FixtureRequest) -> Any:
    running = ThreadedServer(**getattr(request, "param", {})).start()
    ch = grpc.insecure_channel(running.target)
    d, a = dispatch_pb2_grpc.DispatchStub(ch), admin_pb2_grpc.AdminStub(ch)
    a.PutShop(admin_pb2.PutShopRequest(shop=admin_pb2.ShopConfig(shop_id="s", main_account="s")))
    a.PutAgent(admin_pb2.PutAgentRequest(agent=admin_pb2.Agent(shop_id="s", agent_id="s:a", max_capacity=5)))
    a.PutGroup(admin_pb2.PutGroupRequest(group=admin_pb2.Group(shop_id="s", group_id="g", members=["s:a"])))
    req = dispatch_pb2.SetPresenceRequest(shop_id="s", agent_id="s:a", presence=1)
    req.at.FromMilliseconds(T0)
    d.SetPresence(req)
    live = dispatch_pb2.DispatchRequest(shop_id="s", buyer_id="b", conversation_id="live")
    live.at.FromMilliseconds(T0)
    d.Dispatch(live)
    try:
        yield running, ch, d, a
    finally:
        ch.close()
        running.stop()


def _dreq(**fields: Any) -> dispatch_pb2.DispatchRequest:
    base: dict[str, Any] = {"shop_id": "s", "buyer_id": "b", "conversation_id": "new"}
    base.update(fields)
    return dispatch_pb2.DispatchRequest(**base)


def _with_at(seconds: int, nanos: int = 0) -> dispatch_pb2.DispatchRequest:
    r = _dreq()
    r.at.seconds, r.at.nanos = seconds, nanos
    return r


def _presence_at(seconds: int) -> dispatch_pb2.SetPresenceRequest:
    r = dispatch_pb2.SetPresenceRequest(shop_id="s", agent_id="s:a", presence=1)
    r.at.seconds = seconds
    return r


def test_hostile_input_gets_precise_statuses_and_changes_nothing(hostile: Any) -> None:
    running, ch, d, a = hostile
    before = a.GetShopState(admin_pb2.GetShopStateRequest(shop_id="s"))
    raw = {
        m: ch.unary_unary(m, request_serializer=None, response_deserializer=None)
        for m in (
            "/dispatch.v1.Dispatch/Dispatch",
            "/dispatch.v1.Dispatch/DispatchBatch",
            "/dispatch.v1.Admin/PutShop",
            "/dispatch.v1.Admin/PutAgent",
        )
    }
    agent_far = admin_pb2.Agent(shop_id="s", agent_id="s:a", max_capacity=5)
    agent_far.created_at.seconds = 2**62
    huge_window = admin_pb2.ShopConfig(shop_id="s", main_account="s")
    huge_window.affinity_window.seconds = 2**62
    cases: list[tuple[str, Any, grpc.StatusCode, str]] = [
        ("control character in an id", lambda: d.Dispatch(_dreq(conversation_id="a\x00b")), IA, "control"),
        ("DEL in an id", lambda: d.Dispatch(_dreq(buyer_id="x\x7f")), IA, "control"),
        ("escape in a source", lambda: d.Dispatch(_dreq(source="\x1b[31m")), IA, "source"),
        (
            "escape in an agent id",
            lambda: d.SetPresence(dispatch_pb2.SetPresenceRequest(shop_id="s", agent_id="s:a\n", presence=1)),
            IA,
            "agent_id",
        ),
        ("oversized id", lambda: d.Dispatch(_dreq(conversation_id="é" * 65)), IA, "128"),
        (
            "invalid UTF-8 in a string field",
            lambda: raw["/dispatch.v1.Dispatch/Dispatch"](b"\x0a\x01s\x12\x02\xc3\x28\x1a\x01c"),
            IA,
            "not a valid dispatch.v1.DispatchRequest",
        ),
        ("truncated message", lambda: raw["/dispatch.v1.Dispatch/Dispatch"](b"\x0a\x05ab"), IA, "not a valid"),
        (
            "garbage bytes",
            lambda: raw["/dispatch.v1.Admin/PutShop"](b"\xff\xff\xff\xff"),
            IA,
            "not a valid dispatch.v1.PutShopRequest",
        ),
        (
            "invalid UTF-8 nested",
            lambda: raw["/dispatch.v1.Admin/PutAgent"](b"\x0a\x05\x0a\x03\xff\xfe\xfd"),
            IA,
            "not a valid",
        ),
        # DispatchBatch takes raw bytes: what the engine's reader declines goes to protobuf, which refuses it
        (
            "invalid UTF-8 in a batch item",
            lambda: raw["/dispatch.v1.Dispatch/DispatchBatch"](b"\x0a\x04\x0a\x02\xc3\x28"),
            IA,
            "not a valid dispatch.v1.DispatchBatchRequest",
        ),
        (
            "truncated batch",
            lambda: raw["/dispatch.v1.Dispatch/DispatchBatch"](b"\x0a\x09\x0a\x01s"),
            IA,
            "not a valid dispatch.v1.DispatchBatchRequest",
        ),
        ("far future", lambda: d.Dispatch(_with_at(2**62)), IA, "at"),
        ("year 10000", lambda: d.Dispatch(_with_at(253402300800)), IA, "9999"),
        ("far past", lambda: d.Dispatch(_with_at(-(2**40))), IA, "at"),
        ("before the epoch", lambda: d.Dispatch(_with_at(-1)), IA, "1970"),
        ("negative nanos", lambda: d.Dispatch(_with_at(T0 // 1000, -1)), IA, "at.nanos"),
        ("nanos over a second", lambda: d.Dispatch(_with_at(T0 // 1000, 10**9)), IA, "at.nanos"),
        ("created_at far future", lambda: a.PutAgent(admin_pb2.PutAgentRequest(agent=agent_far)), IA, "created_at"),
        ("huge duration", lambda: a.PutShop(admin_pb2.PutShopRequest(shop=huge_window)), IA, "affinity_window"),
        ("negative enum", lambda: d.Dispatch(_dreq(type=-1)), IA, "type"),
        ("enum out of range", lambda: d.Dispatch(_dreq(order_state=2**31 - 1)), IA, "order_state"),
        (
            "presence out of range",
            lambda: d.SetPresence(dispatch_pb2.SetPresenceRequest(shop_id="s", agent_id="s:a", presence=9)),
            IA,
            "presence",
        ),
        (
            "event out of range",
            lambda: d.ReportConversation(
                dispatch_pb2.ReportConversationRequest(shop_id="s", conversation_id="live", event=-7)
            ),
            IA,
            "event",
        ),
        (
            "group order state out of range",
            lambda: a.PutGroup(
                admin_pb2.PutGroupRequest(
                    group=admin_pb2.Group(shop_id="s", group_id="g", members=["s:a"], order_states=[99])
                )
            ),
            IA,
            "order_states",
        ),
        (
            "strategy out of range",
            lambda: a.PutShop(
                admin_pb2.PutShopRequest(shop=admin_pb2.ShopConfig(shop_id="s", main_account="s", strategy=-3))
            ),
            IA,
            "strategy",
        ),
        (
            "huge capacity",
            lambda: a.PutAgent(
                admin_pb2.PutAgentRequest(agent=admin_pb2.Agent(shop_id="s", agent_id="s:a", max_capacity=2**32 - 1))
            ),
            IA,
            "max_capacity",
        ),
        (
            "huge weight",
            lambda: a.PutAgent(
                admin_pb2.PutAgentRequest(
                    agent=admin_pb2.Agent(shop_id="s", agent_id="s:a", max_capacity=5, weight=2**32 - 1)
                )
            ),
            IA,
            "weight",
        ),
        (
            "zero weight",
            lambda: a.PutAgent(
                admin_pb2.PutAgentRequest(agent=admin_pb2.Agent(shop_id="s", agent_id="s:a", max_capacity=5, weight=0))
            ),
            IA,
            "weight",
        ),
        (
            "huge staging cap",
            lambda: a.PutShop(
                admin_pb2.PutShopRequest(
                    shop=admin_pb2.ShopConfig(shop_id="s", main_account="s", staging_first_cap=2**32 - 1)
                )
            ),
            IA,
            "staging_first_cap",
        ),
        (
            "huge busy threshold",
            lambda: a.PutShop(
                admin_pb2.PutShopRequest(
                    shop=admin_pb2.ShopConfig(shop_id="s", main_account="s", busy_threshold=2**32 - 1)
                )
            ),
            IA,
            "busy_threshold",
        ),
        (
            "duplicate conversation id",
            lambda: d.Dispatch(_dreq(conversation_id="live", buyer_id="another")),
            AE,
            "live",
        ),
        (
            "duplicate via ASSIGNED",
            lambda: d.ReportConversation(
                dispatch_pb2.ReportConversationRequest(
                    shop_id="s", conversation_id="live", event=5, buyer_id="b", agent_id="s:a"
                )
            ),
            AE,
            "live",
        ),
        (
            "unknown agent in a group",
            lambda: a.PutGroup(
                admin_pb2.PutGroupRequest(group=admin_pb2.Group(shop_id="s", group_id="g", members=["s:a", "ghost"]))
            ),
            NF,
            "ghost",
        ),
        (
            "unknown group robot",
            lambda: a.PutGroup(
                admin_pb2.PutGroupRequest(
                    group=admin_pb2.Group(
                        shop_id="s", group_id="g", members=["s:a"], robot_enabled=True, robot_agent_id="nobot"
                    )
                )
            ),
            NF,
            "nobot",
        ),
        ("unknown shop", lambda: d.Dispatch(_dreq(shop_id="nope")), NF, "nope"),
        (
            "unknown transfer target",
            lambda: d.ReportConversation(
                dispatch_pb2.ReportConversationRequest(
                    shop_id="s", conversation_id="live", event=4, to_agent_id="ghost"
                )
            ),
            NF,
            "ghost",
        ),
        (
            "main account change",
            lambda: a.PutShop(admin_pb2.PutShopRequest(shop=admin_pb2.ShopConfig(shop_id="s", main_account="other"))),
            FP,
            "main account",
        ),
        (
            "delete a serving agent",
            lambda: a.DeleteAgent(admin_pb2.DeleteAgentRequest(shop_id="s", agent_id="s:a")),
            FP,
            "s:a",
        ),
        (
            "claim from an empty pool",
            lambda: d.ClaimFromPool(dispatch_pb2.ClaimFromPoolRequest(shop_id="s", agent_id="s:a")),
            FP,
            "pool",
        ),
    ]
    for name, call, code, words in cases:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == code, (name, info.value.code(), info.value.details())
        assert words in (info.value.details() or ""), (name, info.value.details())
    after = a.GetShopState(admin_pb2.GetShopStateRequest(shop_id="s"))
    assert after == before
    assert list(a.ListShops(admin_pb2.ListShopsRequest()).shop_ids) == ["s"]
    assert running.server.counters.internal_errors == 0


@pytest.mark.parametrize("hostile", [{"max_clock_skew": None}], indirect=True)  # times of year 9999: no clock bound
def test_the_last_day_of_9999_is_served_and_the_shop_keeps_working(hostile: Any) -> None:
    """Found by the long fuzz run: a shop clock in its last local day used to overflow the
    daily reset and make every later call on the shop INTERNAL. The engine now handles it,
    east of UTC too (Kiritimati's last local day is past year 9999)."""
    running, ch, d, a = hostile
    a.PutShop(
        admin_pb2.PutShopRequest(
            shop=admin_pb2.ShopConfig(shop_id="edge", main_account="edge", timezone="Pacific/Kiritimati")
        )
    )
    a.PutAgent(admin_pb2.PutAgentRequest(agent=admin_pb2.Agent(shop_id="edge", agent_id="edge:a", max_capacity=5)))
    presence = dispatch_pb2.SetPresenceRequest(shop_id="edge", agent_id="edge:a", presence=1)
    presence.at.seconds = 253402300799 - 3600
    d.SetPresence(presence)
    for i, seconds in enumerate((253402300799 - 60, 253402300799)):
        request = dispatch_pb2.DispatchRequest(shop_id="edge", buyer_id="b", conversation_id=f"c{i}")
        request.at.seconds = seconds
        answer = d.Dispatch(request)
        assert (answer.agent_id, answer.reason) == ("edge:a", common_pb2.REASON_GROUP)
    state = a.GetShopState(admin_pb2.GetShopStateRequest(shop_id="edge"))
    assert [(x.agent_id, x.active, x.today) for x in state.agents if x.agent_id == "edge:a"] == [("edge:a", 2, 2)]


def test_hostile_items_in_a_batch_fail_alone(hostile: Any) -> None:
    running, ch, d, a = hostile
    items = [
        _dreq(conversation_id="ok1"),
        _dreq(conversation_id="bad\x01"),
        _with_at(2**62),
        _dreq(conversation_id="live", buyer_id="another"),  # another buyer on an open id
        _dreq(type=77),
        _dreq(conversation_id="ok2"),
    ]
    codes = [r.error.code for r in d.DispatchBatch(dispatch_pb2.DispatchBatchRequest(requests=items)).responses]
    assert codes == [0, IA.value[0], IA.value[0], AE.value[0], IA.value[0], 0]
    assert a.GetShopState(admin_pb2.GetShopStateRequest(shop_id="s")).live_conversations == 3
    # A DispatchStream message that does not decode ends that stream with INVALID_ARGUMENT.
    stream = ch.stream_stream(
        "/dispatch.v1.Dispatch/DispatchStream", request_serializer=None, response_deserializer=None
    )
    good = dispatch_pb2.DispatchBatchRequest(requests=[_dreq(conversation_id="ok3")]).SerializeToString()
    with pytest.raises(grpc.RpcError) as info:
        list(stream(iter([good, b"\x0a\x03\x0a\x01\xff"]), timeout=10))
    assert info.value.code() == IA


def test_message_and_batch_limits_are_configurable_and_clear() -> None:
    running = ThreadedServer(max_batch=3, max_message_bytes=64 * 1024).start()
    try:
        with grpc.insecure_channel(running.target, options=[("grpc.max_send_message_length", 1 << 20)]) as ch:
            d, a = dispatch_pb2_grpc.DispatchStub(ch), admin_pb2_grpc.AdminStub(ch)
            a.PutShop(admin_pb2.PutShopRequest(shop=admin_pb2.ShopConfig(shop_id="s", main_account="s")))
            four = dispatch_pb2.DispatchBatchRequest(requests=[_dreq(conversation_id=f"c{i}") for i in range(4)])
            with pytest.raises(grpc.RpcError) as info:
                d.DispatchBatch(four)
            assert info.value.code() == IA and "the limit is 3" in (info.value.details() or "")
            with pytest.raises(grpc.RpcError) as info:
                d.Dispatch(_dreq(source="x" * (65 * 1024)))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert a.GetShopState(admin_pb2.GetShopStateRequest(shop_id="s")).live_conversations == 0
    finally:
        running.stop()


# ------------------------------------------------------------------ deadlines


class _ExpiredContext:
    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def time_remaining(self) -> float | None:
        return self.remaining

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise RuntimeError("aborted")


def test_an_expired_call_never_reaches_the_engine() -> None:
    class Engine:
        def drain_outbox(self) -> list[Any]:
            return []

    core = CallCore(Engine(), AssignmentHub(), Counters())
    ran: list[int] = []
    for remaining in (0.0, -1.5):
        context = _ExpiredContext(remaining)
        with pytest.raises(RuntimeError):
            asyncio.run(core.call(context, lambda: ran.append(1)))  # type: ignore[arg-type]
        assert context.aborted is not None and context.aborted[0] == grpc.StatusCode.DEADLINE_EXCEEDED
    assert ran == [] and core.counters.errors["DEADLINE_EXCEEDED"] == 2
    for remaining in (None, 5.0):  # no deadline, or time left: runs
        assert asyncio.run(core.call(_ExpiredContext(remaining), lambda: 42)) == 42  # type: ignore[arg-type]


def test_a_call_that_expires_while_the_server_is_busy_changes_nothing() -> None:
    running = ThreadedServer().start()
    try:
        with grpc.insecure_channel(running.target) as ch:
            d, a = dispatch_pb2_grpc.DispatchStub(ch), admin_pb2_grpc.AdminStub(ch)
            a.PutShop(admin_pb2.PutShopRequest(shop=admin_pb2.ShopConfig(shop_id="s", main_account="s")))
            a.PutAgent(admin_pb2.PutAgentRequest(agent=admin_pb2.Agent(shop_id="s", agent_id="s:a", max_capacity=5)))

            async def busy() -> None:
                time.sleep(0.8)  # blocks the server's event loop on purpose

            blocker = threading.Thread(target=lambda: running.run(busy()))
            blocker.start()
            time.sleep(0.1)
            with pytest.raises(grpc.RpcError) as info:
                d.Dispatch(_dreq(conversation_id="late"), timeout=0.2)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            blocker.join()
            time.sleep(0.2)  # let the server look at the expired call
            assert a.GetShopState(admin_pb2.GetShopStateRequest(shop_id="s")).live_conversations == 0
            assert d.Dispatch(_dreq(conversation_id="late"), timeout=5).reason != 0  # the id was never taken
    finally:
        running.stop()


def test_undecodable_bytes_are_invalid_argument_on_every_rpc(hostile: Any) -> None:
    running, ch, d, a = hostile
    before = a.GetShopState(admin_pb2.GetShopStateRequest(shop_id="s"))
    methods = [
        (
            f"/dispatch.v1.{svc.name}/{m.name}",
            m.client_streaming,
            m.server_streaming,
            m.input_type.fields_by_number.get(1),
        )
        for svc in (
            dispatch_pb2.DESCRIPTOR.services_by_name["Dispatch"],
            admin_pb2.DESCRIPTOR.services_by_name["Admin"],
        )
        for m in svc.methods
    ]
    assert len(methods) == 22
    for path, client_streaming, server_streaming, first in methods:
        inputs = [b"\xff", b"\x0a\x7f"]  # an invalid wire type; a truncated field
        if first is not None:  # field 1 exists (a string, or a message whose field 1 is a string): invalid UTF-8
            inputs.append(b"\x0a\x02\xc3\x28" if first.message_type is None else b"\x0a\x04\x0a\x02\xc3\x28")
        for garbage in inputs:
            with pytest.raises(grpc.RpcError) as info:
                if client_streaming:
                    call = ch.stream_stream(path, request_serializer=None, response_deserializer=None)
                    list(call(iter([garbage]), timeout=10))
                elif server_streaming:
                    call = ch.unary_stream(path, request_serializer=None, response_deserializer=None)
                    list(call(garbage, timeout=10))
                else:
                    call = ch.unary_unary(path, request_serializer=None, response_deserializer=None)
                    call(garbage, timeout=10)
            assert info.value.code() == IA, (path, garbage, info.value.code(), info.value.details())
    assert a.GetShopState(admin_pb2.GetShopStateRequest(shop_id="s")) == before


# ------------------------------------------------------------------ registration


def test_guarded_server_wraps_every_handler_once_at_registration() -> None:
    """The guard is installed on the handlers when a service registers (no grpc.aio interceptor):
    both registration paths hand the server wrapped handlers, each method wrapped once."""
    from dispatcher.security import GuardedServer

    class Recorder:
        def __init__(self) -> None:
            self.registered: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
            self.generic: list[grpc.GenericRpcHandler] = []

        def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
            self.registered[service] = handlers

        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            self.generic.extend(handlers)

    wrapped: list[str] = []

    def wrap(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        wrapped.append(method)
        return handler._replace(request_deserializer=None)  # a mark the test can see

    class Details(grpc.HandlerCallDetails):
        def __init__(self, method: str) -> None:
            self.method, self.invocation_metadata = method, ()

    server = Recorder()
    admin_pb2_grpc.add_AdminServicer_to_server(admin_pb2_grpc.AdminServicer(), GuardedServer(server, wrap))
    handlers = server.registered["dispatch.v1.Admin"]
    assert set(handlers) >= {"PutShop", "GetShopState", "ListShops"}
    assert all(h.request_deserializer is None for h in handlers.values())
    assert sorted(wrapped) == sorted(f"/dispatch.v1.Admin/{name}" for name in handlers)
    (generic,) = server.generic
    first = generic.service(Details("/dispatch.v1.Admin/PutShop"))
    assert first is not None and first.request_deserializer is None
    assert generic.service(Details("/dispatch.v1.Admin/PutShop")) is first  # cached: wrapped once more, not per call
    assert wrapped.count("/dispatch.v1.Admin/PutShop") == 2  # the registered one and the generic one
    assert generic.service(Details("/dispatch.v1.Admin/Nope")) is None  # unknown names stay UNIMPLEMENTED
