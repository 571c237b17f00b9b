"""`gpt eval` and `gpt info`: measure a checkpoint on a corpus; show what a checkpoint or run holds."""

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from gptcli.cli.common import (
    BestOption,
    JsonOption,
    QuantizeOption,
    QuietOption,
    StrictOption,
    VerboseOption,
    config_option,
    console,
    detail,
    device_option,
    fail,
    human_bytes,
    stage_progress,
    warn,
)
from gptcli.config import TrainConfig


def eval_command(
    data: Annotated[
        list[str],
        typer.Option(
            "--data",
            "-d",
            help="Corpus to evaluate on: text, .jsonl/.json, .parquet, .gz/.zst files, directories, "
            "HF dataset folders or globs; or prompt/completion pairs (see above); repeat for several.",
        ),
    ],
    checkpoint: Annotated[
        list[Path] | None,
        typer.Option(
            "--checkpoint",
            "-c",
            help="Checkpoint dir, or a run dir (its newest checkpoint); repeat to compare models "
            "(default: out).",
        ),
    ] = None,
    best: BestOption = False,
    strict: StrictOption = False,
    text_field: Annotated[str | None, config_option(TrainConfig, "text_field")] = None,
    split: Annotated[str | None, config_option(TrainConfig, "split")] = None,
    skip_bad_records: Annotated[
        bool | None, config_option(TrainConfig, "skip_bad_records", "--skip-bad-records")
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Windows of block_size tokens (or pairs) per forward pass.")
    ] = 8,
    max_tokens: Annotated[
        int | None, typer.Option(help="Evaluate only the first N tokens (of a corpus).")
    ] = None,
    max_pairs: Annotated[int | None, typer.Option(help="Evaluate only the first N pairs.", min=1)] = None,
    pairs_flag: Annotated[
        bool,
        typer.Option(
            "--pairs",
            help="Read the data as prompt/completion pairs (told apart by itself; see above).",
        ),
    ] = False,
    exact_match: Annotated[
        bool,
        typer.Option(
            "--exact-match",
            help="On pairs: also decode each completion greedily and count those equal to it exactly.",
        ),
    ] = False,
    device: Annotated[str, device_option()] = "auto",
    quantize: QuantizeOption = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Loss, perplexity and bits per byte (comparable across tokenizers) of checkpoints on a corpus;
    the completion loss on prompt/completion pairs.

    Each document is followed by the end-of-text token when the tokenizer has one, as in training.
    With several --checkpoint (say a GPT and the LSTM baseline) they are shown side by side; with
    --json, one JSON object per checkpoint, one per line.

    Pairs: the data is read as prompt/completion pairs with --pairs, when a --checkpoint is an
    encoder-decoder, or when its first record holds a conversation (prompt + completion, instruction + output, messages or
    conversations) and no --text-field is given. The figure is then the completion loss: the mean
    cross-entropy per completion token, its end token included. An encoder-decoder reads the prompt
    in its encoder; a chat model (gpt finetune's, or a GPT trained on pairs) the pair rendered by its
    chat template, scored on the reply and its end token, so the two compare directly. A GPT without
    a chat template cannot be scored on pairs. --exact-match adds the fraction of greedy completions
    equal to the expected ones.
    """
    from gptcli.data.sources import CorpusReader, SourceOptions, find_sources
    from gptcli.loading import load_newest
    from gptcli.runtime import resolve_device  # torch loads only once a command runs
    from gptcli.storage import checkpoint as ckpt

    sources = checkpoint or [Path("out")]
    directories = [ckpt.resolve_checkpoint(s, best=best) for s in sources]  # every path exists, first
    given = dict(text_field=text_field, split=split, skip_bad_records=skip_bad_records)
    options = SourceOptions(**{k: v for k, v in given.items() if v is not None})
    corpus = find_sources(data)
    on_pairs = reads_pairs(directories, data, options, text_field, pairs_flag)
    check_eval_options(on_pairs, text_field, max_tokens, max_pairs, exact_match)
    if on_pairs:
        pairs = read_eval_pairs(data, options, max_pairs)
    else:
        CorpusReader(corpus, options)  # a missing split or extra fails here, before a model loads
    torch_device = resolve_device(device)
    rows = []
    for i, source in enumerate(sources):
        loaded = load_newest(source, torch_device, best=best, strict=strict, warn=warn, quantize=quantize)
        if on_pairs:
            row = evaluate_on_pairs(
                loaded, ", ".join(data), pairs, torch_device, batch_size, exact_match, as_json
            )
        else:
            reader = CorpusReader(corpus, options)  # read again for each model: its tokenizer may differ
            row = evaluate_checkpoint(
                loaded, ", ".join(data), reader, torch_device, batch_size, max_tokens, as_json
            )
            if i == 0:
                for line in reader.report():
                    warn(line)
        rows.append(row)
        if as_json:
            sys.stdout.write(json.dumps(row) + "\n")
    if not as_json:
        (write_pairs_table if on_pairs else write_eval_table)(rows)


def reads_pairs(
    directories: list[Path], data: list[str], options, text_field: str | None, asked: bool
) -> bool:
    """Pairs with --pairs or for an encoder-decoder; for other models, when the records are conversations."""
    from gptcli.data.pairs import are_pairs, require_pair_sources
    from gptcli.storage.checkpoint import read_config

    if any(read_config(d)["model"].arch == "encdec" for d in directories):
        require_pair_sources(
            data, options.split, "an encoder-decoder is evaluated on prompt/completion pairs"
        )
        return True
    if asked:
        require_pair_sources(data, options.split, "--pairs reads prompt/completion pairs")
        return True
    return text_field is None and are_pairs(data, options.split)


def check_eval_options(on_pairs: bool, text_field, max_tokens, max_pairs, exact_match) -> None:
    """Options of the other kind of data are one-line errors, not silently ignored."""
    if on_pairs and text_field is not None:
        fail("--text-field names a corpus's text field; prompt/completion pairs are read by their own fields")
    if on_pairs and max_tokens is not None:
        fail("--max-tokens counts a corpus's tokens; on prompt/completion pairs use --max-pairs")
    if not on_pairs and (exact_match or max_pairs is not None):
        option = "--exact-match" if exact_match else "--max-pairs"
        fail(f"{option} is for prompt/completion pairs, and the data is a text corpus (see gpt eval --help)")


def read_eval_pairs(data: list[str], options, max_pairs: int | None) -> list:
    """The pairs of the data (the first max_pairs), bad records skipped with a warning if asked."""
    from gptcli.data.pairs import read_pairs

    pairs, report = read_pairs(data, "auto", options.skip_bad_records, options.split)
    for line in report:
        warn(line)
    return pairs[:max_pairs]


def evaluate_on_pairs(loaded, data: str, pairs: list, device, batch_size, exact_match, as_json) -> dict:
    """One row of the pairs table: the checkpoint, its model, its completion loss (and exact match)."""
    from gptcli.evaluate_pairs import evaluate_pairs, pair_framing

    model, tokenizer, config, directory = loaded
    t0 = time.perf_counter()
    framing = pair_framing(model, tokenizer, config, directory)
    with stage_progress(enabled=not as_json) as progress:
        result = evaluate_pairs(model, framing, pairs, batch_size, exact_match, progress)
    detail(f"{directory}: {result.pairs:,} pairs in {time.perf_counter() - t0:.1f}s on {device}")
    return {**model_columns(loaded, data), "measure": "completion", **result.to_json()}


def evaluate_checkpoint(loaded, data: str, reader, device, batch_size, max_tokens, as_json) -> dict:
    """One row of the eval table: the checkpoint, its model, and its figures on the corpus."""
    from gptcli.evaluate import document_ids, evaluate_ids

    model, tokenizer, config, directory = loaded
    t0 = time.perf_counter()
    ids = document_ids(tokenizer, reader, None if max_tokens is None else max_tokens + 1)
    with stage_progress(enabled=not as_json) as progress:
        result = evaluate_ids(model, tokenizer, ids, batch_size=batch_size, progress=progress)
    detail(f"{directory}: {result.tokens:,} tokens in {time.perf_counter() - t0:.1f}s on {device}")
    return {**model_columns(loaded, data), **result.to_json()}


def model_columns(loaded, data: str) -> dict:
    """What a row says of the checkpoint and its model."""
    from gptcli.models.int8 import is_quantized

    model, tokenizer, config, directory = loaded
    return {
        "checkpoint": str(directory),
        "data": data,
        "arch": config["model"].arch,
        "parameters": model.num_params(non_embedding=False),
        "tokenizer": tokenizer.kind,
        "quantization": "int8" if is_quantized(model) else None,
    }


def write_eval_table(rows: list[dict]) -> None:
    """One line per checkpoint; bits per byte is the column to compare across tokenizers."""
    write_table(rows, [
        ("loss", lambda r: f"{r['loss']:.4f}"),
        ("perplexity", lambda r: f"{r['perplexity']:.2f}"),
        ("bits/byte", lambda r: f"{r['bits_per_byte']:.4f}"),
        ("tokens", lambda r: f"{r['tokens']:,}"),
    ])  # fmt: skip


def write_pairs_table(rows: list[dict]) -> None:
    """One line per checkpoint: the completion loss, and exact match when it was asked for."""
    figures = [
        ("completion loss", lambda r: f"{r['loss']:.4f}"),
        ("perplexity", lambda r: f"{r['perplexity']:.2f}"),
        ("tokens", lambda r: f"{r['tokens']:,}"),
        ("pairs", lambda r: f"{r['pairs']:,}"),
    ]
    if rows[0].get("exact_match") is not None:
        figures.append(
            ("exact match", lambda r: f"{r['exact_match']:.3f} ({r['exact_matches']}/{r['pairs']})")
        )
    write_table(rows, figures)


def write_table(rows: list[dict], figures: list[tuple[str, Callable[[dict], str]]]) -> None:
    """The checkpoint, its model and tokenizer, then each figure's column (right-aligned), to stdout:
    the figures are the command's output."""
    columns = [
        ("checkpoint", lambda r: r["checkpoint"] + (" (int8)" if r.get("quantization") else "")),
        ("arch", lambda r: r["arch"]),
        ("params", lambda r: f"{r['parameters'] / 1e6:.2f}M"),
        ("tokenizer", lambda r: r["tokenizer"]),
        *figures,
    ]
    table = Table(box=None, pad_edge=False)
    for name, _ in columns:
        table.add_column(name, justify="left" if name in ("checkpoint", "arch", "tokenizer") else "right")
    for r in rows:
        table.add_row(*(cell(r) for _, cell in columns))
    Console(width=200, highlight=False).print(table)


def info_command(
    path: Annotated[Path, typer.Argument(help="A checkpoint or run directory.")] = Path("out"),
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Check every file of the checkpoint (of each checkpoint of a run) against its checksum.",
        ),
    ] = False,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """What a checkpoint or run directory holds: model shape, parameters, tokenizer, chat template, step,
    losses, files."""
    from gptcli.loading import describe_checkpoint  # torch loads only once a command runs

    if verify:
        return verify_command(path, as_json)
    info = describe_checkpoint(path)
    if as_json:
        sys.stdout.write(json.dumps(info, ensure_ascii=False) + "\n")
        return
    m = info["model"]
    if m["arch"] == "lstm":
        shape = f"LSTM, {m['n_layer']} layers, {m['n_embd']} units, trained on windows of {m['block_size']}"
    elif m["arch"] == "encdec":
        shape = (
            f"encoder-decoder, {m['n_enc_layer']} encoder + {m['n_layer']} decoder layers, {m['n_head']} heads "
            f"({m['n_kv_head']} kv), {m['n_embd']} wide, context {m['block_size']}, {m['pos_emb']} positions, "
            f"{m['norm']}"
        )
    else:
        shape = (
            f"{m['n_layer']} layers, {m['n_head']} heads ({m['n_kv_head']} kv), {m['n_embd']} wide, "
            f"context {m['block_size']}, {m['pos_emb']} positions, {m['norm']}, window {m['window'] or 'off'}"
        )
    lines = [
        f"checkpoint   {info['checkpoint']}",
        f"model        {shape}",
        f"parameters   {info['parameters']:,}",
        f"tokenizer    {info['tokenizer']['kind']}, {info['tokenizer']['vocab_size']:,} tokens",
    ]
    chat = info.get("chat_template")
    if chat is not None:  # a fine-tune's: how its conversations are written, and where a reply ends
        kind = "ChatML" if chat["kind"] == "chatml" else f"Jinja ({len(chat['source']):,} characters)"
        lines.append(
            f"chat         {kind}, special tokens {' '.join(chat['special_tokens'])}, "
            f"replies end with {chat['end_token']}"
        )
    if "lora" in info:  # an adapter: what it adapts, and the base it needs
        lora = info["lora"]
        lines.append(
            f"adapter      LoRA r {lora['r']}, alpha {lora['alpha']:g} on {','.join(lora['targets'])}; "
            f"base {info['base']['path']} (sha256 {info['base']['sha256'][:12]}...)"
        )
    if "quantization" in info:  # gpt quantize's: int8 weights, and the float checkpoint they came from
        origin = info.get("quantized_from", {}).get("path", "?")
        lines.append(f"weights      int8, a scale per output row (gpt quantize of {origin})")
    for key in ("step", "train_loss", "val_loss", "source"):
        if info.get(key) is not None:
            value = f"{info[key]:.4f}" if isinstance(info[key], float) else info[key]
            lines.append(f"{key:<12} {value}")
    lines.append("files        " + ", ".join(f"{k} ({human_bytes(v)})" for k, v in info["files"].items()))
    if "run" in info:
        r = info["run"]
        lines.append(
            f"run          {r['run_dir']}: {len(r['checkpoints'])} checkpoint(s)"
            + (f", best {r['best']} (val {r['best_val_loss']:.4f})" if r["best"] else "")
        )
    sys.stdout.write("\n".join(lines) + "\n")
    console.print("[dim]--json for everything[/]")


def verify_command(path: Path, as_json: bool) -> None:
    """`gpt info --verify`: one line per checkpoint; exit 1 if any is damaged."""
    from gptcli.storage import checkpoint_info

    results = checkpoint_info.verify_run(path)
    if as_json:
        rows = [
            {"checkpoint": str(d), "status": status.split(":")[0], "detail": status} for d, status in results
        ]
        sys.stdout.write(json.dumps({"checkpoints": rows}) + "\n")
    else:
        width = max(len(str(d)) for d, _ in results)
        sys.stdout.write("".join(f"{str(d):<{width}}  {status}\n" for d, status in results))
    damaged = [d for d, status in results if status.startswith("damaged")]
    if damaged:
        fail(f"{len(damaged)} of {len(results)} checkpoint(s) damaged: {', '.join(d.name for d in damaged)}")
