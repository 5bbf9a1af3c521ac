# vcounter: `make run` serves the counter with embedded defaults, `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
DATA_DIR ?= var
PORT ?= 8443
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install run test cluster chromium firefox services lint bench clean

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null \
	  || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q python3-venv python3-dev; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 'setuptools<81' wheel
	$(BIN)/pip install -q -e '.[test]'
	# face_recognition declares dlib (a 9-minute compile); dlib-bin provides it prebuilt
	$(BIN)/pip install -q --no-deps face-recognition
	# mediapipe declares opencv-contrib-python, jax, sounddevice: its real needs are in pyproject.toml
	$(BIN)/pip install -q --no-deps mediapipe==0.10.14
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/vcounter serve --demo --data-dir $(DATA_DIR) --port $(PORT)

chromium:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }

# the Firefox call (tests/test_firefox_call.py): Debian's firefox-esr, Node.js, and puppeteer-core
# from tests/firefox/package-lock.json (no browser download: it drives /usr/bin/firefox-esr)
firefox: tests/firefox/node_modules/.installed
	@command -v firefox-esr >/dev/null 2>&1 || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q firefox-esr; }

tests/firefox/node_modules/.installed: tests/firefox/package.json tests/firefox/package-lock.json
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
	  || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q nodejs npm; }
	cd tests/firefox && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

# the services the tests, the benchmarks and `make cluster` start for themselves, on free loopback
# ports (devservices/): one line per Debian package (a system instance the package may start is
# not used; the S3 server, moto, comes with the test extras)
services:
	@compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null \
	  || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q postgresql; }
	@command -v redis-server >/dev/null 2>&1 \
	  || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q redis-server; }
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] \
	  || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q nginx; }

# the gates first (fast, and a red one means nothing else matters), then the suite
test: install chromium firefox services lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

# two nodes behind nginx (https://localhost:$(PORT)) on a throwaway PostgreSQL, Redis and S3 server
# (moto), until Ctrl-C
cluster: install services
	$(BIN)/python -m tests.cluster_fixture --port $(PORT)

CODE := server signaling recorder identity business certs devservices tests bench

# ruff's lint rules and formatting, and mypy over the packages (settings in pyproject.toml); the
# import rules between packages are a test (tests/test_import_contract.py)
lint: install
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/mypy

bench: install
	$(BIN)/python bench/calls.py --calls 2 --duration 20 --media-mode both

clean:
	rm -rf $(VENV) build *.egg-info
