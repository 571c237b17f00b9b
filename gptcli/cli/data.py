"""`gpt data prepare|verify|show`: a corpus tokenized once into a token store, its check, and
conversations shown as fine-tuning sees them.

    gpt data prepare corpus.jsonl --tokenizer tokenizer.json --out data/corpus
    gpt train --data data/corpus                 # memory-maps the shards; the store's tokenizer
    gpt data verify data/corpus                  # every shard against its checksum
    gpt data show chats.jsonl --tokenizer tokenizer.json --limit 3   # trained text highlighted

Thin wrappers over gptcli.data.prepare, gptcli.data.store and gptcli.chat (formats described there).
"""

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from gptcli.cli.common import (
    JsonOption,
    QuietOption,
    VerboseOption,
    config_option,
    console,
    detail,
    validate_options,
    warn,
)
from gptcli.config import ChatFormat, DataPrepareConfig
from gptcli.errors import GptError, OptionError

app = typer.Typer(
    help="Tokenize a corpus once into a token store (shards of ids) for gpt train --data STORE.",
    no_args_is_help=True,
)
PROGRESS_LINE_SECONDS = 30.0  # not on a terminal (a log file): one progress line this often
TERMINAL_REDRAW_SECONDS = 0.2


def _field(name: str, *names: str, **options):
    """The option that sets DataPrepareConfig.<name>."""
    return config_option(DataPrepareConfig, name, *names, **options)


@app.command()
def prepare(
    files: Annotated[list[str], typer.Argument(help=DataPrepareConfig.model_fields["files"].description)],
    tokenizer: Annotated[Path | None, _field("tokenizer", "--tokenizer", "-t")] = None,
    out: Annotated[Path | None, _field("out", "--out", "-o")] = None,
    val_fraction: Annotated[float | None, _field("val_fraction")] = None,
    val_data: Annotated[list[str] | None, _field("val_data")] = None,
    text_field: Annotated[str | None, _field("text_field")] = None,
    split: Annotated[str | None, _field("split")] = None,
    skip_bad_records: Annotated[bool | None, _field("skip_bad_records", "--skip-bad-records")] = None,
    workers: Annotated[int | None, _field("workers")] = None,
    shard_tokens: Annotated[int | None, _field("shard_tokens")] = None,
    overwrite: Annotated[bool | None, _field("overwrite", "--overwrite")] = None,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Tokenize a corpus into a token store. Example: gpt data prepare corpus.jsonl -t tokenizer.json -o data/c

    An interrupted run resumes where it stopped when run again with the same arguments."""
    from gptcli.data.prepare import prepare_store  # numpy and the tokenizers load only when needed
    from gptcli.data.sources import SourceOptions, find_sources
    from gptcli.tokenizers import load_tokenizer

    if out is None:
        raise GptError("no --out given: name the folder to write the token store into")
    given = dict(files=files, tokenizer=tokenizer, out=out, val_fraction=val_fraction, val_data=val_data,
                 text_field=text_field, split=split, skip_bad_records=skip_bad_records, workers=workers,
                 shard_tokens=shard_tokens, overwrite=overwrite)  # fmt: skip
    config = validate_options(DataPrepareConfig, given)
    detail(f"settings: {config.model_dump_json()}")
    tok = load_tokenizer(config.tokenizer)
    sources = find_sources(config.files)
    val_sources = find_sources(config.val_data) if config.val_data else None
    start = time.perf_counter()
    result = prepare_store(
        config.out,
        sources,
        tok,
        val_fraction=config.val_fraction,
        val_sources=val_sources,
        options=SourceOptions.of(config),
        shard_tokens=config.shard_tokens,
        workers=config.workers,
        overwrite=config.overwrite,
        progress=None if quiet else RateProgress(),
    )
    for note in result.notes:
        warn(note)
    if not quiet:
        print_result(result, time.perf_counter() - start)


def print_result(result, seconds: float) -> None:
    """One line: the store was complete already, or was resumed or prepared, and what it holds."""
    store = result.store
    summary = describe(store)
    if result.status == "complete":
        console.print(f"{store.folder} is complete, its checksums match: {summary}", markup=False)
        return
    resumed = f" (resumed: {result.kept_shards} shard(s) kept)" if result.status == "resumed" else ""
    console.print(f"prepared {store.folder}{resumed}: {summary}, in {seconds:.1f}s", markup=False)


@app.command()
def verify(
    store: Annotated[Path, typer.Argument(help="The token store folder.")],
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Check every shard of a token store against its size and sha256 in meta.json."""
    from gptcli.data.store import open_store

    opened = open_store(store, checksums=True)
    console.print(f"{opened.folder} is intact (sizes and checksums): {describe(opened)}", markup=False)


@app.command()
def show(
    files: Annotated[
        list[str], typer.Argument(help="Conversation files (JSONL, JSON, Parquet) or HF dataset folders.")
    ],
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            "-c",
            help="A checkpoint or run dir: its tokenizer, and its template if fine-tuned.",
        ),
    ] = None,
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            "--tokenizer", "-t", help="A base tokenizer: the template's special tokens are added to it."
        ),
    ] = None,
    format: Annotated[
        ChatFormat, typer.Option("--format", help="The records' format (auto: detected per record).")
    ] = "auto",
    chat_template: Annotated[
        Path | None,
        typer.Option(
            "--chat-template",
            metavar="FILE.jinja",
            help="A Hugging Face-style Jinja chat template (default: the checkpoint's, else ChatML).",
        ),
    ] = None,
    train_on_prompt: Annotated[
        bool, typer.Option("--train-on-prompt", help="Train every token, not only the replies.")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", min=0, help="Show the first N records (0: all).")] = 10,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip and count bad records.")] = False,
    split: Annotated[
        str | None, typer.Option("--split", help="The split of an HF DatasetDict folder.")
    ] = None,
    json_out: JsonOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Show conversations as fine-tuning sees them, the trained tokens highlighted. Example: gpt data show chats.jsonl -t tokenizer.json

    Piped, the trained text is marked \\[\\[like this]]. --json: one line per record, {"ids", "trained", "text", "record"}."""
    from gptcli.chat.formats import ReadReport, iter_conversations
    from gptcli.chat.template import render

    tok, template = chat_tokenizer(checkpoint, tokenizer, chat_template)
    report = ReadReport()
    out = Console(highlight=False, soft_wrap=True)
    for n, (where, messages) in enumerate(iter_conversations(files, format, skip_bad, split, report), 1):
        try:
            rendered = render(messages, template, tok, train_on_prompt=train_on_prompt)
        except GptError as e:
            raise GptError(f"{where}: {e}") from None
        if json_out:
            record = {
                "ids": rendered.ids,
                "trained": rendered.trained,
                "text": tok.decode(rendered.ids),
                "record": where,
            }
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            print_rendered(out, where, rendered, tok)
        if n == limit:
            break
    for line in report.lines():
        warn(line)


def chat_tokenizer(checkpoint: Path | None, tokenizer: Path | None, template_file: Path | None):
    """(tokenizer with the template's special tokens, template) from --checkpoint or --tokenizer."""
    from gptcli.chat.template import resolve_template
    from gptcli.tokenizers import load_tokenizer, with_special_tokens

    if (checkpoint is None) == (tokenizer is None):
        raise OptionError("give either --checkpoint or --tokenizer (the tokenizer to render with)")
    saved = None
    if checkpoint is not None:
        from gptcli.storage.checkpoint import TOKENIZER, read_config, resolve_checkpoint

        directory = resolve_checkpoint(checkpoint)
        saved = read_config(directory).get("chat_template")
        tokenizer = directory / TOKENIZER
    template = resolve_template(template_file, saved)
    tok, added = with_special_tokens(load_tokenizer(tokenizer), template.special_tokens)
    if added:
        detail(f"special tokens added as fine-tuning adds them: {', '.join(added)}")
    return tok, template


def print_rendered(out: Console, where: str, rendered, tokenizer) -> None:
    """A header line, then the text: trained stretches highlighted on a terminal, else in [[ ]]."""
    from gptcli.chat.show import highlighted, plain, trained_pieces

    pieces = trained_pieces(rendered, tokenizer)
    header = f"--- {where}: {len(rendered.ids)} tokens, {rendered.n_trained} trained"
    if out.is_terminal:
        out.print(header, style="dim", markup=False, highlight=False)
        out.print(highlighted(pieces), highlight=False)
    else:
        sys.stdout.write(f"{header}\n{plain(pieces)}\n")


def describe(store) -> str:
    """'train 1,200,000 tokens in 12 shards, val ..., uint16, 3,400 documents'."""
    meta = store.meta
    parts = []
    for split in ("train", "val"):
        info = meta["splits"][split]
        parts.append(f"{split} {info['n_tokens']:,} tokens in {len(info['shards'])} shard(s)")
    return ", ".join(parts) + f", {meta['dtype']}, {meta['documents']:,} document(s)"


class RateProgress:
    """`progress(stage, done, total)` (bytes) as a line on stderr: MB done / total, MB/s and ETA.

    On a terminal the line is redrawn in place; in a log (not a terminal) a line is written every
    PROGRESS_LINE_SECONDS, and when a stage ends. The rate counts only this run's bytes (a resumed
    run starts past the input it had finished)."""

    def __init__(self):
        self.stage = None
        self.terminal = sys.stderr.isatty()
        self.every = TERMINAL_REDRAW_SECONDS if self.terminal else PROGRESS_LINE_SECONDS

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if stage != self.stage:
            self.stage, self.started, self.first, self.last, self.ended = stage, now, done, now, False
        finished = done >= total
        if self.ended or (not finished and now - self.last < self.every):
            return
        self.ended = finished
        self.last = now
        elapsed = now - self.started
        rate = (done - self.first) / elapsed if elapsed > 0 else 0.0
        eta = f"ETA {format_seconds((total - done) / rate)}" if rate > 0 and not finished else "done"
        speed = f"{rate / 1e6:.1f} MB/s, " if rate > 0 else ""  # none yet when the first report is the last
        line = f"{stage}: {done / 1e6:,.1f} / {total / 1e6:,.1f} MB, {speed}{eta}"
        if self.terminal:
            sys.stderr.write("\r" + line.ljust(78) + ("\n" if finished else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def format_seconds(seconds: float) -> str:
    """42s, 3m05s, 2h07m."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
