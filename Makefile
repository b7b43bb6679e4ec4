# Pushline. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.DEFAULT_GOAL := help

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP) requirements-bench.txt
	$(PY) -m pip install --quiet -r requirements-bench.txt
	touch $(BENCH_STAMP)

.PHONY: help venv run test test-fast web worker beat migrate stats bench explain lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

venv: $(STAMP) ## create .venv and install requirements.txt

run: $(STAMP) ## everything on this machine: embedded PostgreSQL/Redis if URLs unset, web on :8000, one worker, beat
	$(PY) -m pushline.cli run

test: $(STAMP) ## the whole suite against real PostgreSQL and Redis (embedded if URLs unset)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) ## the suite without the slow process/fault tests
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

web: $(STAMP) ## the web tier alone (needs PUSH_TOKENS, REDIS_URL, DATABASE_URL)
	$(PY) -m pushline.cli web

worker: $(STAMP) ## one worker (several may run on one machine; each gets its own node name)
	$(PY) -m pushline.cli worker

beat: $(STAMP) ## Celery beat, the housekeeping's clock (run exactly one per deployment)
	$(PY) -m pushline.cli beat

migrate: $(STAMP) ## apply database migrations (idempotent; needs DATABASE_URL)
	$(PY) -m pushline.cli migrate

stats: $(STAMP) ## queue depth, lag and event counts
	$(PY) -m pushline.cli stats

bench: $(BENCH_STAMP) ## throughput and latency figures (bench/results.json, results.png, ack_settings.json)
	$(PY) -m bench.run
	$(PY) -m bench.ack_settings

explain: $(STAMP) ## EXPLAIN the hot queries on 1,000,000 events (writes docs/indexes.md)
	$(PY) -m bench.explain

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check .

clean: ## remove .venv (var/ keeps your data; remove it yourself)
	rm -rf $(VENV)
