# Stockade developer targets. From a clean clone on Debian/Ubuntu: `make run`, `make test`.
# Needs python3 (3.11+) with venv (apt: python3-venv), make and git; apt packages listed in
# APT_PACKAGES are installed on demand (as root, or with sudo).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

# Interpreter used to create .venv; the first of these that is 3.11+ wins.
PYTHON_CANDIDATES ?= python3 python3.13 python3.12 python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp
PIP := $(BIN)/python -m pip --disable-pip-version-check --no-input

# System packages the project needs: Mosquitto is the control-plane broker the server starts
# and supervises itself (and the tests start their own); systemd-analyze lints the units.
APT_PACKAGES := mosquitto mosquitto-clients systemd

# Prints the name of the first 3.11+ interpreter, or fails with a clear message.
define find_python
py=""; \
for c in $(PYTHON_CANDIDATES); do \
	if command -v "$$c" >/dev/null 2>&1 && \
	   "$$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
		py="$$c"; break; \
	fi; \
done; \
if [ -z "$$py" ]; then \
	echo "error: Python 3.11 or newer is required (tried: $(PYTHON_CANDIDATES))." >&2; \
	echo "  On Debian/Ubuntu: apt-get install python3 python3-venv" >&2; \
	echo "  (or python3.11 python3.11-venv where python3 is older)." >&2; \
	exit 1; \
fi
endef

.PHONY: help setup system-deps test-tools lint test test-slow run bench bench-e2e bench-online lock clean

# Test doubles of the cloud services, kept out of .venv (tests/support/azurite.py, moto.py):
# Azurite from npm into .tools/azurite; moto server in its own venv, because installed next
# to aiobotocore it would move botocore off aiobotocore's exact pin.
TOOLS := .tools
AZURITE_VERSION := 3.35.0
MOTO_PINS := moto[s3]==5.2.5 flask==3.1.3 flask-cors==6.0.5
TOOLS_STAMP := $(TOOLS)/.stamp-azurite-$(AZURITE_VERSION)-moto-5.2.5

help:
	@echo "make setup        create .venv and install stockade[dev] with constraints.txt"
	@echo "make run          setup, then start stockade-server with embedded defaults"
	@echo "make test         setup, lint, then the default test suite (not slow)"
	@echo "make test-slow    the slow tests only (soaks, every backend in the vault tamper suite)"
	@echo "make lint         ruff check, ruff format --check, mypy, lint-imports"
	@echo "make test-tools   install Azurite (npm) and moto server (own venv) into .tools/"
	@echo "make bench        setup, then the full storage pool benchmark"
	@echo "make bench-e2e    setup, then the end-to-end benchmark against restic (installs restic)"
	@echo "make bench-online setup and test-tools, then the online backup benchmark (folder, Azurite, moto)"
	@echo "make lock         regenerate constraints.txt from a fresh venv"
	@echo "make system-deps  apt-get install missing APT_PACKAGES (currently: $(or $(APT_PACKAGES),none))"
	@echo "make clean        remove .venv and caches"

system-deps:
	@missing=""; \
	for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'install ok installed' \
			|| missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; \
	elif command -v sudo >/dev/null 2>&1; then \
		if [ -t 0 ]; then sudo="sudo"; else sudo="sudo -n"; fi; \
	else \
		echo "error: missing apt packages:$$missing" >&2; \
		echo "  not root and no sudo: install them as root (apt-get install$$missing)" >&2; \
		exit 1; \
	fi; \
	echo "installing apt packages:$$missing"; \
	if ! { $$sudo apt-get update -q && \
	       $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; }; then \
		echo "error: could not install apt packages:$$missing" >&2; \
		echo "  install them by hand (as root: apt-get install$$missing), then rerun make" >&2; \
		exit 1; \
	fi

setup: system-deps $(STAMP)

# Reinstalls only when pyproject.toml or constraints.txt changed (or .venv is new).
$(STAMP): pyproject.toml constraints.txt
	@if [ ! -x $(BIN)/python ]; then \
		$(find_python); \
		echo "creating $(VENV) with $$py ($$("$$py" -c 'import sys; print(sys.version.split()[0])'))"; \
		rm -rf $(VENV); \
		if ! "$$py" -m venv $(VENV); then \
			rm -rf $(VENV); \
			echo "error: '$$py -m venv' failed: the venv module or ensurepip is missing." >&2; \
			echo "  On Debian/Ubuntu install the apt package python3-venv" >&2; \
			echo "  (python3.X-venv for a non-default python3.X), then rerun make." >&2; \
			exit 1; \
		fi; \
	fi
	$(PIP) install -q --upgrade -c constraints.txt pip
	$(PIP) install -q -e '.[dev]' -c constraints.txt
	@touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy server agent storage_pool bench tests
	$(BIN)/lint-imports

test: lint test-tools
	$(BIN)/pytest -m "not slow"

test-slow: setup test-tools
	$(BIN)/pytest -m slow

test-tools: $(TOOLS_STAMP)

$(TOOLS_STAMP):
	@command -v npm >/dev/null 2>&1 || \
		$(MAKE) --no-print-directory system-deps APT_PACKAGES="nodejs npm" || true
	@if ! command -v npm >/dev/null 2>&1; then \
		echo "error: npm is required to install Azurite (the Azure Storage emulator) for the tests." >&2; \
		echo "  On Debian/Ubuntu: apt-get install npm (or install Node.js 18+ with npm), then rerun make" >&2; \
		exit 1; \
	fi
	@mkdir -p $(TOOLS)
	@echo "installing azurite@$(AZURITE_VERSION) into $(TOOLS)/azurite"
	@if ! npm install --prefix $(TOOLS)/azurite --no-audit --no-fund --loglevel=error \
			azurite@$(AZURITE_VERSION) >/dev/null; then \
		echo "error: npm install azurite@$(AZURITE_VERSION) failed (see above)" >&2; exit 1; \
	fi
	@$(find_python); \
	if [ ! -x $(TOOLS)/moto-venv/bin/python ]; then \
		rm -rf $(TOOLS)/moto-venv; \
		if ! "$$py" -m venv $(TOOLS)/moto-venv; then \
			rm -rf $(TOOLS)/moto-venv; \
			echo "error: '$$py -m venv' failed: install the apt package python3-venv, then rerun make" >&2; \
			exit 1; \
		fi; \
	fi
	@echo "installing $(MOTO_PINS) into $(TOOLS)/moto-venv"
	@$(TOOLS)/moto-venv/bin/python -m pip --disable-pip-version-check --no-input install -q $(MOTO_PINS)
	@touch $@

# The server with embedded defaults: data dir /var/lib/stockade (root) or
# ~/.local/share/stockade, its own Mosquitto on 8883, HTTPS on 8443. Extra flags: ARGS=...
run: setup
	$(BIN)/stockade-server $(ARGS)

bench: setup
	$(BIN)/python -m bench.pool_ingest

# Server + agent over loopback against restic 0.14 (Debian) on the shared datasets.
bench-e2e: setup
	@$(MAKE) --no-print-directory system-deps APT_PACKAGES=restic
	$(BIN)/python -m bench.e2e $(ARGS)

# Online backup (copy to a vault, plain upload, restore from the vault) on 2 GiB mixed.
bench-online: setup test-tools
	$(BIN)/python -m bench.online $(ARGS)

# Resolves the newest versions allowed by pyproject.toml in a throw-away venv and pins them.
lock:
	@$(find_python); \
	tmp="$$(mktemp -d)"; trap 'rm -rf "$$tmp"' EXIT; \
	"$$py" -m venv "$$tmp/venv"; \
	lpip="$$tmp/venv/bin/python -m pip --disable-pip-version-check --no-input"; \
	$$lpip install -q --upgrade pip; \
	$$lpip install -q -e '.[dev]'; \
	{ \
		echo "# Exact versions of every package in the development venv: pip, stockade[dev] and"; \
		echo "# its dependencies. make setup installs with -c constraints.txt so every machine and"; \
		echo "# CI get the same versions. Regenerate with: make lock"; \
		$$lpip freeze --all --exclude-editable \
			| grep -v -i -E '^(stockade|setuptools|wheel|distribute|pkg[-_]resources)([ =@]|$$)'; \
	} > constraints.txt.new; \
	mv constraints.txt.new constraints.txt; \
	echo "constraints.txt updated; review with: git diff constraints.txt"

clean:
	rm -rf $(VENV) $(TOOLS) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
	find . -path ./.git -prune -o -type d -name __pycache__ -exec rm -rf {} +
