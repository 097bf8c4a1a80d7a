"""The Go client (clients/go) against live servers, built offline from Debian's Go packages.

- The generated code (clients/go/dispatchv1) is what clients/go/generate.sh makes from
  protos/ with the pinned protoc, protoc-gen-go and protoc-gen-go-grpc: regenerating
  gives the same bytes.
- ``gofmt -l`` finds nothing to change and ``go vet`` is clean.
- ``go test ./...`` (through clients/go/go.sh: GOPATH mode, GOPROXY=off, no network)
  passes against a ``dispatcher serve --no-auth`` (DISPATCH_TARGET) and one node of a
  3-node cluster map (DISPATCH_CLUSTER_TARGET): a dispatch round trip seen by a watch,
  a typed NOT_FOUND, a batch with a failing item, and WRONG_NODE parsed into the owner.

Never skipped: without Go these tests fail, naming the packages (``make test`` and
``make go-client`` install them).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_fixtures import Proc

from dispatcher.cluster import dump_map, even_map

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "clients" / "go"
GENERATED = CLIENT / "dispatchv1"
PACKAGES = "golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc golang-google-protobuf-dev golang-google-grpc-dev golang-github-golang-protobuf-1-5-dev"
LIVE_TESTS = ["TestLiveRoundTrip", "TestLiveNotFound", "TestLiveBatchWithAnItemError", "TestLiveWrongNode"]


def _require(tool: str) -> str:
    found = shutil.which(tool)
    assert found, f"{tool} is not installed: `make go-client` (or apt-get install {PACKAGES}) installs it"
    return found


def _env(**extra: str) -> dict[str, str]:
    """This environment without the DISPATCH_* settings (except the Go build directory)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_") or k == "DISPATCH_GO_BUILD"}
    env.update(extra)
    return env


def _go(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    _require("go")
    return subprocess.run(
        [str(CLIENT / "go.sh"), *args], cwd=CLIENT, env=env or _env(), capture_output=True, text=True, timeout=timeout
    )


def test_regenerating_the_go_code_gives_the_same_bytes(tmp_path: Path) -> None:
    for tool in ("protoc", "protoc-gen-go", "protoc-gen-go-grpc"):
        _require(tool)
    done = subprocess.run(
        [str(CLIENT / "generate.sh"), "--out", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    fresh = {p.name: p.read_bytes() for p in sorted((tmp_path / "dispatchv1").iterdir())}
    committed = {p.name: p.read_bytes() for p in sorted(GENERATED.glob("*.go"))}
    assert sorted(fresh) == sorted(committed)
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, (
        f"clients/go/dispatchv1 differs from the generator's output in {stale}: run clients/go/generate.sh"
    )
    assert b"protoc-gen-go v1.28.1" in fresh["dispatch.pb.go"] and b"protoc        v3.21.12" in fresh["dispatch.pb.go"]


def test_gofmt_and_go_vet_are_clean() -> None:
    gofmt = _require("gofmt")
    unformatted = subprocess.run([gofmt, "-l", "dispatch", "dispatchv1"], cwd=CLIENT, capture_output=True, text=True)
    assert unformatted.returncode == 0 and unformatted.stdout == "", unformatted.stdout + unformatted.stderr
    vet = _go("vet", "./...")
    assert vet.returncode == 0, vet.stdout + vet.stderr


def _free_ports(n: int) -> list[int]:
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A single server, and node dispatch-0 of a 3-node map whose other nodes need not run."""
    ports = _free_ports(3)
    cluster = even_map([(f"dispatch-{i}", f"127.0.0.1:{port}") for i, port in enumerate(ports)], partition_count=64)
    path = tmp_path / "cluster.toml"
    path.write_text(dump_map(cluster))
    single = Proc("serve", "--port", "0", "--log-format", "json")
    node = Proc(
        "serve", "--port", str(ports[0]), "--cluster-map", str(path), "--node", "dispatch-0", "--log-format", "json"
    )
    try:
        yield single.target, node.target
    finally:
        single.ensure_dead()
        node.ensure_dead()


def test_go_client_against_live_servers(servers: tuple[str, str]) -> None:
    single, node = servers
    env = _env(DISPATCH_TARGET=single, DISPATCH_CLUSTER_TARGET=node)
    done = _go("test", "-count=1", "-v", "./...", env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "--- SKIP" not in output, output
    for name in LIVE_TESTS:
        assert re.search(rf"^\s*--- PASS: {name} ", output, re.MULTILINE), f"{name} did not pass:\n{output}"
