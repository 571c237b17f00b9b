"""`gpt tokenizer train|encode|decode|info|export`: thin wrappers over gptcli.tokenizers."""

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from gptcli.cli.common import (
    JsonOption,
    QuietOption,
    VerboseOption,
    config_option,
    console,
    detail,
    human_bytes,
    read_input,
    stage_progress,
    validate_options,
    warn,
    write_text,
)
from gptcli.config import EXPORT_FORMATS, ExportFormat, TokenizerKind, TokenizerTrainConfig
from gptcli.errors import GptError

app = typer.Typer(
    help="Train byte-level BPE or character tokenizers; encode, decode, inspect, export.",
    no_args_is_help=True,
)

TokenizerPath = Annotated[
    Path,
    typer.Option(
        "--tokenizer",
        "-t",
        help="Tokenizer file, or a folder with tokenizer.json or GPT-2's vocab.json + merges.txt.",
    ),
]


def _field(name: str, *names: str, **options):
    """The option that sets TokenizerTrainConfig.<name>."""
    return config_option(TokenizerTrainConfig, name, *names, **options)


def check_pattern(value: str) -> str:
    """--pattern, checked as it is parsed: gpt2, gpt4, or a regex both of its engines compile."""
    from gptcli.tokenizers.patterns import resolve_pattern  # regex and tiktoken load only when needed

    try:
        resolve_pattern(value)
    except GptError as e:
        raise ValueError(str(e)) from None
    return value


@app.command()
def train(
    files: Annotated[
        list[str],
        typer.Argument(help=TokenizerTrainConfig.model_fields["files"].description),
    ],
    vocab_size: Annotated[int | None, _field("vocab_size")] = None,
    out: Annotated[Path | None, _field("out", "--out", "-o")] = None,
    kind: Annotated[TokenizerKind | None, _field("kind")] = None,
    special_tokens: Annotated[
        str | None,
        _field(
            "special_tokens", help="Comma-separated special tokens, ids after the vocabulary ('' for none)."
        ),
    ] = None,
    pattern: Annotated[str | None, _field("pattern", parser=check_pattern)] = None,
    workers: Annotated[int | None, _field("workers")] = None,
    text_field: Annotated[str | None, _field("text_field")] = None,
    split: Annotated[str | None, _field("split")] = None,
    skip_bad_records: Annotated[bool | None, _field("skip_bad_records", "--skip-bad-records")] = None,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Train a tokenizer on a corpus. Example: gpt tokenizer train corpus.txt --vocab-size 20000"""
    from gptcli.data.tokenizer_corpus import train_tokenizer  # tiktoken and regex load only when needed

    given = dict(files=files, kind=kind, vocab_size=vocab_size, pattern=pattern, out=out, workers=workers,
                 text_field=text_field, split=split, skip_bad_records=skip_bad_records)  # fmt: skip
    if special_tokens is not None:
        given["special_tokens"] = special_tokens.split(",") if special_tokens != "" else []
    config = validate_options(TokenizerTrainConfig, given)
    detail(f"settings: {config.model_dump_json()}")
    with stage_progress(enabled=not quiet) as progress:
        result = train_tokenizer(config, progress)
    result.tokenizer.save(config.out)
    for warning in result.warnings:
        warn(warning)
    if not quiet:
        tok = result.tokenizer
        corpus = sum(f.bytes for f in tok.trained_on or [])
        n_files = len(tok.trained_on or [])
        ordinary = (
            f"{tok.n_ordinary} characters" if tok.kind == "char" else f"256 bytes + {len(tok.merges)} merges"
        )
        parts = f"{ordinary} + {len(tok.special_tokens)} special"
        console.print(
            f"trained {tok.kind} tokenizer: vocab {tok.vocab_size} = {parts}, on {n_files} file(s), "
            f"{human_bytes(corpus)}, in {result.seconds:.1f}s -> {config.out}"
        )


@app.command()
def encode(
    text: Annotated[str | None, typer.Argument(help="Text to encode (or use --file, or stdin).")] = None,
    tokenizer: TokenizerPath = Path("tokenizer.json"),
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="Read the text from this file ('-' for stdin).")
    ] = None,
    allow_special: Annotated[
        bool, typer.Option(help="Encode special-token strings such as <|endoftext|> as their ids.")
    ] = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Print the token ids of a text as one JSON array."""
    tok = read_tokenizer(tokenizer)
    source = read_input(text, file, "text")
    t0 = time.perf_counter()
    ids = tok.encode(source, allow_special=allow_special)
    detail(
        f"{len(source):,} characters -> {len(ids):,} tokens ({len(source) / max(len(ids), 1):.2f} per token) "
        f"in {time.perf_counter() - t0:.3f}s with {tok.kind} tokenizer {tokenizer} (vocab {tok.vocab_size:,})"
    )
    write_text(json.dumps(ids) + "\n")


@app.command()
def decode(
    ids: Annotated[
        str | None,
        typer.Argument(help="Token ids as a JSON array, e.g. '[72, 101]' (or use --file, or stdin)."),
    ] = None,
    tokenizer: TokenizerPath = Path("tokenizer.json"),
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="Read the ids from this file ('-' for stdin).")
    ] = None,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Print the text of a JSON array of token ids."""
    tok = read_tokenizer(tokenizer)
    id_list = parse_ids(read_input(ids, file, "ids"))
    text = tok.decode(id_list)
    detail(f"{len(id_list):,} tokens -> {len(text):,} characters with {tok.kind} tokenizer {tokenizer}")
    write_text(text)


def parse_ids(raw: str) -> list[int]:
    """A JSON array of ints (whitespace- or comma-separated ints are accepted too)."""
    raw = raw.strip()
    try:
        value = json.loads(raw) if raw.startswith("[") else [int(x) for x in raw.replace(",", " ").split()]
    except (json.JSONDecodeError, ValueError):
        raise GptError(f"ids must be a JSON array of integers, got {raw[:40]!r}") from None
    if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        raise GptError(f"ids must be a JSON array of integers, got {raw[:40]!r}")
    return value


def read_tokenizer(path: Path):
    from gptcli.tokenizers import load_tokenizer  # tiktoken and regex load only when needed

    return load_tokenizer(path)


def tokenizer_info(tok, n_longest: int = 5) -> dict:
    """What `info` shows, as a JSON-ready dict."""
    from gptcli.tokenizers.bpe import BPETokenizer

    info = {
        "kind": tok.kind,
        "vocab_size": tok.vocab_size,
        "special_tokens": tok.special_tokens,
    }
    if isinstance(tok, BPETokenizer):
        info |= {"merges": len(tok.merges), "pattern": tok.pattern_name}
        if tok.pattern_name == "custom":
            info["pattern_regex"] = tok.pattern
    else:
        info["characters"] = tok.n_ordinary
    longest = sorted(range(tok.n_ordinary), key=lambda i: (-len(tok.token_bytes(i)), i))[:n_longest]
    info["longest_tokens"] = [
        {"id": i, "text": tok.token_bytes(i).decode("utf-8", errors="replace")} for i in longest
    ]
    if tok.trained_on:
        info["trained_on"] = [f.model_dump() for f in tok.trained_on]
    return info


@app.command()
def info(
    path: Annotated[Path, typer.Argument(help="Tokenizer file or folder.")] = Path("tokenizer.json"),
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Show a tokenizer's kind, sizes, special tokens, split pattern and longest tokens."""
    data = tokenizer_info(read_tokenizer(path))
    if as_json:
        write_text(json.dumps(data, ensure_ascii=False) + "\n")
        return
    width = max(len(key) for key in data)
    lines = []
    for key, value in data.items():
        if key == "longest_tokens":
            value = ", ".join(f"{t['id']}={t['text']!r}" for t in value)
        elif key == "trained_on":
            shown = ", ".join(f"{f['path']} ({human_bytes(f['bytes'])})" for f in value[:3])
            total = human_bytes(sum(f["bytes"] for f in value))
            value = shown if len(value) <= 3 else f"{shown} and {len(value) - 3} more files ({total} in all)"
        elif key == "special_tokens":
            value = ", ".join(f"{s}={i}" for s, i in value.items()) or "none"
        lines.append(f"{key:<{width}}  {value}")
    write_text("\n".join(lines) + "\n")


@app.command()
def export(
    path: Annotated[Path, typer.Argument(help="Tokenizer file or folder to export.")] = Path(
        "tokenizer.json"
    ),
    format: Annotated[
        ExportFormat, typer.Option("--format", help=f"Target format: {' or '.join(EXPORT_FORMATS)}.")
    ] = "hf",
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the exported files into.")] = Path(
        "tokenizer_export"
    ),
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Export a BPE tokenizer for other tools: HF (vocab.json + merges.txt + tokenizer.json) or tiktoken."""
    from gptcli.tokenizers.export import export_tokenizer

    written = export_tokenizer(read_tokenizer(path), format, out)
    console.print(f"wrote {', '.join(str(p) for p in written)}")
