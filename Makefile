# The README's two commands: `make run` (daemon + example tenant, embedded Postgres/Redis)
# and `make test`. Both create .venv and install into it first.
# Debian's interpreter when there is one: tenant services run as users of their own, who must be
# able to execute the interpreter, and a pyenv build under /root (mode 0700) is closed to them.
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= oraclewad.toml
PYTEST_ARGS ?=

.PHONY: run test test-tools lint check proto bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[embedded]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed-run

# The dev config runs the Evolution sandbox as a host program; it and the example tenant
# share this generated key (0600), made before the daemon reads the tenant file; outside
# var/state, where a tenant may not point a key file (it holds every tenant's secrets).
SANDBOX_KEY := var/keys/sandbox-evolution.key

$(SANDBOX_KEY):
	mkdir -p -m 0700 $(dir $@)
	(umask 077 && $(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(32))' > $@)

# The dev config runs on var/tenants.d, a copy of the example tenants made on the first run, so
# `oraclectl tenant add` and hand edits never touch the git-tracked tenants.d/.
var/tenants.d:
	mkdir -p var
	cp -R tenants.d var/tenants.d.tmp && mv var/tenants.d.tmp var/tenants.d

run: $(VENV)/.installed-run $(SANDBOX_KEY) var/tenants.d
	$(BIN)/oraclewad run --config $(CONFIG)

test: $(VENV)/.installed-test test-tools
	$(BIN)/pytest $(PYTEST_ARGS)

# Debian tools some tests drive: promtool and prometheus (package `prometheus`) for the metrics
# and alert-rule tests, tmux for `oraclectl top`. Installed when missing and apt is usable;
# otherwise those tests skip and say why.
TEST_TOOLS := promtool:prometheus prometheus:prometheus tmux:tmux
test-tools:
	@missing=""; for pair in $(TEST_TOOLS); do command -v $${pair%%:*} >/dev/null 2>&1 || \
	    missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	    if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	        echo "installing test tools:$$missing"; \
	        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	            --no-install-recommends $$(echo $$missing | tr ' ' '\n' | sort -u)) >/dev/null \
	        || echo "could not install$$missing: the tests that need them skip"; \
	    else echo "missing$$missing (no apt-get as root here): the tests that need them skip"; fi; \
	fi

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .

check: $(VENV)/.installed-run var/tenants.d
	$(BIN)/oraclewad check --config $(CONFIG)

# Regenerate oraclewad/_proto from proto/ (commit the result; a test fails if it is stale).
proto: $(VENV)/.installed-test
	$(BIN)/python scripts/gen_proto.py

bench: $(VENV)/.installed-test
	$(BIN)/pip install --quiet -e '.[bench]'
	for script in bench/*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) var build *.egg-info
