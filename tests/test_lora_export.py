"""`gpt merge-lora` and `gpt export-peft` as a user runs them, checked against the adapter run itself:
the merged checkpoint's logits are the adapter's, and PEFT's PeftModel on the exported HF base gives
our logits, the fine-tune's added tokens (ChatML's, on a small GPT-2-pattern BPE) included."""

import json

import pytest
import torch
from safetensors.torch import load_file

from gptcli.chat.template import ChatTemplate
from gptcli.loading import load_checkpoint
from gptcli.models.lora import has_lora
from gptcli.storage import checkpoint as ckpt
from gptcli.tokenizers.base import Tokenizer
from tests.conftest import assert_one_line_error, run_cli
from tests.training.test_finetune import FAST, bpe_file, make_base, reverse_task, task_words, write_jsonl

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

__all__ = ["bpe_file"]  # a fixture, used by name
TARGETS = ["attn", "attn,proj,mlp"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTCLI_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def base(tmp_path_factory, bpe_file):
    """A tiny GPT-2-shaped base with a GPT-2-pattern BPE of 300 tokens (no chat tokens)."""
    return make_base(tmp_path_factory.mktemp("base") / "base", tokenizer=str(bpe_file), n_layer=2, n_embd=32)


def lora_run(base, folder, targets: str, *extra: str):
    """A LoRA fine-tune of `base` at a high learning rate, so its adapters are far from zero."""
    data = write_jsonl(folder / "chats.jsonl", reverse_task(task_words(3)[:24]))
    args = ["-c", str(base), "--data", str(data), "--lora", "--lora-r", "4", "--lora-alpha", "8",
            "--lora-targets", targets, "--lr", "1e-2", "--max-iters", "3", "--eval-interval", "3", *FAST]  # fmt: skip
    result = run_cli("finetune", *args, *extra, "--out", str(folder / "run"))
    assert result.exit_code == 0, result.stderr
    return folder / "run"


@pytest.fixture(scope="module", params=TARGETS)
def adapter(request, base, tmp_path_factory):
    run = lora_run(base, tmp_path_factory.mktemp("lora"), request.param)
    weights = load_file(ckpt.list_checkpoints(run)[-1] / ckpt.WEIGHTS)
    lora_b = [t for k, t in weights.items() if k.endswith("lora_B")]
    assert lora_b and all(t.abs().max() > 1e-3 for t in lora_b)  # trained: not the zero it starts at
    return run


def prompt_ids(tokenizer) -> list[int]:
    """A rendered ChatML prompt: old tokens and the two the fine-tune added."""
    from gptcli.chat.template import render

    messages = [{"role": "user", "content": "reverse abc"}, {"role": "assistant", "content": "cba"}]
    ids = render(messages, ChatTemplate.chatml(), tokenizer).ids
    assert {tokenizer.special_tokens["<|im_start|>"], tokenizer.special_tokens["<|im_end|>"]} <= set(ids)
    return ids


def our_logits(run) -> tuple[torch.Tensor, list[int], Tokenizer]:
    """The adapter run's logits (loaded as generate loads it) on a chat prompt -> (logits, ids, tokenizer)."""
    model, tokenizer, config = load_checkpoint(ckpt.list_checkpoints(run)[-1])
    assert has_lora(model)
    ids = prompt_ids(tokenizer)
    vocab = config["model"].vocab_size
    with torch.no_grad():
        return model(torch.tensor([ids]))[0][0, :, :vocab], ids, tokenizer


# ---- gpt export-peft


def test_peft_on_the_exported_base_gives_our_logits(adapter, tmp_path):
    result = run_cli("export-peft", str(adapter), "--out", str(tmp_path / "peft"))
    assert result.exit_code == 0, result.stderr
    assert "not the original: it carries the 2 tokens the fine-tune added" in result.stderr
    base = tmp_path / "peft" / "base"
    expected, ids, ours = our_logits(adapter)

    hf = transformers.AutoModelForCausalLM.from_pretrained(base).eval()
    assert hf.config.vocab_size == ours.vocab_size  # grown: the added tokens' rows are in the base
    model = peft.PeftModel.from_pretrained(hf, tmp_path / "peft").eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    with torch.no_grad():  # and the adapter does something: without it the logits differ
        with model.disable_adapter():
            plain = model(torch.tensor([ids])).logits[0]
    assert (plain - expected).abs().max() > 1e-3

    # the tokenizer beside the base knows the added tokens, with our ids
    tokenizer = transformers.AutoTokenizer.from_pretrained(base)
    for token in ("<|im_start|>", "<|im_end|>"):
        assert tokenizer.convert_tokens_to_ids(token) == ours.special_tokens[token]


def test_the_files_are_what_peft_itself_saves(adapter, tmp_path):
    assert run_cli("export-peft", str(adapter), "--out", str(tmp_path / "peft"), "-q").exit_code == 0
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    lora = ckpt.read_config(ckpt.list_checkpoints(adapter)[-1])["lora"]
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["fan_in_fan_out"] is True
    assert config["base_model_name_or_path"] == str((tmp_path / "peft" / "base").resolve())
    # PEFT's own adapter, made with this config on this base: the same tensor names and shapes
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "peft" / "base")
    reference = peft.get_peft_model(hf, peft.LoraConfig.from_pretrained(tmp_path / "peft"))
    theirs = peft.get_peft_model_state_dict(reference)
    ours = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    layers = 2 * (1 if lora["targets"] == ["attn"] else 4)  # 2 layers; attn,proj,mlp: 4 Linears each
    assert len(ours) == 2 * layers  # A and B each
    # and AutoPeftModel finds the base through base_model_name_or_path
    auto = peft.AutoPeftModelForCausalLM.from_pretrained(tmp_path / "peft")
    assert isinstance(auto, peft.PeftModel)


def test_an_adapter_that_added_no_tokens_goes_on_the_originals_weights(adapter, tmp_path):
    # a LoRA fine-tune of a merged chat model: the ChatML tokens are there already
    assert run_cli("merge-lora", str(adapter), "--out", str(tmp_path / "chat"), "-q").exit_code == 0
    run = lora_run(tmp_path / "chat", tmp_path, "attn,mlp")
    result = run_cli("export-peft", str(run), "--out", str(tmp_path / "peft"))
    assert result.exit_code == 0, result.stderr
    assert "the original's weights" in result.stderr and "the fine-tune added" not in result.stderr
    expected, ids, _ = our_logits(run)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "peft" / "base")
    model = peft.PeftModel.from_pretrained(hf, tmp_path / "peft").eval()
    with torch.no_grad():
        torch.testing.assert_close(model(torch.tensor([ids])).logits[0], expected, atol=1e-4, rtol=0)


def test_the_base_can_go_elsewhere(adapter, tmp_path):
    args = ["export-peft", str(adapter), "--out", str(tmp_path / "peft"), "--base-out", str(tmp_path / "b")]
    assert run_cli(*args).exit_code == 0
    assert (tmp_path / "b" / "model.safetensors").is_file() and not (tmp_path / "peft" / "base").exists()
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((tmp_path / "b").resolve())


def test_export_hf_of_an_adapter_run_exports_it_merged(adapter, tmp_path):
    assert run_cli("export-hf", str(adapter), "--out", str(tmp_path / "hf"), "-q").exit_code == 0
    expected, ids, _ = our_logits(adapter)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


# ---- gpt merge-lora


def test_a_merged_checkpoint_stands_alone_with_the_adapters_logits(adapter, tmp_path):
    result = run_cli("merge-lora", str(adapter), "--out", str(tmp_path / "merged"))
    assert result.exit_code == 0, result.stderr
    config = ckpt.read_config(tmp_path / "merged")
    assert "lora" not in config and "base" not in config
    assert config["chat_template"] == ChatTemplate.chatml().to_json()
    assert config["source"] == str(ckpt.list_checkpoints(adapter)[-1])
    model, tokenizer, _ = load_checkpoint(tmp_path / "merged")
    assert not has_lora(model)
    expected, ids, _ = our_logits(adapter)
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0][0, :, : tokenizer.vocab_size]
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    # a plain checkpoint to every command: generate, and merging it again is refused
    result = run_cli(
        "generate", "-c", str(tmp_path / "merged"), "--prompt", "reverse", "--max-new-tokens", "4"
    )
    assert result.exit_code == 0, result.stderr
    assert_one_line_error(run_cli("merge-lora", str(tmp_path / "merged"), "--out", str(tmp_path / "m2")),
                          "not a LoRA adapter")  # fmt: skip


def test_merge_lora_replaces_a_checkpoint_but_no_other_folder(adapter, base, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert_one_line_error(
        run_cli("merge-lora", str(adapter), "--out", str(tmp_path / "busy")), "not a checkpoint"
    )
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    base_checkpoint = ckpt.list_checkpoints(base)[-1]
    assert_one_line_error(run_cli("merge-lora", str(adapter), "--out", str(base_checkpoint)), "its base")
    for _ in range(2):  # the second run replaces the first's checkpoint
        assert run_cli("merge-lora", str(adapter), "--out", str(tmp_path / "merged"), "-q").exit_code == 0


# ---- what is refused


def test_a_full_checkpoint_is_no_adapter(base, tmp_path):
    for command in ("merge-lora", "export-peft"):
        result = run_cli(command, str(base), "--out", str(tmp_path / "out"))
        assert_one_line_error(result, "not a LoRA adapter")
    assert not (tmp_path / "out").exists()


def test_an_adapter_on_a_base_gpt2_cannot_hold_is_refused_by_name(tmp_path):
    rope = make_base(tmp_path / "rope", pos_emb="rope")
    run = lora_run(rope, tmp_path, "attn")
    assert_one_line_error(run_cli("export-peft", str(run), "--out", str(tmp_path / "peft")), "pos_emb")
    assert not (tmp_path / "peft").exists()
    assert run_cli("merge-lora", str(run), "--out", str(tmp_path / "merged"), "-q").exit_code == 0  # any base
