"""The "lifecycle" workload (issue 13): whole conversations, as an IM server reports them.

Per conversation: 1 Dispatch, then 3 × (BUYER_MESSAGE, AGENT_REPLY), then CLOSED: 8
operations. Between conversations, presence churn (an agent of a random shop goes offline,
a later churn event brings it back), and about 1 buyer in 4 is a *returning* buyer: one who
had a conversation in the same shop within the last 72 h (an earlier conversation of this
run, or one of the recent contacts the server was loaded with), so affinity decides.

Times are explicit (``at``), generated here: conversation ``i`` opens at ``start_ms + 8 i``
and its operations follow 1 ms apart. The benchmark keeps them in the past of the server's
clock (within ``--max-clock-skew``), and within 72 h of the recent contacts it loaded.

The shops are those of ``engine_bench.build_many``: ``s<i>``, agents ``s<i>:a<k>``; the
loaded recent contacts are buyers ``h<j>`` (``j < contacts_per_shop``) in every shop.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Sequence
from typing import Any, Final

from google.protobuf import timestamp_pb2

from dispatcher._gen.dispatch.v1 import common_pb2, dispatch_pb2

OPS_PER_CONVERSATION: Final = 8
MS_PER_CONVERSATION: Final = OPS_PER_CONVERSATION
BUYER_MESSAGE: Final = common_pb2.CONVERSATION_EVENT_BUYER_MESSAGE
AGENT_REPLY: Final = common_pb2.CONVERSATION_EVENT_AGENT_REPLY
CLOSED: Final = common_pb2.CONVERSATION_EVENT_CLOSED
ONLINE: Final = common_pb2.PRESENCE_ONLINE
OFFLINE: Final = common_pb2.PRESENCE_OFFLINE
# (kind, event) of operations 2..8 of a conversation.
EVENTS: Final = (BUYER_MESSAGE, AGENT_REPLY, BUYER_MESSAGE, AGENT_REPLY, BUYER_MESSAGE, AGENT_REPLY, CLOSED)
UNARY_METHOD: Final = {
    "dispatch": "/dispatch.v1.Dispatch/Dispatch",
    "set_presence": "/dispatch.v1.Dispatch/SetPresence",
    "report_conversation": "/dispatch.v1.Dispatch/ReportConversation",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Conversation:
    shop: str
    buyer: str
    conversation: str
    order_state: int
    at: int
    returning: bool


@dataclasses.dataclass(frozen=True, slots=True)
class PresenceChange:
    shop: str
    agent: str
    presence: int
    at: int


Item = Conversation | PresenceChange


def ts(ms: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def workload(
    n_conversations: int,
    *,
    n_shops: int,
    agents_per_shop: int = 20,
    contacts_per_shop: int = 0,
    seed: int = 1,
    tag: str = "l",
    start_ms: int,
    returning: float = 0.25,
    presence_per_conversation: float = 0.125,
) -> list[Item]:
    """``n_conversations`` conversations over random shops, with presence churn between them.

    Deterministic for a seed. Agents 0 and 1 of a shop never go offline (so no shop goes
    offline and every conversation is served: the later events of a conversation are valid
    whatever the decision was)."""
    rng = random.Random(seed)
    out: list[Item] = []
    recent: dict[int, list[str]] = {}  # shop -> buyers of this run's earlier conversations (last 8)
    offline: list[tuple[int, int]] = []  # (shop, agent) taken offline by the churn, oldest first
    carry = 0.0
    for i in range(n_conversations):
        at = start_ms + i * MS_PER_CONVERSATION
        carry += presence_per_conversation
        while carry >= 1.0 and agents_per_shop > 2:
            carry -= 1.0
            # Bring back the oldest offline agent half the time once a few are off, else take one offline.
            if len(offline) >= 4 and rng.random() < 0.5:
                s, k = offline.pop(0)
                out.append(PresenceChange(f"s{s}", f"s{s}:a{k}", ONLINE, at))
            else:
                s, k = rng.randrange(n_shops), 2 + rng.randrange(agents_per_shop - 2)
                if (s, k) in offline:
                    continue
                offline.append((s, k))
                out.append(PresenceChange(f"s{s}", f"s{s}:a{k}", OFFLINE, at))
        s = rng.randrange(n_shops)
        back = rng.random() < returning
        buyer = ""
        if back:
            mine = recent.get(s)
            if mine and (contacts_per_shop == 0 or rng.random() < 0.5):
                buyer = mine[rng.randrange(len(mine))]
            elif contacts_per_shop:
                buyer = f"h{rng.randrange(contacts_per_shop)}"
            else:
                back = False
        if not back:
            buyer = f"{tag}b{i}"
            mine = recent.setdefault(s, [])
            mine.append(buyer)
            if len(mine) > 8:
                del mine[0]
        out.append(Conversation(f"s{s}", buyer, f"{tag}c{i}", 1 + rng.randrange(5), at, back))
    return out


def conversations(items: Sequence[Item]) -> int:
    return sum(1 for x in items if isinstance(x, Conversation))


# --------------------------------------------------------------------- as protobuf requests


def conversation_ops(c: Conversation) -> list[tuple[str, Any]]:
    """The 8 operations of a conversation, in order, as (kind, unary request message)."""
    ops: list[tuple[str, Any]] = [
        (
            "dispatch",
            dispatch_pb2.DispatchRequest(
                shop_id=c.shop, buyer_id=c.buyer, conversation_id=c.conversation, order_state=c.order_state, at=ts(c.at)
            ),
        )
    ]
    for k, event in enumerate(EVENTS, start=1):
        ops.append(
            (
                "report_conversation",
                dispatch_pb2.ReportConversationRequest(
                    shop_id=c.shop, conversation_id=c.conversation, event=event, at=ts(c.at + k)
                ),
            )
        )
    return ops


def presence_op(p: PresenceChange) -> tuple[str, Any]:
    return "set_presence", dispatch_pb2.SetPresenceRequest(
        shop_id=p.shop, agent_id=p.agent, presence=p.presence, at=ts(p.at)
    )


def item_ops(item: Item) -> list[tuple[str, Any]]:
    return conversation_ops(item) if isinstance(item, Conversation) else [presence_op(item)]


def operate_batches(items: Sequence[Item], per_batch: int = 64) -> Iterator[dispatch_pb2.OperateRequest]:
    """OperateRequests of ``per_batch`` conversations each (+ the presence changes among them),
    as an IM server's micro-batch would carry them: presence changes first, then every
    conversation's 1st operation, then every 2nd, ... (a conversation's operations stay in order)."""
    batch: list[Item] = []
    n = 0
    for item in items:
        batch.append(item)
        if isinstance(item, Conversation):
            n += 1
            if n == per_batch:
                yield _batch(batch)
                batch, n = [], 0
    if batch:
        yield _batch(batch)


def _batch(items: Sequence[Item]) -> dispatch_pb2.OperateRequest:
    req = dispatch_pb2.OperateRequest()
    ops = req.operations
    convs = []
    for item in items:
        if isinstance(item, PresenceChange):
            kind, msg = presence_op(item)
            getattr(ops.add(), kind).CopyFrom(msg)
        else:
            convs.append(conversation_ops(item))
    for step in range(OPS_PER_CONVERSATION):
        for c in convs:
            kind, msg = c[step]
            getattr(ops.add(), kind).CopyFrom(msg)
    return req


def mix(items: Sequence[Item]) -> dict[str, int]:
    """Operations by kind (and event) of a workload."""
    out = {
        "conversations": 0,
        "returning": 0,
        "dispatch": 0,
        "buyer_message": 0,
        "agent_reply": 0,
        "closed": 0,
        "set_presence": 0,
    }
    for item in items:
        if isinstance(item, PresenceChange):
            out["set_presence"] += 1
        else:
            out["conversations"] += 1
            out["returning"] += item.returning
            out["dispatch"] += 1
            out["buyer_message"] += 3
            out["agent_reply"] += 3
            out["closed"] += 1
    return out
