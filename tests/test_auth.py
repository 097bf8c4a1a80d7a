"""Bearer tokens and scopes: every RPC x every role, allowed or denied as the policy says.

One server for the module, with shops ``a`` and ``b`` and a policy of four
tokens: ``dispatch``, ``admin`` and ``read`` limited to shop ``a``, and
``all`` (every role, every shop). A call the policy allows may still fail
for its own reasons (NOT_FOUND, FAILED_PRECONDITION), never with
UNAUTHENTICATED or PERMISSION_DENIED; a denied call answers PERMISSION_DENIED
and changes nothing.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from server_fixtures import ThreadedServer

from dispatcher import auth as auth_mod
from dispatcher._gen.dispatch.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    cluster_pb2,
    cluster_pb2_grpc,
    dispatch_pb2,
    dispatch_pb2_grpc,
)
from dispatcher.auth import AuthPolicy, PolicyError, hash_token
from dispatcher.cli import main as cli_main
from dispatcher.security import RULES

TOKENS = {"dispatch": "tok-dispatch-Zq81", "admin": "tok-admin-Pw02", "read": "tok-read-Lm33", "all": "tok-all-Xx44"}
POLICY = {
    "callers": [
        {"name": "gw", "token_sha256": hash_token(TOKENS["dispatch"]), "roles": ["dispatch"], "shops": ["a"]},
        {"name": "ops", "token_sha256": hash_token(TOKENS["admin"]), "roles": ["admin"], "shops": ["a"]},
        {"name": "viewer", "token_sha256": hash_token(TOKENS["read"]), "roles": ["read"], "shops": ["a"]},
        {
            "name": "root",
            "token_sha256": hash_token(TOKENS["all"]),
            "roles": ["dispatch", "admin", "read"],
            "shops": "*",
        },
    ]
}
ONLINE = 1
DENIED = {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}
_ids = itertools.count()


def md(token: str | None) -> tuple[tuple[str, str], ...]:
    return () if token is None else (("authorization", f"Bearer {token}"),)


class Stubs:
    def __init__(self, channel: grpc.Channel) -> None:
        self.d = dispatch_pb2_grpc.DispatchStub(channel)
        self.a = admin_pb2_grpc.AdminStub(channel)


@pytest.fixture(scope="module")
def srv() -> Iterator[tuple[ThreadedServer, Stubs]]:
    running = ThreadedServer(auth=AuthPolicy.from_mapping(POLICY)).start()
    channel = grpc.insecure_channel(running.target)
    stubs = Stubs(channel)
    root = md(TOKENS["all"])
    for shop in ("a", "b"):
        stubs.a.PutShop(
            admin_pb2.PutShopRequest(shop=admin_pb2.ShopConfig(shop_id=shop, main_account=shop)), metadata=root
        )
        stubs.a.PutAgent(
            admin_pb2.PutAgentRequest(agent=admin_pb2.Agent(shop_id=shop, agent_id=f"{shop}:x", max_capacity=1000)),
            metadata=root,
        )
        stubs.d.SetPresence(
            dispatch_pb2.SetPresenceRequest(shop_id=shop, agent_id=f"{shop}:x", presence=ONLINE), metadata=root
        )
        stubs.d.Dispatch(
            dispatch_pb2.DispatchRequest(shop_id=shop, buyer_id="seed-buyer", conversation_id="seed"), metadata=root
        )
    try:
        yield running, stubs
    finally:
        channel.close()
        running.stop()


def _code(fn: Callable[[], Any]) -> grpc.StatusCode:
    try:
        fn()
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _item_or_call(fn: Callable[[], dispatch_pb2.DispatchBatchResponse]) -> grpc.StatusCode:
    """A batch's call status, or its only item's error when the call itself succeeded."""
    try:
        response = fn()
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    (item,) = response.results if hasattr(response, "results") else response.responses
    if item.HasField("error"):
        return next(c for c in grpc.StatusCode if c.value[0] == item.error.code)
    return grpc.StatusCode.OK


def _watch(s: Stubs, shops: list[str], m: Any, *, batches: bool = False) -> grpc.StatusCode:
    call: Any
    if batches:
        call = s.d.WatchAssignmentBatches(
            dispatch_pb2.WatchAssignmentBatchesRequest(shop_ids=shops), metadata=m, timeout=10
        )
    else:
        call = s.d.WatchAssignments(dispatch_pb2.WatchAssignmentsRequest(shop_ids=shops), metadata=m, timeout=10)
    if ("dispatch-watch", "subscribed") in tuple(call.initial_metadata()):
        call.cancel()
        return grpc.StatusCode.OK
    return call.code()  # type: ignore[no-any-return]


def _batch(shop: str) -> dispatch_pb2.DispatchBatchRequest:
    return dispatch_pb2.DispatchBatchRequest(
        requests=[dispatch_pb2.DispatchRequest(shop_id=shop, buyer_id="b", conversation_id=f"c{next(_ids)}")]
    )


def _operations(shop: str) -> dispatch_pb2.OperateRequest:
    op = dispatch_pb2.Operation(
        dispatch=dispatch_pb2.DispatchRequest(shop_id=shop, buyer_id="b", conversation_id=f"c{next(_ids)}")
    )
    return dispatch_pb2.OperateRequest(operations=[op])


# Each RPC with a harmless request on shop `shop`: (method, call(stubs, shop, metadata) -> code).
CALLS: dict[str, Callable[[Stubs, str, Any], grpc.StatusCode]] = {
    "Dispatch": lambda s, shop, m: _code(
        lambda: s.d.Dispatch(
            dispatch_pb2.DispatchRequest(shop_id=shop, buyer_id="b", conversation_id=f"c{next(_ids)}"), metadata=m
        )
    ),
    "DispatchBatch": lambda s, shop, m: _item_or_call(lambda: s.d.DispatchBatch(_batch(shop), metadata=m)),
    "DispatchStream": lambda s, shop, m: _item_or_call(
        lambda: next(iter(s.d.DispatchStream(iter([_batch(shop)]), metadata=m)))
    ),
    "Operate": lambda s, shop, m: _item_or_call(lambda: s.d.Operate(_operations(shop), metadata=m)),
    "OperateStream": lambda s, shop, m: _item_or_call(
        lambda: next(iter(s.d.OperateStream(iter([_operations(shop)]), metadata=m)))
    ),
    "SetPresence": lambda s, shop, m: _code(
        lambda: s.d.SetPresence(
            dispatch_pb2.SetPresenceRequest(shop_id=shop, agent_id=f"{shop}:x", presence=ONLINE), metadata=m
        )
    ),
    "ReportConversation": lambda s, shop, m: _code(
        lambda: s.d.ReportConversation(
            dispatch_pb2.ReportConversationRequest(shop_id=shop, conversation_id="nope", event=3), metadata=m
        )
    ),
    "ClaimFromPool": lambda s, shop, m: _code(
        lambda: s.d.ClaimFromPool(dispatch_pb2.ClaimFromPoolRequest(shop_id=shop, agent_id=f"{shop}:x"), metadata=m)
    ),
    "WatchAssignments": lambda s, shop, m: _watch(s, [shop], m),
    "WatchAssignmentBatches": lambda s, shop, m: _watch(s, [shop], m, batches=True),
    "PutShop": lambda s, shop, m: _code(
        lambda: s.a.PutShop(
            admin_pb2.PutShopRequest(shop=admin_pb2.ShopConfig(shop_id=shop, main_account=shop)), metadata=m
        )
    ),
    "DeleteShop": lambda s, shop, m: _code(
        lambda: s.a.DeleteShop(admin_pb2.DeleteShopRequest(shop_id=shop), metadata=m)
    ),  # live conversations: FAILED_PRECONDITION
    "PutAgent": lambda s, shop, m: _code(
        lambda: s.a.PutAgent(
            admin_pb2.PutAgentRequest(agent=admin_pb2.Agent(shop_id=shop, agent_id=f"{shop}:y", max_capacity=3)),
            metadata=m,
        )
    ),
    "DeleteAgent": lambda s, shop, m: _code(
        lambda: s.a.DeleteAgent(admin_pb2.DeleteAgentRequest(shop_id=shop, agent_id=f"{shop}:ghost"), metadata=m)
    ),
    "PutGroup": lambda s, shop, m: _code(
        lambda: s.a.PutGroup(
            admin_pb2.PutGroupRequest(group=admin_pb2.Group(shop_id=shop, group_id="g", members=[f"{shop}:x"])),
            metadata=m,
        )
    ),
    "DeleteGroup": lambda s, shop, m: _code(
        lambda: s.a.DeleteGroup(admin_pb2.DeleteGroupRequest(shop_id=shop, group_id="nog"), metadata=m)
    ),
    "SetExclusiveAgent": lambda s, shop, m: _code(
        lambda: s.a.SetExclusiveAgent(
            admin_pb2.SetExclusiveAgentRequest(shop_id=shop, buyer_id="vip", agent_id=f"{shop}:x"), metadata=m
        )
    ),
    "DeleteExclusiveAgent": lambda s, shop, m: _code(
        lambda: s.a.DeleteExclusiveAgent(
            admin_pb2.DeleteExclusiveAgentRequest(shop_id=shop, buyer_id="nobody"), metadata=m
        )
    ),
    "GetShopState": lambda s, shop, m: _code(
        lambda: s.a.GetShopState(admin_pb2.GetShopStateRequest(shop_id=shop), metadata=m)
    ),
    "ListShops": lambda s, shop, m: _code(lambda: s.a.ListShops(admin_pb2.ListShopsRequest(), metadata=m)),
    "GetConversation": lambda s, shop, m: _code(
        lambda: s.a.GetConversation(admin_pb2.GetConversationRequest(shop_id=shop, conversation_id="seed"), metadata=m)
    ),
    "GetBuyer": lambda s, shop, m: _code(
        lambda: s.a.GetBuyer(admin_pb2.GetBuyerRequest(shop_id=shop, buyer_id="seed-buyer"), metadata=m)
    ),
}
ROLE_OF = {
    **dict.fromkeys(
        [
            "Dispatch",
            "DispatchBatch",
            "DispatchStream",
            "Operate",
            "OperateStream",
            "SetPresence",
            "ReportConversation",
            "ClaimFromPool",
        ],
        "dispatch",
    ),
    **dict.fromkeys(
        [
            "PutShop",
            "DeleteShop",
            "PutAgent",
            "DeleteAgent",
            "PutGroup",
            "DeleteGroup",
            "SetExclusiveAgent",
            "DeleteExclusiveAgent",
        ],
        "admin",
    ),
    **dict.fromkeys(
        ["GetShopState", "ListShops", "GetConversation", "GetBuyer", "WatchAssignments", "WatchAssignmentBatches"],
        "read",
    ),
}


def test_the_table_covers_every_rpc_of_the_contract() -> None:
    methods = {
        f"/dispatch.v1.{svc.name}/{m.name}"
        for svc in (
            dispatch_pb2.DESCRIPTOR.services_by_name["Dispatch"],
            admin_pb2.DESCRIPTOR.services_by_name["Admin"],
        )
        for m in svc.methods
    }
    cluster = {f"/dispatch.v1.Cluster/{m.name}" for m in cluster_pb2.DESCRIPTOR.services_by_name["Cluster"].methods}
    assert methods | cluster == set(RULES)
    assert all(RULES[m].role == "" for m in cluster)  # any authenticated caller (below)
    assert {name.rsplit("/", 1)[1] for name in methods} == set(CALLS) == set(ROLE_OF)
    assert {RULES[m].role for m in methods if m.endswith("/" + "ListShops")} == {"read"}
    assert all(RULES[m].role == ROLE_OF[m.rsplit("/", 1)[1]] for m in methods)


@pytest.mark.parametrize("rpc", sorted(CALLS))
@pytest.mark.parametrize("caller", ["dispatch", "admin", "read", "all"])
def test_every_rpc_by_every_role_in_scope(srv: tuple[ThreadedServer, Stubs], rpc: str, caller: str) -> None:
    _, stubs = srv
    code = CALLS[rpc](stubs, "a", md(TOKENS[caller]))
    if caller == "all" or ROLE_OF[rpc] == caller:
        assert code not in DENIED, (rpc, caller, code)
    else:
        assert code == grpc.StatusCode.PERMISSION_DENIED, (rpc, caller, code)


@pytest.mark.parametrize("rpc", sorted(CALLS))
def test_every_rpc_out_of_scope_is_denied_and_changes_nothing(srv: tuple[ThreadedServer, Stubs], rpc: str) -> None:
    server, stubs = srv
    before = stubs.a.GetShopState(admin_pb2.GetShopStateRequest(shop_id="b"), metadata=md(TOKENS["all"]))
    for caller in ("dispatch", "admin", "read"):
        code = CALLS[rpc](stubs, "b", md(TOKENS[caller]))
        if rpc == "ListShops":  # no shop in the request: allowed for read, filtered (below)
            assert (code == grpc.StatusCode.OK) == (caller == "read"), (caller, code)
        else:
            assert code == grpc.StatusCode.PERMISSION_DENIED, (rpc, caller, code)
    after = stubs.a.GetShopState(admin_pb2.GetShopStateRequest(shop_id="b"), metadata=md(TOKENS["all"]))
    assert after == before
    assert CALLS[rpc](stubs, "b", md(TOKENS["all"])) not in DENIED


@pytest.mark.parametrize("rpc", sorted(CALLS))
@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer wrong-token"),),
        (("authorization", TOKENS["all"]),),
        (("authorization", "Basic " + TOKENS["all"]),),
    ],
)
def test_missing_or_bad_credentials_are_unauthenticated(
    srv: tuple[ThreadedServer, Stubs], rpc: str, metadata: Any
) -> None:
    _, stubs = srv
    assert CALLS[rpc](stubs, "a", metadata) == grpc.StatusCode.UNAUTHENTICATED


def test_a_batch_denies_only_its_out_of_scope_items(srv: tuple[ThreadedServer, Stubs]) -> None:
    server, stubs = srv
    live_b = stubs.a.GetShopState(
        admin_pb2.GetShopStateRequest(shop_id="b"), metadata=md(TOKENS["all"])
    ).live_conversations

    def batch() -> dispatch_pb2.DispatchBatchRequest:
        shops = ("a", "b", "a", "zz")
        return dispatch_pb2.DispatchBatchRequest(
            requests=[
                dispatch_pb2.DispatchRequest(shop_id=shop, buyer_id="b", conversation_id=f"m{next(_ids)}")
                for shop in shops
            ]
        )

    for send in (
        lambda: stubs.d.DispatchBatch(batch(), metadata=md(TOKENS["dispatch"])),
        lambda: next(iter(stubs.d.DispatchStream(iter([batch()]), metadata=md(TOKENS["dispatch"])))),
    ):
        response = send()
        codes = [r.error.code if r.HasField("error") else 0 for r in response.responses]
        assert codes == [0, grpc.StatusCode.PERMISSION_DENIED.value[0], 0, grpc.StatusCode.PERMISSION_DENIED.value[0]]
        assert "'b'" in response.responses[1].error.message and "gw" in response.responses[1].error.message
        assert response.responses[0].agent_id == "a:x"
    assert (
        stubs.a.GetShopState(admin_pb2.GetShopStateRequest(shop_id="b"), metadata=md(TOKENS["all"])).live_conversations
        == live_b
    )
    # The unscoped caller gets NOT_FOUND for the unknown shop, not a denial.
    response = stubs.d.DispatchBatch(batch(), metadata=md(TOKENS["all"]))
    assert [r.error.code for r in response.responses] == [0, 0, 0, grpc.StatusCode.NOT_FOUND.value[0]]


def test_watching_every_shop_needs_star_and_list_shops_is_filtered(srv: tuple[ThreadedServer, Stubs]) -> None:
    _, stubs = srv
    assert _watch(stubs, [], md(TOKENS["read"])) == grpc.StatusCode.PERMISSION_DENIED
    assert _watch(stubs, ["a", "b"], md(TOKENS["read"])) == grpc.StatusCode.PERMISSION_DENIED
    assert _watch(stubs, [], md(TOKENS["all"])) == grpc.StatusCode.OK
    assert _watch(stubs, [], md(TOKENS["read"]), batches=True) == grpc.StatusCode.PERMISSION_DENIED
    assert _watch(stubs, [], md(TOKENS["all"]), batches=True) == grpc.StatusCode.OK
    assert list(stubs.a.ListShops(admin_pb2.ListShopsRequest(), metadata=md(TOKENS["read"])).shop_ids) == ["a"]
    assert list(stubs.a.ListShops(admin_pb2.ListShopsRequest(), metadata=md(TOKENS["all"])).shop_ids) == ["a", "b"]


def test_denials_are_counted_not_logged(srv: tuple[ThreadedServer, Stubs]) -> None:
    server, stubs = srv
    errors = server.server.counters.errors
    before = (errors["UNAUTHENTICATED"], errors["PERMISSION_DENIED"])
    CALLS["GetShopState"](stubs, "a", md("nope"))
    CALLS["GetShopState"](stubs, "b", md(TOKENS["read"]))
    assert (errors["UNAUTHENTICATED"], errors["PERMISSION_DENIED"]) == (before[0] + 1, before[1] + 1)


# ------------------------------------------------------------------ the policy file


def test_policy_files_toml_and_json_and_their_errors(tmp_path: Path) -> None:
    toml = tmp_path / "p.toml"
    toml.write_text(
        f'[[callers]]\nname = "gw"\ntoken_sha256 = "{hash_token("t1")}"\nroles = ["dispatch"]\nshops = ["a", "b"]\n'
        '[[callers]]\nname = "mtls"\ncert = "gateway.example"\nroles = ["read"]\nshops = "*"\n'
    )
    policy = AuthPolicy.load(toml)
    gw = policy.by_token("t1")
    assert gw is not None and gw.name == "gw" and gw.shops == {"a", "b"} and gw.roles == {"dispatch"}
    assert policy.by_token("t2") is None and policy.by_token("") is None
    assert policy.by_cert(["other", "gateway.example"]).name == "mtls"  # type: ignore[union-attr]
    js = tmp_path / "p.json"
    js.write_text(json.dumps(POLICY))
    assert AuthPolicy.load(js).by_token(TOKENS["all"]).shops is None  # type: ignore[union-attr]
    bad = [
        ({"callers": [{"name": "x", "token": "plain", "roles": ["read"], "shops": "*"}]}, "plaintext"),
        ({"callers": [{"name": "x", "token_sha256": "abc", "roles": ["read"], "shops": "*"}]}, "64 hex"),
        (
            {"callers": [{"name": "x", "token_sha256": hash_token("t"), "roles": ["root"], "shops": "*"}]},
            "unknown roles",
        ),
        ({"callers": [{"name": "x", "token_sha256": hash_token("t"), "roles": ["read"], "shops": "a"}]}, "shops"),
        ({"callers": [{"name": "x", "roles": ["read"], "shops": "*"}]}, "token_sha256 or cert"),
        (
            {"callers": [{"name": "x", "token_sha256": hash_token("t"), "roles": ["read"], "shops": "*"}] * 2},
            "another caller",
        ),
        ({"caller": []}, "unknown keys"),
    ]
    for data, words in bad:
        with pytest.raises(PolicyError, match=words):
            AuthPolicy.from_mapping(data)
    broken = tmp_path / "broken.toml"
    broken.write_text("[[callers]\n")
    with pytest.raises(PolicyError, match="broken.toml"):
        AuthPolicy.load(broken)


def test_token_comparison_is_constant_time_over_digests(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bytes, bytes]] = []
    real = auth_mod.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth_mod.hmac, "compare_digest", spy)
    policy = AuthPolicy.from_mapping(POLICY)
    assert policy.by_token(TOKENS["read"]).name == "viewer"  # type: ignore[union-attr]
    assert seen and all(len(a) == len(b) == 32 for a, b in seen)  # sha256 digests, never the token


def test_hash_token_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    assert cli_main(["hash-token"]) == 0
    assert (
        capsys.readouterr().out.strip() == hash_token("s3cret") == __import__("hashlib").sha256(b"s3cret").hexdigest()
    )
    assert cli_main(["hash-token", "--generate"]) == 0
    lines = {k.strip(): v for k, v in (line.split(" = ") for line in capsys.readouterr().out.strip().splitlines())}
    assert len(lines["token"]) >= 40 and hash_token(lines["token"]) == lines["token_sha256"]


def test_server_needs_an_explicit_auth_choice() -> None:
    from dispatcher.server import DispatchServer

    with pytest.raises(ValueError, match="no_auth"):
        DispatchServer()
    with pytest.raises(ValueError):
        DispatchServer(auth=AuthPolicy.from_mapping(POLICY), no_auth=True)


@pytest.mark.parametrize("caller", ["dispatch", "admin", "read", "all"])
def test_any_authenticated_caller_may_read_the_cluster_map(srv: tuple[ThreadedServer, Stubs], caller: str) -> None:
    server, _ = srv
    with grpc.insecure_channel(server.target) as channel:
        stub = cluster_pb2_grpc.ClusterStub(channel)
        answer = stub.GetClusterMap(cluster_pb2.GetClusterMapRequest(), metadata=md(TOKENS[caller]), timeout=10)
        assert answer.partition_count == 0  # a server alone serves every shop
        with pytest.raises(grpc.RpcError) as info:
            stub.GetClusterMap(cluster_pb2.GetClusterMapRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
