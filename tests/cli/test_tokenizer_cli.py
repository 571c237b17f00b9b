"""`gpt tokenizer ...` as a user runs it: happy paths, and every bad input gives one `error:` line."""

import json
import os
import subprocess
import sys

import pytest

from gptcli import __version__
from tests.conftest import REPO, SONNETS, assert_one_line_error, run_cli


@pytest.fixture
def trained(tmp_path):
    out = tmp_path / "tok.json"
    result = run_cli(
        "tokenizer",
        "train",
        str(SONNETS),
        "--vocab-size",
        "600",
        "--out",
        str(out),
        "--special-tokens",
        "<|endoftext|>,<|sep|>",
    )
    assert result.exit_code == 0, result.stderr
    assert "trained bpe tokenizer: vocab 600" in result.stderr
    return out


def test_version_and_help():
    assert run_cli("--version").stdout.strip() == f"gpt {__version__}"
    for args in (
        ["--help"],
        ["tokenizer", "--help"],
        *[["tokenizer", c, "--help"] for c in ("train", "encode", "decode", "info", "export")],
    ):
        result = run_cli(*args)
        assert result.exit_code == 0 and "Usage" in result.stdout, args


def test_train_writes_tokenizer_json_in_the_current_directory_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli("tokenizer", "train", str(SONNETS), "--vocab-size", "300", "--quiet")
    assert result.exit_code == 0 and result.stderr == ""
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    assert data["kind"] == "bpe" and len(data["merges"]) == 300 - 256 - 1
    assert data["trained_on"][0]["path"] == str(SONNETS)
    # encode/decode then find it without --tokenizer
    ids = json.loads(run_cli("tokenizer", "encode", "Shall I compare thee").stdout)
    assert run_cli("tokenizer", "decode", json.dumps(ids)).stdout == "Shall I compare thee"


def test_encode_decode_roundtrip_with_files_and_stdin(trained, tmp_path):
    text = "Shall I compare thee to a summer's day?\nThou art more lovely — ünïcödé 🙂"
    (tmp_path / "in.txt").write_text(text, encoding="utf-8")
    encoded = run_cli("tokenizer", "encode", "--tokenizer", str(trained), "--file", str(tmp_path / "in.txt"))
    assert encoded.exit_code == 0
    ids = json.loads(encoded.stdout)
    assert all(isinstance(i, int) for i in ids)
    assert json.loads(run_cli("tokenizer", "encode", "-t", str(trained), text).stdout) == ids
    assert json.loads(run_cli("tokenizer", "encode", "-t", str(trained), input=text).stdout) == ids
    (tmp_path / "ids.json").write_text(json.dumps(ids))
    assert (
        run_cli("tokenizer", "decode", "-t", str(trained), "--file", str(tmp_path / "ids.json")).stdout
        == text
    )
    assert run_cli("tokenizer", "decode", "-t", str(trained), input=encoded.stdout).stdout == text


def test_special_tokens_need_allow_special(trained):
    refused = run_cli("tokenizer", "encode", "-t", str(trained), "a<|sep|>b")
    assert_one_line_error(refused, "<|sep|>", "--allow-special")
    allowed = run_cli("tokenizer", "encode", "-t", str(trained), "--allow-special", "a<|sep|>b")
    ids = json.loads(allowed.stdout)
    assert 599 in ids  # <|sep|> is the last id
    assert run_cli("tokenizer", "decode", "-t", str(trained), json.dumps(ids)).stdout == "a<|sep|>b"


def test_info_shows_kind_sizes_specials_and_longest_tokens(trained):
    table = run_cli("tokenizer", "info", str(trained))
    assert table.exit_code == 0
    for fragment in ("bpe", "600", "<|sep|>=599", "gpt4", "longest_tokens"):
        assert fragment in table.stdout
    data = json.loads(run_cli("tokenizer", "info", str(trained), "--json").stdout)
    assert data["vocab_size"] == 600 and data["merges"] == 342 and len(data["longest_tokens"]) == 5


def test_char_kind_and_gpt2_pattern(tmp_path, corpus):
    path = corpus("hello world\n")
    out = tmp_path / "char.json"
    assert run_cli("tokenizer", "train", str(path), "--kind", "char", "--out", str(out)).exit_code == 0
    assert json.loads(run_cli("tokenizer", "encode", "-t", str(out), "hello").stdout) == [
        4,
        3,
        5,
        5,
        6,
    ]  # ids: newline, space, d, e, h, l, o, ...
    out2 = tmp_path / "gpt2pat.json"
    assert (
        run_cli(
            "tokenizer", "train", str(SONNETS), "--vocab-size", "300", "--pattern", "gpt2", "--out", str(out2)
        ).exit_code
        == 0
    )
    assert json.loads(run_cli("tokenizer", "info", str(out2), "--json").stdout)["pattern"] == "gpt2"


def test_custom_split_pattern(tmp_path, corpus):
    out = tmp_path / "words.json"
    path = corpus("one two three one two one\n")
    result = run_cli(
        "tokenizer", "train", str(path), "--pattern", r"\w+|\s", "--vocab-size", "280", "--out", str(out)
    )
    assert result.exit_code == 0, result.stderr
    info = json.loads(run_cli("tokenizer", "info", str(out), "--json").stdout)
    assert info["pattern"] == "custom" and info["pattern_regex"] == r"\w+|\s"
    ids = json.loads(run_cli("tokenizer", "encode", "-t", str(out), "one two").stdout)
    assert len(ids) == 3  # "one", " ", "two": the pattern keeps spaces apart


def test_train_accepts_several_files_and_directories(tmp_path, corpus):
    a = corpus("alpha beta gamma\n", "docs/a.txt")
    corpus("delta epsilon\n", "docs/sub/b.md")
    c = corpus("zeta eta theta\n", "c.txt")
    out = tmp_path / "t.json"
    assert (
        run_cli(
            "tokenizer", "train", str(a.parent), str(c), "--vocab-size", "270", "--out", str(out)
        ).exit_code
        == 0
    )
    info = json.loads(run_cli("tokenizer", "info", str(out), "--json").stdout)
    assert [os.path.basename(f["path"]) for f in info["trained_on"]] == ["a.txt", "b.md", "c.txt"]


def test_export_formats(trained, tmp_path):
    for fmt, files in (
        ("hf", ["vocab.json", "merges.txt", "tokenizer.json"]),
        ("tiktoken", ["tokenizer.tiktoken", "tiktoken.json"]),
    ):
        out = tmp_path / fmt
        result = run_cli("tokenizer", "export", str(trained), "--format", fmt, "--out", str(out))
        assert result.exit_code == 0, result.stderr
        assert all((out / f).is_file() for f in files)
    # the HF folder is itself a tokenizer folder we can use
    ids = json.loads(run_cli("tokenizer", "encode", "-t", str(tmp_path / "hf"), "hello").stdout)
    assert ids == json.loads(run_cli("tokenizer", "encode", "-t", str(trained), "hello").stdout)


def test_undecodable_bytes_are_counted_not_fatal(tmp_path, corpus):
    path = corpus(b"good text \xff\xfe more text \xc3 end\n" * 20)
    result = run_cli(
        "tokenizer", "train", str(path), "--vocab-size", "280", "--out", str(tmp_path / "t.json")
    )
    assert result.exit_code == 0
    assert "60 byte(s) of the corpus were not valid UTF-8" in result.stderr


def test_vocab_beyond_what_the_corpus_yields_warns_and_saves(tmp_path, corpus):
    out = tmp_path / "t.json"
    result = run_cli("tokenizer", "train", str(corpus("ab ab ab")), "--vocab-size", "5000", "--out", str(out))
    assert result.exit_code == 0
    assert "warning:" in result.stderr and "yields only" in result.stderr
    assert out.is_file()


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["tokenizer", "train", "missing.txt"], ["corpus file not found", "missing.txt"]),
        (["tokenizer", "train", "{empty}"], ["corpus is empty"]),
        (["tokenizer", "train", "{emptydir}"], ["no text files"]),
        (["tokenizer", "train", "{sonnets}", "--vocab-size", "200"], ["vocab_size 200 is too small", "257"]),
        (
            ["tokenizer", "train", "{sonnets}", "--special-tokens", "<a>,<a>"],
            ["duplicate special token", "<a>"],
        ),
        (["tokenizer", "train", "{sonnets}", "--special-tokens", "<a>,,<b>"], ["must not be empty"]),
        (["tokenizer", "train", "{sonnets}", "--pattern", "(unclosed"], ["invalid split pattern"]),
        (
            ["tokenizer", "train", "{sonnets}", "--kind", "word"],
            ["--kind", "'word' is not one of 'bpe', 'char'"],
        ),
        (["tokenizer", "train"], ["Missing argument"]),
        (["tokenizer", "train", "{sonnets}", "--vocab-size", "lots"], ["--vocab-size", "valid integer"]),
        (["tokenizer", "encode", "-t", "{missing}", "hi"], ["tokenizer not found"]),
        (["tokenizer", "encode", "-t", "{badjson}", "hi"], ["invalid JSON"]),
        (
            ["tokenizer", "encode", "-t", "{tok}", "hi", "--file", "{empty}"],
            ["either as an argument or with --file"],
        ),
        (["tokenizer", "encode", "-t", "{tok}", "--file", "{missing}"], ["file not found"]),
        (["tokenizer", "decode", "-t", "{tok}", "[1, 99999]"], ["99999", "out of range"]),
        (["tokenizer", "decode", "-t", "{tok}", "[-1]"], ["-1", "out of range"]),
        (["tokenizer", "decode", "-t", "{tok}", '[1, "a"]'], ["JSON array of integers"]),
        (["tokenizer", "decode", "-t", "{tok}", "{{oops"], ["JSON array of integers"]),
        (
            ["tokenizer", "export", "{tok}", "--format", "onnx"],
            ["--format", "'onnx' is not one of 'hf', 'tiktoken'"],
        ),
        (["tokenizer", "export", "{chartok}", "--format", "hf"], ["only BPE"]),
        (["tokenizer", "info", "{emptydir}"], ["no tokenizer here"]),
    ],
)
def test_bad_input_gives_one_line_error(tmp_path, corpus, args, fragments):
    places = {
        "sonnets": str(SONNETS),
        "missing": str(tmp_path / "missing.json"),
        "empty": str(corpus("", "empty.txt")),
        "emptydir": str((tmp_path / "emptydir").resolve()),
        "badjson": str(corpus("{nope", "bad.json")),
        "tok": str(tmp_path / "tok.json"),
        "chartok": str(tmp_path / "char.json"),
    }
    (tmp_path / "emptydir").mkdir()
    assert (
        run_cli(
            "tokenizer", "train", str(SONNETS), "--vocab-size", "300", "--out", places["tok"], "-q"
        ).exit_code
        == 0
    )
    assert (
        run_cli(
            "tokenizer", "train", str(SONNETS), "--kind", "char", "--out", places["chartok"], "-q"
        ).exit_code
        == 0
    )
    result = run_cli(*[a.format(**places) for a in args])
    assert_one_line_error(result, *fragments)


def test_console_script_and_python_dash_m(tmp_path):
    """The installed entry points run, and an error is one line with no traceback."""
    for cmd in ([sys.executable, "-m", "gptcli"],):
        ok = subprocess.run([*cmd, "--version"], capture_output=True, text=True, cwd=REPO)
        assert ok.returncode == 0 and ok.stdout.strip() == f"gpt {__version__}"
        bad = subprocess.run(
            [*cmd, "tokenizer", "encode", "-t", str(tmp_path / "nope.json"), "x"],
            capture_output=True,
            text=True,
        )
        assert (
            bad.returncode == 1 and bad.stderr.strip().startswith("error:") and "Traceback" not in bad.stderr
        )


def run_on_a_terminal(*args: str) -> bytes:
    """`gpt ARGS` with stdout on a pseudo-terminal, as a person at a shell runs it -> what it printed."""
    import pty

    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "gptcli", *args],
            stdin=subprocess.DEVNULL, stdout=follower, stderr=subprocess.PIPE, cwd=REPO, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        os.close(follower)
        follower = -1
        out = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other end is closed and everything was read
                break
            if not chunk:
                break
            out += chunk
        return out.replace(b"\r\n", b"\n")  # the terminal's line discipline turns \n into \r\n
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)


def test_decode_ends_with_a_newline_on_a_terminal_and_is_byte_exact_in_a_pipe(tmp_path, corpus):
    tok = tmp_path / "char.json"
    assert run_cli("tokenizer", "train", str(corpus("hello world\n")), "--kind", "char", "-o", str(tok), "-q").exit_code == 0  # fmt: skip
    ids = json.loads(run_cli("tokenizer", "encode", "-t", str(tok), "hello").stdout)
    # a terminal: the shell's prompt starts on a line of its own
    assert run_on_a_terminal("tokenizer", "decode", "-t", str(tok), json.dumps(ids)) == b"hello\n"
    # a text that ends with a newline gets no second one
    ids_nl = json.loads(run_cli("tokenizer", "encode", "-t", str(tok), "hello\n").stdout)
    assert run_on_a_terminal("tokenizer", "decode", "-t", str(tok), json.dumps(ids_nl)) == b"hello\n"
    # a pipe or a file: exactly the text, so `encode | decode` gives back what went in
    piped = subprocess.run(
        [sys.executable, "-m", "gptcli", "tokenizer", "decode", "-t", str(tok), json.dumps(ids)],
        capture_output=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert piped.returncode == 0 and piped.stdout == b"hello"
