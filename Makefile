# The two commands a new user runs (README.md): `make run` and `make test`.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= var
# Debian packages the tests drive as real clients and peers.
TEST_PACKAGES := swaks openssl fetchmail mpop curl isync dovecot-core dovecot-imapd opendkim-tools postfix \
	chromium
# axe-core checks the web pages for accessibility inside the browser tests; it is
# published on the npm registry only. Major version pinned: its rule ids are what
# the tests name. The folder is git-ignored.
NPM_PREFIX := .cache/npm
AXE_CORE := $(NPM_PREFIX)/node_modules/axe-core/axe.min.js
# The benchmarks are scripts without a .py suffix, which ruff finds only by name.
BENCH_SCRIPTS := bench/smtp_inbound bench/pop3 bench/imap bench/smtp_outbound
BENCH_PACKAGES := postfix dovecot-core dovecot-lmtpd dovecot-pop3d dovecot-imapd

.PHONY: run test lint bench dist-clean

run: $(VENV)/.installed
	$(BIN)/appliance --data $(DATA) serve --dev

test: $(VENV)/.installed $(AXE_CORE)
	@$(MAKE) --no-print-directory debian-packages PACKAGES="$(TEST_PACKAGES)"
	$(BIN)/ruff check appliance tests bench $(BENCH_SCRIPTS)
	$(BIN)/ruff format --check appliance tests bench $(BENCH_SCRIPTS)
	$(BIN)/pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check --fix appliance tests bench $(BENCH_SCRIPTS)
	$(BIN)/ruff format appliance tests bench $(BENCH_SCRIPTS)

bench: $(VENV)/.installed  ## side by side with Postfix and Dovecot; see bench/README.md
	@$(MAKE) --no-print-directory debian-packages PACKAGES="$(BENCH_PACKAGES)"
	$(BIN)/python bench/smtp_inbound
	$(BIN)/python bench/pop3
	$(BIN)/python bench/imap
	$(BIN)/python bench/smtp_outbound

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || \
		$(MAKE) --no-print-directory debian-packages PACKAGES="python3-venv python3-pip"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --editable '.[test]'
	touch $@

# Without npm, or without the registry, the browser tests skip and say why.
$(AXE_CORE):
	@command -v npm >/dev/null || $(MAKE) --no-print-directory debian-packages PACKAGES=npm
	@if ! command -v npm >/dev/null; then echo "npm missing: axe-core not installed"; exit 0; fi; \
	npm install --prefix $(NPM_PREFIX) --no-audit --no-fund --loglevel=error axe-core@4 \
		>/dev/null || echo "npm could not install axe-core (browser tests are skipped)"

# Installs what is missing when run as root; otherwise says what to install.
debian-packages:
	@missing=""; for p in $(PACKAGES); do \
		dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "missing Debian packages:$$missing (tests that need them are skipped)"; exit 0; fi; \
	echo "installing Debian packages:$$missing"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null

dist-clean:
	rm -rf $(VENV) $(DATA) .pytest_cache
