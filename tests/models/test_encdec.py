"""The encoder-decoder's masks and caches: the encoder sees the whole prompt, the decoder only its past,
padding changes nothing, and every cached way of decoding equals recomputing from scratch."""

import pytest
import torch

from gptcli.config import ModelConfig
from gptcli.errors import GptError
from gptcli.models import EncoderDecoder, build_model

POSITIONS = ["learned", "sinusoidal", "rope"]


def model(pos_emb="learned", flash=True, **kw) -> EncoderDecoder:
    torch.manual_seed(0)
    shape = dict(vocab_size=50, block_size=16, n_layer=2, n_enc_layer=3, n_head=4, n_kv_head=2, n_embd=32)
    config = ModelConfig(arch="encdec", pos_emb=pos_emb, flash=flash, **{**shape, **kw})
    return build_model(config).eval()


def batch():
    g = torch.Generator().manual_seed(1)
    src, tgt = torch.randint(0, 50, (3, 7), generator=g), torch.randint(0, 50, (3, 5), generator=g)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:], mask[2, 2:] = False, False  # rows 1 and 2: prompts of 4 and 2 tokens, then padding
    return src, tgt, mask


def test_config_defaults_and_refusals():
    config = ModelConfig(arch="encdec", n_layer=3)
    assert config.n_enc_layer == 3  # the encoder's depth follows the decoder's unless given
    for bad in (dict(pos_emb="none"), dict(window=4)):
        with pytest.raises(ValueError, match="encdec needs positions"):
            ModelConfig(arch="encdec", **bad)
    with pytest.raises(ValueError, match="n_enc_layer"):
        ModelConfig(arch="gpt", n_enc_layer=2)
    with pytest.raises(ValueError, match="n_enc_layer"):
        ModelConfig(arch="lstm", n_enc_layer=2)


def test_tied_table_and_parameter_count():
    m = model()
    assert m.wte.weight is m.lm_head.weight  # one table: encoder, decoder and head
    assert len(m.encoder.h) == 3 and len(m.decoder.h) == 2
    learned = m.encoder.wpe.weight.numel() + m.decoder.wpe.weight.numel()
    assert m.num_params(non_embedding=False) - m.num_params() == learned


@pytest.mark.parametrize("pos_emb", POSITIONS)
def test_encoder_sees_the_whole_prompt_and_decoder_only_its_past(pos_emb):
    m = model(pos_emb)
    src, tgt, _ = batch()
    logits, _ = m(tgt, src=src)
    later_prompt = src.clone()
    later_prompt[:, -1] = (src[:, -1] + 1) % 50
    changed, _ = m(tgt, src=later_prompt)
    assert not torch.allclose(changed[:, 0], logits[:, 0])  # target token 0 sees the last prompt token
    encoded = m.encode(src)
    assert not torch.allclose(m.encode(later_prompt)[:, 0], encoded[:, 0])  # bidirectional: token 0 too
    later_target = tgt.clone()
    later_target[:, 3] = (tgt[:, 3] + 1) % 50
    after, _ = m(later_target, src=src)
    torch.testing.assert_close(after[:, :3], logits[:, :3])  # causal: earlier positions unchanged
    assert not torch.allclose(after[:, 3], logits[:, 3])


@pytest.mark.parametrize("flash", [True, False])
@pytest.mark.parametrize("pos_emb", POSITIONS)
def test_padding_changes_nothing(pos_emb, flash):
    m = model(pos_emb, flash)
    src, tgt, mask = batch()
    padded, _ = m(tgt, src=src, src_mask=mask)
    for b in range(3):
        alone, _ = m(tgt[b : b + 1], src=src[b : b + 1, : int(mask[b].sum())])
        torch.testing.assert_close(padded[b : b + 1], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pos_emb", POSITIONS)
def test_cached_decoding_equals_recomputation(pos_emb):
    m = model(pos_emb)
    src, tgt, mask = batch()
    full, _ = m(tgt, src=src, src_mask=mask)
    cache = m.new_cache(3)
    m.encode_source(src, cache, mask)
    pieces = [m(tgt[:, :2], cache=cache)[0]]  # a prefill of two, then one token at a time
    pieces += [m(tgt[:, t : t + 1], cache=cache)[0] for t in range(2, 5)]
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)
    # the fixed-shape step (continuous batching, torch.compile): each row at its own position
    cache = m.new_cache(3)
    m.encode_source(src, cache, mask)
    pieces, positions = [m(tgt[:, :1], cache=cache)[0]], torch.ones(3, dtype=torch.long)
    for t in range(1, 5):
        pieces.append(m(tgt[:, t : t + 1], cache=cache, positions=positions)[0])
        positions += 1
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


def test_rows_copied_between_caches_decode_as_alone():
    """What the server does: prompts encoded apart, copied into a batch's rows, stepped together."""
    m = model("rope")
    src, tgt, mask = batch()
    full, _ = m(tgt, src=src, src_mask=mask)
    batch_cache = m.new_cache(4)
    positions = torch.zeros(4, dtype=torch.long)
    firsts = []
    for b, slot in zip(range(3), (2, 0, 3)):  # each into a slot of its own
        alone = m.new_cache(1)
        m.encode_source(src[b : b + 1, : int(mask[b].sum())], alone)
        firsts.append(m(tgt[b : b + 1, :1], cache=alone)[0])
        batch_cache.copy_row(slot, alone, 0, 1)
        positions[slot] = 1
    view = batch_cache.first_rows(4, 16)
    for t in range(1, 5):
        ids = torch.zeros(4, 1, dtype=torch.long)
        ids[[2, 0, 3], 0] = tgt[:, t]
        logits, _ = m(ids, cache=view, positions=positions)
        torch.testing.assert_close(logits[[2, 0, 3], 0], full[:, t], atol=1e-5, rtol=1e-5)
        positions += 1


def test_loss_backward_and_checkpointing():
    m = model().train()
    src, tgt, mask = batch()
    targets = tgt.clone()
    targets[:, -1] = -1
    _, loss = m(tgt, targets, src=src, src_mask=mask)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "wpe" not in n)
    m.zero_grad()
    m.activation_checkpointing = True
    _, again = m(tgt, targets, src=src, src_mask=mask)
    again.backward()
    torch.testing.assert_close(again, loss)
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], atol=1e-6, rtol=1e-5)


def test_errors():
    m = model()
    src, tgt, _ = batch()
    with pytest.raises(GptError, match="reads a prompt"):
        m(tgt)
    with pytest.raises(GptError, match="longer than block_size"):
        m(tgt, src=torch.zeros(1, 17, dtype=torch.long))
    cache = m.new_cache(2)
    with pytest.raises(GptError, match="2"):
        m.encode_source(src, cache)
