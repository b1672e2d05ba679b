# funnelwatch developer tasks. `make test` is the one command CI runs (.ci/run).
.DEFAULT_GOAL := all

VENV ?= .venv
PY = $(VENV)/bin/python
PYTHON ?= python3
KAFKA_SH = deploy/kafka/kafka.sh
INSTALL_STAMP = $(VENV)/.install-stamp

# apt-get needs root; use sudo when we are not root and it exists.
SUDO := $(shell [ "$$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && echo sudo)

.PHONY: all
all: test

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-installs only when pyproject.toml changes (or the venv is new).
$(INSTALL_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --disable-pip-version-check -q -U pip
	$(PY) -m pip install --disable-pip-version-check -q -e '.[test,rocksdb]'
	touch $@

.PHONY: venv install
venv: $(PY)
install: $(INSTALL_STAMP)

.PHONY: kafka-up kafka-down kafka-status
kafka-up:
	$(KAFKA_SH) up
kafka-down:
	$(KAFKA_SH) down
kafka-status:
	$(KAFKA_SH) status

# System packages the test suite uses: Prometheus (promtool + server) and Chromium (the
# dashboard browser test), from Debian's packages.
# The package's own service is kept from starting (policy-rc.d); tests start their own
# prometheus on a port of their choosing and never rely on one at :9090.
.PHONY: deps-system
deps-system:
	@if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 && command -v chromium >/dev/null 2>&1; then \
		echo "deps-system: prometheus $$(prometheus --version 2>&1 | head -n1 | awk '{print $$3}') and chromium already installed"; \
	else \
		set -e; \
		echo "deps-system: installing prometheus and chromium (Debian packages)"; \
		added_policy=; \
		if [ ! -e /usr/sbin/policy-rc.d ]; then \
			printf '#!/bin/sh\nexit 101\n' | $(SUDO) tee /usr/sbin/policy-rc.d >/dev/null; \
			$(SUDO) chmod +x /usr/sbin/policy-rc.d; added_policy=1; \
		fi; \
		rc=0; \
		{ $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q \
		  && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus chromium; } || rc=$$?; \
		if [ -n "$$added_policy" ]; then $(SUDO) rm -f /usr/sbin/policy-rc.d; fi; \
		[ $$rc = 0 ] || { echo "deps-system: apt-get failed ($$rc)" >&2; exit $$rc; }; \
		command -v promtool >/dev/null 2>&1 || { echo "deps-system: promtool still missing after install" >&2; exit 1; }; \
	fi

.PHONY: test
test: install deps-system
	$(VENV)/bin/pytest -q

.PHONY: test-unit
test-unit: install
	$(VENV)/bin/pytest -q -m "not kafka and not prometheus and not browser"

.PHONY: run
run: install
	deploy/run.sh

.PHONY: bench-replay
bench-replay: install
	$(PY) bench/bench_replay.py

# Stops the local broker and removes run state and build litter.
# Keeps $(VENV) and .cache/ (downloaded Kafka jars); `make distclean` removes those too.
.PHONY: clean
clean:
	-$(KAFKA_SH) down
	rm -rf .run .pytest_cache .hypothesis build dist *.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

.PHONY: distclean
distclean: clean
	rm -rf $(VENV) .cache

# Chaos tests only (SIGKILLed workers, rebalance storm, broker restart, wiped state): ~10 min.
.PHONY: test-chaos
test-chaos: install deps-system
	$(VENV)/bin/pytest -q -m chaos

# The `bench` extra (Quix Streams, for bench/quix_app.py): benchmarks only, never a runtime
# dependency. Re-installs only when pyproject.toml changes.
BENCH_STAMP = $(VENV)/.bench-install-stamp
$(BENCH_STAMP): pyproject.toml $(INSTALL_STAMP)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[test,rocksdb,bench]'
	touch $@

# Live-pipeline benchmark on the local Kafka, then state bytes per in-flight message.
# Figures are printed and saved as JSON under .bench/ (git-ignored); see bench/README.md.
# `make bench BENCH_ARGS="--compare REV"` also runs (b) on REV's code, same input, same run.
BENCH_ARGS ?=
.PHONY: bench
bench: install $(BENCH_STAMP)
	$(PY) bench/bench_pipeline.py $(BENCH_ARGS)
	$(PY) bench/bench_state_memory.py
