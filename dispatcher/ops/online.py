"""The commands that talk to a server: ``call``, ``shops``, ``shop show``, ``health``.

``call`` is grpcurl from the descriptors the project ships (dispatch.v1's
Dispatch, Admin and Cluster, and grpc.health.v1): the request is JSON (proto
field names or their JSON names; enum names or numbers), parsed with
``json_format.Parse`` into the method's request type; every response is printed
as JSON with proto field names. A failed call prints its status code, message
and the ``google.rpc.Status`` details of ``grpc-status-details-bin`` (e.g. a
cluster's WRONG_NODE ``ErrorInfo``) on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from typing import Any, Final

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import FileDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2

from .._gen.dispatch.v1 import admin_pb2, cluster_pb2, dispatch_pb2
from .connection import CallFailed, Connection, UsageError
from .render import message_dict, message_json, render_shop_state, shop_summary_row, table

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "FILES",
    "call_command",
    "cluster_nodes",
    "error_report",
    "get_shop_state",
    "health_command",
    "health_services",
    "list_methods",
    "print_error",
    "resolve_method",
    "shop_show_command",
    "shops_command",
]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
"""The server answered an error, was unreachable, or is not serving."""
EXIT_USAGE: Final = 2
"""A wrong method name, request JSON or option."""

FILES: Final[tuple[FileDescriptor, ...]] = (
    dispatch_pb2.DESCRIPTOR,
    admin_pb2.DESCRIPTOR,
    cluster_pb2.DESCRIPTOR,
    health_pb2.DESCRIPTOR,
)
"""Where ``call`` finds services: the project's generated descriptors (and the health service)."""

_DETAIL_TYPES: Final = error_details_pb2.DESCRIPTOR
"""Imported for its types: the ``Any`` details of a google.rpc.Status (ErrorInfo...) decode by name."""


def _services() -> list[ServiceDescriptor]:
    return [service for file in FILES for service in file.services_by_name.values()]


def resolve_method(name: str) -> MethodDescriptor:
    """``dispatch.v1.Dispatch/Dispatch``, ``/dispatch.v1.Dispatch/Dispatch``, ``Dispatch/Dispatch``
    (the service's short name) or ``dispatch.v1.Dispatch.Dispatch`` (grpcurl's dotted form)."""
    text = name.strip().lstrip("/")
    if "/" in text:
        service_name, _, method_name = text.rpartition("/")
    else:
        service_name, _, method_name = text.rpartition(".")
    if not service_name or not method_name:
        raise UsageError(f"{name!r} is not SERVICE/METHOD (e.g. dispatch.v1.Admin/ListShops)")
    services = _services()
    matches = [s for s in services if service_name in (s.full_name, s.name)]
    if not matches:
        known = ", ".join(s.full_name for s in services)
        raise UsageError(f"unknown service {service_name!r}; the services are {known}")
    if len(matches) > 1:
        raise UsageError(f"{service_name!r} is ambiguous: {', '.join(s.full_name for s in matches)}")
    service = matches[0]
    method = service.methods_by_name.get(method_name)
    if method is None:
        raise UsageError(
            f"{service.full_name} has no method {method_name!r}; it has {', '.join(service.methods_by_name)}"
        )
    return method


def _kind(method: MethodDescriptor) -> str:
    return {
        (False, False): "unary",
        (False, True): "server stream",
        (True, False): "client stream",
        (True, True): "bidirectional stream",
    }[(method.client_streaming, method.server_streaming)]


def list_methods() -> list[tuple[str, str, str, str]]:
    """Every callable method: (path, kind, request type, response type)."""
    return [
        (f"{s.full_name}/{m.name}", _kind(m), m.input_type.full_name, m.output_type.full_name)
        for s in _services()
        for m in s.methods
    ]


def _enum_value(enum: Any, value: Any) -> Any:
    """A short or lower-case enum name (``NO_ORDER``, ``no_order``) as its full name (``ORDER_STATE_NO_ORDER``),
    as the bootstrap file accepts them; anything else as it is (json_format judges it)."""
    if not isinstance(value, str) or value in enum.values_by_name:
        return value
    prefix = "".join(c if c.islower() or c.isdigit() else f"_{c}" for c in enum.name).upper().lstrip("_") + "_"
    for candidate in (value.upper(), prefix + value.upper()):
        if candidate in enum.values_by_name:
            return candidate
    return value


def _expand_enums(data: Any, descriptor: Any) -> Any:
    """``data`` (JSON of a ``descriptor`` message) with short enum names made full, at any depth."""
    if not isinstance(data, dict):
        return data
    out = {}
    for key, value in data.items():
        field = descriptor.fields_by_name.get(key) or next((f for f in descriptor.fields if f.json_name == key), None)
        if field is None:
            out[key] = value
        elif field.enum_type is not None:
            out[key] = [_enum_value(field.enum_type, v) for v in value] if isinstance(value, list) else (
                _enum_value(field.enum_type, value)
            )  # fmt: skip
        elif field.message_type is not None and field.message_type.GetOptions().map_entry:
            item = field.message_type.fields_by_name["value"]
            out[key] = (
                {k: _expand_enums(v, item.message_type) for k, v in value.items()}
                if item.message_type is not None and isinstance(value, dict)
                else value
            )
        elif field.message_type is not None:
            out[key] = (
                [_expand_enums(v, field.message_type) for v in value]
                if isinstance(value, list)
                else _expand_enums(value, field.message_type)
            )
        else:
            out[key] = value
    return out


def _parse_requests(method: MethodDescriptor, text: str) -> list[Message]:
    cls = message_factory.GetMessageClass(method.input_type)
    if text == "-":
        text = sys.stdin.read()
    try:
        data = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise UsageError(f"the request is not JSON: {exc}") from None
    items = data if isinstance(data, list) and method.client_streaming else [data]
    if not items and not method.client_streaming:
        raise UsageError("no request")
    out = []
    for i, item in enumerate(items):
        message = cls()
        try:
            json_format.ParseDict(_expand_enums(item, method.input_type), message)
        except json_format.ParseError as exc:
            where = f"request[{i}]" if len(items) > 1 else "the request"
            raise UsageError(f"{where} is not a {method.input_type.full_name}: {exc}") from None
        out.append(message)
    return out


def error_report(error: grpc.RpcError) -> dict[str, Any]:
    """``{"code", "message", "details"}`` of a failed call; details from ``grpc-status-details-bin``."""
    call: Any = error
    code = call.code() if hasattr(call, "code") else grpc.StatusCode.UNKNOWN
    details: list[dict[str, Any]] = []
    trailing = call.trailing_metadata() if hasattr(call, "trailing_metadata") else None
    for key, value in trailing or ():
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except Exception:  # a malformed trailer: report what it is
            details.append({"undecodable": value.hex()})
            continue
        for any_detail in status.details:
            try:
                details.append(message_dict(any_detail))
            except Exception:  # a detail type this CLI does not know
                details.append({"@type": any_detail.type_url, "value": any_detail.value.hex()})
    return {
        "code": code.name if code is not None else "UNKNOWN",
        "message": (call.details() if hasattr(call, "details") else str(error)) or "",
        "details": details,
    }


def print_error(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"error": report}, ensure_ascii=False), file=sys.stderr)
        return
    print(f"ERROR: {report['code']}: {report['message']}", file=sys.stderr)
    for detail in report["details"]:
        kind = str(detail.get("@type", "")).rsplit("/", 1)[-1] or "detail"
        body = {k: v for k, v in detail.items() if k != "@type"}
        print(f"  {kind}: {json.dumps(body, ensure_ascii=False, sort_keys=True)}", file=sys.stderr)


def _stub(channel: grpc.Channel, method: MethodDescriptor) -> Callable[..., Any]:
    path = f"/{method.containing_service.full_name}/{method.name}"
    response = message_factory.GetMessageClass(method.output_type)
    factories: dict[tuple[bool, bool], Callable[..., Any]] = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }
    serialize: Callable[[Message], bytes] = _serialize
    fn: Callable[..., Any] = factories[(method.client_streaming, method.server_streaming)](
        path, request_serializer=serialize, response_deserializer=response.FromString
    )
    return fn


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def call_command(ns: argparse.Namespace, conn: Connection) -> int:
    """``dispatcher call SERVICE/METHOD [JSON]`` (or ``--list``)."""
    if ns.list:
        rows = list_methods()
        if ns.json:
            for path, kind, request, response in rows:
                print(json.dumps({"method": path, "kind": kind, "request": request, "response": response}))
        else:
            print(table(("method", "kind", "request", "response"), rows))
        return EXIT_OK
    if not ns.method:
        raise UsageError("give SERVICE/METHOD (e.g. dispatch.v1.Admin/ListShops), or --list to see them")
    method = resolve_method(ns.method)
    requests = _parse_requests(method, ns.request)
    printed = 0

    def show(message: Message) -> None:
        print(message_json(message, compact=ns.json, defaults=ns.emit_defaults), flush=True)

    streaming = method.server_streaming or method.client_streaming
    with conn.channel() as channel:
        fn = _stub(channel, method)
        argument: Any = iter(requests) if method.client_streaming else requests[0]
        kwargs = {"metadata": conn.metadata_for(requests[0]), "timeout": conn.call_timeout(streaming)}
        try:
            if not method.server_streaming:
                show(fn(argument, **kwargs))
                return EXIT_OK
            stream = fn(argument, **kwargs)
            try:
                for message in stream:
                    show(message)
                    printed += 1
                    if ns.max is not None and printed >= ns.max:
                        stream.cancel()
                        break
            except KeyboardInterrupt:  # Ctrl-C ends a stream: the normal way to stop watching
                stream.cancel()
            return EXIT_OK
        except grpc.RpcError as exc:
            print_error(error_report(exc), ns.json)
            return EXIT_FAILED


def _unary(conn: Connection, fn: Callable[..., Any], request: Message) -> Any:
    try:
        return fn(request, metadata=conn.metadata_for(request), timeout=conn.call_timeout())
    except grpc.RpcError as exc:
        raise CallFailed(error_report(exc)) from None


def get_shop_state(conn: Connection, channel: grpc.Channel, shop_id: str) -> admin_pb2.ShopState:
    """The whole state of a shop: every page of agents (GetShopStateRequest.page_token)."""
    get = _stub(channel, admin_pb2.DESCRIPTOR.services_by_name["Admin"].methods_by_name["GetShopState"])
    state: admin_pb2.ShopState = _unary(conn, get, admin_pb2.GetShopStateRequest(shop_id=shop_id))
    token = state.next_page_token
    while token:
        page: admin_pb2.ShopState = _unary(conn, get, admin_pb2.GetShopStateRequest(shop_id=shop_id, page_token=token))
        state.agents.extend(page.agents)
        token = page.next_page_token
    state.next_page_token = ""
    return state


def _list_shops(conn: Connection, channel: grpc.Channel) -> list[str]:
    fn = _stub(channel, admin_pb2.DESCRIPTOR.services_by_name["Admin"].methods_by_name["ListShops"])
    response: admin_pb2.ListShopsResponse = _unary(conn, fn, admin_pb2.ListShopsRequest())
    return list(response.shop_ids)


def cluster_nodes(conn: Connection, channel: grpc.Channel) -> list[tuple[str, str]]:
    """``(name, address)`` of each node of the cluster the target serves in (GetClusterMap), in
    the map's order; ``[]`` for a server outside a cluster (its map is empty) or one older than
    the Cluster service (UNIMPLEMENTED)."""
    fn = _stub(channel, cluster_pb2.DESCRIPTOR.services_by_name["Cluster"].methods_by_name["GetClusterMap"])
    try:
        answer: cluster_pb2.GetClusterMapResponse = _unary(conn, fn, cluster_pb2.GetClusterMapRequest())
    except CallFailed as exc:
        if exc.report["code"] == grpc.StatusCode.UNIMPLEMENTED.name:
            return []
        raise
    return [(node.name, node.address) for node in answer.nodes]


def _node_shops(conn: Connection, long: bool) -> tuple[list[str], list[admin_pb2.ShopState]]:
    with conn.channel() as channel:
        shop_ids = _list_shops(conn, channel)
        return shop_ids, [get_shop_state(conn, channel, s) for s in shop_ids] if long else []


def shops_command(ns: argparse.Namespace, conn: Connection) -> int:
    """``dispatcher shops [--long]``: ListShops (with --long, a GetShopState summary per shop).

    In a cluster (the target's GetClusterMap names nodes), every node of the map is asked at
    the address the map gives, and each shop is listed with its node: a node that does not
    answer is reported on stderr (exit 1) and the others are still listed. ``--this-node``
    asks only the server the target reaches."""
    with conn.channel() as channel:
        nodes = [] if ns.this_node else cluster_nodes(conn, channel)
    rows: list[tuple[str, str]] = []  # (node, shop_id); node "" outside a cluster
    states: dict[str, admin_pb2.ShopState] = {}
    failed = 0
    for name, address in nodes or [("", conn.target)]:
        try:
            shop_ids, found = _node_shops(dataclasses.replace(conn, target=address), ns.long)
        except CallFailed as exc:
            if not nodes:
                raise
            failed += 1
            print(f"node {name} ({address}): {exc.report['code']}: {exc.report['message']}", file=sys.stderr)
            continue
        rows.extend((name, s) for s in shop_ids)
        states.update((st.shop_id, st) for st in found)
    rows.sort(key=lambda row: (row[1], row[0]))
    if ns.json:
        if ns.long:
            print(json.dumps({"shops": [_summary_json(states[s], node) for node, s in rows]}, ensure_ascii=False))
        else:
            out: dict[str, Any] = {"shop_ids": [s for _, s in rows]}
            if nodes:
                out["nodes"] = {s: node for node, s in rows}
            print(json.dumps(out, ensure_ascii=False))
        return EXIT_FAILED if failed else EXIT_OK
    node_header = ("node",) if nodes else ()
    if ns.long:
        headers = ("shop", *node_header, "agents", "online", "live", "queue", "staging", "pool", "open")
        body = [_with_node(shop_summary_row(states[s]), node, bool(nodes)) for node, s in rows]
    else:
        headers = ("shop", *node_header)
        body = [_with_node((s,), node, bool(nodes)) for node, s in rows]
    print(table(headers, body))
    where = f" on {len(nodes) - failed} of {len(nodes)} nodes" if nodes else ""
    print(f"({len(rows)} shop{'' if len(rows) == 1 else 's'}{where})")
    return EXIT_FAILED if failed else EXIT_OK


def _with_node(row: tuple[Any, ...], node: str, clustered: bool) -> tuple[Any, ...]:
    return (row[0], node, *row[1:]) if clustered else row


def _summary_json(state: admin_pb2.ShopState, node: str = "") -> dict[str, Any]:
    row = shop_summary_row(state)
    keys = ("shop_id", "agents", "online", "live_conversations", "queue", "staging", "pool", "open_now")
    out = dict(zip(keys, row, strict=True))
    out["open_now"] = state.open_now
    if node:
        out["node"] = node
    return out


def shop_show_command(ns: argparse.Namespace, conn: Connection) -> int:
    """``dispatcher shop show ID``: GetShopState (every page) as tables, or its JSON."""
    with conn.channel() as channel:
        state = get_shop_state(conn, channel, ns.shop_id)
    if ns.json:
        print(json.dumps(message_dict(state, defaults=True), ensure_ascii=False))
    else:
        print(render_shop_state(state))
    return EXIT_OK


_STATUS_NAMES: Final = {
    value.number: value.name
    for value in health_pb2.HealthCheckResponse.DESCRIPTOR.enum_types_by_name["ServingStatus"].values
}


def health_services() -> list[str]:
    """What ``dispatcher health`` checks by default: the whole server and each dispatch service."""
    from ..observability import DISPATCH_SERVICES

    return ["", *DISPATCH_SERVICES]


def health_command(ns: argparse.Namespace, conn: Connection) -> int:
    """``dispatcher health``: grpc.health.v1 Check of "" and each dispatch service; 0 only if all SERVING."""
    services = list(ns.service) if ns.service else health_services()
    check = _stub_of(health_pb2.DESCRIPTOR, "Health", "Check")
    results: dict[str, str] = {}
    errors: dict[str, dict[str, Any]] = {}
    with conn.channel() as channel:
        fn = check(channel)
        for service in services:
            try:
                response = fn(
                    health_pb2.HealthCheckRequest(service=service),
                    metadata=conn.metadata,
                    timeout=conn.call_timeout(),
                )
                results[service] = _STATUS_NAMES.get(response.status, str(response.status))
            except grpc.RpcError as exc:
                report = error_report(exc)
                errors[service] = report
                results[service] = report["code"]
                if report["code"] in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                    break  # the server cannot be reached: the other checks would say the same
    serving = len(results) == len(services) and all(status == "SERVING" for status in results.values())
    if ns.json:
        body: dict[str, Any] = {"target": conn.target, "serving": serving, "services": results}
        if errors:
            body["errors"] = errors
        print(json.dumps(body, ensure_ascii=False))
    else:
        rows = [(service or '"" (the server)', status) for service, status in results.items()]
        print(table(("service", "status"), rows))
        for service, report in errors.items():
            print(f"{service or '(the server)'}: {report['code']}: {report['message']}", file=sys.stderr)
    return EXIT_OK if serving else EXIT_FAILED


def _stub_of(file: FileDescriptor, service: str, method: str) -> Callable[[grpc.Channel], Callable[..., Any]]:
    descriptor = file.services_by_name[service].methods_by_name[method]
    return lambda channel: _stub(channel, descriptor)
