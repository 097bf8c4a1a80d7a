"""A data dir's journal as simulation input, and calibration.

``load_journal`` reads the journal (read-only, like ``dispatcher replay``): it replays the
records from the oldest snapshot to learn what the engine decided, then derives

- the configuration (shops, agents, groups) as it stands after the last record;
- each conversation's arrival: time, shop, buyer, source, order state, priority, and how
  many buyer messages it had;
- each agent's behaviour, as the empirical distributions of what it did: reply delays (from
  receiving a conversation, or from the buyer's message, to its reply) and handle times (from
  receiving a conversation to its close);
- the presence changes, at their recorded times.

``calibrate`` replays the recorded configuration with the recorded events, as the simulator
issues them (one engine call per event, the batches read from the wire split into their
dispatches), and compares every decision with the one the engine made when the journal was
written: the two must be identical.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import _fastpath
from _fastpath import AgentConfig, ConversationEvent, DispatchError, GroupConfig

from .._gen.dispatch.v1 import dispatch_pb2
from ..durability.records import _OPERATE_BATCH, _WIRE_BATCH, RecordError, apply_record
from ..durability.snapshot import SnapshotError, list_snapshots, read_snapshot
from ..ops.offline import _read_segments
from .workload import Arrival, Behaviour, Distribution, PresenceChange, Scenario, WorkloadError

__all__ = ["Calibration", "calibrate", "load_journal"]

_CONFIG_OPS: Final = frozenset(
    {"put_shop", "delete_shop", "put_agent", "delete_agent", "put_group", "delete_group", "set_exclusive_agent",
     "delete_exclusive_agent"}
)  # fmt: skip
_LEGACY: Final = {"d": "dispatch", "p": "set_presence", "e": "conversation_event", "c": "claim_from_pool"}
_BUYER_TO_SHOP: Final = (0, 1)


@dataclasses.dataclass(slots=True)
class _Item:
    """One record: a JSON call (op, args), or a batch read from the wire (op "wire"/"operate")."""

    seq: int
    op: str
    args: list[Any]
    payload: bytes
    at_ms: int | None


def _ts_ms(ts: Any) -> int:
    return int(ts.seconds) * 1000 + int(ts.nanos) // 1_000_000


def _wire_calls(body: bytes) -> list[tuple[str, str, str, int, int, str, int, str, bool, int]]:
    """The dispatch calls of a wire batch record (``now`` + DispatchBatchRequest bytes)."""
    now = int.from_bytes(body[:8], "big", signed=True)
    request = dispatch_pb2.DispatchBatchRequest.FromString(body[8:])
    calls = []
    for r in request.requests:
        at = _ts_ms(r.at) if r.HasField("at") else now
        calls.append((r.shop_id, r.buyer_id, r.conversation_id, at, int(r.type), r.source, int(r.order_state),
                      r.to_account, False, int(r.priority)))  # fmt: skip
    return calls


def _items(directory: Path) -> tuple[dict[str, Any] | None, list[_Item]]:
    """The oldest snapshot's state (None: none) and the records after it, decoded."""
    import json

    if not directory.is_dir():
        raise WorkloadError(f"{directory}: no such data dir (give the server's --data-dir)")
    segments = _read_segments(directory)
    if segments.problem is not None:
        raise WorkloadError(f"{directory}: the journal is damaged: {segments.problem} (dispatcher journal verify)")
    snapshots = list_snapshots(directory)
    state: dict[str, Any] | None = None
    base = 0
    if snapshots:
        try:
            state = read_snapshot(snapshots[0])
        except SnapshotError as exc:
            raise WorkloadError(f"{directory}: {exc}") from None
        base = snapshots[0].seq
    items: list[_Item] = []
    first = segments.first_seq()
    if first is not None and first > base + 1:
        raise WorkloadError(
            f"{directory}: records {base + 1}..{first - 1} are gone (older records are deleted as snapshots are "
            "written); the traffic before record {first} cannot be read"
        )
    for seq, payload in segments.records():
        if seq <= base:
            continue
        raw = bytes(payload)
        head = raw[:2]
        if head in (_WIRE_BATCH, _OPERATE_BATCH):
            now = int.from_bytes(raw[2:10], "big", signed=True)
            items.append(_Item(seq, "wire" if head == _WIRE_BATCH else "operate", [], raw, now))
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            raise WorkloadError(f"{directory}: record {seq} is not readable") from None
        op = _LEGACY.get(record[0], record[0])
        args = record[1:]
        at: int | None = None
        if op in ("dispatch", "set_presence", "conversation_event", "claim_from_pool", "tick_shop"):
            at = int(args[{"dispatch": 3, "set_presence": 4, "conversation_event": 3, "claim_from_pool": 2,
                           "tick_shop": 1}[op]])  # fmt: skip
        elif op == "tick":
            at = int(args[0])
        items.append(_Item(seq, op, args, raw, at))
    return state, items


def _new_engine(state: dict[str, Any] | None, seed: int) -> Any:
    engine = _fastpath.Engine(int(state["seed"]) if state is not None else seed)
    if state is not None:
        engine.import_state(state)
    return engine


def _decisions_of_batch(answer: Any, calls: list[Any]) -> Iterator[tuple[str, str, int, str]]:
    response = dispatch_pb2.DispatchBatchResponse.FromString(answer[0])
    for call, r in zip(calls, response.responses, strict=False):
        if call[4] in _BUYER_TO_SHOP and not r.HasField("error"):
            yield (call[0], call[2], int(r.reason), r.agent_id)


@dataclasses.dataclass(slots=True)
class _Recorded:
    """What replaying the records as they are (``apply_record``) shows."""

    engine: Any
    decisions: list[tuple[str, str, int, str]]
    arrivals: list[Arrival]
    presence: list[PresenceChange]
    replies: dict[tuple[str, str], list[int]]
    handles: dict[tuple[str, str], list[int]]
    first_ms: int | None
    last_ms: int | None


def _replay_recorded(directory: Path, seed: int) -> _Recorded:
    state, items = _items(directory)
    engine = _new_engine(state, seed)
    decisions: list[tuple[str, str, int, str]] = []
    arrivals: dict[tuple[str, str], Arrival] = {}
    messages: dict[tuple[str, str], int] = {}
    presence: list[PresenceChange] = []
    holder: dict[tuple[str, str], tuple[str, int]] = {}  # conversation → (agent, since)
    unread_since: dict[tuple[str, str], int] = {}
    replies: dict[tuple[str, str], list[int]] = {}
    handles: dict[tuple[str, str], list[int]] = {}
    first_ms: int | None = None
    last_ms: int | None = None

    def receive(shop: str, conv: str, agent: str, at: int) -> None:
        if agent:
            holder[(shop, conv)] = (agent, at)
            unread_since.setdefault((shop, conv), at)

    def outbox() -> None:
        for item in engine.drain_outbox():
            receive(item[0], item[1], item[3], item[5])

    for item in items:
        if item.at_ms is not None:
            first_ms = item.at_ms if first_ms is None else min(first_ms, item.at_ms)
            last_ms = item.at_ms if last_ms is None else max(last_ms, item.at_ms)
        try:
            if item.op == "wire":
                calls = _wire_calls(item.payload[2:])
                answer = engine.dispatch_batch_wire(item.payload[10:], item.at_ms, 1 << 62)
                if answer is None:
                    raise RecordError("the engine did not read the batch")
                for d in _decisions_of_batch(answer, calls):
                    decisions.append(d)
                    receive(d[0], d[1], d[3], next(c[3] for c in calls if c[2] == d[1]))
                for c in calls:
                    if c[4] in _BUYER_TO_SHOP and (c[0], c[2]) not in arrivals:
                        arrivals[(c[0], c[2])] = Arrival(c[3], c[0], c[1], c[2], c[5], c[6], c[9])
                outbox()
                continue
            if item.op == "dispatch":
                a = item.args
                reason, agent, _g, _t = engine.dispatch(*a)
                if int(a[4]) in _BUYER_TO_SHOP:
                    decisions.append((a[0], a[2], int(reason), agent or ""))
                    key = (a[0], a[2])
                    if key not in arrivals:
                        priority = int(a[9]) if len(a) > 9 else 0
                        arrivals[key] = Arrival(int(a[3]), a[0], a[1], a[2], a[5], int(a[6]), priority)
                    receive(a[0], a[2], agent or "", int(a[3]))
                outbox()
                continue
            apply_record(engine, item.payload)
        except (RecordError, DispatchError) as exc:
            raise WorkloadError(f"{directory}: record {item.seq} does not apply: {exc}") from None
        if item.op == "set_presence":
            shop, agent, value, client, at = item.args
            presence.append(PresenceChange(int(at), shop, agent, int(value), int(client)))
        elif item.op == "conversation_event":
            shop, conv, event, at = item.args[0], item.args[1], int(item.args[2]), int(item.args[3])
            key = (shop, conv)
            if event == ConversationEvent.BUYER_MESSAGE:
                messages[key] = messages.get(key, 0) + 1
                unread_since.setdefault(key, at)
            elif event == ConversationEvent.AGENT_REPLY:
                since = unread_since.pop(key, None)
                who = item.args[5] or holder.get(key, ("", 0))[0]
                if since is not None and who:
                    replies.setdefault((shop, who), []).append(max(0, at - since))
            elif event == ConversationEvent.CLOSED:
                held = holder.pop(key, None)
                unread_since.pop(key, None)
                if held is not None:
                    handles.setdefault((shop, held[0]), []).append(max(0, at - held[1]))
            elif event in (ConversationEvent.TRANSFERRED, ConversationEvent.ASSIGNED):
                to = item.args[6] if len(item.args) > 6 else ""
                state_now = engine.conversation(shop, conv)
                receive(shop, conv, to or (state_now or {}).get("agent_id", ""), at)
        outbox()
    final = [dataclasses.replace(a, messages=1 + messages.get((a.shop_id, a.conversation_id), 0))
             for a in arrivals.values()]  # fmt: skip
    final.sort(key=lambda a: a.at_ms)
    return _Recorded(engine, decisions, final, presence, replies, handles, first_ms, last_ms)


def _empirical(samples: list[int]) -> Distribution:
    return Distribution("empirical", sum(samples) / len(samples), samples=tuple(samples))


def load_journal(directory: Path, *, seed: int | None = None, shops: list[str] | None = None) -> Scenario:
    """The scenario of a data dir's recorded traffic (see the module doc); raises WorkloadError."""
    recorded = _replay_recorded(directory, seed or 0)
    engine = recorded.engine
    wanted = set(shops) if shops else set(engine.shop_ids())
    unknown = sorted(wanted - set(engine.shop_ids()))
    if unknown:
        raise WorkloadError(f"{directory}: no shop {unknown[0]!r} in the journal")
    arrivals = [a for a in recorded.arrivals if a.shop_id in wanted]
    if not arrivals or recorded.first_ms is None or recorded.last_ms is None:
        raise WorkloadError(f"{directory}: the journal holds no conversations to simulate (an empty trace)")
    state = engine.export_state()
    shop_configs = [engine.shop_config(s) for s in sorted(wanted)]
    agents: list[AgentConfig] = []
    for shop_id in sorted(wanted):
        for a in engine.shop_state(shop_id)["agents"]:
            agents.append(AgentConfig(shop_id, a["agent_id"], a["role"], a["weight"], a["max_capacity"],
                                      a["created_at_ms"], a["chat_permission"]))  # fmt: skip
    groups = [GroupConfig(**{**g, "members": tuple(g["members"]), "order_states": tuple(g["order_states"]),
                             "sources": tuple(g["sources"])})
              for shop in state["shops"] for g in shop["groups"] if g["shop_id"] in wanted]  # fmt: skip
    everyone_replies = [d for (s, _a), ds in recorded.replies.items() if s in wanted for d in ds] or [30_000]
    everyone_handles = [d for (s, _a), ds in recorded.handles.items() if s in wanted for d in ds] or [600_000]
    default = Behaviour(_empirical(everyone_replies), _empirical(everyone_handles))
    behaviour: dict[tuple[str, str], Behaviour] = {}
    for agent in agents:
        key = (agent.shop_id, agent.agent_id)
        r, h = recorded.replies.get(key), recorded.handles.get(key)
        behaviour[key] = Behaviour(_empirical(r) if r else default.reply_delay,
                                   _empirical(h) if h else default.handle_time)  # fmt: skip
    presence = [p for p in recorded.presence if p.shop_id in wanted]
    return Scenario(
        name="journal",
        start_ms=recorded.first_ms,
        end_ms=recorded.last_ms + 1,
        shops=shop_configs,
        agents=agents,
        groups=groups,
        exclusives=[],
        behaviour=behaviour,
        default_behaviour={s: default for s in wanted},
        presence=presence,
        arrivals=arrivals,
        seed=seed if seed is not None else int(state["seed"]),
    )


@dataclasses.dataclass(slots=True)
class Calibration:
    """Recorded decisions against the decisions of the replayed events."""

    decisions: int
    mismatches: int
    first_mismatch: dict[str, Any] | None
    unmodelled: int
    """Records the simulator re-issues as they are (Operate batches)."""

    @property
    def exact(self) -> bool:
        return self.mismatches == 0

    def to_json(self) -> dict[str, Any]:
        return {"decisions": self.decisions, "mismatches": self.mismatches, "exact": self.exact,
                "first_mismatch": self.first_mismatch, "unmodelled_records": self.unmodelled}  # fmt: skip


def replay_events(directory: Path, seed: int = 0) -> tuple[list[tuple[str, str, int, str]], int]:
    """The recorded configuration and events, issued one engine call per event as the simulator
    does (wire batches split into single dispatches): every buyer-to-shop decision, in order."""
    state, items = _items(directory)
    engine = _new_engine(state, seed)
    decisions: list[tuple[str, str, int, str]] = []
    unmodelled = 0
    for item in items:
        if item.op in ("wire", "dispatch"):
            calls = _wire_calls(item.payload[2:]) if item.op == "wire" else [tuple(item.args)]
            for call in calls:
                if int(call[4]) not in _BUYER_TO_SHOP:
                    continue
                try:
                    engine.tick_shop(call[0], call[3])
                    reason, agent, _g, _t = engine.dispatch(*call)
                except DispatchError:
                    continue
                decisions.append((call[0], call[2], int(reason), agent or ""))
        elif item.op == "set_presence":
            engine.set_presence(*item.args)
        elif item.op == "conversation_event":
            engine.conversation_event(*item.args)
        elif item.op == "claim_from_pool":
            engine.claim_from_pool(*item.args)
        elif item.op == "tick":
            engine.tick(*item.args)
        elif item.op == "tick_shop":
            engine.tick_shop(*item.args)
        else:  # configuration, Operate batches: as recorded
            unmodelled += item.op == "operate"
            try:
                apply_record(engine, item.payload)
            except RecordError as exc:
                raise WorkloadError(f"{directory}: record {item.seq} does not apply: {exc}") from None
        engine.drain_outbox()
    return decisions, unmodelled


def calibrate(directory: Path, *, seed: int = 0, shops: list[str] | None = None) -> Calibration:
    """Replay the recorded events through the engine as the simulator issues them and compare each
    buyer-to-shop decision (conversation, reason, agent) with the recorded run's."""
    recorded = _replay_recorded(directory, seed).decisions
    replayed, unmodelled = replay_events(directory, seed)
    if shops:
        recorded = [d for d in recorded if d[0] in shops]
        replayed = [d for d in replayed if d[0] in shops]
    mismatches = 0
    first: dict[str, Any] | None = None
    for i in range(max(len(recorded), len(replayed))):
        a = recorded[i] if i < len(recorded) else None
        b = replayed[i] if i < len(replayed) else None
        if a != b:
            mismatches += 1
            if first is None:
                first = {"index": i, "recorded": a, "replayed": b}
    return Calibration(len(recorded), mismatches, first, unmodelled)
