"""Int8 weight-only quantization (gptcli.models.int8): the error bounds of quantizing a row, the
product against a float reference (the CPU kernel and the dequantizing path), a quantized GPT's
logits against fp32, the tied table kept as one, and a row's greedy text the same in a batch as alone."""

import pytest
import torch
import torch.nn.functional as F

from gptcli.config import LoraConfig, ModelConfig
from gptcli.errors import GptError
from gptcli.generation.decoder import Decoder
from gptcli.models import GPT, LSTM
from gptcli.models.int8 import (
    KERNEL_MAX_TOKENS,
    QuantizedEmbedding,
    QuantizedLinear,
    dequantize_rows,
    empty_int8_model,
    int8_linear,
    is_quantized,
    quantize_model,
    quantize_rows,
)
from gptcli.models.lora import add_lora
from gptcli.storage.checkpoint import model_weights


def gpt(seed=0, **overrides) -> GPT:
    torch.manual_seed(seed)
    shape = dict(vocab_size=200, block_size=64, n_layer=2, n_head=4, n_embd=64)
    model = GPT(ModelConfig(**(shape | overrides))).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(10)  # a random model's logits spread out, as a trained one's
    return model


def test_a_row_is_recovered_within_half_its_scale():
    torch.manual_seed(0)
    w = torch.randn(300, 257) * torch.logspace(-3, 1, 300)[:, None]  # rows of very different sizes
    w[5] = 0  # an all-zero row
    w[7, 3] = 50.0  # an outlier sets its row's scale
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and q.shape == w.shape
    assert int(q.abs().max()) <= 127 and torch.equal(q[5], torch.zeros_like(q[5]))
    amax = w.abs().amax(dim=1)
    nonzero = amax > 0
    # each scale is a bfloat16 value (what the CPU kernel multiplies by), at least max|w| / 127 and
    # less than 1% above it
    assert torch.equal(scale, scale.bfloat16().float())
    assert (scale[nonzero] >= amax[nonzero] / 127).all()
    assert (scale[nonzero] <= amax[nonzero] / 127 * 1.01).all()
    error = (w - dequantize_rows(q, scale)).abs()
    assert (error <= scale[:, None] / 2 * (1 + 1e-6)).all()  # round to nearest: half a step at most
    assert int(q[7].abs().max()) == 127  # the largest value of a row uses the full range


def test_the_product_is_the_dequantized_weights_product():
    torch.manual_seed(1)
    linear = torch.nn.Linear(96, 80)
    layer = QuantizedLinear.of(linear)
    reference_weight = dequantize_rows(layer.weight, layer.scale)
    for shape in ((3, 96), (2, 5, 96), (2, KERNEL_MAX_TOKENS + 1, 96)):
        x = torch.randn(*shape)
        want = F.linear(x.double(), reference_weight.double(), linear.bias.double())
        got = layer(x)
        assert got.shape == want.shape and got.dtype == torch.float32
        # few tokens: a CPU kernel (torch's takes bf16 activations: 2**-8 relative); more: fp32 throughout
        tolerance = 1e-2 if shape[-2] <= KERNEL_MAX_TOKENS else 1e-5
        assert (got - want).abs().max() <= tolerance * want.abs().max()
    x = torch.randn(4, 96, dtype=torch.bfloat16)  # a bf16 model's activations stay bf16
    assert (
        int8_linear(x, layer.weight, layer.scale.bfloat16(), linear.bias.bfloat16()).dtype == torch.bfloat16
    )


@pytest.mark.parametrize(
    "shape",
    [{}, {"tie_weights": False}, {"pos_emb": "rope", "n_kv_head": 2, "bias": False}, {"norm": "rmsnorm"}],
    ids=["gpt2-like", "untied", "rope-gqa", "rmsnorm"],
)
def test_int8_logits_are_close_to_fp32(shape):
    model = gpt(**shape)
    ids = torch.randint(0, 200, (2, 40))
    with torch.no_grad():
        want, _ = model(ids)
        quantize_model(model)
        got, _ = model(ids)
    assert is_quantized(model)
    assert (got - want).abs().max() <= 0.03 * want.abs().max()
    p, q = F.log_softmax(want, -1), F.log_softmax(got, -1)
    kl = (p.exp() * (p - q)).sum(-1).mean()  # what perplexity feels: tiny
    assert kl < 2e-3, kl
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.9


def test_a_tied_head_and_embedding_share_one_int8_table():
    model = quantize_model(gpt())
    wte, head = model.transformer.wte, model.lm_head
    assert isinstance(wte, QuantizedEmbedding) and isinstance(head, QuantizedLinear)
    assert wte.weight is head.weight and wte.weight.dtype == torch.int8
    weights = model_weights(model)  # what a checkpoint holds: the table once
    assert "lm_head.weight" not in weights and weights["transformer.wte.weight"].dtype == torch.int8
    ids = torch.tensor([[0, 5, 199]])
    assert torch.equal(wte(ids)[0], dequantize_rows(head.weight, head.scale)[ids[0]])
    untied = quantize_model(gpt(tie_weights=False))
    assert untied.transformer.wte.weight is not untied.lm_head.weight
    # every matrix is int8, every Linear quantized: about a quarter of the float bytes
    float_bytes = sum(t.numel() * 4 for t in model_weights(gpt()).values())
    int8_bytes = sum(t.numel() * t.element_size() for t in weights.values())
    assert int8_bytes < 0.3 * float_bytes


def test_an_empty_int8_model_has_the_quantized_models_tensors():
    model = quantize_model(gpt())
    empty = empty_int8_model(model.config)
    want, got = model_weights(model), model_weights(empty)
    assert list(got) == list(want)
    assert all(got[k].dtype == want[k].dtype and got[k].shape == want[k].shape for k in want)


def test_only_a_plain_gpt_is_quantized():
    with pytest.raises(GptError, match="for the GPT"):
        quantize_model(LSTM(ModelConfig(arch="lstm", vocab_size=20, n_embd=16)))
    with pytest.raises(GptError, match="int8 already"):
        quantize_model(quantize_model(gpt()))
    adapted = gpt()
    add_lora(adapted, LoraConfig(r=2))
    with pytest.raises(GptError, match="merge them first"):
        quantize_model(adapted)


def greedy(decoder: Decoder, rows: list[list[int]], steps: int) -> tuple[list[list[int]], torch.Tensor]:
    """Greedy tokens of each row, and every step's logits (steps, B, V)."""
    logits = decoder.prefill(rows)
    tokens, seen = [], []
    for _ in range(steps):
        seen.append(logits)
        next_ids = logits.argmax(-1)
        tokens.append(next_ids.tolist())
        logits = decoder.step(next_ids)
    return [list(t) for t in zip(*tokens)], torch.stack(seen)


@pytest.mark.parametrize("shape", [{}, {"pos_emb": "rope", "n_kv_head": 2}], ids=["learned", "rope-gqa"])
def test_a_rows_greedy_text_is_the_same_in_a_batch_as_alone(shape):
    model = quantize_model(gpt(seed=3, **shape))
    prompts = [[1, 2, 3, 4, 5], [9, 8, 7, 6, 5], [100, 150, 3, 3, 199], [42] * 5]
    together, batch_logits = greedy(Decoder(model, len(prompts), 64), prompts, 24)
    for i, prompt in enumerate(prompts):
        alone, logits = greedy(Decoder(model, 1, 64), [prompt], 24)
        assert together[i] == alone[0]
        # the same kernel for a row whatever the batch: equal to float rounding, not to bf16's
        assert torch.allclose(batch_logits[:, i], logits[:, 0], rtol=0, atol=1e-4)
