# The two commands a new user runs (README.md): `make run` and `make test`.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= var
# Debian packages the tests drive as real clients and peers.
TEST_PACKAGES := swaks openssl fetchmail mpop curl isync dovecot-core dovecot-imapd opendkim-tools postfix \
	chromium rspamd
# axe-core checks the web pages for accessibility inside the browser tests; it is
# published on the npm registry only. Major version pinned: its rule ids are what
# the tests name. The folder is git-ignored.
NPM_PREFIX := .cache/npm
AXE_CORE := $(NPM_PREFIX)/node_modules/axe-core/axe.min.js
# The benchmarks are scripts without a .py suffix, which ruff finds only by name.
BENCH_SCRIPTS := bench/smtp_inbound bench/pop3 bench/imap bench/smtp_outbound bench/image bench/webmail
BENCH_PACKAGES := postfix dovecot-core dovecot-lmtpd dovecot-pop3d dovecot-imapd

# The bootable image (image/build.py) and its tests in qemu (tests/image):
# mmdebstrap, the file system and partition tools, qemu with UEFI firmware for
# both boards, and qemu-user + binfmt to run arm64 maintainer scripts.
IMAGE_PACKAGES := mmdebstrap squashfs-tools dosfstools mtools fdisk e2fsprogs zstd xz-utils \
	qemu-system-x86 qemu-system-arm ovmf qemu-efi-aarch64 qemu-user-static binfmt-support arch-test
# Builds the single-file service (dist/appliance-VERSION-ARCH.pyz); pinned so
# that two builds of one commit are the same file.
SHIV := shiv==1.0.8

.PHONY: run test lint bench dist-clean dist image

run: $(VENV)/.installed
	$(BIN)/appliance --data $(DATA) serve --dev

test: $(VENV)/.installed $(AXE_CORE) $(BIN)/shiv
	@$(MAKE) --no-print-directory debian-packages PACKAGES="$(TEST_PACKAGES) $(IMAGE_PACKAGES)"
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
	$(BIN)/python bench/image
	$(BIN)/python bench/webmail

# dist/appliance-VERSION-ARCH.pyz for x86_64 and aarch64 (image/dist.py).
dist: $(VENV)/.installed $(BIN)/shiv
	$(BIN)/python image/dist.py

# dist/appliance-VERSION-BOARD.img: BOARD=x86_64 or BOARD=arm64 (needs root).
image: dist
	@$(MAKE) --no-print-directory debian-packages PACKAGES="$(IMAGE_PACKAGES)"
	$(BIN)/python image/build.py --board $(BOARD)

$(BIN)/shiv: $(VENV)/.installed
	$(BIN)/pip install --quiet '$(SHIV)'

# `make bundle BOARD=x86_64 BUNDLE_KEY=path`: dist/appliance-VERSION-BOARD.bundle, the
# board's root image and boot files signed with the Ed25519 key at BUNDLE_KEY (made
# once by `appliance update keygen`; it never enters the repository, and boxes trust
# its .pub half). The files are those of the newest image `make image` built (its
# cache folder under dist/build/), or those BUNDLE_ROOTFS and BUNDLE_BOOT_FILES name.
BOARD ?= x86_64
BUNDLE_VERSION ?= $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' appliance/__init__.py)
BUNDLE_MIN_VERSION ?= 0
BUNDLE_DIR ?= dist
BUNDLE_IMAGE_DIR ?= $(shell ls -td dist/build/image-$(BOARD)-*/ 2>/dev/null | grep -v '\.tmp/$$' | head -n 1)
BUNDLE_ROOTFS ?= $(BUNDLE_IMAGE_DIR)root.squashfs
BUNDLE_BOOT_FILES ?= $(BUNDLE_IMAGE_DIR)vmlinuz $(BUNDLE_IMAGE_DIR)initrd.img
.PHONY: bundle
bundle: $(VENV)/.installed
	@test -n "$(BUNDLE_KEY)" || { echo "make bundle: BUNDLE_KEY=path of the signing key"; exit 1; }
	@test -f "$(BUNDLE_ROOTFS)" || { echo "make bundle: no $(BUNDLE_ROOTFS) (make image first)"; exit 1; }
	@mkdir -p "$(BUNDLE_DIR)"
	$(BIN)/appliance update sign --key "$(BUNDLE_KEY)" --board "$(BOARD)" \
		--bundle-version "$(BUNDLE_VERSION)" --min-version "$(BUNDLE_MIN_VERSION)" \
		$(foreach file,$(BUNDLE_BOOT_FILES),--boot-file "$(file)") \
		--out "$(BUNDLE_DIR)/appliance-$(BUNDLE_VERSION)-$(BOARD).bundle" "$(BUNDLE_ROOTFS)"

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
