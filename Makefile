# `make run` installs and serves; `make test` installs and passes the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run demo test bench reliability postgres nginx chromium lint format clean

# The venv is rebuilt whenever a requirements file changes.
$(BIN)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

# The tests, reliability and bench rows start a throwaway PostgreSQL cluster of their own: install
# Debian's postgresql package first when no initdb is found (as root; CI runs on a fresh machine).
postgres: $(BIN)/.installed
	$(BIN)/python -m devtools.postgres --install

# With a .env: gunicorn against the configured Rehive. Without: local mode (stand-in + service).
run: $(BIN)/.installed
	$(BIN)/python -m devtools.run_local

demo: $(BIN)/.installed
	$(BIN)/python -m devtools.demo

# The reliability suite (about two and a half minutes) runs before pytest, so that pytest's summary ends the output.
test: $(BIN)/.installed postgres nginx chromium
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m reliability
	$(BIN)/pytest

# The manage page's browser tests drive Debian's Chromium through its own chromedriver: install both if missing.
chromium:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver)

# Throughput and latency against their floors, printed as one table (needs wrk: installed if missing).
bench: $(BIN)/.installed postgres
	$(BIN)/python -m bench

# Crashes, two hosts, upstream faults, hostile input, fuzzing, leaks, access and the proxy, as one table.
reliability: $(BIN)/.installed postgres nginx
	$(BIN)/python -m reliability

# The reliability suite's proxy row and tests/e2e/test_proxy.py run real nginx (deploy/nginx.conf) with a
# certificate made by openssl: both installed with apt-get when missing (as root), as `make bench` does wrk.
nginx: $(BIN)/.installed
	@$(BIN)/python -m reliability.nginx

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(BIN)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
