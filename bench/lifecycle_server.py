"""``dispatcher serve`` with its state built in-process first (the lifecycle benchmark's server).

    taskset -c 0 .venv/bin/python -m bench.lifecycle_server --shops 100000 --contacts 10000000 \
        --contacts-at-ms MS -- --port P --no-auth [other serve flags]

Builds the engine as ``engine_bench.build_many`` does (shops of 20 agents, strategies round
the five, two groups, everyone online; then ``--contacts`` recent contacts made the production
way: dispatch, agent reply, close, buyers ``h<j>`` in every shop), then runs the real
``dispatcher serve`` (``dispatcher.cli.main``) on that engine: every engine the server would
create (``_fastpath.Engine(seed)``) is this one. Nothing else differs from ``dispatcher serve``:
same servicer, uvloop, gc.freeze, flags (``--data-dir`` too: a fresh data dir starts from this
state, its first snapshot holds it). Building 10 M contacts in the engine takes about a minute;
loading them through a bootstrap or a snapshot would take several.
"""

from __future__ import annotations

import argparse
import sys
import time

import _fastpath
from bench import engine_bench as eb
from dispatcher import cli


def main() -> int:
    argv = sys.argv[1:]
    own, serve = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser()
    p.add_argument("--shops", type=int, required=True)
    p.add_argument("--agents", type=int, default=20)
    p.add_argument("--contacts", type=int, default=0)
    p.add_argument("--contacts-at-ms", type=int, required=True)
    p.add_argument("--capacity", type=int, default=50)
    a = p.parse_args(own)
    t = time.perf_counter()
    engine = eb.compiled_engine_cls()(7)
    built = eb.build_many(engine, a.shops, a.agents, a.contacts, start_ms=a.contacts_at_ms, capacity=a.capacity)
    print(
        f"lifecycle_server: built {a.shops} shops, {built['affinity']} contacts in {time.perf_counter() - t:.0f}s",
        file=sys.stderr,
        flush=True,
    )
    _fastpath.Engine = lambda seed=0: engine  # type: ignore[assignment,misc]
    return cli.main(["serve", *serve])


if __name__ == "__main__":
    sys.exit(main())
