"""Time from callers is bounded (issue 11): an ``at`` more than ``--max-clock-skew``
ahead of the server clock is refused with INVALID_ARGUMENT on every RPC that takes
one, and changes nothing; within the bound, or with the bound off, it is taken.

A single call with ``at`` = now + 5 days used to move a shop's clock for good:
every live recent contact expired at once, every agent's ``today`` reset, and
year-9999 times pinned the clock forever. The engine-level differential checks
of the bound (compiled against reference) are in tests/test_wire.py.
"""

from __future__ import annotations

import argparse
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from server_fixtures import ThreadedServer

from dispatcher._gen.dispatch.v1 import admin_pb2, admin_pb2_grpc, common_pb2, dispatch_pb2, dispatch_pb2_grpc
from dispatcher.config import add_serve_arguments, settings_from_args
from dispatcher.server import MAX_CLOCK_SKEW, DispatchServer
from dispatcher.testing import ServerProcess

IA = grpc.StatusCode.INVALID_ARGUMENT
DAY = 24 * 3600 * 1000
FIVE_DAYS = 5 * DAY
LAST_SECOND = 253_402_300_799  # 9999-12-31T23:59:59Z
AHEAD = re.compile(r"^at is (\d+(\.\d+)?) s ahead of the server clock; the bound is (\d+) s \(--max-clock-skew\)$")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Stubs:
    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.d = dispatch_pb2_grpc.DispatchStub(self.channel)
        self.a = admin_pb2_grpc.AdminStub(self.channel)

    def state(self, shop_id: str = "s") -> admin_pb2.ShopState:
        return self.a.GetShopState(admin_pb2.GetShopStateRequest(shop_id=shop_id))

    def buyer(self, buyer_id: str, shop_id: str = "s") -> admin_pb2.GetBuyerResponse:
        return self.a.GetBuyer(admin_pb2.GetBuyerRequest(shop_id=shop_id, buyer_id=buyer_id))


def dreq(
    conversation_id: str, buyer_id: str = "nb", at: int | None = None, seconds: int | None = None
) -> dispatch_pb2.DispatchRequest:
    r = dispatch_pb2.DispatchRequest(shop_id="s", buyer_id=buyer_id, conversation_id=conversation_id)
    if at is not None:
        r.at.FromMilliseconds(at)
    if seconds is not None:
        r.at.seconds = seconds
    return r


def populate(stubs: Stubs, t: int) -> None:
    """Shop s: two online agents, three buyers with live recent contacts, all at about ``t``."""
    stubs.a.PutShop(admin_pb2.PutShopRequest(shop=admin_pb2.ShopConfig(shop_id="s", main_account="s")))
    for agent in ("s:a", "s:b"):
        stubs.a.PutAgent(admin_pb2.PutAgentRequest(agent=admin_pb2.Agent(shop_id="s", agent_id=agent, max_capacity=20)))
    stubs.a.PutGroup(
        admin_pb2.PutGroupRequest(group=admin_pb2.Group(shop_id="s", group_id="g", members=["s:a", "s:b"]))
    )
    for agent in ("s:a", "s:b"):
        p = dispatch_pb2.SetPresenceRequest(shop_id="s", agent_id=agent, presence=common_pb2.PRESENCE_ONLINE)
        p.at.FromMilliseconds(t - 60_000)
        stubs.d.SetPresence(p)
    for i in range(3):
        stubs.d.Dispatch(dreq(f"c{i}", f"b{i}", at=t - 50_000))
        reply = dispatch_pb2.ReportConversationRequest(
            shop_id="s", conversation_id=f"c{i}", event=common_pb2.CONVERSATION_EVENT_AGENT_REPLY
        )
        reply.at.FromMilliseconds(t - 40_000)
        stubs.d.ReportConversation(reply)


def refused(call: Any, bound_s: int = 300) -> float:
    """Run a call that must be refused for its time; the seconds ahead its message names."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == IA, info.value.details()
    m = AHEAD.match(info.value.details() or "")
    assert m is not None, info.value.details()
    assert int(m.group(3)) == bound_s
    return float(m.group(1))


@pytest.fixture
def bounded() -> Iterator[tuple[ThreadedServer, Stubs, int]]:
    running = ThreadedServer().start()  # the default bound: MAX_CLOCK_SKEW
    stubs = Stubs(running.target)
    t = now_ms()
    populate(stubs, t)
    try:
        yield running, stubs, t
    finally:
        stubs.channel.close()
        running.stop()


def test_the_default_bound_is_a_few_minutes() -> None:
    assert MAX_CLOCK_SKEW == 300.0
    assert DispatchServer(no_auth=True).max_clock_skew_ms == 300_000
    assert DispatchServer(no_auth=True, max_clock_skew=None).max_clock_skew_ms is None
    assert DispatchServer(no_auth=True, max_clock_skew=0).max_clock_skew_ms is None
    with pytest.raises(ValueError, match="negative"):
        DispatchServer(no_auth=True, max_clock_skew=-1)


def test_a_future_at_is_refused_on_every_rpc_and_changes_nothing(bounded: Any) -> None:
    running, stubs, t = bounded
    before = stubs.state()
    contacts = [stubs.buyer(f"b{i}") for i in range(3)]
    assert all(c.recent_contact for c in contacts)
    far = now_ms() + FIVE_DAYS

    ahead = refused(lambda: stubs.d.Dispatch(dreq("future", at=far)))
    assert 431_000 < ahead <= 432_000  # now + 5 days, as the server's clock read it
    refused(lambda: stubs.d.Dispatch(dreq("year9999", seconds=LAST_SECOND)))
    # the same request with a trace, or point to point, goes the object path: refused alike
    traced = dreq("traced", at=far)
    traced.trace = True
    refused(lambda: stubs.d.Dispatch(traced))
    presence = dispatch_pb2.SetPresenceRequest(shop_id="s", agent_id="s:a", presence=common_pb2.PRESENCE_OFFLINE)
    presence.at.FromMilliseconds(far)
    refused(lambda: stubs.d.SetPresence(presence))
    presence.at.seconds = LAST_SECOND
    refused(lambda: stubs.d.SetPresence(presence))
    close = dispatch_pb2.ReportConversationRequest(
        shop_id="s", conversation_id="c0", event=common_pb2.CONVERSATION_EVENT_CLOSED
    )
    close.at.FromMilliseconds(far)
    refused(lambda: stubs.d.ReportConversation(close))
    claim = dispatch_pb2.ClaimFromPoolRequest(shop_id="s", agent_id="s:a")
    claim.at.FromMilliseconds(far)
    refused(lambda: stubs.d.ClaimFromPool(claim))  # refused for its time before the (empty) pool is looked at

    after = stubs.state()
    assert after == before  # the clock did not move, nobody's today was reset, nothing was closed
    assert [stubs.buyer(f"b{i}") for i in range(3)] == contacts  # recent contacts alive
    assert after.clock.ToMilliseconds() < now_ms()
    assert running.server.counters.errors["INVALID_ARGUMENT"] == 7


def test_a_future_item_of_a_batch_is_refused_alone(bounded: Any) -> None:
    running, stubs, t = bounded
    contacts = [stubs.buyer(f"b{i}") for i in range(3)]
    clock = stubs.state().clock.ToMilliseconds()
    far = now_ms() + FIVE_DAYS
    items = [dreq("k0"), dreq("k1", at=far), dreq("k2", at=now_ms()), dreq("k3", seconds=LAST_SECOND), dreq("k4")]
    answer = stubs.d.DispatchBatch(dispatch_pb2.DispatchBatchRequest(requests=items))
    codes = [r.error.code for r in answer.responses]
    assert codes == [0, IA.value[0], 0, IA.value[0], 0]
    assert [r.conversation_id for r in answer.responses] == ["k0", "k1", "k2", "k3", "k4"]
    for r in (answer.responses[1], answer.responses[3]):
        m = AHEAD.match(r.error.message)
        assert m is not None and m.group(3) == "300", r.error.message
    # DispatchStream: the same, message by message; the stream goes on.
    stream = stubs.d.DispatchStream(iter([
        dispatch_pb2.DispatchBatchRequest(requests=[dreq("m0", at=far), dreq("m1")]),
        dispatch_pb2.DispatchBatchRequest(requests=[dreq("m2")]),
    ]))  # fmt: skip
    got = [[r.error.code for r in message.responses] for message in stream]
    assert got == [[IA.value[0], 0], [0]]
    state = stubs.state()
    assert state.live_conversations == 3 + 5  # k0, k2, k4, m1, m2
    assert clock <= state.clock.ToMilliseconds() <= now_ms()  # moved by the real-time items only
    assert [stubs.buyer(f"b{i}") for i in range(3)] == contacts
    assert sum(a.today for a in state.agents if a.agent_id in ("s:a", "s:b")) >= 3  # not reset by a future day


def test_an_at_within_the_bound_is_taken(bounded: Any) -> None:
    running, stubs, t = bounded
    soon = now_ms() + 60_000
    answer = stubs.d.Dispatch(dreq("soon", at=soon))
    assert answer.agent_id in ("s:a", "s:b")
    assert stubs.state().clock.ToMilliseconds() == soon
    assert all(stubs.buyer(f"b{i}").recent_contact for i in range(3))
    presence = dispatch_pb2.SetPresenceRequest(shop_id="s", agent_id="s:b", presence=common_pb2.PRESENCE_SUSPENDED)
    presence.at.FromMilliseconds(now_ms() + 250_000)
    stubs.d.SetPresence(presence)
    # A late at (older than the shop's clock) is taken too, as happening at the shop's clock.
    late = stubs.d.Dispatch(dreq("late", at=t - DAY))
    assert late.agent_id == "s:a"
    assert stubs.state().clock.ToMilliseconds() == presence.at.ToMilliseconds()


@pytest.mark.parametrize("off", [None, 0])
def test_with_the_bound_off_a_far_future_at_is_taken(off: Any) -> None:
    running = ThreadedServer(max_clock_skew=off).start()
    stubs = Stubs(running.target)
    try:
        populate(stubs, now_ms())
        far = now_ms() + FIVE_DAYS
        stubs.d.Dispatch(dreq("future", at=far))
        assert stubs.state().clock.ToMilliseconds() == far
        assert not any(stubs.buyer(f"b{i}").recent_contact for i in range(3))  # what the bound prevents
        stubs.d.Dispatch(dreq("y9999", seconds=LAST_SECOND))
        assert stubs.state().clock.seconds == LAST_SECOND
    finally:
        stubs.channel.close()
        running.stop()


def test_a_configured_bound_is_the_one_named() -> None:
    running = ThreadedServer(max_clock_skew=10).start()
    stubs = Stubs(running.target)
    try:
        populate(stubs, now_ms())
        ahead = refused(lambda: stubs.d.Dispatch(dreq("x", at=now_ms() + 60_000)), bound_s=10)
        assert 59 < ahead <= 60
        stubs.d.Dispatch(dreq("y", at=now_ms() + 5_000))
    finally:
        stubs.channel.close()
        running.stop()


def _settings(argv: list[str], env: dict[str, str] | None = None) -> Any:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser, env or {})
    return settings_from_args(parser.parse_args(argv))


def test_the_setting_flag_environment_and_file(tmp_path: Path) -> None:
    from dispatcher.config import apply_config_file

    assert _settings([]).max_clock_skew == 300.0
    assert _settings(["--max-clock-skew", "30"]).max_clock_skew == 30.0
    assert _settings(["--max-clock-skew", "off"]).max_clock_skew == 0.0
    assert _settings(["--max-clock-skew", "0"]).max_clock_skew == 0.0
    assert _settings([], {"DISPATCH_MAX_CLOCK_SKEW": "2.5"}).max_clock_skew == 2.5
    assert _settings(["--max-clock-skew", "7"], {"DISPATCH_MAX_CLOCK_SKEW": "2.5"}).max_clock_skew == 7.0
    for bad in ("-1", "soon", "nan", "inf"):
        with pytest.raises(SystemExit):
            _settings(["--max-clock-skew", bad])
    config = tmp_path / "dispatch.toml"
    config.write_text('max_clock_skew = "off"\n')
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser, {})
    apply_config_file(parser, ["--config", str(config)], {})
    assert settings_from_args(parser.parse_args(["--config", str(config)])).max_clock_skew == 0.0


# ------------------------------------------------------------------ the journal


class Server(ServerProcess):
    def __init__(self, data_dir: Path, *extra: str) -> None:
        super().__init__("serve", "--port", "0", "--no-auth", "--log-format", "json", "--stats-interval", "0",
                         "--data-dir", str(data_dir), *extra)  # fmt: skip


def view(stubs: Stubs) -> Any:
    state = stubs.state()
    buyers = [stubs.buyer(b) for b in ("b0", "b1", "b2", "nb", "w")]
    conversations = []
    for c in ("c0", "c1", "k0", "k1", "k2", "u0", "u1", "future"):
        try:
            conversations.append(
                stubs.a.GetConversation(admin_pb2.GetConversationRequest(shop_id="s", conversation_id=c))
            )
        except grpc.RpcError as exc:
            conversations.append(exc.code())
    return state, buyers, conversations


def test_the_journal_replays_identically(tmp_path: Path) -> None:
    """Refused items never reach the journal; a batch declined for one item's time is
    journaled item by item; replay (which runs without the bound) rebuilds the same state."""
    data = tmp_path / "data"
    first = Server(data, "--create-data-dir", "--max-clock-skew", "300")
    try:
        stubs = Stubs(first.target)
        populate(stubs, now_ms())
        far = now_ms() + FIVE_DAYS
        refused(lambda: stubs.d.Dispatch(dreq("future", at=far)))
        batch = [dreq("k0", "w"), dreq("k1", at=far), dreq("k2", at=now_ms() + 1000)]
        codes = [
            r.error.code for r in stubs.d.DispatchBatch(dispatch_pb2.DispatchBatchRequest(requests=batch)).responses
        ]
        assert codes == [0, IA.value[0], 0]
        stubs.d.DispatchBatch(dispatch_pb2.DispatchBatchRequest(requests=[dreq("u0", "b1"), dreq("u1", at=now_ms())]))
        before = view(stubs)
        stubs.channel.close()
        first.popen.send_signal(signal.SIGKILL)  # no shutdown snapshot: the restart replays the journal
        first.popen.wait(30)
    finally:
        first.ensure_dead()
    again = Server(data)
    try:
        recovered = again.events("durability.recovered") if again.target else []
        assert recovered and recovered[0]["replayed"] > 0
        stubs = Stubs(again.target)
        assert view(stubs) == before
        stubs.channel.close()
    finally:
        again.ensure_dead()
