"""Fuzz every RPC of a live server with random and mutated protobuf bytes.

The requests go through a raw-bytes channel (no client-side serialization), so
the server sees whatever bytes hypothesis and the mutator produce: random
bytes, structure-aware messages with hostile field values (control
characters, oversized ids, out-of-range enums, absurd timestamps, huge
numbers, duplicate ids) and byte-level mutations of those (bit flips,
truncation, splices, inserted fields, over-long varints).

Every answer must be a precise status (never UNKNOWN, INTERNAL, UNAVAILABLE or
a hang); afterwards the server still answers, the canary shop (which no input
names) is unchanged, and no internal error was counted.

Budget: ``DISPATCH_FUZZ_INPUTS`` inputs (default 3000, a few seconds, in
``make test``); ``make fuzz`` runs 1,000,000.
"""

from __future__ import annotations

import os
import random
import struct
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_fixtures import T0, ThreadedServer

from dispatcher._gen.dispatch.v1 import admin_pb2, admin_pb2_grpc, dispatch_pb2, dispatch_pb2_grpc

INPUTS = int(os.environ.get("DISPATCH_FUZZ_INPUTS", "3000"))
PER_EXAMPLE = int(os.environ.get("DISPATCH_FUZZ_PER_EXAMPLE", "25"))
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # over the message size limit
    grpc.StatusCode.CANCELLED,  # a watch we ended ourselves
}

# (path, shape, request class) for every RPC of dispatch.v1.
METHODS: list[tuple[str, str, Any]] = []
for _module in (dispatch_pb2, admin_pb2):
    for _service in _module.DESCRIPTOR.services_by_name.values():
        for _m in _service.methods:
            shape = (
                ("stream" if _m.client_streaming else "unary") + "_" + ("stream" if _m.server_streaming else "unary")
            )
            _cls = getattr(
                dispatch_pb2 if _m.input_type.file.name.endswith("dispatch.proto") else admin_pb2, _m.input_type.name
            )
            METHODS.append((f"/dispatch.v1.{_service.name}/{_m.name}", shape, _cls))

# ------------------------------------------------------------------ generation

STRINGS = [
    "fz", "fz", "fz", "fz:a", "fz:b", "fz:bot", "fz2", "g", "g2", "b1", "b2", "c1", "c2", "c3", "",
    "x" * 129, "é" * 64, "é" * 65, "a\x00b", "\x7f", "tab\there", "\u202e", "\ufeff", "PRODUCT_PAGE", "ORDER_PAGE",
    "Asia/Shanghai", "Mars/Olympus", "UTC", "*",
]  # fmt: skip
INTS = [0, 1, 2, 3, 4, 5, 7, 64, 99, 100, 127, 128, 255, 256, 1000, 10**6, 10**6 + 1, 2**31 - 1, 2**32 - 1, 2**63 - 1, 2**64 - 1,
        -1, -2, -(2**31), -(2**63), T0 // 1000, T0, 253402300799, 253402300800]  # fmt: skip
RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1), F.TYPE_SINT32: (-(2**31), 2**31 - 1), F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1), F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1), F.TYPE_SINT64: (-(2**63), 2**63 - 1), F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1), F.TYPE_FIXED64: (0, 2**64 - 1),
}  # fmt: skip


VALID = ["fz", "fz", "fz:a", "fz:b", "fz:bot", "fz", "g", "b0", "b1", "b2", "c0", "c1", "c5", "pooled", "PRODUCT_PAGE"]


def _string(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(VALID)
    if rng.random() < 0.85:
        return rng.choice(STRINGS)
    return "".join(
        chr(rng.choice((rng.randrange(0x20, 0x7F), rng.randrange(0, 0x20), rng.randrange(0x80, 0x3000))))
        for _ in range(rng.randrange(0, 12))
    )


def _scalar(field: Any, rng: random.Random) -> Any:
    t = field.type
    if t == F.TYPE_STRING:
        return _string(rng)
    if t == F.TYPE_BYTES:
        return rng.randbytes(rng.randrange(0, 8))
    if t == F.TYPE_BOOL:
        return rng.random() < 0.5
    if t == F.TYPE_ENUM:
        values = [v.number for v in field.enum_type.values]
        return rng.choice(values + values + [-1, len(values), 99, 2**31 - 1, -(2**31)])
    if t in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return rng.choice([0.0, -1.0, 1e308, float("nan")])
    lo, hi = RANGES[t]
    if (
        field.message_type is None
        and field.containing_type is not None
        and field.containing_type.full_name == "google.protobuf.Timestamp"
        and field.name == "nanos"
    ):
        return rng.choice([0, 1, 999_999_999, 1_000_000_000, -1, lo, hi])
    return rng.choice([v for v in INTS if lo <= v <= hi] + [rng.randint(lo, hi)])


def fill(msg: Any, rng: random.Random, depth: int = 0) -> Any:
    for field in msg.DESCRIPTOR.fields:
        if rng.random() < 0.3:
            continue
        repeated = field.is_repeated
        if field.type == F.TYPE_MESSAGE:
            if depth > 3:
                continue
            if repeated:
                for _ in range(rng.choice((0, 1, 2, 3, 8))):
                    fill(getattr(msg, field.name).add(), rng, depth + 1)
            else:
                sub = getattr(msg, field.name)
                sub.SetInParent()
                fill(sub, rng, depth + 1)
            continue
        try:
            if repeated:
                getattr(msg, field.name).extend(_scalar(field, rng) for _ in range(rng.choice((0, 1, 2, 3, 9))))
            else:
                setattr(msg, field.name, _scalar(field, rng))
        except (ValueError, TypeError):
            pass  # e.g. a closed enum refusing an unknown number client-side
    return msg


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _mutate(data: bytes, op: int, rng: random.Random, other: bytes) -> bytes:
    b = bytearray(data)
    n = len(b)
    if op == 0 and n:  # flip a bit
        i = rng.randrange(n)
        b[i] ^= 1 << rng.randrange(8)
    elif op == 1 and n:  # an interesting byte
        b[rng.randrange(n)] = rng.choice((0x00, 0x01, 0x7F, 0x80, 0xFF, 0xC3, 0x0A, 0x12))
    elif op == 2:  # insert random bytes
        i = rng.randrange(n + 1)
        b[i:i] = rng.randbytes(rng.randrange(1, 9))
    elif op == 3 and n:  # delete a slice
        i = rng.randrange(n)
        del b[i : i + rng.randrange(1, 9)]
    elif op == 4 and n:  # truncate
        del b[rng.randrange(n) :]
    elif op == 5 and n:  # duplicate a slice
        i = rng.randrange(n)
        b[i:i] = b[i : i + rng.randrange(1, 16)]
    elif op == 6:  # splice with another message
        cut = rng.randrange(n + 1)
        b = b[:cut] + other[rng.randrange(len(other) + 1) :]
    elif op == 7:  # append a field: any number, any wire type, odd values
        number = rng.choice((1, 2, 3, 4, 5, 6, 8, 9, 17, 99, 536870911))
        wire = rng.choice((0, 1, 2, 5, 3, 4, 7))
        payload = {
            0: _varint(rng.choice(INTS)),
            1: struct.pack("<q", rng.randrange(-(2**63), 2**63)),
            5: b"\xff\xff\xff\xff",
        }.get(wire, _varint(rng.choice((0, 1, 3, 129, 2**31))) + rng.randbytes(rng.randrange(0, 6)))
        b += _varint(number << 3 | wire) + payload
    elif op == 8:  # an over-long varint
        i = rng.randrange(n + 1)
        b[i:i] = b"\xff" * rng.randrange(9, 12) + b"\x01"
    return bytes(b)


def derive(rng: random.Random, cls: Any) -> bytes:
    """One input for a method whose request type is ``cls``."""
    r = rng.random()
    if r < 0.12:
        return rng.randbytes(rng.randrange(0, 48))
    data = fill(cls(), rng).SerializeToString()
    if r < 0.5:
        return data
    other = fill(cls(), rng).SerializeToString()
    for _ in range(rng.randrange(1, 5)):
        data = _mutate(data, rng.randrange(9), rng, other)
    return data


# ------------------------------------------------------------------ the live server


class Target:
    def __init__(self, server: ThreadedServer) -> None:
        self.server = server
        self.channel = grpc.insecure_channel(server.target)
        self.calls: dict[str, Callable[..., Any]] = {}
        for path, shape, _ in METHODS:
            factory = getattr(self.channel, shape)
            self.calls[path] = factory(path, request_serializer=None, response_deserializer=None)
        self.codes: Counter[str] = Counter()
        self.sent = 0

    def send(self, inputs: list[tuple[str, str, bytes]]) -> None:
        """Send every input (unary ones concurrently); record and check each status."""
        pending = []
        for path, shape, data in inputs:
            call = self.calls[path]
            if shape == "unary_unary":
                pending.append((path, data, call.future(data, timeout=20)))
            elif shape == "unary_stream":  # WatchAssignments: subscribed (then cancelled) or refused
                stream = call(data, timeout=20)
                stream.initial_metadata()
                stream.cancel()
                self._check(path, data, stream.code())
            else:  # DispatchStream: one message, then the end of the stream
                try:
                    list(call(iter([data]), timeout=20))
                    code = grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    code = exc.code()
                self._check(path, data, code)
        for path, data, future in pending:
            try:
                future.result()
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
            self._check(path, data, code)

    def _check(self, path: str, data: bytes, code: grpc.StatusCode) -> None:
        self.sent += 1
        self.codes[code.name] += 1
        assert code in ALLOWED, f"{path} answered {code} to {data!r}"


def _setup(stub_d: Any, stub_a: Any, shop: str) -> None:
    stub_a.PutShop(admin_pb2.PutShopRequest(shop=admin_pb2.ShopConfig(shop_id=shop, main_account=shop, offline_rule=3)))
    for agent, cap in ((f"{shop}:a", 2), (f"{shop}:b", 3)):
        stub_a.PutAgent(
            admin_pb2.PutAgentRequest(agent=admin_pb2.Agent(shop_id=shop, agent_id=agent, max_capacity=cap))
        )
    stub_a.PutAgent(admin_pb2.PutAgentRequest(agent=admin_pb2.Agent(shop_id=shop, agent_id=f"{shop}:bot", role=4)))
    stub_a.PutGroup(
        admin_pb2.PutGroupRequest(
            group=admin_pb2.Group(shop_id=shop, group_id="g", members=[f"{shop}:a", f"{shop}:b"], order_states=[1])
        )
    )
    stub_a.SetExclusiveAgent(admin_pb2.SetExclusiveAgentRequest(shop_id=shop, buyer_id="b2", agent_id=f"{shop}:b"))
    pooled = dispatch_pb2.DispatchRequest(shop_id=shop, buyer_id="b0", conversation_id="pooled")
    pooled.at.FromMilliseconds(T0)
    stub_d.Dispatch(pooled)  # nobody online: waits in the message pool
    for agent in (f"{shop}:a", f"{shop}:b"):
        presence = dispatch_pb2.SetPresenceRequest(shop_id=shop, agent_id=agent, presence=1)
        presence.at.FromMilliseconds(T0)
        stub_d.SetPresence(presence)
    for i in range(6):  # 5 seats: the sixth is queued
        req = dispatch_pb2.DispatchRequest(shop_id=shop, buyer_id=f"b{i}", conversation_id=f"c{i}")
        req.at.FromMilliseconds(T0 + i)
        stub_d.Dispatch(req)


def test_fuzz_every_rpc_with_random_and_mutated_bytes() -> None:
    running = ThreadedServer().start()
    target = Target(running)
    stub_d, stub_a = dispatch_pb2_grpc.DispatchStub(target.channel), admin_pb2_grpc.AdminStub(target.channel)
    try:
        _setup(stub_d, stub_a, "canary")
        _setup(stub_d, stub_a, "fz")
        canary = stub_a.GetShopState(admin_pb2.GetShopStateRequest(shop_id="canary"))
        assert len(canary.queue) == 1 and len(canary.pool) == 1 and canary.live_conversations == 7
        examples = max(1, -(-INPUTS // (PER_EXAMPLE + 1)))  # rounded up: at least INPUTS inputs
        started = time.monotonic()

        @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(
            method=st.integers(0, len(METHODS) - 1),
            raw=st.binary(max_size=96),
            ops=st.lists(st.integers(0, 8), max_size=6),
            seed=st.integers(0, 2**64 - 1),
        )
        def run(method: int, raw: bytes, ops: list[int], seed: int) -> None:
            rng = random.Random(seed)
            path, shape, cls = METHODS[method]
            structured = fill(cls(), rng).SerializeToString()
            for op in ops:  # hypothesis-chosen mutations of a structured message
                structured = _mutate(structured, op, rng, raw)
            inputs = [(path, shape, raw), (path, shape, structured)]
            for _ in range(PER_EXAMPLE - 1):
                p, s, c = METHODS[rng.randrange(len(METHODS))]
                inputs.append((p, s, derive(rng, c)))
            target.send(inputs)
            # Fail at the first internal error, so hypothesis shrinks to the input that caused it.
            assert running.server.counters.internal_errors == 0, "an input caused an internal error (see the log)"

        run()
        elapsed = time.monotonic() - started
        # Still serving, nothing leaked into the canary shop, no internal error.
        assert stub_a.GetShopState(admin_pb2.GetShopStateRequest(shop_id="canary"), timeout=10) == canary
        assert running.server.counters.internal_errors == 0
        check = dispatch_pb2.DispatchRequest(
            shop_id="canary", buyer_id="after", conversation_id="after-fuzz", type=2, to_account="x"
        )
        assert stub_d.Dispatch(check, timeout=10).reason == 1  # REASON_DIRECT: answers and changes nothing
        assert target.sent >= INPUTS
        print(
            f"\nfuzz: {target.sent} inputs in {elapsed:.1f}s ({target.sent / elapsed:.0f}/s): {dict(sorted(target.codes.items()))}"
        )
        assert target.codes["OK"] > 0 and target.codes["INVALID_ARGUMENT"] > 0  # both paths were exercised
    finally:
        target.channel.close()
        running.stop()
