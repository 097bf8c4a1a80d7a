"""The operator CLI on the ``dispatcher`` command (dispatcher/docs/OPERATING.md, "The operator CLI").

Online (each takes the same server options, ``connection.py``):

- ``call SERVICE/METHOD [JSON]``: any RPC, grpcurl-style (``--list`` shows them);
- ``shops``: ListShops (``--long``: a line of counts per shop), of every node of a cluster;
- ``shop show ID``: GetShopState as tables;
- ``health``: grpc.health.v1 Check of the server and each dispatch service.

Offline (files only, never written):

- ``check-bootstrap FILE``: what ``serve --bootstrap FILE`` would refuse, and duplicate shops;
- ``journal dump DIR`` / ``journal verify DIR`` (wired into ``dispatcher journal``);
- ``replay DIR [--until TIME | --until-seq N]``: the state at a past moment, shown like ``shop show``.

Every command prints tables for people, or JSON with ``--json``. Exit codes: 0 done
(health: everything SERVING); 1 the server answered an error, could not be reached, or
is not serving; 2 a usage mistake (an unknown method, bad JSON, bad options) or, for
check-bootstrap, a file ``serve`` would refuse; 3 a data dir that is damaged or cannot
give the state asked for.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Final

from .connection import CallFailed, Connection, UsageError, add_connection_options, connection_from_args

__all__ = [
    "COMMANDS",
    "add_ops_commands",
    "journal_ops_command",
    "run",
]

COMMANDS: Final = ("call", "shops", "shop", "health", "check-bootstrap", "replay")
"""The top-level commands this package adds to ``dispatcher``."""

Handler = Callable[[argparse.Namespace], int]


def _online(name: str) -> Handler:
    """A handler that opens the connection of the parsed server options, then runs ``online.<name>``."""

    def handler(ns: argparse.Namespace) -> int:
        from . import online

        conn: Connection = connection_from_args(ns)
        command: Callable[[argparse.Namespace, Connection], int] = getattr(online, name)
        return command(ns, conn)

    return handler


def _check_bootstrap(ns: argparse.Namespace) -> int:
    from .offline import check_bootstrap_command

    return check_bootstrap_command(ns.file, ns.seed, ns.json)


def _replay(ns: argparse.Namespace) -> int:
    from .offline import replay_command

    return replay_command(ns.data_dir, ns.until, ns.until_seq, ns.shop, ns.seed, ns.json)


def _json_flag(parser: argparse.ArgumentParser, help: str = "JSON for scripts instead of tables") -> None:
    parser.add_argument("--json", action="store_true", help=help)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def add_ops_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``call``, ``shops``, ``shop show``, ``health``, ``check-bootstrap`` and ``replay``."""
    p = commands.add_parser(
        "call",
        help="call any RPC with a JSON request, grpcurl-style",
        description="Calls SERVICE/METHOD (dispatch.v1.Dispatch/Dispatch, /dispatch.v1.Dispatch/Dispatch or "
        "Dispatch/Dispatch) with the JSON request (proto field names; enum names or numbers; - reads stdin) "
        "and prints each response as JSON with proto field names. Server streams (WatchAssignments, "
        "WatchAssignmentBatches, grpc.health.v1.Health/Watch) print one message per response until Ctrl-C or "
        "--max; client streams take a JSON array of requests. A failed call prints its code, message and "
        "google.rpc.Status details on stderr and exits 1.",
    )
    p.add_argument("method", nargs="?", metavar="SERVICE/METHOD")
    p.add_argument("request", nargs="?", default="{}", metavar="JSON", help="the request [{}]; - reads stdin")
    p.add_argument("--list", action="store_true", help="list the methods this command knows, then exit")
    p.add_argument("--max", type=_positive, metavar="N", help="a server stream: stop after N messages")
    p.add_argument("--emit-defaults", action="store_true", help="print fields that hold their default value too")
    _json_flag(p, "one compact JSON object per line (default: indented)")
    add_connection_options(p)
    p.set_defaults(ops_handler=_online("call_command"))

    p = commands.add_parser(
        "shops",
        help="list the shops (ListShops; in a cluster, of every node)",
        description="ListShops, sorted. In a cluster, every node of the cluster map is asked, at its address.",
    )
    p.add_argument("-l", "--long", action="store_true", help="with agents, online agents, live and waiting counts")
    p.add_argument(
        "--this-node",
        action="store_true",
        help="in a cluster, only the shops of the node the target reaches [every node of the cluster map]",
    )
    _json_flag(p)
    add_connection_options(p)
    p.set_defaults(ops_handler=_online("shops_command"))

    p = commands.add_parser("shop", help="look at one shop: shop show ID", description="shop show ID: GetShopState.")
    actions = p.add_subparsers(dest="shop_action", required=True, metavar="ACTION")
    show = actions.add_parser(
        "show",
        help="agents with presence and loads, groups and their hours, queue/staging/pool, deadlines, settings",
        description="GetShopState (every page of agents) as tables, or its JSON with --json.",
    )
    show.add_argument("shop_id", metavar="ID")
    _json_flag(show)
    add_connection_options(show)
    show.set_defaults(ops_handler=_online("shop_show_command"))

    p = commands.add_parser(
        "health",
        help="grpc.health.v1 Check of the server and each dispatch service; exit 0 only if all are SERVING",
        description='Checks "" (the server), dispatch.v1.Dispatch and dispatch.v1.Admin (or each --service). '
        "Exit 0 when every one is SERVING, 1 otherwise (NOT_SERVING, unknown, or no server).",
    )
    p.add_argument("--service", action="append", metavar="NAME", help="check this service instead (repeatable)")
    _json_flag(p)
    add_connection_options(p)
    p.set_defaults(ops_handler=_online("health_command"))

    p = commands.add_parser(
        "check-bootstrap",
        help="validate a bootstrap file offline, as serve would, and refuse duplicate shops",
        description="Loads the file and applies it to a throwaway engine, as `serve --bootstrap` does, and "
        "refuses a shop given twice. Exit 0 when serve would load it, 2 (serve's code) when not.",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--seed", type=int, default=0, help="engine seed, as serve's --seed [0]")
    _json_flag(p)
    p.set_defaults(ops_handler=_check_bootstrap)

    p = commands.add_parser(
        "replay",
        help="the state of a data dir at a past moment, shown like shop show (read-only)",
        description="Rebuilds the state of DIR (a server's --data-dir) from a snapshot and the journal, up to "
        "the records at or before TIME, and shows its shops like `shop show`. It only reads DIR. Event records "
        "carry times (the event's `at`, or the server clock for batches); configuration records do not: replay "
        "stops before the first record later than TIME. --until-seq cuts after an exact record (see "
        "`dispatcher journal dump DIR`). Without either: the newest state.",
    )
    p.add_argument("data_dir", metavar="DIR")
    cut = p.add_mutually_exclusive_group()
    cut.add_argument("--until", metavar="TIME", help="RFC 3339 (2024-05-01T12:00:00Z) or epoch milliseconds")
    cut.add_argument("--until-seq", type=_non_negative, metavar="N", help="the state after record N")
    p.add_argument("--shop", metavar="ID", help="only this shop")
    p.add_argument("--seed", type=int, default=0, help="engine seed for a dir without one [0]")
    _json_flag(p)
    p.set_defaults(ops_handler=_replay)


def journal_ops_command(ns: argparse.Namespace) -> int:
    """``dispatcher journal dump|verify DIR`` (``check`` and ``repair`` stay in dispatcher/cli.py)."""

    def handler(ns: argparse.Namespace) -> int:
        from .offline import journal_dump_command, journal_verify_command

        as_json = bool(getattr(ns, "json", False))
        if ns.action == "dump":
            return journal_dump_command(ns.data_dir, as_json)
        return journal_verify_command(ns.data_dir, ns.seed, as_json)

    return _guarded(ns, handler)


def run(ns: argparse.Namespace) -> int:
    """Run the command ``add_ops_commands`` parsed; its exit code."""
    from ..logging import configure_logging

    configure_logging("console", "warning")  # on stderr: stdout is the command's output
    handler: Handler = ns.ops_handler
    return _guarded(ns, handler)


def _guarded(ns: argparse.Namespace, handler: Handler) -> int:
    """``handler(ns)``, its expected failures as messages and exit codes instead of tracebacks."""
    try:
        return handler(ns)
    except UsageError as exc:
        print(f"dispatcher {ns.command}: {exc}", file=sys.stderr)
        return 2
    except CallFailed as exc:
        from .online import print_error

        print_error(exc.report, bool(getattr(ns, "json", False)))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
