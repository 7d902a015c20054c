# Two commands set everything up on a fresh Debian 12 / Raspberry Pi OS Bookworm machine:
#   make demo   installs what is missing, then runs a fleet through a cut uplink and audits it
#   make test   installs what is missing, then runs ruff, mypy and pytest
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
EXTRAS ?= sensor,test,salt
DEMO_ARGS ?=
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
comma := ,

.PHONY: demo test lint typecheck pytest bench powercut system-deps powercut-deps venv clean

system-deps:
	@if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then \
		echo "installing mosquitto from apt"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq mosquitto mosquitto-clients; \
	fi
	@# The Salt tests run `vagrant validate`; without --no-install-recommends apt pulls in 1.3 GB.
	@if ! command -v vagrant >/dev/null 2>&1; then \
		echo "installing vagrant from apt"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends vagrant; \
	fi
	@# The lab: network namespaces (iproute2), mount namespaces (util-linux) and, where the kernel
	@# has no netem qdisc, packet loss by nftables.
	@if ! command -v nft >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1 || ! command -v nsenter >/dev/null 2>&1; then \
		echo "installing nftables, iproute2 and util-linux from apt"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends nftables iproute2 util-linux; \
	fi
	@if ! $(PYTHON) -c 'import venv, ensurepip' >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-venv; \
	fi

# The power-cut suite's VM: qemu (TCG), a Debian kernel and root image built from apt.
powercut-deps:
	@if ! command -v qemu-system-x86_64 >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1 \
		|| ! command -v socat >/dev/null 2>&1 || [ ! -x /bin/busybox ] || ! command -v cpio >/dev/null 2>&1; then \
		echo "installing qemu, debootstrap, busybox-static, socat and cpio from apt"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
			qemu-system-x86 qemu-utils debootstrap busybox-static socat cpio e2fsprogs; \
	fi

$(STAMP): pyproject.toml
	@[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[$(EXTRAS)]'
	@touch $@

venv: $(STAMP)

demo: system-deps venv
	$(VENV)/bin/saltmarsh demo $(DEMO_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy

pytest: system-deps venv
	$(VENV)/bin/pytest

test: system-deps venv lint typecheck pytest

bench: system-deps venv
	$(VENV)/bin/python -m bench

# Power cuts of a gateway VM, a sensor VM and the native-bridge peer, audited; results into bench/RESULTS.md (~25 min).
powercut: system-deps powercut-deps venv
	$(VENV)/bin/python -m bench --only powercut --runs 1 --strict

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
