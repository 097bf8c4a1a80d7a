"""The spec's scenarios (tests/test_server.py) through a 3-node cluster, two ways (issue 15).

``dispatcher cluster up --nodes 3`` (three ``dispatcher serve`` nodes and HAProxy on
127.0.0.1) runs once for the module. Every scenario of test_server.py that needs
nothing but a client runs against it

- through the smart client (``AsyncClusterClient``: each call to its shop's owner,
  batches split by node), and
- through HAProxy with a plain ``AsyncDispatchClient`` whose calls carry the
  ``x-dispatch-shop`` header (one unary call per operation: HAProxy routes a
  whole HTTP/2 stream by its headers, so an OperateStream of mixed shops cannot
  be routed; see dispatcher/docs/CLUSTER.md),

and must pass exactly as on a single server. Each runs on a fresh cluster (about
1.5 s to start: three processes and HAProxy). The scenarios that call the
single-node client's raw stubs (``client.admin_stub``...) run through HAProxy only.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import test_server as scenarios
from test_cluster_tools import Up

from dispatch_client import AsyncClusterClient, AsyncDispatchClient
from dispatcher.cluster import ClusterMap, shop_of_request
from dispatcher.cluster_tools import shop_header_value

SCENARIOS = sorted(
    name
    for name, fn in vars(scenarios).items()
    if name.startswith("test_")
    and inspect.iscoroutinefunction(fn)
    and list(inspect.signature(fn).parameters) == ["client"]
)
RAW_STUBS = {name for name in SCENARIOS if "_stub" in inspect.getsource(getattr(scenarios, name))}
SMART_CLIENT_ONLY = {
    # A proxy routes a whole HTTP/2 stream by its headers: a DispatchStream of several shops
    # reaches one node, and the other shops' items get WRONG_NODE (the smart client splits).
    "test_dispatch_stream_answers_each_batch_in_order",
    # ListShops names no shop: through the proxy it reaches one node, which lists its own.
    "test_shop_lifecycle",
    # A watch of every shop likewise reaches one node and sees only its hand-outs.
    "test_message_pool_claim",
}


def _with_header(details: Any, request: Any) -> Any:
    shop = shop_of_request(request)
    if not shop:
        return details
    metadata = grpc.aio.Metadata(*(tuple(details.metadata) if details.metadata else ()))
    metadata.add("x-dispatch-shop", shop_header_value(shop))
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


# grpc.aio files an interceptor under its first matching kind only: one class per kind.
class _ShopHeaderUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds ``x-dispatch-shop`` (percent-encoded UTF-8, as HAProxy's config decodes it) to unary calls."""

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_header(details, request), request)


class _ShopHeaderStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """The same for server streams (watches)."""

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_header(details, request), request)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Up, ClusterMap]]:
    up = Up(tmp_path / "cluster", 3)
    try:
        yield up, up.wait_ready()
    finally:
        up.kill()


@pytest.fixture
async def via(request: pytest.FixtureRequest, cluster: tuple[Up, ClusterMap]) -> AsyncIterator[Any]:
    up, cluster_map = cluster
    if request.param == "smart-client":
        async with AsyncClusterClient([cluster_map.nodes[0].address], timeout=30) as client:
            yield client
            routes = client.routes
            assert routes is not None and routes.partition_count == cluster_map.partition_count
            assert len(client.clients()) >= 1  # it talked to the owners, not through a proxy
    else:
        channel = grpc.aio.insecure_channel(up.front, interceptors=[_ShopHeaderUnary(), _ShopHeaderStream()])
        async with AsyncDispatchClient(up.front, channel=channel, auto_batch=False, timeout=30) as client:
            yield client


@pytest.mark.parametrize(
    ("via", "scenario"),
    [("smart-client", name) for name in SCENARIOS if name not in RAW_STUBS]
    + [("haproxy", name) for name in SCENARIOS if name not in SMART_CLIENT_ONLY],
    indirect=["via"],
)
async def test_the_spec_scenarios_pass_through_the_cluster(via: Any, scenario: str) -> None:
    await getattr(scenarios, scenario)(via)


def test_the_scenarios_are_collected() -> None:
    # A rename in test_server.py must not silently empty this module.
    assert len(SCENARIOS) >= 20, SCENARIOS
    assert len(RAW_STUBS) <= 3, RAW_STUBS
