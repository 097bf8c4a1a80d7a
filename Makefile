# Dispatch — the two commands a newcomer needs are `make serve` and `make test`.
# Both bootstrap .venv on a fresh machine (Python 3.11 + gcc are enough).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 50051

FASTPATH_SRC := $(wildcard _fastpath/*.pyx _fastpath/*.pxd)

.PHONY: all install serve test test-fast bench bench-quick protos clean

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
	    --bootstrap dispatcher/demo_bootstrap.json --log-format console --no-auth

# The whole suite; DISPATCH_EXPECT_COMPILED makes a silent fallback to the
# pure-Python engine a test failure.
test: $(STAMP)
	DISPATCH_EXPECT_COMPILED=1 $(PY) -m pytest -q

protos: $(STAMP)
	$(PY) protos/generate.py

clean:
	rm -rf build *.egg-info _fastpath/*.c _fastpath/*.so _fastpath/*.html
