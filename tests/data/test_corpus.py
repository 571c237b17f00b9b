from collections import Counter

import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from gptcli.data.corpus import TextReader, decode_utf8
from gptcli.tokenizers.patterns import GPT2_PATTERN, GPT4_PATTERN

# text rich in the characters where split patterns are delicate: newlines, spaces, letters, digits
delicate_text = st.lists(
    st.sampled_from(list("ab Z9\n\r\t.'é🙂\u3000") + ["\n\n", "  ", "'s", "\nThe"]), max_size=150
).map("".join)


@settings(max_examples=150, deadline=None)
@given(text=delicate_text, block=st.integers(1, 64))
def test_block_reading_gives_the_chunks_of_the_whole_text(tmp_path_factory, text, block):
    path = tmp_path_factory.mktemp("c") / "c.txt"
    path.write_text(text, encoding="utf-8", newline="")
    blocks = list(TextReader(path, block_bytes=block))
    assert "".join(blocks) == text
    for pattern in (GPT2_PATTERN, GPT4_PATTERN):
        whole = Counter(regex.findall(pattern, text))
        by_block = Counter(chunk for b in blocks for chunk in regex.findall(pattern, b))
        assert by_block == whole


def test_invalid_utf8_is_replaced_and_counted(corpus):
    path = corpus(b"ok \xff\xfe text \xe2\x82 end \xef\xbf\xbd")  # two bad sequences + one real U+FFFD
    reader = TextReader(path, block_bytes=4)
    text = "".join(reader)
    assert text == "ok \ufffd\ufffd text \ufffd end \ufffd"
    assert reader.invalid_bytes == 4


def test_a_stream_reads_as_the_file_does(corpus):
    path = corpus("some text that is cut into blocks at safe points " * 20)
    with open(path, "rb") as fh:
        from_stream = list(TextReader(path, block_bytes=16, stream=fh))
    assert from_stream == list(TextReader(path, block_bytes=16))


def test_decode_utf8_counts_the_bytes_it_replaces():
    assert decode_utf8("é ok".encode()) == ("é ok", 0)
    assert decode_utf8(b"a\xff\xfeb") == ("a\ufffd\ufffdb", 2)
