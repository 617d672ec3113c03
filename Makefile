# One set of entry points for people and CI: make run, make test, make check, make bench.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install browser run migrate test test-pg test-pooled check bench load fuzz infra-check clean up down

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/fhir-server serve

migrate: $(STAMP)
	$(VENV)/bin/fhir-server migrate

# What the tests need from Debian, installed when missing and we are root or may sudo (a no-op
# when present): the browser tests' headless Chromium and its driver, and PgBouncer.
browser:
	scripts/ensure-browser
	scripts/ensure-pgbouncer

test: $(STAMP) browser
	$(PY) -m pytest $(PYTEST_ARGS)

# The storage and API suites against an external PostgreSQL (FHIR_TEST_POSTGRES_URL).
test-pg: $(STAMP) browser
	$(PY) -m pytest tests/integration tests/api $(PYTEST_ARGS)

# The same suites with every server the tests start behind a PgBouncer in transaction mode
# (tests/support/pooler.py), in front of FHIR_TEST_POSTGRES_URL or the embedded PostgreSQL.
test-pooled: $(STAMP) browser
	FHIR_TEST_POOLER=1 $(PY) -m pytest tests/integration tests/api $(PYTEST_ARGS)

check: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	scripts/ensure-wrk
	$(PY) -m bench.run

# The Patient Service load scenario: 50 requests/s, then the highest rate the machine sustains;
# p50/p95/p99 per route against the specification's targets (docs/load.md).
load: $(STAMP)
	$(PY) -m bench.loadtest

# Seeded, bounded fuzzing of a real server: schema-generated and mutated resources, searches,
# patches, bundles, hostile HTTP, as several callers; no 5xx, no dropped connection, nothing over
# 10 s (docs/fuzz.md). FUZZ_SEED, FUZZ_REQUESTS and FUZZ_SECONDS change the run.
fuzz: $(STAMP)
	$(PY) -m fuzz

# Offline checks of infra/terraform, deploy/kubernetes and the Dockerfile (checkov) and the SBOM
# build/sbom.cdx.json; the tools install into .venv-tools on first use (docs/infrastructure.md).
infra-check: $(STAMP)
	infra/check

clean:
	rm -rf $(VENV) .venv-tools build .pytest_cache .mypy_cache .ruff_cache

# docker compose: PostgreSQL, the migrations job and the API on :8080 (needs POSTGRES_PASSWORD, .env)
up:
	docker compose up --build -d

down:
	docker compose down

