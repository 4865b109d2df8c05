# Two entry points for a fresh machine (see README):
#   make serve   install into .venv and serve the shipped default model (CPU is fine)
#   make test    install into .venv (+ system tools the tests use) and run the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
HTTP_PORT ?= 8080
GRPC_PORT ?= 50051

.PHONY: serve test install install-dev tools audit fuzz

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-dev: $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,train]'

# System tools some tests drive for real (Prometheus, Chromium, ...): one idempotent script each.
tools:
	@for s in scripts/setup/*.sh; do [ -f "$$s" ] && bash "$$s" || exit 1; done

serve: install
	$(BIN)/saic serve --host $(HOST) --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT)

test: install-dev tools
	$(BIN)/python -m pytest -q

# Dependency audit (docs/reliability.md): needs PyPI's JSON API or OSV on the network, which
# some CI sandboxes lack, so it is not part of `make test`.  SERVICE=osv to use OSV instead.
SERVICE ?= pypi
audit: install-dev
	$(BIN)/pip-audit --vulnerability-service $(SERVICE) --skip-editable --strict --progress-spinner off

# Coverage-guided fuzzing (atheris, the `fuzz` extra): make fuzz HARNESS=http FUZZ_SECONDS=300
HARNESS ?= http
FUZZ_SECONDS ?= 120
fuzz: install-dev
	$(BIN)/pip install -q -e '.[fuzz]'
	$(BIN)/python tests/fuzz/run.py $(HARNESS) -max_total_time=$(FUZZ_SECONDS) -timeout=30 -rss_limit_mb=3000
