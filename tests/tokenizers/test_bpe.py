import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptcli.config import TokenizerTrainConfig
from gptcli.data.tokenizer_corpus import train_tokenizer
from gptcli.errors import GptError
from gptcli.tokenizers import BPETokenizer, load_tokenizer
from gptcli.tokenizers.patterns import GPT2_PATTERN
from tests.conftest import SONNETS

SPECIALS = ["<|endoftext|>", "<|pad|>"]


@pytest.fixture(scope="module")
def sonnets_tok():
    config = TokenizerTrainConfig(files=[str(SONNETS)], vocab_size=1200, special_tokens=SPECIALS)
    return train_tokenizer(config).tokenizer


@pytest.fixture(scope="module")
def sonnets_tok_gpt2(tmp_path_factory):
    config = TokenizerTrainConfig(files=[str(SONNETS)], vocab_size=800, pattern="gpt2")
    return train_tokenizer(config).tokenizer


# mostly English-like text with unicode, whitespace runs and digits mixed in. No unassigned code
# points (as Python's Unicode tables see them): the regex module (training, reference encoder) and
# tiktoken's fancy-regex (encoding) ship different Unicode versions, and may disagree on them
# (regex 2026.11 calls U+3D000 a letter, tiktoken 0.14 does not, so "\U0003d000's" splits apart)
english_like = st.lists(
    st.one_of(
        st.sampled_from(
            ["the", " thou", " art", "'s", " love", "\n", "  ", "\t", ",", ".", " 1234", "é", "🙂", "日本"]
        ),
        st.text(st.characters(codec="utf-8", exclude_categories=("Cn",)), max_size=5),
    ),
    max_size=40,
).map("".join)


@settings(max_examples=200, deadline=None)
@given(text=english_like)
def test_decode_encode_roundtrip_on_arbitrary_unicode(sonnets_tok, text):
    assert sonnets_tok.decode(sonnets_tok.encode_ordinary(text)) == text
    assert sonnets_tok.decode_bytes(sonnets_tok.encode_ordinary(text)) == text.encode("utf-8")


@settings(max_examples=200, deadline=None)
@given(text=english_like)
def test_tiktoken_encoding_equals_the_reference_encoder(sonnets_tok, sonnets_tok_gpt2, text):
    for tok in (sonnets_tok, sonnets_tok_gpt2):
        assert tok.encode_ordinary(text) == tok.reference_encode(text)


@settings(max_examples=100, deadline=None)
@given(parts=st.lists(st.one_of(english_like, st.sampled_from(SPECIALS)), max_size=6))
def test_specials_roundtrip_when_allowed(sonnets_tok, parts):
    text = "".join(parts)
    ids = sonnets_tok.encode(text, allow_special=True)
    assert sonnets_tok.decode(ids) == text
    n_special = sum(1 for i in ids if i >= sonnets_tok.n_ordinary)
    assert n_special == sum(text.count(s) for s in SPECIALS)


def test_encode_batch_equals_encoding_each_text(sonnets_tok):
    texts = SONNETS.read_text().splitlines()
    expected = [sonnets_tok.encode_ordinary(t) for t in texts]
    assert sonnets_tok.encode_batch(texts) == expected
    assert sonnets_tok.encode_batch(texts, num_threads=3) == expected
    assert sonnets_tok.encode_batch([]) == []


def test_special_token_text_is_refused_unless_allowed(sonnets_tok):
    with pytest.raises(GptError, match="special token '<|endoftext|>'"):
        sonnets_tok.encode("end<|endoftext|>")
    assert sonnets_tok.encode("end<|endoftext|>", allow_special=True)[-1] == sonnets_tok.eot_id
    # as ordinary text it is just bytes
    assert sonnets_tok.eot_id not in sonnets_tok.encode_ordinary("end<|endoftext|>")


def test_save_and_load_roundtrip(sonnets_tok, tmp_path):
    path = sonnets_tok.save(tmp_path / "tok.json")
    loaded = load_tokenizer(path)
    assert isinstance(loaded, BPETokenizer)
    assert (loaded.merges, loaded.pattern, loaded.special_tokens) == (
        sonnets_tok.merges,
        sonnets_tok.pattern,
        sonnets_tok.special_tokens,
    )
    assert loaded.trained_on == sonnets_tok.trained_on
    # a directory holding tokenizer.json loads too (checkpoint layout)
    (tmp_path / "ckpt").mkdir()
    sonnets_tok.save(tmp_path / "ckpt" / "tokenizer.json")
    assert load_tokenizer(tmp_path / "ckpt").vocab_size == sonnets_tok.vocab_size


def test_ids_follow_the_documented_layout(sonnets_tok):
    assert [sonnets_tok.token_bytes(i) for i in range(256)] == [bytes([i]) for i in range(256)]
    n = 256 + len(sonnets_tok.merges)
    assert sonnets_tok.special_tokens == {"<|endoftext|>": n, "<|pad|>": n + 1}
    assert sonnets_tok.vocab_size == 1200


def test_duplicate_token_bytes_are_rejected():
    # merges (a,b)+c and a+(b,c) both spell 'abc'
    a, b, c = b"abc"
    with pytest.raises(GptError, match="same bytes"):
        BPETokenizer([(a, b), (b, c), (256, c), (a, 257)], GPT2_PATTERN)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "invalid JSON"),
        ('{"format": "something-else"}', "not a gptcli tokenizer file"),
        ('{"format": "gptcli.tokenizer", "version": 1, "kind": "bpe"}', "needs 'pattern' and 'merges'"),
        (
            '{"format": "gptcli.tokenizer", "version": 1, "kind": "bpe", "pattern": "x", "merges": [[300, 1]]}',
            "not defined",
        ),
        (
            '{"format": "gptcli.tokenizer", "version": 1, "kind": "bpe", "pattern": "x", "merges": [], "special_tokens": {"a": 5}}',
            "special token ids",
        ),
        ('{"format": "gptcli.tokenizer", "version": 2, "kind": "bpe"}', "version"),
        ('{"format": "gptcli.tokenizer", "version": 1, "kind": "char", "chars": ["a", "a"]}', "distinct"),
        ('{"format": "gptcli.tokenizer", "version": 1, "kind": "char", "chars": ["a"], "extra": 1}', "extra"),
        (
            '{"format": "gptcli.tokenizer", "version": 1, "kind": "bpe", "pattern": "(", "merges": []}',
            "pattern",
        ),
    ],
)
def test_malformed_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(GptError, match=message) as info:
        load_tokenizer(path)
    assert "\n" not in str(info.value)
