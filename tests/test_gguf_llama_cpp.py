"""llama.cpp itself, through llama-cpp-python, runs what `gpt export-gguf` writes and matches our model:
its tokenization of a text with special tokens and non-ASCII equals ours, its logits equal ours (f32
within 1e-3 of the largest logit; q8_0 within what 8-bit weights and activations allow), and its greedy
continuation is ours (a step may differ only where our top two logits are that close).

PyPI has llama-cpp-python only as source, so this runs where it is built: `make gguf-check` builds it
once into .llama-cpp/ and runs this file; elsewhere (make test, CI) it is skipped, and
tests/test_gguf.py checks the same files with gguf's reader and an independent numpy forward pass.

On CPUs with AMX, llama.cpp's weight repacking (its "extra buffer types") crashes Q8_0 matmuls: models
load here with use_extra_bufts off, what llama-cli's --no-repack does.
"""

import numpy as np
import pytest
import torch

from gptcli.loading import load_checkpoint
from tests.conftest import SONNETS
from tests.gguf_reference import MODELS, SPECIAL_TEXT, TRAILING, export_models

llama_cpp = pytest.importorskip("llama_cpp")

TOLERANCE = {"f32": 1e-3, "q8_0": 5e-2}  # of the largest logit
PROMPT = "Shall I compare thee to a summer's day?\nThou art"
N_NEW = 20


@pytest.fixture(scope="module")
def llama(monkeypatch_module):
    """Llama(path) -> a llama.cpp model with repacking off, logits of every position kept."""
    defaults = llama_cpp.llama_cpp.llama_model_default_params

    def no_repack():
        params = defaults()
        params.use_extra_bufts = False  # AMX: repacked Q8_0 matmuls crash (the module docstring)
        return params

    monkeypatch_module.setattr(llama_cpp.llama_cpp, "llama_model_default_params", no_repack)
    return lambda path: llama_cpp.Llama(
        model_path=str(path), n_ctx=64, n_batch=64, logits_all=True, n_threads=2, verbose=False
    )


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return export_models(tmp_path_factory.mktemp("gguf-llama"), list(TOLERANCE))


def llama_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float64)  # (T, V)


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("name", MODELS)
def test_llama_cpp_runs_the_export_as_we_do(exports, llama, name, dtype):
    directory, path = exports[name, dtype]
    ours, tok, _ = load_checkpoint(directory)
    llm = llama(path)

    # 1) tokenization: special tokens as theirs, non-ASCII, odd whitespace, and the sonnets (gpt2's
    # pattern also where a text ends in whitespace after a newline: gpt4's differs there, as documented)
    texts = [SPECIAL_TEXT, SONNETS.read_text(encoding="utf-8")[:3000]]
    for text in texts + (TRAILING if tok.pattern_name == "gpt2" else []):
        assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == tok.encode(
            text, allow_special=True
        )

    # 2) logits at every position
    ids = tok.encode(SPECIAL_TEXT, allow_special=True)[:60]
    got = llama_logits(llm, ids)
    with torch.no_grad():
        want = ours(torch.tensor([ids]))[0][0, :, : tok.vocab_size].double().numpy()
    scale = np.abs(want).max()
    err = np.abs(got - want).max() / scale
    assert err < TOLERANCE[dtype], f"largest difference {err:.2e} of the largest logit"

    # 3) greedy continuation, decoded by llama.cpp through its KV cache, checked against our logits of
    # the same context at every step
    context = tok.encode(PROMPT)
    llm.reset()
    llm.eval(context)
    for step in range(N_NEW):
        theirs = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        with torch.no_grad():
            logits = ours(torch.tensor([context]))[0][0, -1, : tok.vocab_size].double().numpy()
        gap = logits.max() - logits[theirs]
        assert gap <= TOLERANCE[dtype] * scale, f"step {step}: llama.cpp picks {theirs}, we {logits.argmax()}"
        if gap > 0:
            break  # a near-tie went the other way: from here the two contexts differ
        context.append(theirs)
        llm.eval([theirs])
