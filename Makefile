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

# The main job end to end on 2 CPU cores in about 5 minutes: a BPE tokenizer, a 1M-parameter GPT
# trained on Shakespeare (a sample printed at every eval), text generated from it, its loss on the
# held-out last 15,000 lines, a loss plot, and the tokenizer round trip.
demo: install data
	mkdir -p $(DEMO)
	head -n -15000 toy_data/shakespeare.txt > $(DEMO)/train.txt
	tail -n 15000 toy_data/shakespeare.txt > $(DEMO)/heldout.txt
	$(GPT) tokenizer train $(DEMO)/train.txt --vocab-size 2048 --out $(DEMO)/tokenizer.json
	$(GPT) train --tokenizer $(DEMO)/tokenizer.json --out $(DEMO)/run --overwrite \
		--n-layer 4 --n-head 4 --n-embd 128 --block-size 128 --batch-size 16 --dropout 0 \
		--max-iters 2000 --warmup-iters 100 --lr 2e-3 --eval-interval 500 --eval-iters 20 \
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

lint: install
	$(BIN)/ruff check gptcli tests benchmarks scripts
	$(BIN)/ruff format --check gptcli tests benchmarks scripts

clean:
	rm -rf out .pytest_cache .ruff_cache .hypothesis
