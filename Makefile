# Dispatch — the two commands a newcomer needs are `make serve` and `make test`.
# Both bootstrap .venv on a fresh machine (Python 3.11 + gcc are enough).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 50051
# Where `make serve` keeps its state (journal + snapshots); `make reset` removes it.
DATA_DIR ?= var/dispatch

FASTPATH_SRC := $(wildcard _fastpath/*.pyx _fastpath/*.pxd)

.PHONY: all install serve reset cluster lint test test-tools test-fast bench bench-quick bench-tools protos clean fuzz

all: install

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Installing the project (editable, with dev extras) compiles the _fastpath extension.
$(STAMP): $(PY) pyproject.toml clients/python/pyproject.toml $(FASTPATH_SRC)
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q -e clients/python
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/dispatcher serve --host $(HOST) --port $(PORT) \
	    --bootstrap dispatcher/demo_bootstrap.json --log-format console --no-auth \
	    --data-dir '$(DATA_DIR)' --create-data-dir

# Starts `make serve` over from the demo bootstrap: removes its state, $(DATA_DIR), after saying
# so. It stops nothing: while a server holds the directory (its flock) it refuses, so stop the
# server first. `make reset DATA_DIR=...` for another one; a directory that is not empty and has
# no MANIFEST is not a data dir and is left alone.
reset:
	@if [ ! -e '$(DATA_DIR)' ]; then \
	    echo "nothing to remove: $(DATA_DIR) does not exist"; \
	elif [ ! -e '$(DATA_DIR)/MANIFEST' ] && [ -n "$$(ls -A '$(DATA_DIR)')" ]; then \
	    echo "not removing $(DATA_DIR): it has no MANIFEST, so it is not a data dir of dispatcher serve" >&2; \
	    exit 1; \
	elif command -v flock >/dev/null 2>&1 && ! flock -n '$(DATA_DIR)' true; then \
	    echo "not removing $(DATA_DIR): a running server holds it; stop it (Ctrl-C) first" >&2; \
	    exit 1; \
	else \
	    echo "removing $(DATA_DIR) (the state of make serve: journal, snapshots, MANIFEST)"; \
	    rm -rf -- '$(DATA_DIR)'; \
	fi

# A cluster of 3 nodes on this machine (127.0.0.1:50061-50063, data under var/cluster) behind
# HAProxy on $(PORT), which routes calls by their x-dispatch-shop metadata (deploy/README.md).
cluster: $(STAMP) test-tools
	$(VENV)/bin/dispatcher cluster up --nodes 3 --port $(PORT) \
	    --bootstrap dispatcher/demo_bootstrap.json --log-format console --no-auth \
	    --data-root var/cluster

# Lint and types, pinned in pyproject.toml: ruff (format + lint), mypy --strict
# (dispatcher/, clients/python/, the engine's Python side), cython-lint (_fastpath).
# cython-lint runs pycodestyle from PATH, hence the venv first on it.
lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/cython-lint _fastpath/*.pyx _fastpath/*.pxd

# The whole suite, lint first; DISPATCH_EXPECT_COMPILED makes a silent fallback
# to the pure-Python engine a test failure.
test: $(STAMP) test-tools lint
	DISPATCH_EXPECT_COMPILED=1 $(PY) -m pytest -q

# What the suite runs besides Python: HAProxy, the cluster's gRPC front (tests/test_cluster_tools.py).
test-tools:
	@command -v haproxy >/dev/null 2>&1 || test -x /usr/sbin/haproxy || (apt-get update && apt-get install -y haproxy)

# A long fuzz run (>= 1,000,000 inputs against a live server; about half an
# hour): see dispatcher/docs/SECURITY.md. FUZZ_INPUTS=... to change the budget.
FUZZ_INPUTS ?= 1000000
fuzz: $(STAMP)
	DISPATCH_FUZZ_INPUTS=$(FUZZ_INPUTS) DISPATCH_FUZZ_PER_EXAMPLE=200 $(PY) -m pytest -q -s -p no:cacheprovider tests/test_fuzz.py

protos: $(STAMP)
	$(PY) protos/generate.py

# Benchmarks (not part of `make test`). h2load comes from Debian's nghttp2-client.
# The full sizes of the issue (100,000 shops, 10 M affinity entries): ~11 min on 2 cores.
# A smaller (b) when time is short: make bench BENCH_ARGS="--affinity 3000000".
BENCH_ARGS ?=
BENCH_QUICK_ARGS ?=

bench-tools:
	@command -v h2load >/dev/null 2>&1 || (apt-get update && apt-get install -y nghttp2-client)

bench: $(STAMP) bench-tools
	$(PY) -m bench.run $(BENCH_ARGS)

bench-quick: $(STAMP) bench-tools
	$(PY) -m bench.run --quick $(BENCH_QUICK_ARGS)

# Forces a rebuild: removes the built extension (and Cython's C) together with the build
# stamp, so the next `make serve` / `make test` reinstalls and compiles the engine instead of
# serving with the slow pure-Python one (a server on that fallback logs engine.fallback).
clean:
	rm -rf build *.egg-info clients/python/build clients/python/*.egg-info
	rm -f _fastpath/*.c _fastpath/*.so _fastpath/*.html $(STAMP)

# The gRPC ecosystem (dispatcher/docs/OPERATING.md). The buf CLI is pinned in clients/buf
# and comes from the npm registry (@bufbuild/buf), installed here on first use.
.PHONY: buf-lint buf-breaking node-client
BUF_DIR     := clients/buf
BUF         := $(BUF_DIR)/node_modules/.bin/buf
BUF_AGAINST ?= .git\#branch=main,subdir=protos

$(BUF): $(BUF_DIR)/package.json $(BUF_DIR)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "npm is required for buf (apt-get install npm)"; exit 1; }
	npm ci --no-audit --no-fund --prefix $(BUF_DIR)
	touch $(BUF)

buf-lint: $(BUF)
	$(BUF) lint protos

# Compares protos/ with the main branch (override: make buf-breaking BUF_AGAINST=...).
buf-breaking: $(BUF)
	$(BUF) breaking protos --against '$(BUF_AGAINST)'

# The Node.js client's tests against a real server (needs .venv for the server).
node-client: $(STAMP)
	cd clients/node && npm ci --no-audit --no-fund && DISPATCH_PYTHON=$(CURDIR)/$(PY) node --test test/

# The Go client (clients/go/README.md): protoc + protoc-gen-go + protoc-gen-go-grpc and the
# Go sources of grpc/protobuf from Debian's packages, installed here on first use; it builds
# offline in GOPATH mode (clients/go/go.sh). `make test` runs tests/test_go_client.py too.
.PHONY: go-tools go-client
GO_PACKAGES := golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc golang-google-protobuf-dev \
    golang-google-grpc-dev golang-github-golang-protobuf-1-5-dev

go-tools:
	@dpkg -s $(GO_PACKAGES) >/dev/null 2>&1 || (apt-get update && apt-get install -y $(GO_PACKAGES))

test: go-tools

go-client: $(STAMP) go-tools
	clients/go/generate.sh --check
	$(PY) -m pytest -q tests/test_go_client.py
