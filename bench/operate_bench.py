"""In-process cost of ``operate_wire`` (issue 13) on the lifecycle mix.

A conversation is 1 dispatch, 3 buyer messages, 3 agent replies and 1 close
(8 operations); about 1 buyer in 4 comes back (a recent contact). The
operations go as pre-serialized ``OperateRequest`` batches, as the
``OperateStream`` servicer hands them to the engine, and three ways of
applying them are timed on identical streams (CPU time, ``time.process_time``):

- ``compiled``: ``CompiledEngine.operate_wire`` (the bytes in, the bytes out);
- ``reference``: ``ReferenceEngine.operate_wire`` (the same, in plain Python);
- ``objects``: the servicer's object path on the compiled engine (protobuf
  parse, ``dispatcher.operations.apply_operations``, serialize).

It also splits the compiled cost by operation kind (batches of dispatches
only, then of the events only) and times presence churn (``--presence``: one
SUSPENDED/ONLINE flip pair every N conversations). Run::

    .venv/bin/python -m bench.operate_bench --shops 200 --conversations 200000
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time
from typing import Any

import _fastpath
from _fastpath import AgentConfig, ShopConfig
from dispatcher._gen.dispatch.v1 import dispatch_pb2

T0 = 1_700_000_000_000
OPS_PER_CONVERSATION = 8


def build(cls: type, shops: int, agents: int) -> Any:
    e = cls(1)
    for s in range(shops):
        shop = f"shop{s}"
        e.put_shop(ShopConfig(shop, f"{shop}:main"))
        for a in range(agents):
            e.put_agent(AgentConfig(shop, f"{shop}:a{a}", max_capacity=1000))
            e.set_presence(shop, f"{shop}:a{a}", 1, 1, T0)
    return e


def lifecycle_batches(
    shops: int, agents: int, conversations: int, per_batch: int, presence_every: int = 0, seed: int = 7
) -> list[tuple[list[bytes], int]]:
    """Batches of ``per_batch`` whole conversations, as (the OperateRequest split in parts, now_ms):
    parts[0] holds the dispatches, parts[1] the events (messages, replies, closes), parts[2] the
    presence churn. ``b"".join(parts)`` is the whole batch (repeated fields concatenate)."""
    rng = random.Random(seed)
    recent: list[tuple[str, str]] = []
    out = []
    n = 0
    while n < conversations:
        k = min(per_batch, conversations - n)
        dispatches, events, presence = [], [], []
        convs = []
        for i in range(k):
            if recent and rng.random() < 0.25:
                shop, buyer = rng.choice(recent)  # a returning buyer
            else:
                shop, buyer = f"shop{rng.randrange(shops)}", f"b{n + i}"
                recent.append((shop, buyer))
                if len(recent) > 50_000:
                    recent.pop(rng.randrange(len(recent)))
            conv = f"c{n + i}"
            convs.append((shop, conv))
            dispatches.append(
                dispatch_pb2.Operation(
                    dispatch=dispatch_pb2.DispatchRequest(shop_id=shop, buyer_id=buyer, conversation_id=conv)
                )
            )
            if presence_every and (n + i) % presence_every == 0:
                agent = f"{shop}:a{rng.randrange(agents)}"
                for state in (2, 1):  # SUSPENDED, then ONLINE again
                    presence.append(
                        dispatch_pb2.Operation(
                            set_presence=dispatch_pb2.SetPresenceRequest(shop_id=shop, agent_id=agent, presence=state)  # type: ignore[arg-type]
                        )
                    )
        for _ in range(3):
            for shop, conv in convs:
                for event in (1, 2):  # BUYER_MESSAGE, AGENT_REPLY
                    events.append(_event(shop, conv, event))
        for shop, conv in convs:
            events.append(_event(shop, conv, 3))  # CLOSED
        parts = [
            dispatch_pb2.OperateRequest(operations=ops).SerializeToString() for ops in (dispatches, events, presence)
        ]
        out.append((parts, T0 + 1000 * (len(out) + 1)))
        n += k
    return out


def _event(shop: str, conv: str, event: int) -> dispatch_pb2.Operation:
    return dispatch_pb2.Operation(
        report_conversation=dispatch_pb2.ReportConversationRequest(shop_id=shop, conversation_id=conv, event=event)  # type: ignore[arg-type]
    )


def _timed(fn: Any) -> float:
    gc.collect()
    gc.disable()
    try:
        start = time.process_time()
        fn()
        return time.process_time() - start
    finally:
        gc.enable()


def run_wire(cls: type, batches: list[tuple[list[bytes], int]], shops: int, agents: int) -> dict[str, Any]:
    """operate_wire on whole batches: CPU seconds, ns per operation, conversations per CPU-second."""
    engine = build(cls, shops, agents)
    whole = [(b"".join(parts), now) for parts, now in batches]
    ops = failed = 0

    def go() -> None:
        nonlocal ops, failed
        for raw, now in whole:
            _, n, f = engine.operate_wire(raw, now, 1 << 20)
            ops += n
            failed += f
            engine.drain_outbox()

    cpu = _timed(go)
    return _figures(cpu, ops, failed, engine, engine.operation_counts()[1])


def run_objects(batches: list[tuple[list[bytes], int]], shops: int, agents: int) -> dict[str, Any]:
    """The servicer's object path on the compiled engine: protobuf parse, apply_operations, serialize."""
    from dispatcher.convert import assignment_to_pb
    from dispatcher.operations import OperationContext, apply_operations

    engine = build(_fastpath.CompiledEngine, shops, agents)
    ctx = OperationContext(engine, lambda: [assignment_to_pb(x) for x in engine.drain_outbox()], None)
    whole = [(b"".join(parts), now) for parts, now in batches]
    ops = failed = 0

    def go() -> None:
        nonlocal ops, failed
        for raw, now in whole:
            request = dispatch_pb2.OperateRequest.FromString(raw)
            response = apply_operations(ctx, request.operations, now)
            response.SerializeToString()
            ops += len(request.operations)
            failed += sum(r.HasField("error") for r in response.results)

    cpu = _timed(go)
    return _figures(cpu, ops, failed, engine, sum(len(parts[0]) > 0 and _count(parts[0]) for parts, _ in batches))


def _count(raw: bytes) -> int:
    return len(dispatch_pb2.OperateRequest.FromString(raw).operations)


def run_split(batches: list[tuple[list[bytes], int]], shops: int, agents: int) -> dict[str, Any]:
    """The compiled cost by kind: each batch's dispatches, then its events, then its presence flips, as
    separate operate_wire calls, each kind timed on its own."""
    engine = build(_fastpath.CompiledEngine, shops, agents)
    cpu = [0.0, 0.0, 0.0]
    ops = [0, 0, 0]
    gc.collect()
    gc.disable()
    try:
        for parts, now in batches:
            for k, raw in enumerate(parts):
                if not raw:
                    continue
                start = time.process_time()
                _, n, f = engine.operate_wire(raw, now, 1 << 20)
                cpu[k] += time.process_time() - start
                ops[k] += n
                assert f == 0
                engine.drain_outbox()
    finally:
        gc.enable()
    names = ("dispatch", "events", "presence")
    return {
        name: {"ops": ops[k], "ns_per_op": round(cpu[k] / ops[k] * 1e9, 1)} for k, name in enumerate(names) if ops[k]
    }


def _figures(cpu: float, ops: int, failed: int, engine: Any, conversations: int) -> dict[str, Any]:
    return {
        "ops": ops,
        "failed": failed,
        "cpu_s": round(cpu, 4),
        "ns_per_op": round(cpu / ops * 1e9, 1),
        "conversations_per_cpu_s": round(conversations / cpu),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shops", type=int, default=200)
    p.add_argument("--agents", type=int, default=10, help="agents per shop (all online)")
    p.add_argument("--conversations", type=int, default=200_000)
    p.add_argument("--reference-conversations", type=int, default=20_000)
    p.add_argument("--per-batch", type=int, default=128, help="conversations per batch (8 operations each)")
    p.add_argument("--presence", type=int, default=0, help="a SUSPENDED/ONLINE flip pair every N conversations")
    args = p.parse_args(argv)
    batches = lifecycle_batches(args.shops, args.agents, args.conversations, args.per_batch, args.presence)
    small = lifecycle_batches(args.shops, args.agents, args.reference_conversations, args.per_batch, args.presence)
    result = {
        "shops": args.shops,
        "agents_per_shop": args.agents,
        "per_batch_operations": args.per_batch * OPS_PER_CONVERSATION,
        "compiled": run_wire(_fastpath.CompiledEngine, batches, args.shops, args.agents),
        "compiled_by_kind": run_split(batches, args.shops, args.agents),
        "objects_on_compiled": run_objects(small, args.shops, args.agents),
        "reference": run_wire(_fastpath.ReferenceEngine, small, args.shops, args.agents),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
