# Every target works on a fresh machine with Python 3.11+: the first one builds .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[server,dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv with the package and dev tools

serve: $(STAMP) ## run the server (embedded PostgreSQL unless JOBQUEUE_DATABASE_URL is set)
	$(BIN)/jobqueue-grpc serve

test: $(STAMP) ## run the whole test suite (starts its own PostgreSQL; may build the Go tools first)
	@if command -v go >/dev/null 2>&1 && ! { [ -x .tools/bin/grpcurl ] && [ -x .tools/bin/grpc-health-probe ]; }; then \
	  echo "make test: first building the pinned Go tools the client tests drive (make tools)"; \
	  scripts/tools.sh || echo "make test: the Go tools did not build; the tests that drive them will skip"; \
	fi
	$(BIN)/pytest

GENERATED := jobqueue_grpc/gen clients/go/jobqueuev1 clients/typescript/src/gen
TS_DEPS   := clients/typescript/node_modules/.package-lock.json

tools: ## build the pinned Go tools (protoc plugins, grpcurl, grpc-health-probe) into .tools/bin
	scripts/tools.sh

$(TS_DEPS): clients/typescript/package-lock.json
	cd clients/typescript && npm ci --no-audit --no-fund

DASH_DEPS := dashboard/node_modules/.package-lock.json
DASHBOARD := jobqueue_grpc/dashboard

$(DASH_DEPS): dashboard/package-lock.json
	cd dashboard && npm ci --no-audit --no-fund

generate: $(STAMP) tools $(TS_DEPS) ## regenerate the Python, Go and TypeScript stubs (buf.gen.yaml)
	PYTHON=$(BIN)/python scripts/generate.sh

breaking: $(STAMP) ## buf breaking: proto/ against the previous commit
	BUF=$(BIN)/buf scripts/breaking.sh

check-generated: generate ## fail if the committed stubs are stale
	git diff --exit-code -- $(GENERATED)
	@test -z "$$(git status --porcelain -- $(GENERATED))" || { git status --porcelain -- $(GENERATED); exit 1; }

dashboard: $(DASH_DEPS) ## rebuild the web dashboard (dashboard/ -> jobqueue_grpc/dashboard, shipped)
	cd dashboard && npm run build

check-dashboard: dashboard ## fail if the committed dashboard bundle is stale
	git diff --exit-code -- $(DASHBOARD)
	@test -z "$$(git status --porcelain -- $(DASHBOARD))" || { git status --porcelain -- $(DASHBOARD); exit 1; }

lint: $(STAMP) ## buf lint, ruff, mypy --strict
	$(BIN)/buf lint
	$(BIN)/ruff check jobqueue_grpc tests bench examples
	$(BIN)/ruff format --check jobqueue_grpc tests bench examples
	$(BIN)/mypy

bench: $(STAMP) ## run the benchmarks; prints JSON and a table
	$(BIN)/python bench/run.py

bench-peers: $(STAMP) ## ours vs graphile-worker on one PostgreSQL, in rounds (needs npm and go)
	$(BIN)/python bench/peers/run.py

.PHONY: help install serve test tools generate breaking check-generated dashboard check-dashboard lint bench bench-peers
