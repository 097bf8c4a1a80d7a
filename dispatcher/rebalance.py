"""``dispatcher cluster rebalance``: move shops between nodes while the cluster is stopped.

Moving partitions while nodes serve is designed (dispatcher/docs/CLUSTER.md, "Moving
partitions") and not built. This is the offline way, for adding or removing nodes
(or changing P) during a maintenance window:

1. every node of the old map is stopped (each old data dir is locked here, so a node
   still running is refused);
2. each old data dir is recovered exactly as a start would (newest snapshot, then the
   journal; nothing in it is changed) and exported;
3. the exports are split by shop and regrouped by the new map's owners: a shop keeps
   its whole state (configuration, agents and loads, waiting lists and their rates,
   conversations, recent contacts, exclusive agents, tracks and pending deadlines);
   pending deadlines get new sequence numbers in (deadline, old order) so ties keep
   their order within a shop;
4. each new node's state is imported into a fresh engine and must export back
   unchanged, then is written as a new data dir under ``--out`` (snapshot 0 and its
   MANIFEST, no journal; the ``CLUSTER`` record of the new map) with the new map as
   ``--out/cluster.toml``;
5. each new data dir is recovered again and compared with what was meant to be there.

The old data dirs are left as they were: ``--out`` is a new root, and the cluster is
started on it (``dispatcher cluster up --data-root OUT``, or each node's data dir
swapped in). Anything that does not fit refuses before a file is written: a shop in
two old data dirs, a shop in a data dir whose node does not own it, a new map whose
epoch is not newer, a data dir that cannot be recovered or is in use.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import _fastpath

from .cluster import NODE_RECORD, ClusterMap, ClusterMapError, Membership, NodeRecord, dump_map
from .durability.datadir import DataDir
from .durability.store import RecoveryError, recover, snapshot_state, write_base

__all__ = ["RebalanceError", "RebalanceReport", "rebalance", "split_states", "write_node_dir"]

_BY_SHOP: Final = ("conversations", "affinity", "exclusive")
"""The export's tables whose rows start with the shop id."""


class RebalanceError(Exception):
    """The rebalance cannot be done as asked; nothing was written."""


@dataclasses.dataclass
class RebalanceReport:
    """What a rebalance did: per new node, its shops and rows; and how many shops moved."""

    out: Path
    epoch: int
    nodes: dict[str, dict[str, int]]
    moved: int
    shops: int
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    """Wall time of each step: recover, split, check, write, read_back."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"out": str(self.out)}


def _empty_state(seed: int, fmt: int) -> dict[str, Any]:
    return {
        "format": fmt,
        "seed": seed,
        "shops": [],
        "conversations": [],
        "affinity": [],
        "exclusive": [],
        "outbox": [],
        "timers": {"seq": 1, "pending": [], "tracked": []},
    }


def split_states(old: dict[str, dict[str, Any]], old_map: ClusterMap, new_map: ClusterMap) -> dict[str, dict[str, Any]]:
    """The new nodes' states (by node name) from the old nodes' exports (by node name).

    Raises RebalanceError for a shop held by two old nodes or by a node the old map does
    not give it to."""
    fmt = next((s["format"] for s in old.values()), 0)
    seeds = {name: state["seed"] for name, state in old.items()}
    default_seed = next(iter(seeds.values()), 0)
    new = {n.name: _empty_state(seeds.get(n.name, default_seed), fmt) for n in new_map.nodes}
    holder: dict[str, str] = {}
    pending: dict[str, list[tuple[int, int, int, list[Any]]]] = {n.name: [] for n in new_map.nodes}
    for index, (name, state) in enumerate(sorted(old.items())):
        if state["format"] != fmt:
            raise RebalanceError(f"node {name}'s state has format {state['format']}, another node's {fmt}")
        owner_of: dict[str, str] = {}
        for shop in state["shops"]:
            shop_id = shop["config"]["shop_id"]
            if shop_id in holder:
                raise RebalanceError(f"shop {shop_id!r} is in the data dirs of both {holder[shop_id]} and {name}")
            if old_map.owner_of(shop_id).name != name:
                raise RebalanceError(
                    f"shop {shop_id!r} is in {name}'s data dir but the old map gives it to "
                    f"{old_map.owner_of(shop_id).name}: is --from-map the map these data dirs were served with?"
                )
            holder[shop_id] = name
            owner_of[shop_id] = target = new_map.owner_of(shop_id).name
            new[target]["shops"].append(shop)
        for table in _BY_SHOP:
            for row in state[table]:
                new[owner_of[row[0]]][table].append(row)
        for row in state["timers"]["tracked"]:
            new[owner_of[row[0]]]["timers"]["tracked"].append(row)
        for row in state["timers"]["pending"]:  # [shop, kind, key, deadline, seq]
            pending[owner_of[row[0]]].append((row[3], index, row[4], row))
    for name, state in new.items():
        state["shops"].sort(key=lambda shop: shop["config"]["shop_id"])
        state["conversations"].sort(key=lambda row: (row[0], row[1]))
        state["affinity"].sort()
        state["exclusive"].sort()
        state["timers"]["tracked"].sort()
        rows = [list(row) for *_, row in sorted(pending[name], key=lambda p: p[:3])]
        for seq, row in enumerate(rows, 1):
            row[4] = seq
        state["timers"]["pending"] = rows
        state["timers"]["seq"] = len(rows) + 1
    return new


def _canonical(state: dict[str, Any]) -> str:
    return json.dumps(state, sort_keys=True, default=list)


def _load_old(directory: Path, name: str, old_map: ClusterMap, engine_factory: Callable[[], Any]) -> dict[str, Any]:
    try:
        datadir = DataDir(directory, create=False)
    except OSError as exc:
        raise RebalanceError(f"node {name}: {exc.strerror or exc} (stop every node first)") from None
    try:
        try:
            record = NodeRecord.read(datadir)
        except ClusterMapError as exc:
            raise RebalanceError(f"node {name}: {exc}") from None
        if record is not None:
            refusal = record.refusal(Membership(old_map, name))
            if refusal is not None:
                raise RebalanceError(f"node {name}'s data dir does not fit the old map: {refusal}")
        try:
            recovery = recover(directory, engine_factory, repair=False)
        except RecoveryError as exc:
            raise RebalanceError(f"node {name}: {exc}") from None
        return snapshot_state(recovery.engine)
    finally:
        datadir.close()


def write_node_dir(directory: Path, state: dict[str, Any], membership: Membership) -> None:
    """A new data dir holding ``state`` as a fresh start of ``membership``'s node leaves it
    (``write_base``), with that node's ``CLUSTER`` record."""
    datadir = DataDir(directory, create=True)
    try:
        write_base(datadir, state)
        datadir.write_atomic(NODE_RECORD, NodeRecord.of(membership).to_json())
    finally:
        datadir.close()


def rebalance(
    data_root: Path,
    old_map: ClusterMap,
    new_map: ClusterMap,
    out: Path,
    engine_factory: Callable[[int], Any] | None = None,
) -> RebalanceReport:
    """Regroup the shops of ``data_root/<old node>`` by ``new_map`` into ``out/<new node>``
    (see the module doc). Raises RebalanceError, having written nothing."""
    factory = engine_factory or (lambda seed: _fastpath.Engine(seed))
    if new_map.epoch <= old_map.epoch:
        raise RebalanceError(f"the new map's epoch {new_map.epoch} must be newer than the old map's {old_map.epoch}")
    if out.exists() and any(out.iterdir()):
        raise RebalanceError(f"{out} is not empty: give a new directory for the new data dirs")
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[step] = now - clock
        clock = now

    old: dict[str, dict[str, Any]] = {}
    for node in old_map.nodes:
        directory = data_root / node.name
        if directory.exists():
            old[node.name] = _load_old(directory, node.name, old_map, lambda: factory(0))
    if not old:
        raise RebalanceError(f"no data dir of the old map's nodes is under {data_root}")
    lap("recover")
    new = split_states(old, old_map, new_map)
    lap("split")
    for name, state in new.items():  # the engine must take each state and give it back unchanged
        engine = factory(state["seed"])
        try:
            engine.import_state(state)
        except Exception as exc:
            raise RebalanceError(f"node {name}'s new state is refused by the engine: {exc}") from None
        if _canonical(snapshot_state(engine)) != _canonical(state):
            raise RebalanceError(f"node {name}'s new state does not survive an import and export unchanged")
    lap("check")
    out.mkdir(parents=True, exist_ok=True)
    for name, state in new.items():
        write_node_dir(out / name, state, Membership(new_map, name))
    (out / "cluster.toml").write_text(dump_map(new_map))
    lap("write")
    for name, state in new.items():  # read back what a start will load
        recovered = snapshot_state(recover(out / name, lambda: factory(0), repair=False).engine)
        if _canonical(recovered) != _canonical(state):
            raise RebalanceError(f"{out / name} does not read back as written")
    lap("read_back")
    before = {shop["config"]["shop_id"]: name for name, s in old.items() for shop in s["shops"]}
    after = {shop["config"]["shop_id"]: name for name, s in new.items() for shop in s["shops"]}
    return RebalanceReport(
        out=out,
        epoch=new_map.epoch,
        nodes={
            name: {
                "shops": len(s["shops"]),
                "conversations": len(s["conversations"]),
                "recent_contacts": len(s["affinity"]),
                "pending_deadlines": len(s["timers"]["pending"]),
            }
            for name, s in new.items()
        },
        moved=sum(1 for shop_id, name in after.items() if before[shop_id] != name),
        shops=len(after),
        seconds=seconds,
    )
