"""The operator CLI (dispatcher/ops) as an operator runs it: ``python -m dispatcher ...`` subprocesses
against real servers and data dirs, asserting on their output and exit codes.

- ``call`` (every accepted method form; a good call; a NOT_FOUND; a WRONG_NODE with its
  ErrorInfo details; server streams with ``--max``), ``shops``, ``shop show``, ``health``
  (serving: 0; no server: 1), ``--token`` and ``$DISPATCH_TOKEN`` against an auth policy,
  ``--ca/--cert/--key`` (mTLS);
- ``check-bootstrap``: a good file, a bad one, a duplicate shop;
- ``journal dump|verify`` and ``replay --until`` on a data dir written by ``dispatcher serve``:
  the earlier state, and not one byte of the data dir changed.

Independent commands run concurrently (``_run_all``) to keep the suite quick.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from server_fixtures import DEMO, ROOT, Proc, ThreadedServer

from dispatcher._gen.dispatch.v1 import admin_pb2, admin_pb2_grpc, dispatch_pb2, dispatch_pb2_grpc
from dispatcher.auth import AuthPolicy, hash_token
from dispatcher.cluster import Membership, even_map

_DROP = ("DISPATCH_TARGET", "DISPATCH_TOKEN")


@dataclasses.dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def _start(args: tuple[str, ...], env: dict[str, str] | None) -> subprocess.Popen[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in _DROP}
    full_env.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "dispatcher", *args],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run_all(*commands: tuple[str, ...], env: dict[str, str] | None = None) -> list[Result]:
    """Run the commands at once; their results in order."""
    procs = [_start(args, env) for args in commands]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        results.append(Result(proc.returncode, out, err))
    return results


def _run(*args: str, env: dict[str, str] | None = None) -> Result:
    return _run_all(args, env=env)[0]


def _files(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and mtime: what 'unchanged' means for a data dir."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


# ------------------------------------------------------------------ against the demo server


def test_call_shops_shop_show_and_health_against_the_demo_server(demo_server: Proc) -> None:
    target = ("--target", demo_server.target)
    dispatch = '{"shop_id": "demo", "buyer_id": "ops-b1", "conversation_id": "ops-c1", "order_state": "NO_ORDER"}'
    good = _run("call", "dispatch.v1.Dispatch/Dispatch", dispatch, *target)
    assert good.code == 0, good.err
    answer = good.json()
    assert answer["reason"] == "REASON_GROUP" and answer["group_id"] == "presale"
    assert answer["conversation_id"] == "ops-c1"  # proto field names, not lowerCamelCase
    forms = (
        "dispatch.v1.Admin/ListShops",
        "/dispatch.v1.Admin/ListShops",
        "Admin/ListShops",
        "dispatch.v1.Admin.ListShops",
    )
    missing = '{"shop_id": "demo", "conversation_id": "no-such-conversation"}'
    *listed, error, bad_service, bad_field, stream, plain, as_json, long, show, show_json, health, health_json = (
        _run_all(
            *[("call", form, *target, "--json") for form in forms],
            ("call", "Admin/GetConversation", missing, *target),
            ("call", "Nope/ListShops", *target),
            ("call", "Admin/ListShops", '{"nope": 1}', *target),
            ("call", "grpc.health.v1.Health/Watch", "{}", "--max", "1", "--json", *target),
            ("shops", *target),
            ("shops", "--json", *target),
            ("shops", "--long", *target),
            ("shop", "show", "demo", *target),
            ("shop", "show", "demo", "--json", *target),
            ("health", *target),
            ("health", "--json", *target),
        )
    )
    assert len(listed) == len(forms)
    for r in listed:
        assert (r.code, r.out.strip()) == (0, '{"shop_ids":["demo"]}'), r.err
    # A failed call: its code and message on stderr, exit 1.
    assert error.code == 1 and error.out == ""
    assert error.err.startswith("ERROR: NOT_FOUND: ") and "no-such-conversation" in error.err
    # Usage mistakes: exit 2, naming what is wrong.
    assert bad_service.code == 2 and "unknown service 'Nope'" in bad_service.err
    assert "dispatch.v1.Admin" in bad_service.err
    assert bad_field.code == 2 and "nope" in bad_field.err
    # A server stream: one JSON per message, --max ends it.
    assert (stream.code, stream.out.strip()) == (0, '{"status":"SERVING"}'), stream.err
    assert plain.code == 0 and plain.out.splitlines() == ["SHOP", "demo", "(1 shop)"]
    assert as_json.json() == {"shop_ids": ["demo"]}
    header, row = long.out.splitlines()[:2]
    assert header.split() == ["SHOP", "AGENTS", "ONLINE", "LIVE", "QUEUE", "STAGING", "POOL", "OPEN"]
    assert row.split() == ["demo", "5", "3", "1", "0", "0", "0", "yes"]
    assert show.code == 0, show.err
    text = show.out
    for expected in ("shop demo", "time zone Asia/Shanghai", "agents (5)", "groups (2)", "settings"):
        assert expected in text, text
    lines = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith("demo:")}
    alice_or_bob = lines["demo:alice"] if answer["agent_id"] == "demo:alice" else lines["demo:bob"]
    assert alice_or_bob[1:3] == ["SUB", "ONLINE"] and alice_or_bob[4].startswith("1/")  # the new load
    assert lines["demo:bot"][1:3] == ["ROBOT", "OFFLINE"]
    assert any(line.split()[:2] == ["presale", "yes"] for line in text.splitlines())
    assert "daily 00:00-24:00; 2099-12-25 closed" in text  # business hours, readable
    assert any(line.split() == ["strategy", "LEAST_SATURATION"] for line in text.splitlines())
    assert any(line.split() == ["affinity_window", "3d"] for line in text.splitlines())
    state = show_json.json()
    assert state["shop_id"] == "demo" and state["live_conversations"] == 1 and len(state["agents"]) == 5
    assert state["config"]["main_account_mode"] == "MAIN_ACCOUNT_MODE_FALLBACK"
    assert health.code == 0, health.err
    assert [line.split()[-1] for line in health.out.splitlines()[1:]] == ["SERVING"] * 3
    assert health_json.json() == {
        "target": demo_server.target,
        "serving": True,
        "services": {"": "SERVING", "dispatch.v1.Dispatch": "SERVING", "dispatch.v1.Admin": "SERVING"},
    }


def test_health_of_a_stopped_server_is_nonzero() -> None:
    server = ThreadedServer().start()
    target = server.target
    server.stop()
    plain, as_json = _run_all(("health", "--target", target), ("health", "--target", target, "--json"))
    assert plain.code == 1 and "UNAVAILABLE" in plain.out and "UNAVAILABLE" in plain.err
    assert as_json.code == 1 and as_json.json()["serving"] is False


def test_call_prints_the_status_details_of_a_wrong_node() -> None:
    membership = Membership(
        even_map([("dispatch-0", "127.0.0.1:50061"), ("dispatch-1", "127.0.0.1:50062")], 64), "dispatch-0"
    )
    foreign = next(f"shop-{i}" for i in range(1000) if not membership.owns(f"shop-{i}"))
    server = ThreadedServer(membership=membership).start()
    try:
        request = json.dumps({"shop_id": foreign})
        plain, as_json = _run_all(
            ("call", "Admin/GetShopState", request, "--target", server.target),
            ("call", "Admin/GetShopState", request, "--target", server.target, "--json"),
        )
    finally:
        server.stop()
    assert plain.code == 1 and plain.out == ""
    assert plain.err.startswith("ERROR: FAILED_PRECONDITION: ")
    assert "google.rpc.ErrorInfo" in plain.err and '"reason": "WRONG_NODE"' in plain.err
    assert '"owner": "dispatch-1"' in plain.err
    (detail,) = json.loads(as_json.err)["error"]["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert (detail["reason"], detail["domain"], detail["metadata"]["owner"]) == (
        "WRONG_NODE",
        "dispatch.v1",
        "dispatch-1",
    )
    assert detail["metadata"]["shop_id"] == foreign


def test_watch_assignments_prints_each_hand_out_and_max_ends_it() -> None:
    server = ThreadedServer().start()
    try:
        with grpc.insecure_channel(server.target) as channel:
            admin, dispatch = admin_pb2_grpc.AdminStub(channel), dispatch_pb2_grpc.DispatchStub(channel)
            admin.PutShop(admin_pb2.PutShopRequest(shop=admin_pb2.ShopConfig(shop_id="w", main_account="w")))
            admin.PutAgent(
                admin_pb2.PutAgentRequest(agent=admin_pb2.Agent(shop_id="w", agent_id="w:a", max_capacity=1))
            )
            dispatch.SetPresence(dispatch_pb2.SetPresenceRequest(shop_id="w", agent_id="w:a", presence=1))
            for conv in ("c1", "c2"):  # c2 waits in the queue: w:a is full
                dispatch.Dispatch(dispatch_pb2.DispatchRequest(shop_id="w", buyer_id=f"b-{conv}", conversation_id=conv))
            watcher = _start(
                ("call", "Dispatch/WatchAssignments", '{"shop_ids": ["w"]}', "--max", "1", "--target", server.target),
                None,
            )
            deadline = time.monotonic() + 30
            while server.server.hub.subscribers < 1 and time.monotonic() < deadline and watcher.poll() is None:
                time.sleep(0.05)
            assert server.server.hub.subscribers == 1
            closed = dispatch_pb2.ReportConversationRequest(shop_id="w", conversation_id="c1", event=3)  # CLOSED
            dispatch.ReportConversation(closed)
            out, err = watcher.communicate(timeout=30)
    finally:
        server.stop()
    assert watcher.returncode == 0, err
    assignment = json.loads(out)
    assert (assignment["conversation_id"], assignment["agent_id"], assignment["buyer_id"]) == ("c2", "w:a", "b-c2")


# ------------------------------------------------------------------ authentication and TLS

TOKEN = "ops-cli-token-7d1f"


def test_token_is_sent_as_a_bearer_token() -> None:
    policy = AuthPolicy.from_mapping(
        {"callers": [{"name": "ops", "token_sha256": hash_token(TOKEN), "roles": ["read"], "shops": "*"}]}
    )
    server = ThreadedServer(auth=policy).start()
    try:
        target = ("--target", server.target)
        none, flag, env, wrong, health = _run_all(
            ("shops", *target),
            ("shops", "--json", "--token", TOKEN, *target),
            ("shops", "--json", *target),
            ("shops", "--token", "not-it", *target),
            ("health", *target),  # health is public
            env={"DISPATCH_TOKEN": TOKEN},
        )
        anonymous = _run("shops", *target)
    finally:
        server.stop()
    assert anonymous.code == 1 and "UNAUTHENTICATED" in anonymous.err
    assert none.code == 0  # $DISPATCH_TOKEN
    assert (flag.code, flag.json()) == (0, {"shop_ids": []})
    assert (env.code, env.json()) == (0, {"shop_ids": []})
    assert wrong.code == 1 and "UNAUTHENTICATED" in wrong.err and "not known" in wrong.err
    assert health.code == 0


def test_mutual_tls_options(tmp_path: Path) -> None:
    from test_security import make_ca, make_leaf

    from dispatcher.security import server_credentials

    ca, ca_key, ca_cert = make_ca("ops test CA")
    server_cert, server_key = make_leaf(ca_key, ca_cert, "localhost", server=True).write(tmp_path, "server")
    client_cert, client_key = make_leaf(ca_key, ca_cert, "ops", server=False).write(tmp_path, "ops")
    (tmp_path / "ca.crt").write_bytes(ca.cert)
    policy = AuthPolicy.from_mapping({"callers": [{"name": "ops", "cert": "ops", "roles": ["read"], "shops": "*"}]})
    credentials = server_credentials(server_cert, server_key, tmp_path / "ca.crt")
    server = ThreadedServer(auth=policy, credentials=credentials).start()
    try:
        tls = ("--target", server.target, "--ca", str(tmp_path / "ca.crt"), "--server-name", "localhost")
        mtls, no_cert, plaintext, half = _run_all(
            ("shops", "--json", *tls, "--cert", str(client_cert), "--key", str(client_key)),
            ("shops", *tls),
            ("shops", "--target", server.target),
            ("shops", *tls, "--cert", str(client_cert)),
        )
    finally:
        server.stop()
    assert (mtls.code, mtls.json()) == (0, {"shop_ids": []}), mtls.err
    assert no_cert.code == 1 and plaintext.code == 1
    assert half.code == 2 and "--cert and --key go together" in half.err


# ------------------------------------------------------------------ offline: bootstrap files


def test_check_bootstrap_good_bad_and_duplicate(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"shops": [{"shop_id": "x", "main_account": "x", "agents": [{"agent_id": "x:a"}]}]}))
    dup = tmp_path / "dup.toml"
    dup.write_text(
        '[[shops]]\nshop_id = "s1"\nmain_account = "s1"\n\n[[shops]]\nshop_id = "s2"\nmain_account = "s2"\n\n'
        '[[shops]]\nshop_id = "s1"\nmain_account = "s1"\n'
    )
    good, good_json, bad_plain, bad_json, duplicate, missing = _run_all(
        ("check-bootstrap", str(DEMO)),
        ("check-bootstrap", str(DEMO), "--json"),
        ("check-bootstrap", str(bad)),
        ("check-bootstrap", str(bad), "--json"),
        ("check-bootstrap", str(dup)),
        ("check-bootstrap", str(tmp_path / "missing.json")),
    )
    assert good.code == 0 and "OK" in good.out and "demo" in good.out
    assert good_json.json() == {
        "ok": True,
        "file": str(DEMO),
        "shop_ids": ["demo"],
        "counts": {"shops": 1, "agents": 5, "groups": 2, "exclusive_agents": 1, "presence": 3},
    }
    # The same message serve would log, and serve's exit code for it (2).
    assert bad_plain.code == 2 and "agents[0]" in bad_plain.err and "max_capacity" in bad_plain.err
    assert bad_json.code == 2 and bad_json.json()["ok"] is False and "max_capacity" in bad_json.json()["error"]
    assert duplicate.code == 2 and "s1" in duplicate.err  # bootstrap.py's refusal, or this command's own
    assert missing.code == 2 and "missing.json" in missing.err


# ------------------------------------------------------------------ offline: a data dir


def _dispatch(target: str, conversation: str) -> None:
    with grpc.insecure_channel(target) as channel:
        dispatch_pb2_grpc.DispatchStub(channel).Dispatch(
            dispatch_pb2.DispatchRequest(shop_id="demo", buyer_id=f"b-{conversation}", conversation_id=conversation),
            timeout=10,
        )


def test_journal_dump_verify_and_replay_of_a_data_dir_written_by_a_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = Proc(
        "serve",
        "--port",
        "0",
        "--bootstrap",
        str(DEMO),
        "--data-dir",
        str(data),
        "--create-data-dir",
        "--log-format",
        "json",
    )
    try:
        target = proc.target
        _dispatch(target, "early")
        time.sleep(0.01)
        moment = time.time_ns() // 1_000_000  # after the first record, before the second
        time.sleep(0.01)
        _dispatch(target, "late")
        assert proc.finish(signal.SIGTERM) == 0
    finally:
        proc.ensure_dead()
    before = _files(data)
    d = str(data)
    dump, dump_json, verify, verify_json, past, past_json, by_seq, newest, too_old, no_zone = _run_all(
        ("journal", "dump", d),
        ("journal", "dump", d, "--json"),
        ("journal", "verify", d),
        ("journal", "verify", d, "--json"),
        ("replay", d, "--until", str(moment), "--shop", "demo"),
        ("replay", d, "--until", str(moment), "--json"),
        ("replay", d, "--until-seq", "1", "--json"),
        ("replay", d, "--json"),
        ("replay", d, "--until", "2001-01-01T00:00:00Z", "--json"),
        ("replay", d, "--until", "2030-01-01T00:00:00"),
    )
    assert _files(data) == before  # nothing above wrote a byte, renamed or touched a file
    # dump: one line per record: seq, time, operation, fields.
    assert dump.code == 0, dump.err
    records = [line.split() for line in dump.out.splitlines() if not line.startswith("#")]
    assert [r[0] for r in records] == ["1", "2"] and [r[2] for r in records] == ["dispatch_batch"] * 2
    assert '"conversation_id":"early"' in dump.out and '"conversation_id":"late"' in dump.out
    objects = [json.loads(line) for line in dump_json.out.splitlines()]
    assert [(o["seq"], o["op"]) for o in objects] == [(1, "dispatch_batch"), (2, "dispatch_batch")]
    assert objects[0]["at_ms"] <= moment < objects[1]["at_ms"]
    assert objects[1]["fields"]["request"]["requests"][0]["conversation_id"] == "late"
    # verify: every CRC and what a start would recover.
    assert verify.code == 0 and "verify: OK" in verify.out, verify.out
    report = verify_json.json()
    assert report["ok"] is True and report["recovery"]["last_seq"] == 2
    # replay --until: the state between the two dispatches, shown like shop show.
    assert past.code == 0, past.err
    assert "after record 1 (snapshot 0 + 1 records)" in past.out and "shop demo" in past.out
    assert "live conversations  1" in past.out
    state = past_json.json()
    assert (state["last_seq"], state["next_record"]["seq"]) == (1, 2)
    (shop,) = state["shops"]
    assert shop["live_conversations"] == 1
    assert by_seq.json()["shops"] == state["shops"]
    assert newest.json()["last_seq"] == 2 and newest.json()["shops"][0]["live_conversations"] == 2
    old = too_old.json()
    assert old["last_seq"] == 0 and old["shops"][0]["live_conversations"] == 0
    assert any("started with" in note for note in old["notes"])
    assert no_zone.code == 2 and "time zone" in no_zone.err
    # A damaged record: verify names it and fails; dump stops there.
    damaged = tmp_path / "damaged"
    shutil.copytree(data, damaged)
    segment = damaged / "journal-00000000000000000001.log"
    raw = bytearray(segment.read_bytes())
    raw[20] ^= 0xFF  # inside record 1's payload: its CRC no longer matches
    segment.write_bytes(bytes(raw))
    bad_verify, bad_dump, bad_replay = _run_all(
        ("journal", "verify", str(damaged)),
        ("journal", "dump", str(damaged)),
        ("replay", str(damaged), "--until", str(moment)),
    )
    assert bad_verify.code == 3 and "damaged at offset 0: bad CRC" in bad_verify.out
    assert "verify: FAILED" in bad_verify.out
    assert bad_dump.code == 3 and "bad CRC" in bad_dump.err
    assert bad_replay.code == 3 and "unknown" in bad_replay.err  # never a later state passed off as that moment


def test_journal_check_and_repair_still_work(tmp_path: Path) -> None:
    check, missing = _run_all(("journal", "check", str(tmp_path)), ("journal", "verify", str(tmp_path / "nope")))
    assert check.code == 0 and check.json()["fresh"] is True
    assert missing.code == 3 and "not a directory" in missing.err


def test_usage_mistakes_exit_2() -> None:
    results = _run_all(("call",), ("replay",), ("shop",), ("call", "Admin/ListShops", "--cert", "c.pem"))
    assert [r.code for r in results] == [2, 2, 2, 2]
    assert "--list" in results[0].err and "--cert and --key go together" in results[3].err


def test_commands_through_a_clusters_haproxy_reach_each_shops_node(tmp_path: Path) -> None:
    # Through HAProxy, a command about a shop sends x-dispatch-shop: it reaches the shop's node
    # whichever node HAProxy would pick otherwise (round robin gives a wrong node 2 times in 3).
    from test_cluster_tools import Up, shop_of

    up = Up(tmp_path / "cluster", 3)
    try:
        cluster = up.wait_ready()
        shops = [shop_of(cluster, node.name) for node in cluster.nodes]
        for shop_id in shops:
            with grpc.insecure_channel(cluster.owner_of(shop_id).address) as channel:
                admin_pb2_grpc.AdminStub(channel).PutShop(
                    admin_pb2.PutShopRequest(shop=admin_pb2.ShopConfig(shop_id=shop_id, main_account=f"{shop_id}:m"))
                )
        target = ("--target", up.front)
        for _ in range(2):  # every node's shop, twice: each lands on its owner
            for shop_id in shops:
                shown = _run("shop", "show", shop_id, "--json", *target)
                assert shown.code == 0, shown.err
                assert shown.json()["config"]["shop_id"] == shop_id
                called = _run("call", "dispatch.v1.Admin/GetShopState", json.dumps({"shop_id": shop_id}), *target)
                assert called.code == 0, called.err
        # shops: every node of the map, each shop with its node (HAProxy alone reaches one node).
        owners = {shop_id: cluster.owner_of(shop_id).name for shop_id in shops}
        listed = _run("shops", "--json", *target)
        assert listed.code == 0, listed.err
        assert listed.json() == {"shop_ids": sorted(shops), "nodes": owners}
        long = _run("shops", "--long", "--json", *target)
        assert long.code == 0, long.err
        assert {row["shop_id"]: row["node"] for row in long.json()["shops"]} == owners
        text = _run("shops", *target)
        assert text.code == 0 and "(3 shops on 3 of 3 nodes)" in text.out, text.out + text.err
        first = cluster.nodes[0]
        alone = _run("shops", "--this-node", "--json", "--target", first.address)
        assert alone.json() == {"shop_ids": [s for s in shops if owners[s] == first.name]}
        # A node that does not answer is named; the others are still listed; exit 1.
        stopped = cluster.nodes[2]
        pid = next(p for p in up.children() if f"--node\0{stopped.name}\0" in Path(f"/proc/{p}/cmdline").read_text())
        os.kill(pid, signal.SIGSTOP)
        try:
            partial = _run("shops", "--json", "--timeout", "2", "--target", first.address)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert partial.code == 1
        assert partial.json()["shop_ids"] == sorted(s for s in shops if owners[s] != stopped.name)
        assert f"node {stopped.name} ({stopped.address}): DEADLINE_EXCEEDED" in partial.err
    finally:
        up.kill()
