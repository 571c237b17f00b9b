"""Our rendered ids equal Hugging Face's `apply_chat_template` on the exported tokenizer (built
locally, no network): ChatML, several multi-turn conversations, with and without a system message
and non-ASCII text, with and without the generation prompt, GPT-2's and GPT-4's split patterns."""

import pytest

from gptcli.chat.template import CHATML_JINJA, ChatTemplate, render
from gptcli.tokenizers import with_special_tokens
from gptcli.tokenizers.export import export_tokenizer
from tests.chat.conftest import CONVERSATIONS, train

transformers = pytest.importorskip("transformers")
CHATML = ChatTemplate.chatml()


@pytest.fixture(scope="module", params=["gpt2", "gpt4"])
def tokenizers(request, tmp_path_factory, base_bpe):
    """(ours with ChatML's tokens, HF's from our export with them added by HF's add_special_tokens)."""
    base = base_bpe if request.param == "gpt2" else train(pattern="gpt4")
    folder = tmp_path_factory.mktemp(f"hf_{request.param}")
    export_tokenizer(base, "hf", folder)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    hf.add_special_tokens({"additional_special_tokens": CHATML.special_tokens})
    hf.chat_template = CHATML_JINJA
    ours, _ = with_special_tokens(base, CHATML.special_tokens)
    return ours, hf


def hf_ids(hf, messages, add_generation_prompt):
    return hf.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
    )


@pytest.mark.parametrize(
    "conversation", CONVERSATIONS, ids=["one-exchange", "system-non-ascii", "three-turns"]
)
def test_apply_chat_template_gives_our_ids(tokenizers, conversation):
    ours, hf = tokenizers
    assert len(hf) == ours.vocab_size
    for prompt in (False, True):
        messages = conversation[:-1] if prompt else conversation
        expected = hf_ids(hf, messages, prompt)
        assert render(messages, CHATML, ours, add_generation_prompt=prompt).ids == expected
        jinja = ChatTemplate.from_jinja(CHATML_JINJA)
        assert render(messages, jinja, ours, add_generation_prompt=prompt).ids == expected


def test_our_export_with_the_chat_tokens_is_the_same_hf_tokenizer(tokenizers, tmp_path):
    ours, hf = tokenizers
    export_tokenizer(ours, "hf", tmp_path)  # the added tokens written by us, not added by HF
    exported = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    exported.chat_template = CHATML_JINJA
    for conversation in CONVERSATIONS:
        assert hf_ids(exported, conversation, False) == render(conversation, CHATML, ours).ids


def test_a_template_that_filters_the_content_gives_hf_ids(base_bpe, tmp_path):
    """Llama 3's template trims each content (`message['content'] | trim`): what is encoded, and what is
    trained, is the content as the template writes it."""
    from tests.chat.test_template import LLAMA3

    llama3 = ChatTemplate.from_jinja(LLAMA3)
    ours, _ = with_special_tokens(base_bpe, llama3.special_tokens)
    export_tokenizer(ours, "hf", tmp_path)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    hf.chat_template = LLAMA3
    conversation = [
        {"role": "system", "content": "You answer in one line.\n"},
        {"role": "user", "content": "  Shall I compare thee to a summer's day?  "},
        {"role": "assistant", "content": "\nThou art more lovely. \n"},
    ]
    for prompt in (False, True):
        messages = conversation[:-1] if prompt else conversation
        assert render(messages, llama3, ours, add_generation_prompt=prompt).ids == hf_ids(
            hf, messages, prompt
        )
    rendered = render(conversation, llama3, ours)
    trained = [i for i, t in zip(rendered.ids, rendered.trained) if t]
    assert ours.decode(trained) == "Thou art more lovely.<|eot_id|>"
