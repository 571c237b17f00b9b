"""LoRA adapters on a GPT (gptcli.models.lora): a new adapter is a no-op, only adapters and the added
tokens' rows train, merged equals unmerged, folded rows equal trained rows, a bf16 base stays close."""

import pytest
import torch

from gptcli.config import LoraConfig, ModelConfig
from gptcli.errors import GptError
from gptcli.models import GPT, LSTM, resize_vocab
from gptcli.models.lora import LoRALinear, adapter_parameters, add_lora, fold_new_rows, merge_lora

SHAPES = [dict(), dict(tie_weights=False, pos_emb="rope", n_kv_head=1)]


def gpt(seed=0, **overrides) -> GPT:
    torch.manual_seed(seed)
    config = dict(vocab_size=70, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0) | overrides
    return GPT(ModelConfig(**config)).eval()


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)[0]


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())


def perturb(model, seed=1) -> None:
    """Give every adapter and new row values of their own (as training would)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter_parameters(model).values():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


IDS = torch.randint(0, 72, (2, 16), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("shape", SHAPES, ids=["tied", "untied-rope-gqa"])
def test_a_new_adapter_changes_nothing_and_only_adapters_and_new_rows_train(shape):
    model = gpt(**shape)
    resize_vocab(model, 72)  # two tokens added, as a chat template's
    before = logits(model, IDS)
    add_lora(model, LoraConfig(targets=["attn", "proj", "mlp"]), new_rows=(70, 72))
    torch.testing.assert_close(logits(model, IDS), before, rtol=0, atol=1e-6)
    trained = adapter_parameters(model)
    layers = 2 * 4  # c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj in each of 2 blocks
    lora = [n for n in trained if n.endswith(("lora_A", "lora_B"))]
    rows = [n for n in trained if n.endswith("rows.new")]
    assert len(lora) == 2 * layers and len(rows) == (1 if shape.get("tie_weights", True) else 2)
    assert all(trained[n].shape == (2, 32) for n in rows)  # the two new tokens' rows only
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = model.configure_optimizers(0.0, 1e-2, (0.9, 0.99), "cpu")
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in trained.values()}
    model.train()
    for _ in range(2):
        _, loss = model(IDS, targets=IDS)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)
    assert all(s["exp_avg"].shape == p.shape for p, s in optimizer.state.items()) and len(
        optimizer.state
    ) == len(trained)
    assert not any(torch.equal(p, torch.zeros_like(p)) for n, p in trained.items() if n.endswith("lora_B"))


@pytest.mark.parametrize("shape", SHAPES, ids=["tied", "untied-rope-gqa"])
def test_merged_and_folded_equal_the_adapted_model(shape):
    model = gpt(**shape)
    resize_vocab(model, 72)
    add_lora(model, LoraConfig(r=4, alpha=8, targets=["attn", "mlp"]), new_rows=(70, 72))
    perturb(model)
    adapted = logits(model, IDS)
    fold_new_rows(model)
    torch.testing.assert_close(logits(model, IDS), adapted, rtol=0, atol=1e-6)
    assert isinstance(model.transformer.wte, torch.nn.Embedding) and isinstance(
        model.lm_head, torch.nn.Linear
    )
    if shape.get("tie_weights", True):
        assert model.transformer.wte.weight is model.lm_head.weight
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(logits(model, IDS), adapted, rtol=0, atol=1e-5)
    assert set(model.state_dict()) == set(gpt(**shape).state_dict())  # a plain GPT's weights again


@pytest.mark.parametrize("new_rows", [None, (70, 72)])
def test_a_bf16_base_holds_every_frozen_matrix_in_bf16_stays_close_and_trains_in_fp32(new_rows):
    full, half = gpt(), gpt()
    if new_rows:
        resize_vocab(full, 72), resize_vocab(half, 72)
    add_lora(full, LoraConfig(targets=["attn"]), new_rows)
    add_lora(half, LoraConfig(targets=["attn"], base_precision="bf16"), new_rows)
    frozen = [p for p in half.parameters() if not p.requires_grad and p.dim() == 2 and p.numel() > 32 * 32]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)  # every Linear, the token table
    assert all(p.dtype == torch.float32 for p in adapter_parameters(half).values())
    assert weight_bytes(half) < 0.6 * weight_bytes(full)
    ids = IDS[:, :8] % (72 if new_rows else 70)
    torch.testing.assert_close(logits(half, ids), logits(full, ids), rtol=0.05, atol=0.05)
    _, loss = half.train()(ids, targets=ids)
    loss.backward()
    assert all(p.grad is not None for p in adapter_parameters(half).values())


def test_only_a_gpt_takes_adapters():
    model = LSTM(ModelConfig(arch="lstm", vocab_size=20, block_size=8, n_layer=1, n_embd=16))
    with pytest.raises(GptError, match="LoRA adapts a GPT"):
        add_lora(model, LoraConfig())
