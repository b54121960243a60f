# Two commands matter (README quick start): `make demo` and `make test`. Both set everything up
# first on a fresh Debian 12 machine (root): Debian packages, then the project's virtualenv.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# image, iso, image-deps: the appliance image (images/build.py; README "Images").
.PHONY: image iso image-deps
.PHONY: setup deps venv test test-unit test-lab demo lint format bench clean

setup: deps image-deps venv

deps:
	bash scripts/install-deps.sh product lab dev

# --system-site-packages on Debian's python: python-nftables is Debian's python3-nftables.
# editable_mode=compat: a plain path in a .pth file. setuptools' default editable finder is Python
# code that every start-up imports (with pathlib): 0.6 s of each command in the emulated lab.
$(STAMP): pyproject.toml
	/usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(VENV)/bin/pip install -q --config-settings editable_mode=compat -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

test: setup
	$(PY) -m pytest -q -ra --durations=15 tests

test-unit: venv
	$(PY) -m pytest -q -ra -m 'not lab and not image' tests

test-lab: setup
	$(PY) -m pytest -q -ra -m lab tests

demo: setup
	bash scripts/demo.sh

# Lab timings against the targets (boot to first node command, 5 nodes applied); see bench/lab_boot.py.
bench: setup
	$(PY) bench/lab_boot.py

lint: venv
	$(VENV)/bin/ruff check appliance tests bench
	$(VENV)/bin/ruff format --check appliance tests bench

format: venv
	$(VENV)/bin/ruff format appliance tests bench

# Build-host packages of the image, the boot test, packer and vagrant validate (images/setup-build-host.sh).
image-deps:
	bash images/setup-build-host.sh

# Disk image (raw, qcow2) and live/installer ISO under build/images/; skipped when their inputs did not
# change. KERNEL=generic for bare metal (default: the cloud kernel, for VMs).
KERNEL ?= cloud
image: image-deps
	/usr/bin/python3 images/build.py --kernel $(KERNEL) image

iso: image-deps
	/usr/bin/python3 images/build.py --kernel $(KERNEL) iso

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
