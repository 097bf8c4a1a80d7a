"""The README's examples run as written, against a live server, twice, and print what it shows.

An example is a fenced block preceded by the line ``<!-- snippet: NAME -->``; what it prints
is the fenced block preceded by ``<!-- output: NAME -->``. Each example runs against its own
``dispatcher serve`` on the demo bootstrap with a data dir (as ``make serve`` runs it), at the
address the examples read from ``DISPATCH_TARGET``:

- ``python``: saved to a file and run with this interpreter (the README says
  ``.venv/bin/python walkthrough.py``), from the repository's root;
- ``js``: CommonJS, on ``node``'s stdin from the repository's root, so ``require('./clients/node')``
  resolves as in a ``walkthrough.js`` saved there (``clients/node``'s ``npm ci`` first, as
  tests/test_node_client.py does);
- ``sh``: ``sh -e`` from the repository's root (the README's commands call ``.venv/bin/dispatcher``).

Each run must exit 0 within a timeout, write nothing on stderr, and print the README's output
line for line, except for what changes from run to run: ids made fresh on every run
(``conv-…``/``buyer-…`` with at least 6 hex digits; an id repeated in the README must be
repeated alike) and timestamps. The second run, on the same server, shows that the example can
be run again.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from server_fixtures import DEMO, ROOT, Proc

README = ROOT / "README.md"
NODE_CLIENT = ROOT / "clients" / "node"
TIMEOUT = 60

_MARKED = re.compile(
    r"^<!-- (?P<kind>snippet|output): (?P<name>[\w.-]+) -->\n+```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
_FENCE = re.compile(r"^```(?P<lang>[\w-]*)[^\n]*\n.*?^```[ \t]*$", re.MULTILINE | re.DOTALL)

# What may differ between the README and a run: (pattern, must an equal README token stay equal?)
_FRESH_ID = r"(?:conv|buyer)-[0-9a-f]{6,}"
_TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z"
_LOOSE = re.compile(f"(?P<id>{_FRESH_ID})|(?P<time>{_TIMESTAMP})")

# The examples the README must keep (more may be added: every marked one runs).
REQUIRED = {"cli-health", "cli-shop-show", "cli-dispatch", "python-blocking", "python-async", "node"}
RUNNABLE = {"python", "js", "sh"}


@dataclass(frozen=True)
class Example:
    name: str
    lang: str
    code: str
    output: str


def _marked() -> tuple[dict[str, Example], list[str]]:
    """The README's examples by name, and the problems of its markers."""
    text = README.read_text()
    blocks: dict[tuple[str, str], tuple[str, str]] = {}
    problems = []
    for m in _MARKED.finditer(text):
        key = (m["kind"], m["name"])
        if key in blocks:
            problems.append(f"two blocks are marked '{m['kind']}: {m['name']}'")
        blocks[key] = (m["lang"], m["body"])
    examples = {}
    for (kind, name), (lang, body) in blocks.items():
        if kind != "snippet":
            continue
        if ("output", name) not in blocks:
            problems.append(f"the example {name!r} has no '<!-- output: {name} -->' block")
            continue
        if lang not in RUNNABLE:
            problems.append(f"the example {name!r} is a {lang!r} block; this test runs {sorted(RUNNABLE)}")
            continue
        examples[name] = Example(name, lang, body, blocks[("output", name)][1])
    problems += [
        f"the output {n!r} belongs to no example" for k, n in blocks if k == "output" and ("snippet", n) not in blocks
    ]
    return examples, problems


EXAMPLES, PROBLEMS = _marked()


def test_the_readme_marks_its_examples() -> None:
    assert not PROBLEMS, PROBLEMS
    assert REQUIRED <= set(EXAMPLES), f"missing from README.md: {sorted(REQUIRED - set(EXAMPLES))}"
    # Every Python and JavaScript block of the README is an example that runs here, so none can rot.
    text = README.read_text()
    code_blocks = [m for m in _FENCE.finditer(text) if m["lang"] in {"python", "js", "javascript", "mjs", "ts"}]
    marked = [e for e in EXAMPLES.values() if e.lang in {"python", "js"}]
    assert len(code_blocks) == len(marked), "a python/js block of README.md is not marked '<!-- snippet: NAME -->'"
    for example in marked:
        assert "DISPATCH_TARGET" in example.code and "127.0.0.1:50051" in example.code, (
            f"{example.name}: the address comes from $DISPATCH_TARGET, default 127.0.0.1:50051"
        )


def _line_pattern(line: str, ids: dict[str, int]) -> str:
    """A regex for one README output line: fresh ids and timestamps loose, the rest literal."""
    out, at = [], 0
    for m in _LOOSE.finditer(line):
        out.append(re.escape(line[at : m.start()]))
        if m["id"]:
            token = m["id"]
            if token in ids:  # the same id again: the run must repeat its own id
                out.append(f"(?P=id{ids[token]})")
            else:
                ids[token] = len(ids)
                out.append(f"(?P<id{ids[token]}>{_FRESH_ID})")
        else:
            out.append(_TIMESTAMP)
        at = m.end()
    out.append(re.escape(line[at:]))
    return "".join(out)


def _assert_prints(expected: str, stdout: str, where: str) -> None:
    want = [line.rstrip() for line in expected.rstrip("\n").splitlines()]
    got = [line.rstrip() for line in stdout.rstrip("\n").splitlines()]
    assert len(got) == len(want), f"{where}: printed {len(got)} lines, the README shows {len(want)}:\n{stdout}"
    ids: dict[str, int] = {}
    pattern = "\n".join(_line_pattern(line, ids) for line in want)
    match = re.fullmatch(pattern, "\n".join(got))
    if match is None:
        first = next(
            (i for i, (w, g) in enumerate(zip(want, got, strict=True)) if not re.fullmatch(_line_pattern(w, {}), g)),
            None,
        )
        detail = (
            f"line {first + 1}: README {want[first]!r}, printed {got[first]!r}"
            if first is not None
            else "an id the README repeats is not repeated alike"
        )
        raise AssertionError(f"{where}: the output differs from the README's ({detail}):\n{stdout}")
    fresh = [match[f"id{i}"] for i in range(len(ids))]
    assert len(set(fresh)) == len(fresh), f"{where}: ids that differ in the README are equal in the run: {fresh}"


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the README's Node.js example did not run")
    npm = shutil.which("npm")
    assert npm, "node is installed but npm is not: cannot install clients/node's dependencies"
    lock, installed = NODE_CLIENT / "package-lock.json", NODE_CLIENT / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_CLIENT, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
    return node


def _command(example: Example, tmp_path: Path) -> tuple[list[str], str | None]:
    """The command that runs an example as the README tells users to, and its stdin."""
    if example.lang == "python":
        script = tmp_path / f"{example.name}.py"
        script.write_text(example.code)
        return [sys.executable, str(script)], None
    if example.lang == "js":
        return [_node(), "--input-type=commonjs", "-"], example.code
    if not (ROOT / ".venv" / "bin" / "dispatcher").exists():
        pytest.skip("no .venv/bin/dispatcher (make install): the README's commands did not run")
    return ["sh", "-e", "-c", example.code], None


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_the_readme_example_runs_twice_and_prints_what_the_readme_shows(name: str, tmp_path: Path) -> None:
    example = EXAMPLES[name]
    command, stdin = _command(example, tmp_path)
    server = Proc(
        "serve",
        "--port",
        "0",
        "--bootstrap",
        str(DEMO),
        "--log-format",
        "json",
        "--data-dir",
        str(tmp_path / "data"),
        "--create-data-dir",
    )
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
        env["DISPATCH_TARGET"] = server.target
        for run in (1, 2):
            where = f"README example {name!r}, run {run}"
            try:
                done = subprocess.run(
                    command, cwd=ROOT, env=env, input=stdin, capture_output=True, text=True, timeout=TIMEOUT
                )
            except subprocess.TimeoutExpired:
                pytest.fail(f"{where} did not end within {TIMEOUT} s")
            assert done.returncode == 0, f"{where} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            assert done.stderr == "", f"{where} wrote on stderr:\n{done.stderr}"
            _assert_prints(example.output, done.stdout, where)
        assert server.popen.poll() is None, "".join(server.lines)
    finally:
        if server.popen.poll() is None:
            server.finish(signal.SIGTERM)
        server.ensure_dead()
