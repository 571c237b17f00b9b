"""On a CUDA GPU only (the whole module skips without one): what the CPU suite cannot check.

`make gpu-check` runs it first (benchmarks/gpu_check.py, section "tests"); alone:
`python -m pytest tests/gpu -q`. Tiny models, under two minutes on one GPU:
flash == explicit attention in fp32 and under bf16 autocast; bf16 and fp16 (GradScaler) training
through `train` with a finite, falling loss; `compile=True` training == eager training; KV-cache
generation == recomputation; the CUDA-graph decode step == the eager one, step by step and
through `Engine(compile=True)`, in fp32 and with the weights cast to bf16.
"""

import json
import math

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU here: these tests run on one (make gpu-check)", allow_module_level=True)

from gptcli.config import ModelConfig, SampleConfig, TrainConfig
from gptcli.generation import Engine
from gptcli.generation.decoder import Decoder
from gptcli.models import GPT
from gptcli.runtime import DTYPES
from gptcli.tokenizers import CharTokenizer
from gptcli.training.trainer import train
from tests.conftest import SONNETS

CUDA = torch.device("cuda")
GREEDY = dict(temperature=0.0, ignore_eos=True)


def cuda_model(seed=0, **overrides) -> GPT:
    torch.manual_seed(seed)
    config = dict(vocab_size=40, block_size=32, n_layer=2, n_head=4, n_embd=64, dropout=0.0)
    config.update(overrides)
    return GPT(ModelConfig(**config)).to(CUDA).eval()


def peaked(model: GPT) -> GPT:
    """Larger logits, so that a greedy pick is not a near-tie that bf16 rounding could flip."""
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # tied: the token embedding too, which the first norm undoes
    return model


def char_tokenizer(n=39) -> CharTokenizer:
    chars = [chr(ord("a") + i) if i < 26 else chr(ord("0") + i - 26) for i in range(n)]
    return CharTokenizer(chars, {"<|endoftext|>": n})


@torch.no_grad()
def greedy_by_recomputation(model: GPT, prompt: list[int], n_new: int) -> list[int]:
    """The whole visible context through the model at every step, no cache, with the engine's rule
    for a full context (keep its last 3/4)."""
    block = model.config.block_size
    keep = max(1, block - block // 4)
    visible, out = list(prompt[-block:]), []
    for _ in range(n_new):
        logits, _ = model(torch.tensor([visible], device=CUDA))
        token = int(logits[0, -1].argmax())
        out.append(token)
        visible = (visible + [token])[-keep:] if len(visible) == block else visible + [token]
    return out


def tiny_run(tmp_path, name: str, **overrides) -> list[float]:
    """A short char-level run on the sonnets, on the GPU -> its loss at every step."""
    values = dict(
        data=[str(SONNETS)],
        tokenizer="char",
        data_cache=tmp_path / "cache",
        model=dict(n_layer=2, n_head=4, n_embd=64, block_size=64, dropout=0.0),
        batch_size=16,
        max_iters=30,
        lr=3e-3,
        warmup_iters=5,
        eval_interval=30,
        eval_iters=2,
        log_interval=1,
        sample_tokens=0,
        device="cuda",
    )
    values.update(overrides)
    run_dir = tmp_path / name
    train(TrainConfig(**values), run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def assert_falls(losses: list[float]) -> None:
    assert all(math.isfinite(x) for x in losses), losses
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.2, losses


# ---------------------------------------------------------------------------------------------
# attention


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize(
    "variant", [dict(), dict(pos_emb="rope", n_kv_head=2, window=8)], ids=["gpt2", "rope-gqa-window"]
)
def test_flash_attention_equals_the_explicit_path(precision, variant):
    flash = cuda_model(flash=True, **variant)
    explicit = cuda_model(flash=False, **variant)
    explicit.load_state_dict(flash.state_dict())
    idx = torch.randint(0, 40, (4, 32), device=CUDA, generator=torch.Generator(CUDA).manual_seed(1))
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
        a, b = flash(idx)[0].float(), explicit(idx)[0].float()
    tol = dict(atol=1e-4, rtol=1e-4) if precision == "fp32" else dict(atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(a, b, **tol)


# ---------------------------------------------------------------------------------------------
# training


def test_bf16_training_lowers_the_loss(tmp_path):
    assert_falls(tiny_run(tmp_path, "bf16", precision="bf16"))


def test_fp16_training_runs_through_the_grad_scaler_and_lowers_the_loss(tmp_path, monkeypatch):
    steps = []
    update = torch.amp.GradScaler.update

    def spy(self, *args, **kwargs):
        steps.append((self.is_enabled(), self.get_scale()))
        return update(self, *args, **kwargs)

    monkeypatch.setattr(torch.amp.GradScaler, "update", spy)
    assert_falls(tiny_run(tmp_path, "fp16", precision="fp16"))
    assert len(steps) == 30 and all(enabled for enabled, _ in steps)
    assert all(math.isfinite(scale) and scale > 0 for _, scale in steps)


def test_compiled_training_follows_eager_training(tmp_path):
    eager = tiny_run(tmp_path, "eager", precision="bf16", max_iters=10)
    compiled = tiny_run(tmp_path, "compiled", precision="bf16", max_iters=10, compile=True)
    assert all(math.isfinite(x) for x in compiled)
    # the same batches and initial weights: only kernel fusion and bf16 rounding differ
    assert compiled == pytest.approx(eager, abs=5e-2), (compiled, eager)
    assert compiled[-1] < compiled[0]


# ---------------------------------------------------------------------------------------------
# generation


@pytest.mark.parametrize(
    "variant", [dict(), dict(pos_emb="rope", n_kv_head=2, window=8)], ids=["gpt2", "rope-gqa-window"]
)
def test_kv_cache_generation_equals_recomputation(variant):
    model = cuda_model(**variant)
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    n_new = 60  # the context (32) fills and is cropped twice
    result = Engine(model, char_tokenizer()).generate(
        prompt, SampleConfig(max_new_tokens=n_new, num_samples=2, **GREEDY)
    )
    expected = greedy_by_recomputation(model, prompt, n_new)
    assert [s.ids for s in result.samples] == [expected, expected]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_decoding_equals_eager_decoding(precision):
    """Decoder(compile=True) on CUDA replays a captured CUDA graph: the eager step's logits at every
    step, before and after a new prefill; through the engine, fp32 gives the greedy ids of
    recomputation (across a full context and its re-prefill). In bf16 the logits are compared with a
    tolerance (the two paths round differently), not the greedy ids, which a near-tie could flip."""
    model = peaked(cuda_model(pos_emb="rope", n_kv_head=2))
    if precision == "bf16":
        model.to(torch.bfloat16)  # what Engine(precision="bf16") does, once
    eager, graphed = Decoder(model, 2, 32), Decoder(model, 2, 32, compile=True)
    assert graphed.use_graph
    tol = dict(atol=1e-4, rtol=1e-4) if precision == "fp32" else dict(atol=5e-2, rtol=2e-2)
    for prompt, steps in (([3, 1, 4, 1, 5], 12), (list(range(1, 25)), 6)):  # then at positions 24..30
        a, b = eager.prefill([prompt] * 2), graphed.prefill([prompt] * 2)
        for _ in range(steps):
            torch.testing.assert_close(b.float(), a.float(), **tol)
            nxt = a.argmax(-1)
            a, b = eager.step(nxt), graphed.step(nxt)
        torch.testing.assert_close(b.float(), a.float(), **tol)
    assert graphed.graph is not None  # captured once, replayed since

    prompt, config = [3, 1, 4, 1, 5], SampleConfig(max_new_tokens=40, num_samples=2, **GREEDY)  # 45 > 32
    engine = Engine(model, char_tokenizer(), precision=precision, compile=True)
    engine.decoders[(2, 32)] = graphed  # the engine's own for 2 rows (compiling another costs seconds)
    got = [s.ids for s in engine.generate(prompt, config).samples]
    assert list(engine.decoders) == [(2, 32)] and len(got[0]) == 40 and got[0] == got[1]
    if precision == "fp32":
        expected = greedy_by_recomputation(model, prompt, 40)
        assert got == [expected, expected]
    assert {p.dtype for p in model.parameters()} == {DTYPES[precision]}
