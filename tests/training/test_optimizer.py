"""--optimizer muon: which weights Muon gets, that it learns, fp16's GradScaler, checkpoints, exact resume."""

import json

import pytest
import torch
from safetensors.torch import load_file

from gptcli.config import ModelConfig
from gptcli.models import build_model
from gptcli.storage import checkpoint as ckpt
from gptcli.training.optimizer import MuonWithAdamW, build_optimizer
from gptcli.training.run_dir import read_run_config
from gptcli.training.trainer import train
from tests.conftest import SONNETS, assert_one_line_error, run_cli
from tests.training.test_trainer import assert_same_weights, final_weights, keep_only_checkpoint, losses, tiny

BLOCK_MATRICES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
GPT = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32)
LSTM = dict(arch="lstm", vocab_size=50, block_size=16, n_layer=2, n_embd=32)


def muon_optimizer(tmp_path, **model) -> tuple[torch.nn.Module, MuonWithAdamW]:
    torch.manual_seed(0)
    net = build_model(ModelConfig(**model))
    optimizer = build_optimizer(net, tiny(tmp_path, optimizer="muon"), "cpu")
    assert isinstance(optimizer, MuonWithAdamW)
    return net, optimizer


def names(net, params) -> set[str]:
    name_of = {id(p): n for n, p in net.named_parameters()}
    return {name_of[id(p)] for p in params}


@pytest.mark.parametrize(
    "model",
    [GPT, {**GPT, "tie_weights": False, "bias": False, "pos_emb": "rope", "norm": "rmsnorm"}, LSTM],
    ids=["gpt", "gpt-untied-rope", "lstm"],
)
def test_muon_gets_the_hidden_matrices_and_adamw_everything_else_once(tmp_path, model):
    net, optimizer = muon_optimizer(tmp_path, **model)
    muon = [p for g in optimizer.muon.param_groups for p in g["params"]]
    adamw = [p for g in optimizer.adamw.param_groups for p in g["params"]]
    if model.get("arch") == "lstm":  # its input and recurrent matrices, stacked gates and all
        expected = {f"lstm.weight_{w}_l{i}" for w in ("ih", "hh") for i in range(2)}
    else:
        expected = {f"transformer.h.{i}.{m}" for i in range(2) for m in BLOCK_MATRICES}
    assert names(net, muon) == expected
    everything = muon + adamw
    assert len({id(p) for p in everything}) == len(everything) == len(list(net.parameters()))
    # AdamW keeps the embeddings (and an untied head) decayed, biases and norms not
    decayed, plain = optimizer.adamw.param_groups
    assert names(net, decayed["params"]) == {n for n, p in net.named_parameters() if p.dim() == 2} - expected
    assert all(p.dim() < 2 for p in plain["params"]) and plain["weight_decay"] == 0.0
    (group,) = optimizer.muon.param_groups
    assert group["lr"] == 0.02 and group["momentum"] == 0.95 and group["weight_decay"] == 0.0
    assert optimizer.param_groups[0] is decayed and optimizer.param_groups[-1] is group  # AdamW's lr first


def test_adamw_is_the_default_and_unchanged(tmp_path):
    net = build_model(ModelConfig(**GPT))
    optimizer = build_optimizer(net, tiny(tmp_path), "cpu")
    assert isinstance(optimizer, torch.optim.AdamW) and len(optimizer.param_groups) == 2


@pytest.mark.parametrize("arch", ["gpt", "lstm"])
def test_a_short_muon_run_learns(tmp_path, arch):
    model = dict(GPT if arch == "gpt" else LSTM, vocab_size=None, dropout=0.0)
    config = tiny(tmp_path, optimizer="muon", model=model, max_iters=40, eval_interval=40, lr=3e-3)
    summary = train(config, tmp_path / arch)
    curve = losses(tmp_path / arch)
    assert summary.step == 40 and curve[40] < curve[1] - 0.4, curve  # from ln(65) = 4.17


def test_grad_scaler_unscales_and_steps_both_parts(tmp_path):
    """fp16's GradScaler sees one optimizer: a scaled step equals a plain one; an inf skips both parts."""
    (a, opt_a), (b, opt_b) = muon_optimizer(tmp_path, **GPT), muon_optimizer(tmp_path, **GPT)
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    a(idx, idx)[1].backward()
    opt_a.step()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    scaler.scale(b(idx, idx)[1]).backward()
    scaler.unscale_(opt_b)
    torch.nn.utils.clip_grad_norm_(b.parameters(), 1e6)
    scaler.step(opt_b)
    scaler.update()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, msg=name)

    before = [p.detach().clone() for p in b.parameters()]
    opt_b.zero_grad(set_to_none=True)
    scaler.scale(b(idx, idx)[1]).backward()
    b.transformer.h[0].mlp.c_fc.weight.grad[0, 0] = float("inf")
    scaler.step(opt_b)  # found the inf: neither Muon nor AdamW steps
    assert all(torch.equal(p, q) for p, q in zip(before, b.parameters()))


def test_a_muon_checkpoint_keeps_both_states_under_their_own_names(tmp_path):
    train(tiny(tmp_path, optimizer="muon", max_iters=2, eval_interval=2), tmp_path / "muon")
    train(tiny(tmp_path, max_iters=2, eval_interval=2), tmp_path / "adamw")
    for run, has_muon in (("muon", True), ("adamw", False)):
        checkpoint = ckpt.list_checkpoints(tmp_path / run)[-1]
        tensors = load_file(checkpoint / ckpt.STATE_TENSORS)
        meta = json.loads((checkpoint / ckpt.STATE_JSON).read_text())["optimizer"]
        muon = sorted(k for k in tensors if k.startswith("muon."))
        assert ("muon" in meta) == has_muon and bool(muon) == has_muon
        assert any(k.startswith("optim.") and k.endswith(".exp_avg") for k in tensors)  # AdamW as before
        if has_muon:  # one momentum buffer per block matrix (2 layers x 4)
            assert muon == sorted(f"muon.{i}.momentum_buffer" for i in range(8))
            assert len(meta["muon"]["param_groups"][0]["params"]) == 8


def test_muon_resume_reproduces_the_uninterrupted_run_exactly(tmp_path):
    config = tiny(tmp_path, optimizer="muon", schedule="wsd")
    train(config, tmp_path / "full")
    part = tmp_path / "part"
    train(config, part)
    keep_only_checkpoint(part, "step_0000006")
    assert read_run_config(part).optimizer == "muon"
    train(read_run_config(part), part, resume=True)
    assert sorted(losses(part)) == list(range(1, 13))
    assert losses(part) == losses(tmp_path / "full")  # bit-for-bit equal floats
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(part))


@pytest.mark.parametrize("first, then", [("muon", "adamw"), ("adamw", "muon")])
def test_resuming_with_the_other_optimizer_is_a_one_line_error(tmp_path, monkeypatch, first, then):
    monkeypatch.chdir(tmp_path)
    flags = (
        "--tokenizer char --n-layer 1 --n-head 2 --n-embd 16 --block-size 16 "
        "--batch-size 2 --max-iters 2 --eval-iters 1 --sample-tokens 0 --device cpu --data-cache cache"
    )
    assert run_cli("train", "--data", str(SONNETS), *flags.split(), "--optimizer", first).exit_code == 0
    result = run_cli("train", "--resume", "out", "--optimizer", then, "--max-iters", "4")
    assert_one_line_error(result, f"trained with --optimizer {first}", f"asks for {then}")


def test_muon_on_a_cpu_steps_as_torch_muon_does_but_in_fp32():
    """Ours orthogonalizes in fp32 on a CPU (torch's bf16 is several times slower there); one step
    lands where torch.optim.Muon's does, to bf16's rounding."""
    from gptcli.training.optimizer import Muon

    torch.manual_seed(0)
    weights = [torch.randn(48, 16), torch.randn(16, 64)]
    ours = [torch.nn.Parameter(w.clone()) for w in weights]
    theirs = [torch.nn.Parameter(w.clone()) for w in weights]
    for params in (ours, theirs):
        for p, seed in zip(params, (1, 2)):
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(seed))
    Muon(ours, lr=0.02, weight_decay=0.0).step()
    torch.optim.Muon(theirs, lr=0.02, weight_decay=0.0).step()
    for a, b, w in zip(ours, theirs, weights):
        assert (a - w).abs().max() > 1e-3  # it moved
        torch.testing.assert_close(a - w, b - w, atol=5e-4, rtol=0)  # steps of ~1e-2; bf16 keeps ~3 digits
