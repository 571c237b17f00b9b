"""`gpt export-hf` of a fine-tuned model: transformers' AutoTokenizer + AutoModelForCausalLM answer as we
do. A tiny random HF GPT-2 with our BPE is imported (no network), fine-tuned a few dozen steps on
conversations (ChatML, or a Llama-3-style Jinja template on a GPT-4-pattern BPE), exported, and then
apply_chat_template gives our rendered ids and greedy generate our greedy reply, stopping at the
template's end token through generation_config.json."""

import json

import pytest
import torch

from gptcli.chat.template import ChatTemplate, render
from gptcli.config import ChatDataConfig, SampleConfig, TrainConfig
from gptcli.generation import Engine
from gptcli.hf_gpt2 import export_hf_gpt2, import_gpt2
from gptcli.loading import load_checkpoint
from gptcli.storage import checkpoint as ckpt
from gptcli.tokenizers.export import export_hf, export_tokenizer
from gptcli.training.trainer import train
from tests.chat.conftest import CONVERSATIONS
from tests.chat.conftest import train as train_bpe
from tests.conftest import run_cli
from tests.generation.test_engine import TIE, assert_greedy

transformers = pytest.importorskip("transformers")

MEMORIZED = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]
MAX_NEW = 24
LLAMA2 = (  # writes {{ eos_token }} after each reply
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}{% endfor %}"
)
# Llama 3's layout, {{ bos_token }} included (HF renders it as our renderer does: ""), but without
# Llama 3's `content | trim`: our renderer writes each content as given (a filter on it is not applied)
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def hf_base(folder, tokenizer):
    """A random HF GPT-2 (biases and norms randomized too) with our BPE, as `gpt load-gpt2` reads it."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=32, n_positions=256,
        activation_function="gelu_new", bos_token_id=tokenizer.eot_id, eos_token_id=tokenizer.eot_id,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.normal_(0, 0.1)
    model.save_pretrained(folder)
    export_tokenizer(tokenizer, "hf", folder)


@pytest.fixture(scope="module", params=["chatml-gpt2", "llama3-gpt4"])
def exported(request, tmp_path_factory):
    """(our fine-tuned checkpoint, its template, the HF export folder)."""
    root = tmp_path_factory.mktemp(request.param)
    chatml = request.param == "chatml-gpt2"
    hf_base(root / "hf", train_bpe(pattern="gpt2" if chatml else "gpt4"))
    base = import_gpt2(root / "hf", root / "base")
    data = root / "chats.jsonl"  # the short exchange many times over: its reply is learnt, end token too
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CONVERSATIONS + [MEMORIZED] * 30))
    template = None if chatml else ChatTemplate.from_jinja(LLAMA3).to_json()
    summary = train(
        TrainConfig(
            init_from=str(base),
            data=[str(data)],
            chat=ChatDataConfig(template=template, epochs=None),
            max_iters=50,
            lr=1e-2,
            min_lr=1e-3,
            warmup_iters=5,
            weight_decay=0.0,
            batch_size=4,
            eval_interval=50,
            eval_iters=1,
            sample_tokens=0,
            device="cpu",
        ),  # fmt: skip
        root / "run",
    )
    checkpoint = summary.last_checkpoint
    saved = ckpt.read_config(checkpoint)["chat_template"]
    export_hf_gpt2(root / "run", root / "export")
    return checkpoint, ChatTemplate.from_json(saved), root / "export"


def hf_ids(hf_tok, messages, add_generation_prompt=True):
    return list(
        hf_tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, return_dict=False)
    )


def test_the_export_carries_the_template_its_tokens_and_stops(exported):
    checkpoint, template, folder = exported
    _, tok, _ = load_checkpoint(checkpoint)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["chat_template"] == template.jinja()
    assert config["eos_token"] == template.end_token  # neither template writes eos_token
    assert config["bos_token"] == (None if "bos_token" in template.jinja() else "<|endoftext|>")
    decoder = config["added_tokens_decoder"]
    added = json.loads((folder / "tokenizer.json").read_text())["added_tokens"]
    for name in template.special_tokens:
        i = tok.special_tokens[name]
        assert decoder[str(i)]["content"] == name and decoder[str(i)]["special"] is True
        assert {"id": i, "content": name, "special": True}.items() <= next(
            a for a in added if a["id"] == i
        ).items()
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [tok.special_tokens[template.end_token], tok.eot_id]
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    assert len(hf_tok) == tok.vocab_size and hf_tok.eos_token == template.end_token
    assert hf_tok.convert_tokens_to_ids(template.end_token) == tok.special_tokens[template.end_token]


@pytest.mark.parametrize("prompt", [True, False], ids=["generation-prompt", "whole"])
def test_apply_chat_template_gives_our_ids(exported, prompt):
    checkpoint, template, folder = exported
    _, tok, _ = load_checkpoint(checkpoint)
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    for conversation in [*CONVERSATIONS, MEMORIZED]:
        for end in range(1, len(conversation) + 1):  # every prefix: with and without system, each turn
            messages = conversation[:end]
            ours = render(messages, template, tok, add_generation_prompt=prompt).ids
            assert hf_ids(hf_tok, messages, prompt) == ours, messages


def greedy_reply(ids, stops):
    """ids up to and including the first stop id."""
    for i, token in enumerate(ids):
        if token in stops:
            return ids[: i + 1]
    return ids


def test_hf_generate_gives_our_greedy_reply_and_stops_at_the_end_token(exported):
    checkpoint, template, folder = exported
    model, tok, _ = load_checkpoint(checkpoint)
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    end = tok.special_tokens[template.end_token]
    assert set(hf.generation_config.eos_token_id) == {end, tok.eot_id}
    engine = Engine(model, tok)
    replies = []
    for conversation in [*CONVERSATIONS, MEMORIZED]:
        prompt = render(conversation[:-1], template, tok, add_generation_prompt=True).ids
        x = torch.tensor([prompt])
        with torch.no_grad():  # the same logits on the whole prompt
            ours_logits = model(x)[0][0, :, : tok.vocab_size]
            torch.testing.assert_close(hf(x).logits[0], ours_logits, atol=1e-4, rtol=0)
        # generate's own stopping: from generation_config.json, nothing passed here
        theirs = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=MAX_NEW, do_sample=False)
        theirs = theirs[0, len(prompt) :].tolist()
        assert all(t not in (end, tok.eot_id) for t in theirs[:-1])  # it stopped at the first stop id
        ours = engine.generate(prompt, SampleConfig(max_new_tokens=MAX_NEW, temperature=0, ignore_eos=True))
        ours = greedy_reply(ours.samples[0].ids, (end, tok.eot_id))
        if theirs != ours:  # only where two logits tie: each is greedy decoding up to that tie
            assert_greedy(theirs, model, prompt)
            assert_greedy(ours, model, prompt)
        replies.append((prompt, theirs, ours))
    # the learnt exchange: a reply that ends with the end token, each step's choice clear of a tie,
    # so HF's is exactly ours, and generate stopped there by itself
    prompt, theirs, ours = replies[-1]
    assert ours[-1] == end and len(ours) > 1, tok.decode(ours)
    with torch.no_grad():
        logits = model(torch.tensor([prompt + ours]))[0][0, len(prompt) - 1 : -1, : tok.vocab_size]
    top2 = logits.topk(2).values
    assert (top2[:, 0] - top2[:, 1]).min() > 10 * TIE
    assert theirs == ours, (tok.decode(ours), tok.decode(theirs))
    text = tok.decode(ours[:-1])
    assert hf_tok.decode(theirs, skip_special_tokens=True) == text
    # as `gpt chat` asks: stop at the end token's text
    config = SampleConfig(max_new_tokens=MAX_NEW, temperature=0, stop=[template.end_token])
    chat = engine.generate(prompt, config).samples[0]
    assert chat.text == text and chat.finish_reason == "stop"


def test_a_checkpoint_without_a_template_exports_as_before(tmp_path):
    tok = train_bpe()
    hf_base(tmp_path / "hf", tok)
    base = import_gpt2(tmp_path / "hf", tmp_path / "base")
    result = run_cli("export-hf", str(base), "--out", str(tmp_path / "export"), "--quiet")
    assert result.exit_code == 0, result.stderr
    names = sorted(p.name for p in (tmp_path / "export").iterdir())
    assert names == ["config.json", "merges.txt", "model.safetensors", "tokenizer.json", "vocab.json"]
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "export")
    assert hf_tok.chat_template is None


def test_a_template_that_writes_eos_token_keeps_end_of_text_as_eos(tmp_path):
    """Our renderer gives a Jinja template eos_token = <|endoftext|>: so must the exported tokenizer."""
    template = ChatTemplate.from_jinja(LLAMA2)
    assert template.end_token == "<|endoftext|>"
    tok = train_bpe()
    written = export_hf(tok, tmp_path, chat_template=template, model_max_length=64)
    assert written[-1].name == "tokenizer_config.json"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf_tok.eos_token == "<|endoftext|>" and hf_tok.model_max_length == 64
    for conversation in CONVERSATIONS:
        messages = [m for m in conversation if m["role"] != "system"]  # this template refuses them
        assert hf_ids(hf_tok, messages, False) == render(messages, template, tok).ids
