# Everyday entry points. `make test` and `make demo` work on a fresh clone: they create .venv,
# install the CPU build of torch first (a bare `torch` requirement would pull a multi-GB CUDA
# build), then this package: with what the demo needs (plots), or with its dev extras for the tests.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BASE_STAMP := $(VENV)/.installed-base
GPT := $(BIN)/gpt
DEMO := out/demo

.PHONY: install test test-any-cpu demo data bench lint clean gpu-wheels gpu-check gguf-check

install: $(STAMP)

$(BASE_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[plot]"
	touch $(BASE_STAMP)

$(STAMP): $(BASE_STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest

# The numeric tests again on torch's kernels without vector units (no AVX2/AVX-512/NEON): they round
# differently, as another CPU's do, so a test that holds only on this CPU's rounding fails here.
# Inductor's cache of compiled C++ does not key on the capability: vector code cached by `make test`
# fails to build without it, so this run keeps a cache of its own.
NUMERIC_TESTS := tests/models tests/training tests/generation tests/serving
test-any-cpu: install
	ATEN_CPU_CAPABILITY=default TORCHINDUCTOR_CACHE_DIR=$(CURDIR)/$(VENV)/inductor-no-vector \
		$(BIN)/python -m pytest $(NUMERIC_TESTS)

data: toy_data/shakespeare.txt

toy_data/shakespeare.txt: scripts/fetch_shakespeare.py | $(BASE_STAMP)
	$(BIN)/python scripts/fetch_shakespeare.py --out $@

# The main job end to end on 2 CPU cores in under 5 minutes, set-up included: a BPE tokenizer, a
# 1M-parameter GPT trained on Shakespeare (a sample printed at every eval), text generated from it,
# its loss on the held-out last 15,000 lines, a loss plot, and the tokenizer round trip.
demo: $(BASE_STAMP) data
	mkdir -p $(DEMO)
	head -n -15000 toy_data/shakespeare.txt > $(DEMO)/train.txt
	tail -n 15000 toy_data/shakespeare.txt > $(DEMO)/heldout.txt
	$(GPT) tokenizer train $(DEMO)/train.txt --vocab-size 2048 --out $(DEMO)/tokenizer.json
	$(GPT) train --tokenizer $(DEMO)/tokenizer.json --out $(DEMO)/run --overwrite \
		--n-layer 4 --n-head 4 --n-embd 128 --block-size 128 --batch-size 16 --dropout 0 \
		--max-iters 1400 --warmup-iters 100 --lr 2e-3 --eval-interval 350 --eval-iters 20 \
		--sample-tokens 120 --log-interval 100
	$(GPT) generate --checkpoint $(DEMO)/run --prompt "ROMEO:" --max-new-tokens 120 --seed 1
	$(GPT) eval --checkpoint $(DEMO)/run --data $(DEMO)/heldout.txt
	$(GPT) plot $(DEMO)/run --out $(DEMO)/loss.png
	$(GPT) tokenizer encode --tokenizer $(DEMO)/tokenizer.json "To be, or not to be" \
		| $(GPT) tokenizer decode --tokenizer $(DEMO)/tokenizer.json
	@echo

bench: install data
	$(BIN)/python benchmarks/bench_tokenizer.py
	$(BIN)/python benchmarks/bench_train.py --full-run
	$(BIN)/python benchmarks/bench_generate.py

# The GPU check (benchmarks/gpu_check.py, ~8 min) runs on a bare GPU machine with its own python3,
# torch and triton, no .venv and no network. `make gpu-wheels`, where there is a package index, puts
# the wheels such a machine lacks (pydantic and what it needs, the versions .venv holds) into .whl/;
# copy the repository with .whl/ and toy_data/shakespeare.txt there, then `make gpu-check`
# (GPU_REPORT=DIR for the report folder, GPU_CHECK_ARGS="--sections env,cli" for some sections).
GPU_PYTHON ?= python3
GPU_SITE ?= /tmp/site
GPU_REPORT ?= gpu-report
GPU_CHECK_ARGS ?=
GPU_WHEELS := pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
	typing-extensions==4.16.0
GPU_PLATFORMS := manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
	manylinux1_x86_64

gpu-wheels:
	$(PYTHON) -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(addprefix --platform ,$(GPU_PLATFORMS)) -d .whl $(GPU_WHEELS)

# no pip there? The wheels are zip files: unpacked into GPU_SITE they import the same.
gpu-check:
	if ls .whl/*.whl >/dev/null 2>&1; then \
		$(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
			--target $(GPU_SITE) .whl/*.whl \
		|| for w in .whl/*.whl; do $(GPU_PYTHON) -m zipfile -e $$w $(GPU_SITE) || exit 1; done; \
	fi
	PYTHONPATH=$(GPU_SITE):$(CURDIR) $(GPU_PYTHON) benchmarks/gpu_check.py --out $(GPU_REPORT) $(GPU_CHECK_ARGS)

# llama.cpp loads what `gpt export-gguf` writes (tests/test_gguf_llama_cpp.py). PyPI has llama-cpp-python
# only as source: the first run builds it (a CPU build: ~80 min on a busy 2-core VM) into LLAMA_CPP_DIR, its own
# folder beside .venv; later runs reuse it. It then runs benchmarks/bench_quant.py (ours vs llama.cpp,
# fp32 and int8). Not part of `make test`: there those tests skip, and
# tests/test_gguf.py checks the files with gguf's reader and an independent numpy forward pass.
LLAMA_CPP_DIR := .llama-cpp
LLAMA_CPP_PYTHON ?= llama-cpp-python==0.3.36
LLAMA_CPP_CMAKE ?= -DGGML_NATIVE=ON -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF \
	-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
	-DLLAMA_BUILD_SERVER=OFF

$(LLAMA_CPP_DIR)/.built: | $(STAMP)
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/python -m pip install \
		--no-binary llama-cpp-python --target $(LLAMA_CPP_DIR) --upgrade "$(LLAMA_CPP_PYTHON)" "diskcache>=5.6" \
		--no-deps
	touch $@

gguf-check: $(LLAMA_CPP_DIR)/.built
	PYTHONPATH=$(CURDIR)/$(LLAMA_CPP_DIR) $(BIN)/python -m pytest tests/test_gguf_llama_cpp.py -rs
	PYTHONPATH=$(CURDIR)/$(LLAMA_CPP_DIR) $(BIN)/python benchmarks/bench_quant.py

lint: install
	$(BIN)/ruff check gptcli tests benchmarks scripts
	$(BIN)/ruff format --check gptcli tests benchmarks scripts

clean:
	rm -rf out .pytest_cache .ruff_cache .hypothesis
