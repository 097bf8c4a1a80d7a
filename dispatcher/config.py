"""Server settings: command-line flags, each with a ``DISPATCH_*`` environment variable.

A flag given on the command line wins over its environment variable, which
wins over the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from .logging import LOG_FORMATS

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ENV_VARS", "ServeSettings", "add_serve_arguments", "settings_from_args"]

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 50051

ENV_VARS: Final = {
    "host": "DISPATCH_HOST",
    "port": "DISPATCH_PORT",
    "log_format": "DISPATCH_LOG_FORMAT",
    "log_level": "DISPATCH_LOG_LEVEL",
    "bootstrap": "DISPATCH_BOOTSTRAP",
    "seed": "DISPATCH_SEED",
    "grace": "DISPATCH_SHUTDOWN_GRACE",
    "stats_interval": "DISPATCH_STATS_INTERVAL",
}


@dataclasses.dataclass(frozen=True, slots=True)
class ServeSettings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    log_format: str = "json"
    log_level: str = "info"
    bootstrap: Path | None = None
    seed: int = 0
    grace: float = 10.0
    stats_interval: float = 60.0


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is outside 0..65535 (0 picks a free port)")
    return value


def _seed(text: str) -> int:
    value = int(text, 0)
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"seed {value} is outside 0..2**64-1")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def add_serve_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str] | None = None) -> None:
    env = os.environ if env is None else env
    d = ServeSettings()

    def default(name: str, fallback: object) -> object:
        return env.get(ENV_VARS[name], fallback)

    parser.add_argument("--host", default=default("host", d.host), help=f"address to listen on [$DISPATCH_HOST, {d.host}]")
    parser.add_argument(
        "--port", type=_port, default=default("port", d.port), help=f"port; 0 picks a free one [$DISPATCH_PORT, {d.port}]"
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=default("log_format", d.log_format),
        help="json lines or human-readable console output [$DISPATCH_LOG_FORMAT, json]",
    )
    parser.add_argument(
        "--log-level", default=default("log_level", d.log_level), help="debug, info, warning, error [$DISPATCH_LOG_LEVEL, info]"
    )
    parser.add_argument(
        "--bootstrap",
        type=Path,
        default=default("bootstrap", None),
        help="JSON or TOML file of shops/agents/groups to load at start [$DISPATCH_BOOTSTRAP]",
    )
    parser.add_argument(
        "--seed",
        type=_seed,
        default=default("seed", d.seed),
        help="engine seed for tie-breaking of shops without tie_seed [$DISPATCH_SEED, 0]",
    )
    parser.add_argument(
        "--grace",
        type=_non_negative,
        default=default("grace", d.grace),
        help="seconds in-flight calls may take to finish on SIGTERM/SIGINT [$DISPATCH_SHUTDOWN_GRACE, 10]",
    )
    parser.add_argument(
        "--stats-interval",
        type=_non_negative,
        default=default("stats_interval", d.stats_interval),
        help="seconds between counter log lines; 0 logs them only at shutdown [$DISPATCH_STATS_INTERVAL, 60]",
    )


def settings_from_args(ns: argparse.Namespace) -> ServeSettings:
    return ServeSettings(
        host=ns.host,
        port=ns.port,
        log_format=ns.log_format,
        log_level=ns.log_level,
        bootstrap=Path(ns.bootstrap) if ns.bootstrap else None,
        seed=ns.seed,
        grace=ns.grace,
        stats_interval=ns.stats_interval,
    )
