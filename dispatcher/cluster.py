"""The cluster: shops partitioned over nodes (``dispatch.v1.Cluster``, protos/dispatch/v1/cluster.proto).

- A cluster has ``partition_count`` partitions (P, fixed when it is created;
  default ``DEFAULT_PARTITIONS``). A shop's partition is
  ``CRC32(shop_id as UTF-8) mod P`` (``partition_of``): zlib's CRC-32, as
  Go's ``hash/crc32``, Node's ``zlib.crc32`` and HAProxy's ``crc32`` compute it.
- A **cluster map** (``ClusterMap``) names each node, its address and the
  partitions it owns (each partition exactly once), with an ``epoch`` that
  rises on every change. On disk it is a TOML file (``load_map``/``dump_map``)::

      partitions = 4096
      epoch = 1

      [[nodes]]
      name = "dispatch-0"
      address = "127.0.0.1:50061"
      partitions = "0-1365"          # ranges, inclusive, comma separated

      [[nodes]]
      name = "dispatch-1"
      address = "127.0.0.1:50062"
      partitions = "1366-2730"
      ...

- A node (``dispatcher serve --cluster-map FILE --node NAME``) serves only its
  partitions' shops (``Membership``). A call for another shop is refused with
  ``WrongNodeError``: FAILED_PRECONDITION whose status details carry a
  ``google.rpc.ErrorInfo`` (reason ``WRONG_NODE``, domain ``dispatch.v1``,
  metadata ``shop_id``, ``partition``, ``owner``, ``owner_address``, ``epoch``).
"""

from __future__ import annotations

import json
import re
import tomllib
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from _fastpath.model import FailedPreconditionError

from ._gen.dispatch.v1 import cluster_pb2
from .durability.datadir import DataDir

__all__ = [
    "DEFAULT_PARTITIONS",
    "ERROR_DOMAIN",
    "MAX_PARTITIONS",
    "NODE_RECORD",
    "WRONG_NODE",
    "ClusterMap",
    "ClusterMapError",
    "Membership",
    "Node",
    "NodeRecord",
    "WrongNodeError",
    "dump_map",
    "even_map",
    "format_ranges",
    "load_map",
    "parse_ranges",
    "partition_of",
    "shop_of_request",
    "wrong_node_info",
]

DEFAULT_PARTITIONS: Final = 4096
"""P when a cluster is created without saying: enough to spread over hundreds of nodes."""

MAX_PARTITIONS: Final = 65536
WRONG_NODE: Final = "WRONG_NODE"
"""``google.rpc.ErrorInfo.reason`` of a call sent to a node that does not own its shop."""
ERROR_DOMAIN: Final = "dispatch.v1"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def partition_of(shop_id: str, partition_count: int) -> int:
    """The shop's partition: CRC-32 (IEEE, zlib's) of its UTF-8 bytes, mod ``partition_count``."""
    return zlib.crc32(shop_id.encode("utf-8")) % partition_count


class ClusterMapError(ValueError):
    """A cluster map that cannot be used; the message names the place."""


@dataclass(frozen=True)
class Node:
    """One node: its name, the address callers reach it at, and its partitions as half-open ranges."""

    name: str
    address: str
    ranges: tuple[tuple[int, int], ...]

    def partitions(self) -> Iterable[int]:
        for start, end in self.ranges:
            yield from range(start, end)


@dataclass(frozen=True)
class ClusterMap:
    """Which node owns which partitions. Build with ``ClusterMap.of`` (validates) or ``even_map``."""

    partition_count: int
    epoch: int
    nodes: tuple[Node, ...]
    _owners: tuple[int, ...] = field(repr=False, compare=False, default=())
    """Partition -> index in ``nodes``."""

    @classmethod
    def of(cls, partition_count: int, epoch: int, nodes: Sequence[Node]) -> ClusterMap:
        """A validated map: P in 1..65536, epoch >= 1, unique names, every partition owned exactly once."""
        if not isinstance(partition_count, int) or not 1 <= partition_count <= MAX_PARTITIONS:
            raise ClusterMapError(f"partitions: must be an integer in 1..{MAX_PARTITIONS}, not {partition_count!r}")
        if not isinstance(epoch, int) or epoch < 1:
            raise ClusterMapError(f"epoch: must be a positive integer, not {epoch!r}")
        if not nodes:
            raise ClusterMapError("nodes: a cluster has at least one node")
        owners = [-1] * partition_count
        names: set[str] = set()
        for i, node in enumerate(nodes):
            where = f"nodes[{i}]"
            if not isinstance(node.name, str) or not _NAME.match(node.name):
                raise ClusterMapError(
                    f"{where}.name: {node.name!r} is not a node name (letters, digits, '.', '_', '-'; 1-63)"
                )
            if node.name in names:
                raise ClusterMapError(f"{where}.name: {node.name!r} is used by two nodes")
            names.add(node.name)
            if not isinstance(node.address, str) or not _valid_address(node.address):
                raise ClusterMapError(f"{where}.address: {node.address!r} is not host:port")
            for start, end in node.ranges:
                if not 0 <= start < end <= partition_count:
                    raise ClusterMapError(
                        f"{where}.partitions: {format_ranges([(start, end)])} is outside 0-{partition_count - 1}"
                    )
                for p in range(start, end):
                    if owners[p] >= 0:
                        raise ClusterMapError(
                            f"{where}.partitions: partition {p} is also owned by {nodes[owners[p]].name!r}"
                        )
                    owners[p] = i
        missing = [p for p, owner in enumerate(owners) if owner < 0]
        if missing:
            raise ClusterMapError(
                f"partitions {format_ranges(_ranges_of(missing))} are owned by no node (every partition needs one)"
            )
        return cls(partition_count, epoch, tuple(nodes), tuple(owners))

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise ClusterMapError(f"node {name!r} is not in the cluster map (nodes: {', '.join(self.names())})")

    def names(self) -> list[str]:
        return [node.name for node in self.nodes]

    def owner(self, partition: int) -> Node:
        return self.nodes[self._owners[partition]]

    def owner_of(self, shop_id: str) -> Node:
        return self.owner(partition_of(shop_id, self.partition_count))

    def to_pb(self, node: str = "") -> cluster_pb2.GetClusterMapResponse:
        return cluster_pb2.GetClusterMapResponse(
            partition_count=self.partition_count,
            epoch=self.epoch,
            node=node,
            nodes=[
                cluster_pb2.ClusterNode(
                    name=n.name,
                    address=n.address,
                    partitions=[cluster_pb2.PartitionRange(start=s, end=e) for s, e in n.ranges],
                )
                for n in self.nodes
            ],
        )

    @classmethod
    def from_pb(cls, message: cluster_pb2.GetClusterMapResponse) -> ClusterMap:
        return cls.of(
            message.partition_count,
            message.epoch,
            [Node(n.name, n.address, tuple((r.start, r.end) for r in n.partitions)) for n in message.nodes],
        )


def _valid_address(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


def _ranges_of(partitions: Iterable[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for p in sorted(partitions):
        if out and out[-1][1] == p:
            out[-1] = (out[-1][0], p + 1)
        else:
            out.append((p, p + 1))
    return out


def format_ranges(ranges: Iterable[tuple[int, int]]) -> str:
    """Half-open ranges as the map file writes them: ``"0-1365,2000"`` (inclusive)."""
    return ",".join(f"{s}" if e == s + 1 else f"{s}-{e - 1}" for s, e in ranges)


def parse_ranges(text: str, where: str = "partitions") -> tuple[tuple[int, int], ...]:
    """``"0-1365,2000"`` -> ((0, 1366), (2000, 2001)): inclusive ranges to half-open ones."""
    ranges = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not m:
            raise ClusterMapError(f"{where}: {part!r} is not a partition or a range like 0-1365")
        start = int(m.group(1))
        last = int(m.group(2)) if m.group(2) is not None else start
        if last < start:
            raise ClusterMapError(f"{where}: {part!r} ends before it starts")
        ranges.append((start, last + 1))
    return tuple(ranges)


def even_map(nodes: Sequence[tuple[str, str]], partition_count: int = DEFAULT_PARTITIONS, epoch: int = 1) -> ClusterMap:
    """Partitions split into contiguous, nearly equal ranges over ``nodes`` ((name, address) pairs), in order."""
    n = len(nodes)
    if n == 0:
        raise ClusterMapError("nodes: a cluster has at least one node")
    if n > partition_count:
        raise ClusterMapError(f"{n} nodes for {partition_count} partitions: every node needs one")
    out = []
    for i, (name, address) in enumerate(nodes):
        start = partition_count * i // n
        end = partition_count * (i + 1) // n
        out.append(Node(name, address, ((start, end),)))
    return ClusterMap.of(partition_count, epoch, out)


def load_map(path: str | Path) -> ClusterMap:
    """Read a TOML cluster map (see the module doc); ``ClusterMapError`` names the file and the place."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ClusterMapError(f"{path}: cannot read the cluster map: {exc.strerror or exc}") from None
    try:
        data: Any = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ClusterMapError(f"{path}: not a TOML cluster map: {exc}") from None
    try:
        return _from_dict(data)
    except ClusterMapError as exc:
        raise ClusterMapError(f"{path}: {exc}") from None


def _from_dict(data: Any) -> ClusterMap:
    unknown = set(data) - {"partitions", "epoch", "nodes"}
    if unknown:
        raise ClusterMapError(f"unknown keys {sorted(unknown)} (expected partitions, epoch, nodes)")
    nodes_data = data.get("nodes")
    if not isinstance(nodes_data, list):
        raise ClusterMapError("nodes: expected [[nodes]] tables")
    nodes = []
    for i, entry in enumerate(nodes_data):
        where = f"nodes[{i}]"
        if not isinstance(entry, dict):
            raise ClusterMapError(f"{where}: expected a table")
        extra = set(entry) - {"name", "address", "partitions"}
        if extra:
            raise ClusterMapError(f"{where}: unknown keys {sorted(extra)} (expected name, address, partitions)")
        ranges = entry.get("partitions", "")
        if not isinstance(ranges, str) or not ranges.strip():
            raise ClusterMapError(f'{where}.partitions: expected a string of partitions like "0-1365,2000"')
        nodes.append(Node(entry.get("name", ""), entry.get("address", ""), parse_ranges(ranges, f"{where}.partitions")))
    return ClusterMap.of(data.get("partitions", DEFAULT_PARTITIONS), data.get("epoch", 0), nodes)


def dump_map(cluster: ClusterMap) -> str:
    """The TOML text of ``cluster`` (``load_map`` reads it back equal)."""
    lines = [
        "# dispatch cluster map: partition = CRC32(shop_id) mod partitions",
        f"partitions = {cluster.partition_count}",
        f"epoch = {cluster.epoch}",
    ]
    for node in cluster.nodes:
        lines += [
            "",
            "[[nodes]]",
            f'name = "{node.name}"',
            f'address = "{node.address}"',
            f'partitions = "{format_ranges(node.ranges)}"',
        ]
    return "\n".join(lines) + "\n"


def shop_of_request(request: Any) -> str:
    """The shop a dispatch.v1 request is about, as a proxy routes it: ``shop_id``, the
    ``shop_id`` of its shop/agent/group, of its first batch item or operation, or its
    first watched shop; "" when it names none (ListShops, a watch of every shop)."""
    for path in (("shop_id",), ("shop", "shop_id"), ("agent", "shop_id"), ("group", "shop_id")):
        value: Any = request
        for part in path:
            value = getattr(value, part, None)
        if isinstance(value, str) and value:
            return value
    if getattr(request, "requests", None):  # DispatchBatchRequest
        return str(request.requests[0].shop_id)
    if getattr(request, "operations", None):  # OperateRequest
        first = request.operations[0]
        kind = first.WhichOneof("kind")
        return str(getattr(first, kind).shop_id) if kind else ""
    if getattr(request, "shop_ids", None):  # a watch
        return str(request.shop_ids[0])
    return ""


def wrong_node_info(shop_id: str, partition: int, owner: Node, epoch: int) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(
        reason=WRONG_NODE,
        domain=ERROR_DOMAIN,
        metadata={
            "shop_id": shop_id,
            "partition": str(partition),
            "owner": owner.name,
            "owner_address": owner.address,
            "epoch": str(epoch),
        },
    )


class WrongNodeError(FailedPreconditionError):
    """A call for a shop this node does not own (FAILED_PRECONDITION with a WRONG_NODE ErrorInfo)."""

    def __init__(self, shop_id: str, partition: int, owner: Node, epoch: int, node: str) -> None:
        super().__init__(
            f"shop {shop_id!r} (partition {partition}) belongs to node {owner.name!r} at {owner.address}, "
            f"not to this node {node!r} (cluster map epoch {epoch}); send the call there"
        )
        self.info = wrong_node_info(shop_id, partition, owner, epoch)
        packed = any_pb2.Any()
        packed.Pack(self.info)
        self.details: tuple[bytes, ...] = (packed.SerializeToString(),)
        """Serialized ``google.protobuf.Any`` messages for ``google.rpc.Status.details``."""

    def status(self) -> status_pb2.Status:
        """The full ``google.rpc.Status`` (code 9, message, the ErrorInfo)."""
        status = status_pb2.Status(code=9, message=str(self))
        status.details.add().Pack(self.info)
        return status


class Membership:
    """This node's place in the cluster: which shops it serves, and the error for the others.

    ``check(shop_id)`` is one CRC-32 and a table lookup; ``error(shop_id)`` is the
    WrongNodeError for a foreign shop, or None for one of ours."""

    def __init__(self, cluster: ClusterMap, node: str) -> None:
        self.map = cluster
        self.node = cluster.node(node)
        self._partition_count = cluster.partition_count
        mine = bytearray(cluster.partition_count)
        for p in self.node.partitions():
            mine[p] = 1
        self._mine = bytes(mine)

    def owns(self, shop_id: str) -> bool:
        return bool(self._mine[zlib.crc32(shop_id.encode("utf-8")) % self._partition_count])

    def error(self, shop_id: str) -> WrongNodeError | None:
        partition = zlib.crc32(shop_id.encode("utf-8", "surrogatepass")) % self._partition_count
        if self._mine[partition]:
            return None
        return WrongNodeError(shop_id, partition, self.map.owner(partition), self.map.epoch, self.node.name)

    def check(self, shop_id: str) -> None:
        """Raise WrongNodeError unless this node owns ``shop_id``."""
        error = self.error(shop_id)
        if error is not None:
            raise error


# ------------------------------------------------------------------ the data dir's record

NODE_RECORD: Final = "CLUSTER"
"""The file in a node's data dir that says which node, map epoch and partition count it was
served with (JSON, replaced atomically at each start of a node)."""


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """What a node's data dir was last served as (``NODE_RECORD``)."""

    node: str
    epoch: int
    partition_count: int

    @classmethod
    def of(cls, membership: Membership) -> NodeRecord:
        return cls(membership.node.name, membership.map.epoch, membership.map.partition_count)

    def to_json(self) -> bytes:
        body = {"node": self.node, "epoch": self.epoch, "partitions": self.partition_count}
        return (json.dumps(body, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> NodeRecord:
        """The record, or ClusterMapError naming what is wrong with the file."""
        try:
            body = json.loads(data)
            record = cls(body["node"], body["epoch"], body["partitions"])
        except (ValueError, TypeError, KeyError) as exc:
            raise ClusterMapError(f"{NODE_RECORD}: not a node record ({exc})") from None
        if not (
            isinstance(record.node, str) and isinstance(record.epoch, int) and isinstance(record.partition_count, int)
        ):
            raise ClusterMapError(f"{NODE_RECORD}: node must be a string, epoch and partitions integers")
        return record

    @classmethod
    def read(cls, datadir: DataDir) -> NodeRecord | None:
        """The record in ``datadir``, None when it has none; ClusterMapError when it is damaged."""
        if not datadir.exists(NODE_RECORD):
            return None
        return cls.from_json(datadir.read(NODE_RECORD))

    def refusal(self, membership: Membership) -> str | None:
        """Why a data dir served as this record must not be served under ``membership``'s map and
        node, or None. The map's epoch fences stale maps (dispatcher/docs/CLUSTER.md): an older
        one than the data dir has seen is refused; so are another partition count (fixed when a
        cluster is created: every shop would move) and another node's data dir."""
        cluster, name = membership.map, membership.node.name
        if self.partition_count != cluster.partition_count:
            return (
                f"the data dir was served with {self.partition_count} partitions and the cluster map has "
                f"{cluster.partition_count}: the partition count is fixed when a cluster is created"
            )
        if self.node != name:
            return f"the data dir is node {self.node!r}'s, not {name!r}'s"
        if cluster.epoch < self.epoch:
            return (
                f"the cluster map's epoch {cluster.epoch} is older than epoch {self.epoch}, which this data dir "
                "was already served with: a stale map"
            )
        return None
