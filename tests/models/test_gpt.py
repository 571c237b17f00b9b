"""The GPT model: attention paths agree, causality, positions, GQA, windows, KV cache, HF GPT-2 parity."""

import math

import pytest
import torch
import torch.nn.functional as F

from gptcli.config import ModelConfig, validate
from gptcli.errors import GptError
from gptcli.models.gpt import GPT
from gptcli.models.positions import apply_rotary, attention_mask, rope_tables
from gptcli.runtime import mfu

POS_EMBS = ["learned", "rope", "sinusoidal", "none"]
# (n_kv_head, window): MHA, GQA, MQA, sliding window, GQA + window
ATTENTION = [(None, None), (2, None), (1, None), (None, 3), (2, 3)]
ATTENTION_IDS = ["mha", "gqa", "mqa", "window", "gqa-window"]


def make_model(seed: int = 0, **overrides) -> GPT:
    """A tiny model in eval mode (no dropout), deterministic weights."""
    values = dict(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32, dropout=0.0)
    values.update(overrides)
    torch.manual_seed(seed)
    return GPT(ModelConfig(**values)).eval()


def tokens(B: int = 2, T: int = 10, vocab_size: int = 50, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (B, T), generator=g)


def logits_of(model: GPT, idx: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(idx, **kwargs)[0]


# ---------------------------------------------------------------------------------------------------
# Attention paths, causality, GQA, windows


@pytest.mark.parametrize("n_kv_head,window", ATTENTION, ids=ATTENTION_IDS)
@pytest.mark.parametrize("pos_emb", POS_EMBS)
def test_flash_and_explicit_attention_agree(pos_emb, n_kv_head, window):
    flash = make_model(pos_emb=pos_emb, n_kv_head=n_kv_head, window=window, flash=True)
    explicit = make_model(pos_emb=pos_emb, n_kv_head=n_kv_head, window=window, flash=False)
    explicit.load_state_dict(flash.state_dict())
    idx = tokens()
    torch.testing.assert_close(logits_of(flash, idx), logits_of(explicit, idx), atol=1e-5, rtol=0)


@pytest.mark.parametrize("flash", [True, False])
@pytest.mark.parametrize("n_kv_head,window", ATTENTION, ids=ATTENTION_IDS)
@pytest.mark.parametrize("pos_emb", POS_EMBS)
def test_a_token_changes_nothing_before_it_nor_beyond_the_windows_reach(pos_emb, n_kv_head, window, flash):
    model = make_model(pos_emb=pos_emb, n_kv_head=n_kv_head, window=window, flash=flash)
    idx = tokens(T=12)
    before = logits_of(model, idx)
    t = 4
    changed = idx.clone()
    changed[:, t] = (changed[:, t] + 1) % 50
    after = logits_of(model, changed)
    torch.testing.assert_close(after[:, :t], before[:, :t], atol=0, rtol=0)
    assert not torch.allclose(after[:, t], before[:, t])
    if window is not None:
        # each layer looks window-1 tokens back, so token t reaches at most n_layer*(window-1) further
        reach = t + model.config.n_layer * (window - 1)
        assert not torch.allclose(after[:, reach], before[:, reach])
        torch.testing.assert_close(after[:, reach + 1 :], before[:, reach + 1 :], atol=0, rtol=0)


@pytest.mark.parametrize("flash", [True, False])
def test_n_kv_head_equal_to_n_head_is_plain_multi_head_attention(flash):
    default = make_model(n_kv_head=None, flash=flash)
    explicit = make_model(n_kv_head=4, flash=flash)
    assert default.config.n_kv_head == 4
    shapes = {k: v.shape for k, v in default.state_dict().items()}
    assert shapes == {k: v.shape for k, v in explicit.state_dict().items()}
    assert shapes["transformer.h.0.attn.c_attn.weight"] == (3 * 32, 32)
    idx = tokens()
    torch.testing.assert_close(logits_of(default, idx), logits_of(explicit, idx), atol=0, rtol=0)


@pytest.mark.parametrize("n_kv_head,size", [(2, 32 + 2 * 2 * 8), (1, 32 + 2 * 1 * 8)])
def test_grouped_kv_heads_shrink_c_attn(n_kv_head, size):
    model = make_model(n_kv_head=n_kv_head)
    assert model.transformer.h[0].attn.c_attn.weight.shape == (size, 32)


@pytest.mark.parametrize("flash", [True, False])
@pytest.mark.parametrize("pos_emb", POS_EMBS)
def test_a_window_as_long_as_the_sequence_is_full_attention(pos_emb, flash):
    full = make_model(pos_emb=pos_emb, flash=flash)
    idx = tokens(T=10)
    expected = logits_of(full, idx)
    for window in (10, 16):
        windowed = make_model(pos_emb=pos_emb, window=window, flash=flash)
        torch.testing.assert_close(logits_of(windowed, idx), expected, atol=1e-6, rtol=0)


def test_attention_mask_is_causal_and_windowed():
    # query i at position 2 + i sees keys j with i + 2 - 3 < j <= i + 2
    expected = torch.tensor(
        [
            [1, 1, 1, 0, 0],
            [0, 1, 1, 1, 0],
            [0, 0, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(attention_mask(3, 2, 3), expected)
    assert torch.equal(attention_mask(4, 0, None), torch.ones(4, 4, dtype=torch.bool).tril())


def test_dropout_is_random_in_training_and_off_in_eval():
    for flash in (True, False):
        model = make_model(dropout=0.5, flash=flash)
        idx = tokens()
        torch.testing.assert_close(logits_of(model, idx), logits_of(model, idx), atol=0, rtol=0)
        model.train()
        assert not torch.allclose(logits_of(model, idx), logits_of(model, idx))


# ---------------------------------------------------------------------------------------------------
# Positions


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    hs = 16
    cos, sin = rope_tables(64, hs, base=10000.0)
    q, k = torch.randn(1, 1, 1, hs), torch.randn(1, 1, 1, hs)

    def score(m: int, n: int) -> torch.Tensor:
        qm = apply_rotary(q, cos[m : m + 1], sin[m : m + 1])
        kn = apply_rotary(k, cos[n : n + 1], sin[n : n + 1])
        return (qm * kn).sum()

    for m, n in [(5, 2), (3, 3), (0, 7)]:
        for shift in (1, 10, 40):
            torch.testing.assert_close(score(m, n), score(m + shift, n + shift), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(score(5, 2), score(5, 3))
    # a rotation: lengths are kept, and position 0 is the identity
    torch.testing.assert_close(apply_rotary(q, cos[9:10], sin[9:10]).norm(), q.norm())
    torch.testing.assert_close(apply_rotary(q, cos[:1], sin[:1]), q)


@pytest.mark.parametrize("pos_emb", POS_EMBS)
def test_position_tables_are_not_saved(pos_emb):
    model = make_model(pos_emb=pos_emb)
    keys = set(model.state_dict())
    assert ("transformer.wpe.weight" in keys) == (pos_emb == "learned")
    assert not any("rope" in k or "sinusoid" in k for k in keys)


def test_without_positions_the_model_sees_a_bag_of_earlier_tokens():
    # "none" adds nothing: with one layer, the last token's logits ignore the order of the earlier ones
    # (deeper, the earlier tokens' own causal views differ once they are permuted)
    model = make_model(pos_emb="none", n_layer=1)
    idx = tokens(T=6)
    permuted = idx[:, [2, 0, 4, 1, 3, 5]]
    torch.testing.assert_close(
        logits_of(model, idx)[:, -1], logits_of(model, permuted)[:, -1], atol=1e-5, rtol=0
    )
    learned = make_model(pos_emb="learned", n_layer=1)
    assert not torch.allclose(logits_of(learned, idx)[:, -1], logits_of(learned, permuted)[:, -1])


# ---------------------------------------------------------------------------------------------------
# KV cache


@pytest.mark.parametrize("flash", [True, False])
@pytest.mark.parametrize("n_kv_head,window", ATTENTION, ids=ATTENTION_IDS)
@pytest.mark.parametrize("pos_emb", POS_EMBS)
def test_kv_cache_decoding_equals_full_recomputation(pos_emb, n_kv_head, window, flash):
    model = make_model(pos_emb=pos_emb, n_kv_head=n_kv_head, window=window, flash=flash)
    idx = tokens(T=12)
    full = logits_of(model, idx)  # (B, T, V)

    # prefill 4 tokens, then one token at a time
    cache = model.new_cache(batch_size=2)
    prefill = logits_of(model, idx[:, :4], cache=cache)
    torch.testing.assert_close(prefill, full[:, :4], atol=1e-5, rtol=0)
    assert cache.pos == 4
    for t in range(4, 12):
        step = logits_of(model, idx[:, t : t + 1], cache=cache)
        torch.testing.assert_close(step[:, 0], full[:, t], atol=1e-5, rtol=0)
    assert cache.pos == 12

    # prefill in two chunks (the second attends to the first through the cache)
    cache.reset()
    first = logits_of(model, idx[:, :5], cache=cache)
    second = logits_of(model, idx[:, 5:], cache=cache)
    torch.testing.assert_close(torch.cat([first, second], dim=1), full, atol=1e-5, rtol=0)


def test_kv_cache_is_preallocated_per_layer():
    model = make_model(n_kv_head=2)
    cache = model.new_cache(batch_size=3, max_len=8)
    assert len(cache.k) == len(cache.v) == 2
    assert cache.k[0].shape == (3, 2, 8, 8) and cache.k[0].dtype == torch.float32
    assert cache.pos == 0 and cache.max_len == 8
    assert model.new_cache(1).max_len == 16
    assert model.new_cache(1, dtype=torch.bfloat16).v[1].dtype == torch.bfloat16


def test_too_long_sequences_are_clear_errors():
    model = make_model()
    with pytest.raises(GptError, match="block_size"):
        model(tokens(T=17))
    with pytest.raises(GptError, match="max_len"):
        model.new_cache(1, max_len=17)
    cache = model.new_cache(batch_size=2, max_len=8)
    model(tokens(T=6), cache=cache)
    with pytest.raises(GptError, match="KV cache full"):
        model(tokens(T=3), cache=cache)
    assert cache.pos == 6  # a refused call leaves the cache as it was
    with pytest.raises(GptError, match="batch"):
        model(tokens(B=1, T=1), cache=cache)


# ---------------------------------------------------------------------------------------------------
# Weights, vocab padding, init, loss, optimizer


def test_tied_weights_share_storage_and_untied_do_not():
    tied = make_model(tie_weights=True)
    assert tied.lm_head.weight is tied.transformer.wte.weight
    assert tied.lm_head.weight.data_ptr() == tied.transformer.wte.weight.data_ptr()
    untied = make_model(tie_weights=False)
    assert untied.lm_head.weight.data_ptr() != untied.transformer.wte.weight.data_ptr()
    assert untied.num_params(non_embedding=False) - tied.num_params(non_embedding=False) == 64 * 32


def test_vocab_is_padded_but_logits_are_not():
    model = make_model(vocab_size=100)
    assert model.config.padded_vocab_size == 128
    assert model.transformer.wte.weight.shape == (128, 32)
    assert model.lm_head.weight.shape == (128, 32)
    logits, _ = model(tokens(vocab_size=100))
    assert logits.shape == (2, 10, 100)


def test_training_logits_skip_the_padding_rows_and_match_the_full_head():
    # with targets on a CPU the head multiplies by the vocabulary's 100 rows only, not all 128
    model = make_model(vocab_size=100)
    idx, targets = tokens(vocab_size=100), tokens(vocab_size=100, seed=2)
    logits, loss = model(idx, targets)
    full = logits_of(model, idx)  # no targets: the whole padded head, then cut to 100
    assert torch.allclose(logits, full, atol=1e-6)
    assert loss.item() == pytest.approx(
        F.cross_entropy(full.reshape(-1, 100), targets.reshape(-1)).item(), abs=1e-6
    )
    assert logits.is_contiguous()  # not a slice of a wider tensor
    loss.backward()
    assert torch.all(model.lm_head.weight.grad[100:] == 0)  # padding rows stay untrained
    assert model.lm_head.weight.grad[:100].abs().sum() > 0


def test_init_follows_gpt2():
    torch.manual_seed(0)
    n_layer = 4
    model = GPT(ModelConfig(vocab_size=256, block_size=64, n_layer=n_layer, n_head=4, n_embd=128))
    resid_std = 0.02 / math.sqrt(2 * n_layer)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert p.std().item() == pytest.approx(resid_std, rel=0.05), name
        elif name.endswith(("c_attn.weight", "c_fc.weight", "wte.weight", "wpe.weight")):
            assert p.std().item() == pytest.approx(0.02, rel=0.05), name
        elif name.endswith(".bias"):
            assert torch.all(p == 0), name
        elif "ln_" in name:
            assert torch.all(p == 1), name


def test_rmsnorm_and_exact_gelu_and_no_bias():
    model = make_model(norm="rmsnorm", gelu="exact", bias=False)
    assert not any(name.endswith(".bias") for name, _ in model.named_parameters())
    assert model.transformer.h[0].mlp.gelu.approximate == "none"
    x = torch.randn(3, 32) * 5
    y = model.transformer.ln_f(x)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(3), atol=1e-4, rtol=0)
    assert torch.isfinite(model(tokens())[0]).all()


def test_fresh_model_loss_is_about_ln_vocab_size():
    model = make_model(vocab_size=500, n_embd=64)
    _, loss = model(tokens(B=4, T=16, vocab_size=500), targets=tokens(B=4, T=16, vocab_size=500, seed=2))
    assert abs(loss.item() - math.log(500)) < 0.3


def test_targets_of_minus_one_are_ignored():
    model = make_model()
    idx, targets = tokens(), tokens(seed=2)
    masked = targets.clone()
    masked[:, 5:] = -1
    _, loss = model(idx, targets=masked)
    logits, _ = model(idx)
    expected = torch.nn.functional.cross_entropy(logits[:, :5].reshape(-1, 50), targets[:, :5].reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_a_tiny_model_overfits_a_tiny_batch():
    model = make_model(vocab_size=32, n_layer=1, n_embd=32, block_size=16).train()
    idx, targets = tokens(B=2, T=16, vocab_size=32), tokens(B=2, T=16, vocab_size=32, seed=2)
    optimizer = model.configure_optimizers(
        weight_decay=0.0, learning_rate=1e-2, betas=(0.9, 0.95), device_type="cpu"
    )
    for _ in range(60):  # about 25 steps suffice
        _, loss = model(idx, targets=targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1


def test_optimizer_decays_matrices_only_and_sees_each_parameter_once():
    model = make_model()
    optimizer = model.configure_optimizers(
        weight_decay=0.1, learning_rate=1e-3, betas=(0.9, 0.95), device_type="cpu"
    )
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    all_params = decay["params"] + no_decay["params"]
    assert len({id(p) for p in all_params}) == len(all_params) == len(list(model.parameters()))
    assert sum(p.numel() for p in all_params) == model.num_params(non_embedding=False)


def test_param_counts_flops_and_mfu():
    model = make_model(pos_emb="learned")
    total = model.num_params(non_embedding=False)
    assert model.num_params() == total - 16 * 32  # wpe is left out; tied wte is the lm_head too
    untied = make_model(pos_emb="rope", tie_weights=False)
    assert untied.num_params() == untied.num_params(non_embedding=False) - 64 * 32
    flops = model.flops_per_token()
    assert flops == 6 * model.num_params() + 12 * 2 * 4 * 8 * 16
    assert mfu(flops, tokens_per_second=1000.0, peak=flops * 4000.0) == pytest.approx(0.25)


def test_config_rejects_n_embd_not_divisible_by_n_head():
    with pytest.raises(GptError, match="divisible"):
        validate(ModelConfig, vocab_size=50, n_embd=30, n_head=4)


# ---------------------------------------------------------------------------------------------------
# Parity with Hugging Face GPT-2

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def test_matches_huggingface_gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=32,
        vocab_size=100,
        n_positions=16,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    with torch.no_grad():  # HF's init zeroes biases and sets norms to 1: randomize them to test them
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    hf_sd = {k: v for k, v in hf.state_dict().items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}

    for flash in (True, False):
        config = ModelConfig(
            vocab_size=100,
            block_size=16,
            n_layer=2,
            n_head=2,
            n_embd=32,
            pos_emb="learned",
            norm="layernorm",
            norm_eps=1e-5,
            bias=True,
            gelu="tanh",
            tie_weights=True,
            flash=flash,
        )
        ours = GPT(config).eval()
        sd = ours.state_dict()
        assert set(sd) == set(hf_sd)
        with torch.no_grad():
            for key, value in hf_sd.items():
                if key.endswith(CONV1D):
                    value = value.t()  # HF's Conv1D stores (in, out); Linear stores (out, in)
                if key in ("transformer.wte.weight", "lm_head.weight"):
                    sd[key][: value.size(0)].copy_(value)  # our rows are padded 100 -> 128
                else:
                    sd[key].copy_(value)
        idx = tokens(B=2, T=16, vocab_size=100)
        with torch.no_grad():
            expected = hf(idx).logits
        torch.testing.assert_close(logits_of(ours, idx), expected, atol=1e-5, rtol=0)
