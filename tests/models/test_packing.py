"""Packed rows (doc_ids): several documents in one row compute exactly what each computes alone."""

import pytest
import torch
import torch.nn.functional as F

import gptcli.models.gpt as gpt
from gptcli.config import ModelConfig
from gptcli.errors import GptError
from gptcli.models import GPT, LSTM
from gptcli.models.positions import document_mask, document_positions

POS_EMBS = ["learned", "rope", "sinusoidal", "none"]
# (n_kv_head, window): MHA, GQA, sliding window, GQA + window
ATTENTION = [(None, None), (2, None), (None, 3), (2, 3)]
ATTENTION_IDS = ["mha", "gqa", "window", "gqa-window"]
LENGTHS = [[5, 3, 6, 2], [7, 9]]  # two rows of 16 tokens: four documents, then two
VOCAB = 50


def make_model(seed: int = 0, **overrides) -> GPT:
    values = dict(vocab_size=VOCAB, block_size=16, n_layer=2, n_head=4, n_embd=32, dropout=0.0)
    values.update(overrides)
    torch.manual_seed(seed)
    return GPT(ModelConfig(**values)).eval()


def packed_batch(seed: int = 1):
    """Rows of documents -> idx, targets and doc_ids (B, T), and each document's (ids, targets).

    A document's targets are its next tokens, -1 for its last (nothing follows inside it) and for
    some "prompt" tokens (its first two), as a fine-tune masks them."""
    g = torch.Generator().manual_seed(seed)
    rows, docs = [], []
    for lengths in LENGTHS:
        row = []
        for d, n in enumerate(lengths):
            ids = torch.randint(0, VOCAB, (n,), generator=g)
            tgt = torch.cat([ids[1:], torch.tensor([-1])])
            tgt[:2] = -1
            docs.append((ids, tgt))
            row.append((ids, tgt, torch.full((n,), d)))
        rows.append([torch.cat(parts) for parts in zip(*row)])  # [ids, targets, doc_ids] of the row
    idx, targets, doc_ids = (torch.stack(column) for column in zip(*rows))
    return idx, targets, doc_ids, docs


def grads(model: GPT) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_document_positions_restart_and_the_mask_stays_inside_each_document():
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2]])
    assert document_positions(doc_ids).tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    mask = document_mask(doc_ids, window=None)
    assert mask.shape == (1, 1, 8, 8)
    blocks = torch.block_diag(torch.ones(3, 3), torch.ones(2, 2), torch.ones(3, 3)).bool()
    assert torch.equal(mask[0, 0], blocks.tril())
    windowed = document_mask(doc_ids, window=2)[0, 0]
    assert windowed[2].tolist() == [False, True, True, False, False, False, False, False]
    assert windowed[3].tolist() == [False, False, False, True, False, False, False, False]


@pytest.mark.parametrize("flash", [True, False], ids=["flash", "explicit"])
@pytest.mark.parametrize("n_kv_head,window", ATTENTION, ids=ATTENTION_IDS)
@pytest.mark.parametrize("pos_emb", POS_EMBS)
def test_a_packed_batch_equals_its_documents_one_at_a_time(pos_emb, n_kv_head, window, flash):
    """Per-token logits, the loss (mean over trained targets) and every gradient, within 1e-5."""
    model = make_model(pos_emb=pos_emb, n_kv_head=n_kv_head, window=window, flash=flash)
    idx, targets, doc_ids, docs = packed_batch()

    logits, loss = model(idx, targets, doc_ids=doc_ids)
    loss.backward()
    packed_grads = grads(model)
    model.zero_grad(set_to_none=True)

    n_trained = int((targets != -1).sum())
    alone_logits, alone_loss = [], 0.0
    for ids, tgt in docs:
        doc_logits, doc_loss = model(ids[None], tgt[None])
        alone_logits.append(doc_logits[0])
        if (tgt != -1).any():  # a document with nothing trained (the 2-token one) adds no loss
            alone_loss = alone_loss + doc_loss * int((tgt != -1).sum()) / n_trained  # the same mean
    alone_loss.backward()

    torch.testing.assert_close(logits.reshape(-1, VOCAB), torch.cat(alone_logits), atol=1e-5, rtol=0)
    torch.testing.assert_close(loss, alone_loss, atol=1e-5, rtol=0)
    alone_grads = grads(model)
    assert packed_grads.keys() == alone_grads.keys()
    for name, g in packed_grads.items():
        torch.testing.assert_close(g, alone_grads[name], atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_activation_checkpointing_keeps_the_documents_apart(pos_emb):
    model = make_model(pos_emb=pos_emb, n_kv_head=2, window=5).train()
    idx, targets, doc_ids, _ = packed_batch()
    loss = model(idx, targets, doc_ids=doc_ids)[1]
    loss.backward()
    expected = grads(model)
    model.zero_grad(set_to_none=True)
    model.activation_checkpointing = True
    checkpointed = model(idx, targets, doc_ids=doc_ids)[1]
    checkpointed.backward()
    assert torch.equal(checkpointed, loss)
    for name, g in grads(model).items():
        torch.testing.assert_close(g, expected[name], atol=1e-6, rtol=0, msg=name)


def test_one_document_per_row_is_the_plain_causal_forward():
    model = make_model(pos_emb="rope", n_kv_head=2)
    idx, targets, _, _ = packed_batch()
    plain = model(idx, targets)
    packed = model(idx, targets, doc_ids=torch.zeros_like(idx))
    torch.testing.assert_close(packed[0], plain[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(packed[1], plain[1], atol=1e-6, rtol=0)


def test_without_doc_ids_the_plain_path_builds_no_mask_and_stays_is_causal(monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(
        F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(kw) or sdpa(*a, **kw)
    )
    monkeypatch.setattr(gpt, "document_mask", lambda *a: pytest.fail("a mask built without doc_ids"))
    model = make_model(pos_emb="rope", n_kv_head=2)
    idx, targets, _, _ = packed_batch()
    model(idx, targets)
    assert len(calls) == 2 and all(kw.get("is_causal") and kw.get("attn_mask") is None for kw in calls)


def test_flash_and_explicit_packed_attention_agree_in_training_mode_without_dropout():
    flash = make_model(pos_emb="rope", window=4, flash=True).train()
    explicit = make_model(pos_emb="rope", window=4, flash=False).train()
    idx, targets, doc_ids, _ = packed_batch()
    a = flash(idx, targets, doc_ids=doc_ids)
    b = explicit(idx, targets, doc_ids=doc_ids)
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=0)


def test_doc_ids_with_a_cache_or_of_another_shape_are_clear_errors():
    model = make_model()
    idx, _, doc_ids, _ = packed_batch()
    with pytest.raises(GptError, match="doc_ids"):
        model(idx, doc_ids=doc_ids[:, :-1])
    with pytest.raises(GptError, match="doc_ids"):
        model(idx, cache=model.new_cache(idx.size(0)), doc_ids=doc_ids)
    with pytest.raises(GptError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long), doc_ids=torch.zeros(1, 17, dtype=torch.long))


def test_the_lstm_refuses_packed_rows():
    lstm = LSTM(ModelConfig(arch="lstm", vocab_size=VOCAB, block_size=16, n_layer=1, n_embd=16))
    idx, _, doc_ids, _ = packed_batch()
    with pytest.raises(GptError, match="gpt architecture.*--no-pack"):
        lstm(idx, doc_ids=doc_ids)
