"""`buf lint` and `buf breaking` on protos/, with the buf CLI pinned in clients/buf (from the npm registry).

npm is on every machine of this project, so a missing npm is a failure, not a skip.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "clients" / "buf"
BUF = TOOL / "node_modules" / ".bin" / "buf"


@pytest.fixture(scope="module")
def buf() -> Path:
    if not BUF.exists():
        npm = shutil.which("npm")
        assert npm, "npm is required to install the buf CLI (@bufbuild/buf); install Node.js/npm"
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--prefix", str(TOOL)], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
    assert BUF.exists()
    return BUF


def run(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_buf_lint_passes_on_the_contract(buf: Path) -> None:
    done = run(buf, "lint", "protos")
    assert done.returncode == 0, done.stdout + done.stderr


def test_buf_lint_catches_a_violation(buf: Path, tmp_path: Path) -> None:
    protos = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", protos)
    bad = protos / "dispatch" / "v1" / "common.proto"
    bad.write_text(bad.read_text() + "\nmessage bad_name {}\n")
    done = run(buf, "lint", protos)
    assert done.returncode != 0
    assert "bad_name" in done.stdout + done.stderr


def test_buf_breaking_accepts_the_same_contract_and_refuses_a_removed_field(buf: Path, tmp_path: Path) -> None:
    same = run(buf, "breaking", "protos", "--against", "protos")
    assert same.returncode == 0, same.stdout + same.stderr
    protos = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", protos)
    admin = protos / "dispatch" / "v1" / "admin.proto"
    text = admin.read_text()
    assert "  bool mobile_dispatch = 15;\n" in text
    admin.write_text(text.replace("  bool mobile_dispatch = 15;\n", ""))
    broken = run(buf, "breaking", protos, "--against", "protos")
    assert broken.returncode != 0
    assert "mobile_dispatch" in broken.stdout + broken.stderr
