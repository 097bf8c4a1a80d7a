"""The Node.js client (clients/node) against a real server: `npm ci`, then `node --test`.

Skipped, saying so, only when `node` is not installed; with node but without
npm it fails (npm comes with node on every machine of this project).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "clients" / "node"

NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node is not installed: the Node.js client test (clients/node) did not run")
def test_node_client_against_the_live_server() -> None:
    npm = shutil.which("npm")
    assert npm, "node is installed but npm is not: cannot install clients/node's dependencies"
    lock, installed_lock = CLIENT / "package-lock.json", CLIENT / "node_modules" / ".package-lock.json"
    if not installed_lock.exists() or installed_lock.stat().st_mtime < lock.stat().st_mtime:
        installed = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=CLIENT, capture_output=True, text=True, timeout=300
        )
        assert installed.returncode == 0, installed.stdout + installed.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
    env["DISPATCH_PYTHON"] = sys.executable  # the server runs in this interpreter's environment
    done = subprocess.run(
        [NODE, "--test", "--test-reporter=spec", "test/"],
        cwd=CLIENT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    summary = output.replace("ℹ ", "")
    passed = re.search(r"^pass (\d+)$", summary, re.MULTILINE)
    # test/client.test.js (3), test/autobatch.test.js (8: automatic batching over OperateStream) and
    # test/waiting.test.js (2: priority, position and estimated wait; a re-route's previous agent)
    assert passed and int(passed.group(1)) >= 13 and re.search(r"^fail 0$", summary, re.MULTILINE), output
