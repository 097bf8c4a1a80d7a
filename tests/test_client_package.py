"""The Python client as a package of its own (issue 16).

- its generated code is its own (``dispatch_client._gen``), made by protos/generate.py from the
  same protos and tools as the server's, and up to date; the package imports nothing of the server;
- it installs from ``clients/python`` alone into a clean venv and works against a server;
- one exception hierarchy: ``DispatchError`` and a class per status code, ``OperationError`` for
  batched calls, ``WrongNodeError``; no raw ``grpc.RpcError`` leaves a client method;
- enum arguments by number or by name, full or short;
- typed: mypy --strict covers it (``make lint``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2
from google.protobuf.internal import api_implementation
from google.rpc import error_details_pb2, status_pb2
from server_fixtures import ROOT, T0, ThreadedServer

import dispatch_client
from dispatch_client import (
    AlreadyExists,
    AsyncDispatchClient,
    ClusterClient,
    DispatchClient,
    DispatchError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OperationError,
    Unavailable,
    WrongNodeError,
    dispatch_request,
    pb,
    wrong_node_of,
)
from dispatch_client._client import _build
from dispatch_client._errors import error_for, error_from_rpc, error_of

_spec = importlib.util.spec_from_file_location("protos_generate_client", ROOT / "protos" / "generate.py")
assert _spec is not None and _spec.loader is not None
generate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate)

CLIENT = ROOT / "clients" / "python"
MODULES = ("common_pb2", "dispatch_pb2", "admin_pb2", "cluster_pb2")


# ------------------------------------------------------------------ its own generated code


def test_the_client_copy_of_the_generated_code_is_up_to_date(tmp_path: Path) -> None:
    generate.generate(tmp_path, generate.CLIENT_PACKAGE)
    assert generate.differences(tmp_path, generate.CLIENT_TARGET) == []
    assert generate.TARGETS == {"dispatcher._gen": generate.TARGET, "dispatch_client._gen": generate.CLIENT_TARGET}
    assert generate.CLIENT_TARGET == CLIENT / "dispatch_client" / "_gen"
    for path in (generate.CLIENT_TARGET / "dispatch" / "v1").glob("*.py*"):
        text = path.read_text()
        assert "dispatcher._gen" not in text, path.name
        for line in text.splitlines():
            assert not line.startswith(("from dispatch.v1", "import dispatch.v1")), f"{path.name}: {line}"


def test_generate_check_verifies_both_copies() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--check"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "dispatcher/_gen is up to date" in done.stdout
    assert "clients/python/dispatch_client/_gen is up to date" in done.stdout


def test_both_copies_describe_the_same_messages() -> None:
    """Same protos, same tools: the same serialized descriptors, so the messages are the same on
    the wire; with protobuf's upb runtime the two modules even share their classes."""
    for name in MODULES:
        ours = importlib.import_module(f"dispatch_client._gen.dispatch.v1.{name}")
        server = importlib.import_module(f"dispatcher._gen.dispatch.v1.{name}")
        assert ours.DESCRIPTOR.serialized_pb == server.DESCRIPTOR.serialized_pb
    from dispatch_client._gen.dispatch.v1 import dispatch_pb2 as client_pb2
    from dispatcher._gen.dispatch.v1 import dispatch_pb2 as server_pb2

    request = dispatch_request("s", "b", "c", order_state="UNPAID", at=T0)
    assert server_pb2.DispatchRequest.FromString(request.SerializeToString()) == server_pb2.DispatchRequest(
        shop_id="s", buyer_id="b", conversation_id="c", order_state=2, at=request.at
    )
    if api_implementation.Type() == "upb":
        assert client_pb2.DispatchRequest is server_pb2.DispatchRequest
        assert pb.Operation is server_pb2.Operation
        server_pb2.Operation(dispatch=request)  # a server message takes the client's as a field


def test_the_package_imports_nothing_of_the_server() -> None:
    for path in (CLIENT / "dispatch_client").rglob("*.py*"):
        if "__pycache__" in path.parts:
            continue
        for line in path.read_text().splitlines():
            stripped = line.strip()
            assert not stripped.startswith(("from dispatcher", "import dispatcher", "from _fastpath")), (
                f"{path.relative_to(CLIENT)}: {line}"
            )
    meta = tomllib.loads((CLIENT / "pyproject.toml").read_text())
    deps = " ".join(meta["project"]["dependencies"])
    for dist in ("grpcio", "protobuf", "googleapis-common-protos"):
        assert dist in deps
    assert meta["project"]["license"] == "Apache-2.0"  # an SPDX string: no setuptools deprecation


def test_mypy_strict_covers_the_client() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert config["strict"] is True
    assert "clients/python/dispatch_client" in config["files"]
    assert (CLIENT / "dispatch_client" / "py.typed").exists()


# ------------------------------------------------------------------ installed alone, against a server

_SCRIPT = textwrap.dedent(
    """
    import asyncio, importlib.util, json, sys
    import grpc
    from dispatch_client import AsyncDispatchClient, DispatchClient, NotFound, OperationError, pb

    target = sys.argv[1]
    out = {"server_importable": importlib.util.find_spec("dispatcher") is not None}
    with DispatchClient(target, timeout=10) as client:
        client.put_shop(shop_id="pkg", main_account="pkg", strategy="LEAST_SATURATION")
        client.put_agent(shop_id="pkg", agent_id="pkg:alice", max_capacity=2)
        client.set_presence("pkg", "pkg:alice", "ONLINE")
        answer = client.dispatch("pkg", "b-1", "c-1", order_state="NO_ORDER")
        out["dispatch"] = [answer.agent_id, pb.Reason.Name(answer.reason)]
        try:
            client.set_presence("pkg", "alice", "OFFLINE")
        except NotFound as e:
            out["not_found"] = [type(e).__name__, e.code().name, e.message, isinstance(e, grpc.RpcError)]

    async def batched():
        async with AsyncDispatchClient(target, timeout=10) as client:
            closed = await client.report_conversation("pkg", "c-1", "CLOSED")
            try:
                await client.dispatch("nope", "b", "c")
            except NotFound as e:
                return [type(closed).__name__, isinstance(e, OperationError), e.code().name]

    out["batched"] = asyncio.run(batched())
    print(json.dumps(out))
    """
)


def test_installs_from_clients_python_alone_into_a_clean_venv_and_works(server: ThreadedServer, tmp_path: Path) -> None:
    source = tmp_path / "python"  # a copy: the build writes nothing into the work tree
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=env)
    python = venv / "bin" / "python"
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", str(source)],
        capture_output=True,
        text=True,
        timeout=540,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "SetuptoolsDeprecationWarning" not in done.stdout + done.stderr
    script = tmp_path / "use_it.py"
    script.write_text(_SCRIPT)
    ran = subprocess.run(
        [str(python), str(script), server.target], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env
    )
    assert ran.returncode == 0, ran.stderr
    out = json.loads(ran.stdout)
    assert out["server_importable"] is False
    assert out["dispatch"] == ["pkg:alice", "REASON_GROUP"]
    assert out["not_found"] == [
        "NotFound",
        "NOT_FOUND",
        "agent 'alice' not found in shop 'pkg'; agent ids carry their shop's prefix, e.g. 'pkg:alice'",
        True,
    ]
    assert out["batched"] == ["ReportConversationResponse", True, "NOT_FOUND"]


# ------------------------------------------------------------------ one exception hierarchy


def _check_class(error: BaseException, cls: type[DispatchError], code: grpc.StatusCode) -> None:
    assert isinstance(error, cls) and isinstance(error, DispatchError), repr(error)
    assert isinstance(error, grpc.RpcError) and isinstance(error, grpc.aio.AioRpcError)  # old except clauses
    assert error.code() == code == error.status_code
    assert error.details() == error.message
    assert error.status.code == code.value[0]
    assert type(error).__module__.startswith("dispatch_client"), type(error)


def test_blocking_client_raises_the_class_of_each_code(sync_client: DispatchClient) -> None:
    c = sync_client
    with pytest.raises(NotFound) as missing:
        c.dispatch("nope", "b", "c")
    _check_class(missing.value, NotFound, grpc.StatusCode.NOT_FOUND)
    assert missing.value.message == "shop 'nope' not found" and missing.value.hint == ""
    assert str(missing.value) == "NOT_FOUND: shop 'nope' not found"
    c.put_shop(shop_id="s", main_account="s")
    with pytest.raises(InvalidArgument) as bad:
        c.put_agent(shop_id="s", agent_id="s:a", max_capacity=0)
    _check_class(bad.value, InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT)
    assert "max_capacity" in bad.value.message
    c.put_agent(shop_id="s", agent_id="s:a", max_capacity=1)
    c.dispatch("s", "b1", "c1")
    with pytest.raises(AlreadyExists) as taken:
        c.dispatch("s", "b2", "c1")
    _check_class(taken.value, AlreadyExists, grpc.StatusCode.ALREADY_EXISTS)
    # Generators and the batch paths too.
    with pytest.raises(NotFound):
        list(c.iter_shop_agents("nope"))
    with pytest.raises(NotFound):
        c.get_conversation("s", "c-none")
    with c.pipeline() as p:
        ok = p.dispatch("s", "b3", "c3")
        gone = p.dispatch("nope", "b", "c")
    assert ok.result().conversation_id == "c3"
    _check_class(gone.exception() or Exception(), NotFound, grpc.StatusCode.NOT_FOUND)
    assert isinstance(gone.exception(), OperationError)
    with pytest.raises(NotFound):
        gone.result()


def test_a_server_that_cannot_be_reached_is_unavailable() -> None:
    with DispatchClient("127.0.0.1:1", timeout=5) as c:
        with pytest.raises(Unavailable) as info:
            c.list_shops()
        _check_class(info.value, Unavailable, grpc.StatusCode.UNAVAILABLE)
        with pytest.raises(Unavailable):
            list(c.dispatch_stream([[dispatch_request("s", "b", "c")]]))
        p = c.pipeline()
        future = p.dispatch("s", "b", "c")
        with pytest.raises(Unavailable):
            p.execute()
        assert isinstance(future.exception(), Unavailable)


async def test_async_client_unary_and_batched_raise_the_same_classes(server: ThreadedServer) -> None:
    async with (
        AsyncDispatchClient(server.target, timeout=10) as batched,
        AsyncDispatchClient(server.target, timeout=10, auto_batch=False) as unary,
    ):
        for client, is_batched in ((batched, True), (unary, False)):
            with pytest.raises(NotFound) as info:
                await client.dispatch("nope", "b", "c")
            _check_class(info.value, NotFound, grpc.StatusCode.NOT_FOUND)
            assert isinstance(info.value, OperationError) is is_batched
            with pytest.raises(NotFound):
                await client.set_presence("nope", "nope:a", "ONLINE")
            with pytest.raises(NotFound):
                await client.get_shop_state("nope")
            with pytest.raises(NotFound):
                async for _ in client.iter_shop_agents("nope"):
                    pass
        answers = await asyncio.gather(batched.dispatch("nope", "b", "c"), return_exceptions=True)
        assert isinstance(answers[0], NotFound) and isinstance(answers[0], OperationError)
    async with AsyncDispatchClient("127.0.0.1:1", timeout=5, auto_batch=False) as down:
        with pytest.raises(Unavailable):
            await down.list_shops()
        with pytest.raises(Unavailable):
            async for _ in down.operate_stream([[pb.Operation(dispatch=dispatch_request("s", "b", "c"))]]):
                pass


def test_cluster_client_raises_dispatch_errors(server: ThreadedServer) -> None:
    with ClusterClient(server.target, timeout=10) as cluster:
        with pytest.raises(NotFound) as info:
            cluster.dispatch("nope", "b", "c")
        _check_class(info.value, NotFound, grpc.StatusCode.NOT_FOUND)
        with pytest.raises(NotFound):
            cluster.get_shop_state("nope")
    with ClusterClient("127.0.0.1:1", timeout=5, map_timeout=5) as down:
        with pytest.raises(Unavailable):
            down.dispatch("s", "b", "c")


def test_an_agent_id_without_its_shop_prefix_gets_a_hint(sync_client: DispatchClient) -> None:
    c = sync_client
    c.put_shop(shop_id="demo", main_account="demo")
    with pytest.raises(NotFound) as bare:
        c.set_presence("demo", "alice", "ONLINE")
    assert bare.value.hint == "agent ids carry their shop's prefix, e.g. 'demo:alice'"
    assert bare.value.message == (
        "agent 'alice' not found in shop 'demo'; agent ids carry their shop's prefix, e.g. 'demo:alice'"
    )
    assert (
        bare.value.details() == bare.value.message
        and bare.value.status.message == "agent 'alice' not found in shop 'demo'"
    )
    with pytest.raises(NotFound) as prefixed:
        c.set_presence("demo", "demo:nobody", "ONLINE")
    assert prefixed.value.hint == "" and prefixed.value.message == "agent 'demo:nobody' not found in shop 'demo'"
    with c.pipeline() as p:
        batched = p.claim_from_pool("demo", "bob")
    error = batched.exception()
    assert isinstance(error, NotFound) and "e.g. 'demo:bob'" in error.message


def test_error_details_are_decoded_and_wrong_node_is_part_of_the_hierarchy() -> None:
    info = error_details_pb2.ErrorInfo(
        reason="WRONG_NODE",
        domain="dispatch.v1",
        metadata={"shop_id": "s", "partition": "7", "owner": "n2", "owner_address": "h:2", "epoch": "3"},
    )
    bad = error_details_pb2.BadRequest(field_violations=[error_details_pb2.BadRequest.FieldViolation(field="x")])
    unknown = any_pb2.Any(type_url="type.googleapis.com/no.such.Type", value=b"\x08\x01")
    status = status_pb2.Status(code=9, message="shop 's' belongs to node 'n2'")
    for detail in (info, bad):
        status.details.add().Pack(detail)
    status.details.append(unknown)
    error = error_of(status)
    assert isinstance(error, WrongNodeError) and isinstance(error, FailedPrecondition)
    assert isinstance(error, OperationError) and isinstance(error, DispatchError)
    assert (error.owner, error.owner_address, error.epoch, error.shop_id, error.partition) == ("n2", "h:2", 3, "s", 7)
    assert error.error_details[0] == info and error.error_details[1] == bad and error.error_details[2] == unknown
    assert wrong_node_of(error) == error.wrong_node and wrong_node_of(status) == error.wrong_node
    # The status travels in the trailing metadata, as gRPC sends it.
    assert [v for k, v in error.trailing_metadata() if k == "grpc-status-details-bin"] == [status.SerializeToString()]
    # A raw grpc error with that trailer converts to the same.
    raw = grpc.aio.AioRpcError(
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString())),
        "shop 's' belongs to node 'n2'",
    )
    converted = error_from_rpc(raw)
    assert isinstance(converted, WrongNodeError)
    assert converted.owner == "n2" and error_from_rpc(converted) is converted
    # Without the ErrorInfo it is a plain FailedPrecondition; errors pickle.
    plain = error_for(grpc.StatusCode.FAILED_PRECONDITION, "no")
    assert type(plain) is FailedPrecondition and not isinstance(plain, OperationError)
    for original in (error, plain, error_of(status_pb2.Status(code=5, message="gone"))):
        copy = pickle.loads(pickle.dumps(original))
        assert type(copy) is type(original) and copy.message == original.message
        assert copy.status == original.status


def test_every_status_code_has_its_class() -> None:
    for code in grpc.StatusCode:
        if code == grpc.StatusCode.OK:
            continue
        for batched in (False, True):
            error = error_for(code, "m", batched=batched)
            assert error.code() == code and type(error).CODE == code
            assert isinstance(error, OperationError) is batched
    for name in ("NotFound", "InvalidArgument", "FailedPrecondition", "AlreadyExists", "PermissionDenied"):
        assert issubclass(getattr(dispatch_client, name), DispatchError)
    for name in ("Unauthenticated", "Unavailable", "ResourceExhausted", "DeadlineExceeded"):
        assert issubclass(getattr(dispatch_client, name), DispatchError)


# ------------------------------------------------------------------ enum names, full or short


def test_enum_arguments_take_numbers_full_and_short_names(sync_client: DispatchClient) -> None:
    c = sync_client
    stored = c.put_shop(shop_id="e", main_account="e", strategy="fewest_today", offline_rule="STAGING")
    assert stored.strategy == pb.Strategy.STRATEGY_FEWEST_TODAY
    assert stored.offline_rule == pb.OfflineRule.OFFLINE_RULE_STAGING
    stored = c.put_shop(shop_id="e", main_account="e", strategy="STRATEGY_LEAST_SATURATION")
    assert stored.strategy == pb.Strategy.STRATEGY_LEAST_SATURATION
    c.put_agent(shop_id="e", agent_id="e:a", max_capacity=3, role="SUB")
    c.put_group(shop_id="e", group_id="g", members=["e:a"], order_states=["NO_ORDER", "ORDER_STATE_UNPAID", 3])
    built = _build(pb.Group, None, {"order_states": ["NO_ORDER", "ORDER_STATE_UNPAID", 3], "strategy": "fewest_unread"})
    assert (list(built.order_states), built.strategy) == ([1, 2, 3], pb.Strategy.STRATEGY_FEWEST_UNREAD)
    assert [a.role for a in c.get_shop_state("e").agents if a.agent_id == "e:a"] == [pb.Role.ROLE_SUB]
    c.set_presence("e", "e:a", "online", "desktop", at=T0)
    first = c.dispatch("e", "b1", "c1", order_state="NO_ORDER", type="BUYER_TO_SHOP", at=T0 + 1)
    assert (first.agent_id, first.group_id) == ("e:a", "g")
    c.report_conversation("e", "c1", "CLOSED", at=T0 + 2)
    with pytest.raises(NotFound):
        c.get_conversation("e", "c1")  # closed: gone
    with c.pipeline() as p:
        p.set_presence("e", "e:a", "PRESENCE_SUSPENDED", at=T0 + 3)
        again = p.dispatch("e", "b2", "c2", order_state="unpaid", at=T0 + 4)
    assert again.result().reason != pb.Reason.REASON_GROUP  # the only agent is suspended
    assert (
        dispatch_request("e", "b", "c", order_state=" after_sale ").order_state == pb.OrderState.ORDER_STATE_AFTER_SALE
    )
    with pytest.raises(ValueError) as bad:
        dispatch_request("e", "b", "c", order_state="SOLD")
    assert "OrderState" in str(bad.value) and "NO_ORDER" in str(bad.value) and "SOLD" in str(bad.value)
    with pytest.raises(ValueError):
        c.set_presence("e", "e:a", "AWAY")
    with pytest.raises(ValueError):
        c.put_shop(shop_id="e", main_account="e", strategy="fastest")


async def test_async_enum_names_batched_and_unary(server: ThreadedServer) -> None:
    for auto_batch in (True, False):
        async with AsyncDispatchClient(server.target, timeout=10, auto_batch=auto_batch) as c:
            shop = f"a{int(auto_batch)}"
            await c.put_shop(shop_id=shop, main_account=shop)
            await c.put_agent(shop_id=shop, agent_id=f"{shop}:a", max_capacity=1)
            await c.set_presence(shop, f"{shop}:a", "ONLINE", at=T0)
            answer = await c.dispatch(shop, "b", "c", order_state="NO_ORDER", at=T0 + 1)
            assert answer.agent_id == f"{shop}:a"
            await c.report_conversation(shop, "c", "conversation_event_closed", at=T0 + 2)
            state = await c.get_shop_state(shop)
            assert [a.active for a in state.agents if a.agent_id == f"{shop}:a"] == [0]


# ------------------------------------------------------------------ the package's own time handling still applies


def test_put_shop_keywords_still_convert_durations(sync_client: DispatchClient) -> None:
    stored = sync_client.put_shop(
        shop_id="d", main_account="d", offline_grace=dt.timedelta(minutes=5), main_account_mode="MEMBER"
    )
    assert stored.offline_grace.ToTimedelta() == dt.timedelta(minutes=5)
    assert stored.main_account_mode == pb.MainAccountMode.MAIN_ACCOUNT_MODE_MEMBER
