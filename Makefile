# `make demo` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
SHARED ?= ../shared
DEMO_OUT ?= runs/demo

.PHONY: all setup sysdeps venv demo test bench proof clean

all: test

# Debian tools used by data_prep (psiblast for PSSMs, mmseqs for homology splits).
sysdeps:
	@if ! command -v psiblast >/dev/null || ! command -v mmseqs >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ncbi-blast+ mmseqs2 >/dev/null; \
	  else \
	    echo "psiblast/mmseqs missing: run 'sudo apt-get install ncbi-blast+ mmseqs2'" >&2; exit 1; \
	  fi; \
	fi
	@# SLURM and munge for tests/test_slurm_real.py (root only: it runs the daemons in a network namespace)
	@if [ "$$(id -u)" = 0 ] && { ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; }; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    slurmctld slurmd slurm-client munge iproute2 >/dev/null; \
	fi

# torch first (the CPU build on a CPU machine, the CUDA build where nvidia-smi works), then
# DeepSpeed without build isolation so that its build sees that torch instead of pulling another.
# pip's own chatter (index warnings, build-backend deprecations) goes to runs/logs/setup.log; a
# failure shows its end.
SETUP_LOG := runs/logs/setup.log
$(STAMP): pyproject.toml
	@mkdir -p $(dir $(SETUP_LOG))
	@echo "setting up $(VENV): torch $(TORCH_VERSION), DeepSpeed, this project (log: $(SETUP_LOG))"
	@( set -ex; \
	  test -x $(PY) || $(PYTHON) -m venv $(VENV); \
	  $(PIP) install -q --upgrade pip wheel setuptools; \
	  $(PIP) install -q torch==$(TORCH_VERSION); \
	  $(PIP) install -q --no-build-isolation deepspeed; \
	  $(PIP) install -q -e '.[test]' ) > $(SETUP_LOG) 2>&1 || { tail -n 30 $(SETUP_LOG); exit 1; }
	@touch $(STAMP)

venv: $(STAMP)

setup: sysdeps venv

# Each stage, its progress and results on the terminal; everything else in $(DEMO_OUT)/logs/.
demo: setup
	@PY=$(PY) SHARED=$(SHARED) DEMO_OUT=$(DEMO_OUT) bash scripts/demo.sh

# The proof run (issue 11): about 4 hours on 2 idle CPU cores; writes docs/results.md and docs/results.json.
# STAGES="data pretrain" runs some stages only (scripts/proof.sh lists them); finished work is skipped.
proof: setup
	PY=$(PY) SHARED=$(SHARED) bash scripts/proof.sh $(STAGES)

test: setup
	$(PY) -m pytest -q tests

bench: setup
	for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
