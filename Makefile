# pyinit: `make demo` and `make test` set up everything themselves on a fresh Debian 12 machine
# (as root): apt packages, a virtualenv, the Debian kernel package, the initramfs. Idempotent and
# cached: a second run downloads and rebuilds nothing that has not changed.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= /usr/bin/python3
VENV := .venv
BIN := $(VENV)/bin
STAMPS := .cache/stamps
OUT := out

APT_PACKAGES := python3 python3-venv python3-dev gcc binutils \
	qemu-system-x86 qemu-utils ipxe-qemu seabios \
	busybox-static kmod cpio zstd e2fsprogs fdisk pci.ids usb.ids \
	dnsmasq-base ipxe iproute2 procps ca-certificates nginx-light curl \
	grub-common grub-pc-bin grub-efi-amd64-bin ovmf mtools dosfstools xfsprogs lvm2 faketime mmdebstrap \
	xorriso openssh-client nvme-cli hdparm mdadm efibootmgr gpg gpgv \
	chromium lldpd postgresql docker-registry apache2-utils

.PHONY: help setup apt venv initramfs demo test unit lint bench clean distclean

help:
	@echo "make demo   - build everything and provision a QEMU machine end to end"
	@echo "make test   - lint, type-check and run the whole test suite (VM tests included)"
	@echo "make unit   - unit tests only (seconds)"
	@echo "make bench  - boot time; serving and a fleet's burst/events/memory (vs nginx) and"
	@echo "              image write/capture (vs curl|zstd|dd) benchmarks: ratios against"
	@echo "              baselines measured in the same run"
	@echo "make clean  - remove build output (keeps downloaded caches)"

setup: apt venv

apt: $(STAMPS)/apt
$(STAMPS)/apt: Makefile
	@mkdir -p $(STAMPS)
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "apt: installing" $$missing; \
		if [ "$$(id -u)" != 0 ]; then echo "apt: need root to install: $$missing" >&2; exit 1; fi; \
		DEBIAN_FRONTEND=noninteractive apt-get update -q; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@touch $@

venv: $(STAMPS)/venv
$(STAMPS)/venv: pyproject.toml $(STAMPS)/apt
	@mkdir -p $(STAMPS)
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

# The builder caches the kernel package and the frozen bundle itself; calling it is cheap.
initramfs: setup
	$(BIN)/pyinit initramfs --out $(OUT)

demo: initramfs
	$(BIN)/pyinit demo --out $(OUT)

lint: setup
	$(BIN)/ruff check pyinit build server qemu tests
	$(BIN)/mypy pyinit build/pyinit_build server/pyinit_server qemu/pyinit_qemu

unit: setup
	$(BIN)/pytest -q tests/unit

# PYINIT_OUT makes missing build output a failure (not a skip) in the VM tests, PYINIT_STRICT a
# missing tool or root (tests/hostreq.py: only limits of the host's kernel skip); the harness's
# own busybox test loads virtio modules from the cached kernel package.
# Unit and integration tests run four at a time on two cores (pytest-xdist): most of their time
# is spent waiting (DHCP and carrier timeouts in network namespaces, servers, subprocesses). The
# VM tests run two at a time, one worker per core since each QEMU (TCG) keeps a core busy, the
# longest first (tests/vm/conftest.py) and idle workers stealing queued tests (worksteal). Both
# parts always run; the target fails if either failed.
test: initramfs lint
	export PYINIT_OUT=$(abspath $(OUT)) PYINIT_STRICT=1 \
		PYINIT_MODULES=$$(ls -d $(CURDIR)/.cache/kernel/*/lib/modules/* | head -n 1); \
	rc=0; \
	$(BIN)/pytest -n 4 --dist load --durations=15 tests/unit tests/integration || rc=$$?; \
	$(BIN)/pytest -n 2 --dist worksteal --durations=15 tests/vm || rc=$$?; \
	exit $$rc

# Issue #3: pyinit's image writer and capture against curl|zstd|dd baselines measured in the same
# run (nginx, a loop device); prints a table and, as the last line, one JSON object.
# Boot time first (the default build, --drivers listed and a busybox + udhcpc baseline on the
# same kernel, alternating: boot_ratio; its own table and JSON line, also written to
# $(OUT)/bench-boot.json); then issue #6's serve benchmark (32 agents pull
# one 256 MiB image from `pyinit serve` and from nginx with worker_processes auto; its own table
# and JSON line, also written to $(OUT)/bench-serve.json); then issue #13's fleet benchmark
# (1000 machines GET /<mac> at once vs nginx on `pyinit export`, durable events/s on SQLite and
# PostgreSQL, RSS and status pages with 20 000 machines; $(OUT)/bench-fleet.json); then the
# image benchmarks, which fold the three files' figures (boot_ratio, serve_ratio, serve_peak_rss_mb,
# burst_p99_ratio, events_per_s_sqlite, events_per_s_pg, serve_rss_20k_mb, api_page_ms_20k)
# into their JSON line: the last line printed stays one JSON object holding every figure. A
# failure of an earlier bench stops the target, as before.
bench: initramfs
	export PYINIT_MODULES=$$(ls -d $(CURDIR)/.cache/kernel/*/lib/modules/* | head -n 1); \
	$(BIN)/python -m tests.bench.bench_boot --out $(OUT) --json-out $(OUT)/bench-boot.json
	$(BIN)/python -m tests.bench.bench_serve --json-out $(OUT)/bench-serve.json
	$(BIN)/python -m tests.bench.bench_fleet --json-out $(OUT)/bench-fleet.json
	$(BIN)/python -m tests.bench.bench_image --merge $(OUT)/bench-boot.json \
		--merge $(OUT)/bench-serve.json --merge $(OUT)/bench-fleet.json

clean:
	rm -rf $(OUT)

distclean: clean
	rm -rf $(VENV) .cache
