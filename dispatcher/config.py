"""Server settings: command-line flags, each with a ``DISPATCH_*`` environment variable
and a key of the TOML file named by ``--config`` (``$DISPATCH_CONFIG``).

A flag given on the command line wins over its environment variable, which
wins over the config file, which wins over the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from .logging import LOG_FORMATS

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ENV_VARS",
    "ServeSettings",
    "add_serve_arguments",
    "apply_config_file",
    "load_config_file",
    "settings_from_args",
]

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
    # Security (dispatcher/security.py, dispatcher/docs/SECURITY.md).
    "tls_cert": "DISPATCH_TLS_CERT",
    "tls_key": "DISPATCH_TLS_KEY",
    "client_ca": "DISPATCH_CLIENT_CA",
    "insecure": "DISPATCH_INSECURE",
    "auth_policy": "DISPATCH_AUTH_POLICY",
    "no_auth": "DISPATCH_NO_AUTH",
    "max_clock_skew": "DISPATCH_MAX_CLOCK_SKEW",
    "tick_interval_ms": "DISPATCH_TICK_INTERVAL_MS",
    "max_concurrent_rpcs": "DISPATCH_MAX_CONCURRENT_RPCS",
    "max_concurrent_streams": "DISPATCH_MAX_CONCURRENT_STREAMS",
    # Ecosystem (dispatcher/observability.py, dispatcher/docs/OPERATING.md).
    "config": "DISPATCH_CONFIG",
    "reflection": "DISPATCH_REFLECTION",
    "metrics_port": "DISPATCH_METRICS_PORT",
    "metrics_host": "DISPATCH_METRICS_HOST",
    # Durability (dispatcher/durability/, dispatcher/docs/DURABILITY.md).
    "data_dir": "DISPATCH_DATA_DIR",
    "no_durability": "DISPATCH_NO_DURABILITY",
    "create_data_dir": "DISPATCH_CREATE_DATA_DIR",
    "fsync": "DISPATCH_FSYNC",
    "fsync_interval_ms": "DISPATCH_FSYNC_INTERVAL_MS",
    "snapshot_every": "DISPATCH_SNAPSHOT_EVERY",
    "snapshot_interval": "DISPATCH_SNAPSHOT_INTERVAL",
    # Cluster (dispatcher/cluster.py).
    "cluster_map": "DISPATCH_CLUSTER_MAP",
    "node": "DISPATCH_NODE",
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
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    insecure: bool = False
    auth_policy: Path | None = None
    no_auth: bool = False
    max_clock_skew: float = 300.0
    tick_interval_ms: int = 100
    max_concurrent_rpcs: int = 1024
    max_concurrent_streams: int = 1024
    config: Path | None = None
    reflection: bool = True
    metrics_port: int = 0
    metrics_host: str = ""
    data_dir: Path | None = None
    create_data_dir: bool = False
    fsync: str = "always"
    fsync_interval_ms: int = 100
    snapshot_every: int = 100_000
    snapshot_interval: float = 300.0
    cluster_map: Path | None = None
    node: str = ""


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


def _flag(text: object) -> bool:
    """A boolean environment variable: 1/true/yes/on or 0/false/no/off/empty."""
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (1/0, true/false)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _tick_interval(text: str) -> int:
    """Milliseconds (>= 0); 0 or "off" turns ticking off."""
    if str(text).strip().lower() in ("off", "none"):
        return 0
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of milliseconds or off") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative (0 or off: no ticking)")
    return value


def _clock_skew(text: str) -> float:
    """Seconds (>= 0); 0 or "off" turns the bound off."""
    if str(text).strip().lower() in ("off", "none"):
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds or off") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{value} is not a number of seconds >= 0 (0 or off: no bound)")
    return value


def _add_security_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    group = parser.add_argument_group("security (dispatcher/docs/SECURITY.md)")
    group.add_argument(
        "--tls-cert",
        type=Path,
        default=env.get(ENV_VARS["tls_cert"]),
        help="PEM server certificate (chain) [$DISPATCH_TLS_CERT]",
    )
    group.add_argument(
        "--tls-key",
        type=Path,
        default=env.get(ENV_VARS["tls_key"]),
        help="PEM private key of --tls-cert [$DISPATCH_TLS_KEY]",
    )
    group.add_argument(
        "--client-ca",
        type=Path,
        default=env.get(ENV_VARS["client_ca"]),
        help="PEM CA bundle; clients must present a certificate it signed (mutual TLS) [$DISPATCH_CLIENT_CA]",
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        default=_flag(env.get(ENV_VARS["insecure"], "")),
        help="plaintext on a non-loopback address (loopback is plaintext without TLS flags) [$DISPATCH_INSECURE]",
    )
    group.add_argument(
        "--auth-policy",
        type=Path,
        default=env.get(ENV_VARS["auth_policy"]),
        help="TOML/JSON file mapping token hashes and certificate identities to roles and shops [$DISPATCH_AUTH_POLICY]",
    )
    group.add_argument(
        "--no-auth",
        action="store_true",
        default=_flag(env.get(ENV_VARS["no_auth"], "")),
        help="accept every caller without credentials (local use only) [$DISPATCH_NO_AUTH]",
    )
    group.add_argument(
        "--max-clock-skew",
        type=_clock_skew,
        default=env.get(ENV_VARS["max_clock_skew"], 300),
        help="seconds a caller's `at` may be ahead of the server clock; later ones are refused "
        "(INVALID_ARGUMENT). 0 or off: no bound, for replays of recorded times [$DISPATCH_MAX_CLOCK_SKEW, 300]",
    )
    group.add_argument(
        "--tick-interval-ms",
        type=_tick_interval,
        default=env.get(ENV_VARS["tick_interval_ms"], 100),
        help="milliseconds between two ticks of the server clock, which fire the timed rules' deadlines "
        "(reroute, reclaim, max queue wait) when no call moves a shop's time. 0 or off: time moves only "
        "by the callers' `at`, for replays and simulations of recorded times [$DISPATCH_TICK_INTERVAL_MS, 100]",
    )
    group.add_argument(
        "--max-concurrent-rpcs",
        type=_positive_int,
        default=env.get(ENV_VARS["max_concurrent_rpcs"], 1024),
        help="unary calls (Dispatch and Admin) in progress at once; more answer RESOURCE_EXHAUSTED. "
        "Streams have --max-concurrent-streams [$DISPATCH_MAX_CONCURRENT_RPCS, 1024]",
    )
    group.add_argument(
        "--max-concurrent-streams",
        type=_positive_int,
        default=env.get(ENV_VARS["max_concurrent_streams"], 1024),
        help="streams (WatchAssignments, DispatchStream) open at once, apart from the unary calls' limit; "
        "more answer RESOURCE_EXHAUSTED [$DISPATCH_MAX_CONCURRENT_STREAMS, 1024]",
    )


def _add_ecosystem_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    group = parser.add_argument_group("config file, reflection and metrics (dispatcher/docs/OPERATING.md)")
    group.add_argument(
        "--config",
        type=Path,
        default=env.get(ENV_VARS["config"]),
        help='TOML file of settings: keys are the flag names (port = 50051, log_format = "json"); '
        "flags and $DISPATCH_* variables win over it [$DISPATCH_CONFIG]",
    )
    group.add_argument(
        "--reflection",
        action=argparse.BooleanOptionalAction,
        default=_flag(env.get(ENV_VARS["reflection"], "true")),
        help="serve grpc.reflection (grpcurl and ghz need no .proto files) [$DISPATCH_REFLECTION, on]",
    )
    group.add_argument(
        "--metrics-port",
        type=_port,
        default=env.get(ENV_VARS["metrics_port"], 0),
        help="port of the Prometheus /metrics HTTP endpoint; 0 turns it off [$DISPATCH_METRICS_PORT, 0]",
    )
    group.add_argument(
        "--metrics-host",
        default=env.get(ENV_VARS["metrics_host"], ""),
        help="address of the metrics endpoint; empty: the same as --host [$DISPATCH_METRICS_HOST, same as --host]",
    )


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _add_durability_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    group = parser.add_argument_group("durability (dispatcher/docs/DURABILITY.md)")
    group.add_argument(
        "--data-dir",
        default=env.get(ENV_VARS["data_dir"], ""),
        help="directory of the journal and snapshots; state survives restarts and crashes. "
        "Empty: in memory only (make serve passes var/dispatch) [$DISPATCH_DATA_DIR]",
    )
    group.add_argument(
        "--no-durability",
        action="store_true",
        default=_flag(env.get(ENV_VARS["no_durability"], "")),
        help="keep the state in memory only, even if --data-dir is set [$DISPATCH_NO_DURABILITY]",
    )
    group.add_argument(
        "--create-data-dir",
        action="store_true",
        default=_flag(env.get(ENV_VARS["create_data_dir"], "")),
        help="create --data-dir if it does not exist; without it a missing data dir refuses to start "
        "(exit 3), so a moved or unmounted dir never starts empty [$DISPATCH_CREATE_DATA_DIR]",
    )
    group.add_argument(
        "--fsync",
        choices=("always", "batch", "none"),
        default=env.get(ENV_VARS["fsync"], "always"),
        help="always: answer after fsync (group commit); batch: answer after write, fsync every "
        "--fsync-interval-ms; none: tests/benchmarks only [$DISPATCH_FSYNC, always]",
    )
    group.add_argument(
        "--fsync-interval-ms",
        type=_positive_int,
        default=env.get(ENV_VARS["fsync_interval_ms"], 100),
        help="fsync period of --fsync batch: the most an OS crash can lose [$DISPATCH_FSYNC_INTERVAL_MS, 100]",
    )
    group.add_argument(
        "--snapshot-every",
        type=_non_negative_int,
        default=env.get(ENV_VARS["snapshot_every"], 100_000),
        help="snapshot after this many journal records; 0: not by count [$DISPATCH_SNAPSHOT_EVERY, 100000]",
    )
    group.add_argument(
        "--snapshot-interval",
        type=_non_negative,
        default=env.get(ENV_VARS["snapshot_interval"], 300),
        help="seconds between snapshots when something changed; 0: not by time [$DISPATCH_SNAPSHOT_INTERVAL, 300]",
    )


def load_config_file(path: Path) -> dict[str, object]:
    """The settings of a TOML config file, keys as flag destinations (``log-format`` = ``log_format``)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ValueError(f"config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {path}: {exc}") from None
    out: dict[str, object] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in ENV_VARS or name == "config":
            known = ", ".join(sorted(k for k in ENV_VARS if k != "config"))
            raise ValueError(f"config file {path}: unknown setting {key!r} (known: {known})")
        if isinstance(value, (dict, list)):
            raise ValueError(f"config file {path}: {key} must be a single value, not a table or an array")
        out[name] = value
    return out


def apply_config_file(
    parser: argparse.ArgumentParser, argv: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> Path | None:
    """Make the file named by ``--config`` in ``argv`` (else ``$DISPATCH_CONFIG``) the defaults of ``parser``.

    Only settings whose environment variable is unset are taken from the file,
    and flags on the command line still win: flags > env > file > defaults.
    Raises ``ValueError`` naming the file for an unreadable file or unknown key.
    """
    env = os.environ if env is None else env
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=env.get(ENV_VARS["config"]))
    path = pre.parse_known_args(list(argv))[0].config
    if not path:
        return None
    values = load_config_file(Path(path))
    actions = {a.dest: a for a in parser._actions}
    defaults: dict[str, object] = {}
    for name, value in values.items():
        if ENV_VARS[name] in env or name not in actions:
            continue
        if isinstance(actions[name], (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
            try:
                defaults[name] = _flag(value)
            except argparse.ArgumentTypeError as exc:
                raise ValueError(f"config file {path}: {name}: {exc}") from None
        else:
            # A string default goes through the flag's type check like a command-line value.
            defaults[name] = str(value).lower() if isinstance(value, bool) else str(value)
    parser.set_defaults(**defaults)
    return Path(path)


def add_serve_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str] | None = None) -> None:
    env = os.environ if env is None else env
    d = ServeSettings()

    def default(name: str, fallback: object) -> object:
        return env.get(ENV_VARS[name], fallback)

    parser.add_argument(
        "--host", default=default("host", d.host), help=f"address to listen on [$DISPATCH_HOST, {d.host}]"
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=default("port", d.port),
        help=f"port; 0 picks a free one [$DISPATCH_PORT, {d.port}]",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=default("log_format", d.log_format),
        help="json lines or human-readable console output [$DISPATCH_LOG_FORMAT, json]",
    )
    parser.add_argument(
        "--log-level",
        default=default("log_level", d.log_level),
        help="debug, info, warning, error [$DISPATCH_LOG_LEVEL, info]",
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
    _add_security_arguments(parser, env)
    _add_ecosystem_arguments(parser, env)
    _add_durability_arguments(parser, env)
    _add_cluster_arguments(parser, env)


def _add_cluster_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    group = parser.add_argument_group("cluster (dispatcher/cluster.py)")
    group.add_argument(
        "--cluster-map",
        default=env.get(ENV_VARS["cluster_map"]),
        help="the cluster map (TOML: partitions, epoch, nodes with name, address, partitions); with --node, "
        "this server serves only its partitions' shops and refuses others with WRONG_NODE [$DISPATCH_CLUSTER_MAP]",
    )
    group.add_argument(
        "--node",
        default=env.get(ENV_VARS["node"], ""),
        help="this server's node name in the cluster map [$DISPATCH_NODE]",
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
        tls_cert=Path(ns.tls_cert) if ns.tls_cert else None,
        tls_key=Path(ns.tls_key) if ns.tls_key else None,
        client_ca=Path(ns.client_ca) if ns.client_ca else None,
        insecure=bool(ns.insecure),
        auth_policy=Path(ns.auth_policy) if ns.auth_policy else None,
        no_auth=bool(ns.no_auth),
        max_clock_skew=float(ns.max_clock_skew),
        tick_interval_ms=int(ns.tick_interval_ms),
        max_concurrent_rpcs=int(ns.max_concurrent_rpcs),
        max_concurrent_streams=int(ns.max_concurrent_streams),
        config=Path(ns.config) if ns.config else None,
        reflection=bool(ns.reflection),
        metrics_port=int(ns.metrics_port),
        metrics_host=ns.metrics_host or "",
        data_dir=Path(ns.data_dir) if ns.data_dir and not ns.no_durability else None,
        create_data_dir=bool(ns.create_data_dir),
        fsync=ns.fsync,
        fsync_interval_ms=int(ns.fsync_interval_ms),
        snapshot_every=int(ns.snapshot_every),
        snapshot_interval=float(ns.snapshot_interval),
        cluster_map=Path(ns.cluster_map) if ns.cluster_map else None,
        node=ns.node or "",
    )
