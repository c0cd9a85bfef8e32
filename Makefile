# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Two stamps: what serving needs (`make run`), and that plus the test and dev extras (test, lint, bench...).
STAMP  := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
CONFIG ?= config.yaml
# `make run` serves with one worker, as the sidecar manifests do: on a laptop one event loop serves far more than an
# agent sends, and N workers share state through a private Redis that costs CPU per request (measured in
# bench/results/2026-12-06-performance.md: 3.5x the bare relay at 2 workers vs 1.9x at one). WORKERS=auto: one per
# core, as `gateway serve` without --workers.
WORKERS ?= 1
PYTEST_ARGS ?=
# Line coverage of gateway/ and policies/ by the default suite, in-process only (94.30% measured when set;
# floor = that rounded down, minus 1). A partial run (PYTEST_ARGS=tests/some_file.py) needs COV_FLOOR=0.
COV_FLOOR ?= 93
MINUTES ?= 10

.PHONY: run test demo lint bench bench-peers soak chaos clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The runtime package only (and the workers' private Redis, `host-state`): no test browser, Helm SDK or ONNX.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[host-state]'
	touch $(STAMP)

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $(DEV_STAMP) $(STAMP)

run: $(STAMP)
	$(BIN)/gateway serve --config $(CONFIG) $(if $(filter auto,$(WORKERS)),,--workers $(WORKERS))

test: $(DEV_STAMP)
	$(BIN)/python -m pytest -q -m "not slow" --cov=gateway --cov=policies --cov-fail-under=$(COV_FLOOR) $(PYTEST_ARGS)

demo: $(DEV_STAMP)
	$(BIN)/python scripts/demo.py

lint: $(DEV_STAMP)  # ruff, then the typecheck (mypy --strict, configured in pyproject.toml)
	$(BIN)/ruff check gateway policies tests bench
	$(BIN)/mypy

bench: $(DEV_STAMP)  # BENCH_ARGS='--only small-c1,stream-c1 --reps 5'; wrk and nginx are used when installed
	$(BIN)/python -m bench.overhead $(BENCH_ARGS)

# LiteLLM's proxy (own virtualenv) and the Portkey gateway (npm, hono pinned 4.9.x) into bench/peers/ (git-ignored):
# `make bench` then adds their columns. Needs network once; they run offline against the mock.
bench-peers: $(DEV_STAMP)
	$(PYTHON) -m venv bench/peers/litellm/.venv
	bench/peers/litellm/.venv/bin/pip install --quiet 'litellm[proxy]'
	mkdir -p bench/peers/portkey
	printf '{"name":"bench-peers","private":true,"overrides":{"hono":"~4.9.0"}}\n' > bench/peers/portkey/package.json
	cd bench/peers/portkey && npm install --silent --no-audit --no-fund @portkey-ai/gateway 'hono@~4.9.0'

soak: $(DEV_STAMP)  # MINUTES=N of mixed traffic with faults; prints RSS, files, tasks, pool, CLOSE_WAIT over time
	$(BIN)/python -m scripts.soak --minutes $(MINUTES)

chaos: $(DEV_STAMP)  # the long (slow-marked) hardening variants: 10k bodies, 5x overload, 30 s Redis faults...
	$(BIN)/python -m pytest -q -m slow tests/hardening $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
