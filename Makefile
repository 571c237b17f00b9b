# Everyday entry points. `make test` and `make demo` work on a fresh clone: they create .venv,
# install the CPU build of torch first (a bare `torch` requirement would pull a multi-GB CUDA
# build), then this package with its dev extras.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
GPT := $(BIN)/gpt
DEMO := out/demo

.PHONY: install test demo data bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest

data: toy_data/shakespeare.txt

toy_data/shakespeare.txt: scripts/fetch_shakespeare.py | install
	$(BIN)/python scripts/fetch_shakespeare.py --out $@

demo: install data
	$(GPT) tokenizer train toy_data/shakespeare.txt --vocab-size 4096 --out $(DEMO)/tokenizer.json
	$(GPT) tokenizer info $(DEMO)/tokenizer.json
	$(GPT) tokenizer encode --tokenizer $(DEMO)/tokenizer.json "To be, or not to be, that is the question"
	$(GPT) tokenizer encode --tokenizer $(DEMO)/tokenizer.json "To be, or not to be" \
		| $(GPT) tokenizer decode --tokenizer $(DEMO)/tokenizer.json
	@echo

bench: install data
	$(BIN)/python benchmarks/bench_tokenizer.py

lint: install
	$(BIN)/ruff check gptcli tests benchmarks scripts
	$(BIN)/ruff format --check gptcli tests benchmarks scripts

clean:
	rm -rf out .pytest_cache .ruff_cache .hypothesis
