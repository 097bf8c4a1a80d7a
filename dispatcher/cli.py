"""``dispatcher serve``: run the Dispatch gRPC server on grpc.aio + uvloop.

SIGTERM or SIGINT stops it gracefully: it stops accepting calls, ends the
WatchAssignments streams, lets in-flight calls finish (up to ``--grace``
seconds), logs its counters and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import json
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any, Final

import structlog

import _fastpath

from . import aio
from .auth import AuthPolicy, PolicyError, hash_token, new_token
from .bootstrap import BootstrapError, apply_bootstrap, load_bootstrap
from .cluster import NODE_RECORD, ClusterMapError, Membership, NodeRecord, format_ranges, load_map
from .config import ServeSettings, add_serve_arguments, apply_config_file, settings_from_args
from .convert import now_ms
from .durability import DurabilityOptions, DurableStore, RecoveryError
from .durability.datadir import DataDir
from .logging import configure_logging
from .security import is_loopback, server_credentials
from .server import MAX_BATCH, MAX_MESSAGE_BYTES, DispatchServer

__all__ = [
    "EXIT_BAD_CONFIG",
    "EXIT_FAILED",
    "EXIT_JOURNAL_UNAVAILABLE",
    "EXIT_OK",
    "EXIT_REFUSED",
    "build_parser",
    "main",
    "serve",
]

EXIT_OK: Final = 0
"""Stopped by SIGTERM/SIGINT; everything acknowledged is on disk."""
EXIT_FAILED: Final = 1
"""Could not listen on the port (or an unexpected error)."""
EXIT_BAD_CONFIG: Final = 2
"""Invalid flags, config file, security settings or bootstrap file."""
EXIT_REFUSED: Final = 3
"""The data dir cannot be used: damaged, incomplete, missing, locked or unwritable
(log ``durability.recovery_failed``); or, for a cluster node, it holds other nodes' shops
or its ``CLUSTER`` record refuses the map (``cluster.foreign_shops``, ``cluster.refused``).
No file was changed."""
EXIT_JOURNAL_UNAVAILABLE: Final = 4
"""Stopped while the journal could not write (disk full, I/O error, data dir gone): every
acknowledged call is on disk; calls answered UNAVAILABLE may be missing."""

log = structlog.get_logger("dispatcher")


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser; ``argv`` is only searched for ``--config`` (the TOML file of serve settings)."""
    parser = argparse.ArgumentParser(prog="dispatcher", description="Dispatch: routes buyer conversations to agents.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_parser = commands.add_parser("serve", help="run the gRPC server", description=__doc__)
    add_serve_arguments(serve_parser)
    try:
        apply_config_file(serve_parser, argv)
    except ValueError as exc:
        serve_parser.error(str(exc))
    hash_parser = commands.add_parser(
        "hash-token",
        help="print the sha256 of a bearer token for the auth policy",
        description="Reads a token from stdin (one line) and prints its token_sha256 for the auth policy file. "
        "With --generate, makes a new random token and prints it and its hash.",
    )
    hash_parser.add_argument("--generate", action="store_true", help="make a new random token")
    journal_parser = commands.add_parser(
        "journal",
        help="check, verify, dump or repair a data dir (dispatcher/docs/DURABILITY.md)",
        description="check: what a start would recover, changing nothing (exit 3 if it would refuse). "
        "verify: check, plus the CRC of every snapshot and every record of every segment and the seqs' "
        "continuity (tables, or --json; exit 3 on damage). dump: every record in readable form, one line "
        "each: seq, time, operation, fields (--json: one object per line). "
        "repair: the deliberate repair of a data dir the server refused: damaged parts and unreachable "
        "segments are moved aside (never deleted), MANIFEST is rebuilt, and the dropped seqs are printed. "
        "Refuses to run while a server holds the data dir. check, verify and dump only read.",
    )
    journal_parser.add_argument("action", choices=("check", "verify", "dump", "repair"))
    journal_parser.add_argument("data_dir", help="the server's --data-dir")
    journal_parser.add_argument("--seed", type=int, default=0, help="engine seed for a dir without one (default 0)")
    journal_parser.add_argument("--json", action="store_true", help="verify, dump: JSON (check, repair: always)")
    from .ops import add_ops_commands

    add_ops_commands(commands)  # call, shops, shop show, health, check-bootstrap, replay (dispatcher/ops)
    from .cluster_tools import add_cluster_arguments

    add_cluster_arguments(
        commands.add_parser(
            "cluster",
            help="cluster tools: a map, HAProxy's config, a local cluster (up), the k8s ConfigMaps (deploy/README.md)",
            description="map: write an even cluster map. haproxy: HAProxy's config for a map. up: N nodes and "
            "HAProxy on this machine. k8s: deploy/k8s's generated ConfigMaps.",
        )
    )
    from .simulate.runner import add_simulate_arguments

    add_simulate_arguments(
        commands.add_parser(
            "simulate",
            help="what-if: run a workload or a journal's traffic through other settings; an HTML report",
            description="Runs a synthetic workload (--workload FILE.toml) or a data dir's recorded traffic "
            "(--journal DIR) through the engine once per variant and writes report.html, PNGs, metrics.json "
            "and metrics.csv into --out (dispatcher/docs/SIMULATE.md). Needs the sim extra (matplotlib).",
        )
    )
    return parser


def journal_command(action: str, data_dir: str, seed: int) -> int:
    """``dispatcher journal check|repair DIR``: one JSON object on stdout."""
    from pathlib import Path

    from .durability.repair import check, repair

    directory = Path(data_dir)
    if not directory.is_dir():
        print(json.dumps({"ok": False, "error": f"{directory} is not a directory"}))
        return EXIT_REFUSED
    try:
        if action == "check":
            print(json.dumps({"ok": True, **check(directory, lambda: _fastpath.Engine(seed))}))
            return EXIT_OK
        report = repair(directory, lambda: _fastpath.Engine(seed))
    except (RecoveryError, OSError) as exc:
        print(json.dumps({"ok": False, "error": str(exc)}))
        return EXIT_REFUSED
    dropped = [f"{lo}..{hi if hi is not None else 'unknown'}" for lo, hi in report.dropped]
    log.warning("journal.repaired", data_dir=str(directory), dropped_seqs=dropped, actions=report.actions)
    print(json.dumps({"ok": True, "dropped_seqs": dropped, "actions": report.actions, "last_seq": report.last_seq}))
    return EXIT_OK


def hash_token_command(generate: bool) -> int:
    if generate:
        token = new_token()
        print(f"token        = {token}")
        print(f"token_sha256 = {hash_token(token)}")
        return 0
    token = sys.stdin.readline().rstrip("\r\n")
    if not token:
        print("dispatcher hash-token: no token on stdin", file=sys.stderr)
        return 2
    print(hash_token(token))
    return 0


def _security(settings: ServeSettings) -> tuple[dict[str, Any], list[str]] | str:
    """The DispatchServer security options and the start-up warnings, or an error message."""
    warnings: list[str] = []
    options: dict[str, Any] = {"max_concurrent_rpcs": settings.max_concurrent_rpcs}
    if (settings.tls_cert is None) != (settings.tls_key is None):
        return "--tls-cert and --tls-key go together"
    if settings.client_ca is not None and settings.tls_cert is None:
        return "--client-ca (mutual TLS) needs --tls-cert and --tls-key"
    if settings.tls_cert is not None and settings.tls_key is not None:
        if settings.insecure:
            return "--insecure contradicts --tls-cert"
        try:
            options["credentials"] = server_credentials(settings.tls_cert, settings.tls_key, settings.client_ca)
        except OSError as exc:
            return f"cannot read TLS files: {exc}"
        transport = "mtls" if settings.client_ca is not None else "tls"
    elif settings.insecure or is_loopback(settings.host):
        transport = "insecure"
        warnings.append("plaintext transport: no TLS (use --tls-cert/--tls-key)")
    else:
        return f"{settings.host} is not a loopback address: give --tls-cert/--tls-key, or --insecure explicitly"
    if settings.auth_policy is not None and settings.no_auth:
        return "--auth-policy and --no-auth exclude each other"
    if settings.auth_policy is not None:
        try:
            options["auth"] = AuthPolicy.load(settings.auth_policy)
        except PolicyError as exc:
            return f"auth policy: {exc}"
        auth = "policy"
    elif settings.no_auth:
        options["no_auth"] = True
        auth = "off"
        warnings.append("authentication is off (--no-auth): every caller may do everything")
    else:
        return "give --auth-policy FILE, or --no-auth explicitly for local use"
    options["_describe"] = {"transport": transport, "auth": auth, "max_concurrent_rpcs": settings.max_concurrent_rpcs}
    return options, warnings


def tune_gc() -> None:
    """Keep the cyclic garbage collector's work small on the hot path.

    What start-up built (configuration, recovered state) lives as long as the
    process: ``gc.freeze`` moves it out of every later collection, so a
    collection only scans what requests allocated since. The thresholds stay
    at their defaults: refused calls under overload make reference cycles
    (exceptions and their tracebacks) that only the collector frees, and
    rarer collections let them pile up (tests/test_overload.py watches RSS).
    """
    gc.collect()
    gc.freeze()


def port_in_use(host: str, port: int) -> bool:
    """Whether another process already listens on ``host:port``.

    Checked with a plain socket bind (SO_REUSEADDR, as gRPC binds) before the server starts:
    gRPC's own failure says only "Failed to bind", after C-core lines logged through absl.
    Port 0 (any free port) and addresses that do not resolve are left to gRPC."""
    if port == 0:
        return False
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return False
    for family, kind, proto, _, address in addresses:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
    return False


def ready_line(host: str, port: int, data_dir: object | None) -> str:
    """The line ``serve --log-format console`` prints once it listens (``make serve`` uses that
    format): ``ready on 127.0.0.1:50051, state in var/dispatch, Ctrl-C to stop``."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    state = f"state in {data_dir}" if data_dir is not None else "state in memory only (no --data-dir)"
    return f"ready on {address}, {state}, Ctrl-C to stop"


async def serve(settings: ServeSettings) -> int:
    """Run until SIGTERM/SIGINT; return the exit code.

    A port already in use ends it at once, before the data dir is opened, with one
    ``server.bind_failed`` line: "port N is in use; pass --port" (exit 1). With
    ``--log-format console`` (``make serve``), once it listens it also prints one plain line
    for the person at the terminal, on stderr after the log lines: ``ready on
    127.0.0.1:50051, state in var/dispatch, Ctrl-C to stop``; the JSON format stays pure JSON."""
    security = _security(settings)
    if isinstance(security, str):
        log.error("security.config_invalid", error=security)
        return 2
    security_options, security_warnings = security
    describe = security_options.pop("_describe")
    membership = _membership(settings)
    if isinstance(membership, str):
        log.error("cluster.config_invalid", error=membership)
        return 2
    if port_in_use(settings.host, settings.port):  # before grpc tries it (absl noise) and before the data dir
        log.error(
            "server.bind_failed",
            host=settings.host,
            port=settings.port,
            error=f"port {settings.port} is in use; pass --port",
        )
        return EXIT_FAILED
    engine = _fastpath.Engine(settings.seed)
    store: DurableStore | None = None
    if settings.data_dir is not None:  # recover before serving; the bootstrap only seeds an empty data dir
        try:
            store = DurableStore.open(_durability_options(settings), lambda: _fastpath.Engine(settings.seed))
        except RecoveryError as exc:
            log.error("durability.recovery_failed", data_dir=str(settings.data_dir), error=str(exc))
            return EXIT_REFUSED
        engine = store.raw_engine
    if settings.bootstrap is not None and (store is None or store.fresh):
        try:
            shops = load_bootstrap(settings.bootstrap)
            if membership is not None:  # one bootstrap file for the cluster: each node takes its own shops
                shops = [s for s in shops if not isinstance(s, dict) or membership.owns(str(s.get("shop_id", "")))]
            counts = apply_bootstrap(engine, shops, now_ms(), str(settings.bootstrap))
        except BootstrapError as exc:
            log.error("bootstrap.failed", error=str(exc))
            if store is not None:
                await store.close(snapshot=False)
            return 2
        log.info("bootstrap.loaded", file=str(settings.bootstrap), shop_ids=engine.shop_ids(), **counts)
    elif settings.bootstrap is not None:
        log.info("bootstrap.skipped", file=str(settings.bootstrap), reason="the data dir holds state; it wins")
    if store is not None:
        try:
            engine = store.begin()
        except RecoveryError as exc:
            log.error("durability.recovery_failed", data_dir=str(settings.data_dir), error=str(exc))
            await store.close(snapshot=False)
            return EXIT_REFUSED
        store.start()
        log.info("durability.recovered", **store.describe(), shop_ids=engine.shop_ids())
    if membership is not None:
        foreign = [shop_id for shop_id in engine.shop_ids() if not membership.owns(shop_id)]
        if foreign:
            log.error(
                "cluster.foreign_shops",
                node=membership.node.name,
                epoch=membership.map.epoch,
                shop_ids=foreign[:20],
                count=len(foreign),
                error="the data dir holds shops of partitions this node does not own in the cluster map; "
                "regroup the stopped cluster's data dirs with `dispatcher cluster rebalance` (dispatcher/docs/CLUSTER.md)",
            )
            if store is not None:
                await store.close(snapshot=False)
            return EXIT_REFUSED
    if store is not None:
        refusal = _check_node_record(store.datadir, membership)
        if refusal is not None:
            log.error("cluster.refused", data_dir=str(settings.data_dir), error=refusal)
            await store.close(snapshot=False)
            return EXIT_REFUSED
    if _fastpath.ENGINE_KIND != "compiled" and os.environ.get("DISPATCH_ENGINE", "").lower() != "reference":
        log.warning(
            "engine.fallback",
            engine=_fastpath.ENGINE_KIND,
            reason=_fastpath.COMPILED_IMPORT_ERROR,
            message="the compiled engine is not built: serving with the pure-Python reference engine "
            "(much slower); run `make install` to build it",
        )
    tune_gc()
    server = DispatchServer(
        engine,
        journal=store.journal if store is not None else None,
        **security_options,
        reflection=settings.reflection,
        metrics_port=settings.metrics_port or None,
        metrics_host=settings.metrics_host or settings.host,
        max_concurrent_streams=settings.max_concurrent_streams,
        max_clock_skew=settings.max_clock_skew,
        tick_interval_ms=settings.tick_interval_ms,
        membership=membership,
    )
    try:
        port = await server.start(settings.host, settings.port)
    except (OSError, RuntimeError) as exc:
        log.error("server.bind_failed", host=settings.host, port=settings.port, error=str(exc))
        if store is not None:
            await store.close()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    if store is not None and store.journal is not None:
        store.journal.on_fsync = server.ecosystem.metrics.observe_journal_fsync
        # A journal that cannot write (disk full, I/O error, data dir gone) does not stop the
        # server: writes answer UNAVAILABLE, health says NOT_SERVING for them, reads go on.
        store.journal.on_state = server.ecosystem.journal_state
        if not store.journal.writable:
            server.ecosystem.journal_state(False, store.journal.unavailable_reason())
    stats: asyncio.Task[None] | None = None
    if settings.stats_interval > 0:
        stats = asyncio.ensure_future(server.run_stats(settings.stats_interval))
    # One start line; at warning level when it runs without TLS or without authentication.
    (log.warning if security_warnings else log.info)(
        "server.started",
        **describe,
        **({"security_warnings": security_warnings} if security_warnings else {}),
        host=settings.host,
        port=port,
        metrics_port=server.ecosystem.metrics_port or 0,
        reflection=settings.reflection,
        engine=_fastpath.ENGINE_KIND,
        seed=settings.seed,
        max_batch=MAX_BATCH,
        max_message_bytes=MAX_MESSAGE_BYTES,
        **(
            {
                "node": membership.node.name,
                "epoch": membership.map.epoch,
                "partitions": f"{format_ranges(membership.node.ranges)} of {membership.map.partition_count}",
            }
            if membership is not None
            else {}
        ),
    )
    if settings.log_format == "console":  # for a person at a terminal: where it is, in one short line
        print(ready_line(settings.host, port, settings.data_dir), file=sys.stderr, flush=True)
    await stop.wait()
    log.info("server.stopping", signal=received[0], grace_s=settings.grace)
    if stats is not None:
        stats.cancel()
    await server.stop(settings.grace)
    clean = True
    if store is not None:
        clean = await store.close()  # the final snapshot; never raises for an I/O error
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    code = EXIT_OK if clean else EXIT_JOURNAL_UNAVAILABLE
    (log.info if clean else log.error)(
        "server.stopped",
        exit_code=code,
        **(
            {}
            if clean
            else {
                "journal": "could not write: calls never acknowledged were dropped; the data dir "
                "holds every acknowledged call"
            }
        ),
        **server.counters.snapshot(server.decisions()),
    )
    return code


def _membership(settings: ServeSettings) -> Membership | None | str:
    """This node's place in the cluster (``--cluster-map`` and ``--node``), None alone, or an error."""
    if settings.cluster_map is None and not settings.node:
        return None
    if settings.cluster_map is None or not settings.node:
        return "--cluster-map and --node go together (a node needs the map and its name in it)"
    try:
        return Membership(load_map(settings.cluster_map), settings.node)
    except ClusterMapError as exc:
        return str(exc)


def _durability_options(settings: ServeSettings) -> DurabilityOptions:
    assert settings.data_dir is not None
    return DurabilityOptions(
        data_dir=settings.data_dir,
        create=settings.create_data_dir,
        fsync=settings.fsync,
        fsync_interval_ms=settings.fsync_interval_ms,
        snapshot_every=settings.snapshot_every,
        snapshot_interval=settings.snapshot_interval,
    )


def _check_node_record(datadir: DataDir, membership: Membership | None) -> str | None:
    """The data dir's cluster record (``cluster.NODE_RECORD``): why this start must be refused
    (a stale map, another partition count, another node's data dir), or None after recording
    this start's node, epoch and partition count. A node's data dir served alone is allowed
    (it holds a subset of the shops) and logged."""
    try:
        record = NodeRecord.read(datadir)
    except ClusterMapError as exc:
        return f"{exc}; it is rewritten only by a start that passes this check: fix or remove the file"
    if membership is None:
        if record is not None:
            log.warning("cluster.data_dir_of_a_node", node=record.node, epoch=record.epoch, served_as="alone")
        return None
    if record is not None:
        refusal = record.refusal(membership)
        if refusal is not None:
            return refusal
    now = NodeRecord.of(membership)
    if record != now:
        try:
            datadir.write_atomic(NODE_RECORD, now.to_json())
        except OSError as exc:
            return f"cannot write {NODE_RECORD}: {exc.strerror or exc}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    ns = parser.parse_args(argv)
    if ns.command == "hash-token":
        return hash_token_command(ns.generate)
    if ns.command == "journal":
        configure_logging("json", "warning")
        if ns.action in ("verify", "dump"):
            from .ops import journal_ops_command

            return journal_ops_command(ns)
        return journal_command(ns.action, ns.data_dir, ns.seed)
    if getattr(ns, "ops_handler", None) is not None:  # the operator CLI (dispatcher/ops)
        from .ops import run

        return run(ns)
    if ns.command == "cluster":
        from .cluster_tools import cluster_command

        return cluster_command(ns)
    if ns.command == "simulate":
        from .simulate.runner import simulate_command

        return simulate_command(ns)
    settings = settings_from_args(ns)
    try:
        configure_logging(settings.log_format, settings.log_level)
    except ValueError as exc:
        parser.error(str(exc))
    with asyncio.Runner(loop_factory=aio.new_event_loop) as runner:
        return runner.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
