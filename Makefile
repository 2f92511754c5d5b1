# agentq: `make up` starts the whole stack locally, `make test` runs the suite.
# Both create .venv and install what they need on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install up test test-postgres test-containers check-k8s lint bench browser-deps compose-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Debian's Chromium for the browser test (no tool downloads its own browser here).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "install Debian's chromium (sudo apt-get install chromium) for the browser test"; fi; }

# docker-compose 1.29 validates docker-compose.yml offline (no engine needed).
compose-deps:
	@command -v docker-compose >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; fi; }

up: install
	$(BIN)/agentq up

# The llmock_slow group (minutes of waiting on a 30-RPM provider: tests/test_llmock_e2e.py)
# runs as a second pytest beside the rest, so it adds almost no wall time; its output is
# shown when both ended, and either failing fails the target. The group runs in its own
# process group (set -m), so Ctrl-C is passed on to it and its pipelines are torn down.
test: SHELL := /bin/bash
test: install browser-deps compose-deps
	@mkdir -p tests/artifacts; log=tests/artifacts/llmock_slow.log; \
	set -m; $(BIN)/pytest -q -p no:cacheprovider -m llmock_slow </dev/null >$$log 2>&1 & \
	slow=$$!; set +m; trap 'kill -INT -- -$$slow 2>/dev/null; wait $$slow' INT TERM; \
	$(BIN)/pytest -q -m 'not llmock_slow'; main=$$?; \
	wait $$slow; rc=$$?; trap - INT TERM; \
	printf '\n== pytest -m llmock_slow (ran beside the above; %s)\n' $$log; cat $$log; \
	test $$main -eq 0 && test $$rc -eq 0

# The database-facing tests again, against PostgreSQL (database `test` on localhost).
test-postgres: install
	AGENTQ_TEST_DATABASE_URL=postgresql://root@127.0.0.1/test $(BIN)/pytest -q -m database

# The image and docker-compose.yml for real, with podman as root (no Docker engine needed):
# a Debian base from mmdebstrap, stand-ins for the public images (tests/containers/run).
test-containers: install
	bash tests/containers/run

# Kubernetes manifests: every kustomization rendered, validated against Kubernetes' and
# KEDA's schemas, and linted by checkov (tools in their own venv; `make test` runs it too).
check-k8s:
	deploy/ci/k8s-check

lint: install
	$(BIN)/ruff check services tests bench deploy/ci/k8s-check
	$(BIN)/mypy
	$(BIN)/deptry .
	$(BIN)/python -m pip check

# The benchmarks; `agentq bench limiter` also runs Celery, the peer it compares against.
bench: install
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	$(BIN)/agentq bench pipeline

clean:
	rm -rf $(VENV) agentq.db tests/artifacts
