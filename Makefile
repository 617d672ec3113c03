# One set of entry points for people and CI: make run, make test, make check, make bench.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install run migrate test test-pg check bench clean up down

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

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The storage and API suites against an external PostgreSQL (FHIR_TEST_POSTGRES_URL).
test-pg: $(STAMP)
	$(PY) -m pytest tests/integration tests/api $(PYTEST_ARGS)

check: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# docker compose: PostgreSQL, the migrations job and the API on :8080 (needs POSTGRES_PASSWORD, .env)
up:
	docker compose up --build -d

down:
	docker compose down

