"""``dispatcher serve``: run the Dispatch gRPC server on grpc.aio + uvloop.

SIGTERM or SIGINT stops it gracefully: it stops accepting calls, ends the
WatchAssignments streams, lets in-flight calls finish (up to ``--grace``
seconds), logs its counters and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

import structlog
import uvloop

import _fastpath

from .bootstrap import BootstrapError, apply_bootstrap, load_bootstrap
from .config import ServeSettings, add_serve_arguments, settings_from_args
from .convert import now_ms
from .logging import configure_logging
from .server import MAX_BATCH, MAX_MESSAGE_BYTES, DispatchServer

__all__ = ["build_parser", "main", "serve"]

log = structlog.get_logger("dispatcher")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dispatcher", description="Dispatch: routes buyer conversations to agents.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_parser = commands.add_parser("serve", help="run the gRPC server", description=__doc__)
    add_serve_arguments(serve_parser)
    return parser


async def serve(settings: ServeSettings) -> int:
    """Run until SIGTERM/SIGINT; return the exit code."""
    engine = _fastpath.Engine(settings.seed)
    if settings.bootstrap is not None:
        try:
            counts = apply_bootstrap(engine, load_bootstrap(settings.bootstrap), now_ms(), str(settings.bootstrap))
        except BootstrapError as exc:
            log.error("bootstrap.failed", error=str(exc))
            return 2
        log.info("bootstrap.loaded", file=str(settings.bootstrap), shop_ids=engine.shop_ids(), **counts)
    server = DispatchServer(engine)
    try:
        port = await server.start(settings.host, settings.port)
    except (OSError, RuntimeError) as exc:
        log.error("server.bind_failed", host=settings.host, port=settings.port, error=str(exc))
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    stats = asyncio.create_task(server.run_stats(settings.stats_interval)) if settings.stats_interval > 0 else None
    log.info(
        "server.started",
        host=settings.host,
        port=port,
        engine=_fastpath.ENGINE_KIND,
        seed=settings.seed,
        max_batch=MAX_BATCH,
        max_message_bytes=MAX_MESSAGE_BYTES,
    )
    await stop.wait()
    log.info("server.stopping", signal=received[0], grace_s=settings.grace)
    if stats is not None:
        stats.cancel()
    await server.stop(settings.grace)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    log.info("server.stopped", **server.counters.snapshot())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    settings = settings_from_args(ns)
    try:
        configure_logging(settings.log_format, settings.log_level)
    except ValueError as exc:
        parser.error(str(exc))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
