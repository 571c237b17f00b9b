"""The `gpt` command. Each command group lives in its own module; this one wires them together."""

from typing import Annotated

import typer

from gptcli import __version__
from gptcli.cli import data, tokenizer
from gptcli.cli.chat import chat_command
from gptcli.cli.common import GptGroup, command_clock
from gptcli.cli.evaluate import eval_command, info_command
from gptcli.cli.export_gguf import export_gguf_command
from gptcli.cli.finetune import finetune_command
from gptcli.cli.generate import generate_command
from gptcli.cli.gpt2 import export_hf_command, load_gpt2_command
from gptcli.cli.lora import export_peft_command, merge_lora_command
from gptcli.cli.plot import plot_command
from gptcli.cli.quantize import quantize_command
from gptcli.cli.serve import serve_command
from gptcli.cli.train import train_command

app = typer.Typer(
    cls=GptGroup,
    help="gpt: train tokenizers and GPT models, sample from them, import GPT-2.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(tokenizer.app, name="tokenizer")
app.add_typer(data.app, name="data")
app.command("train")(train_command)
app.command("finetune")(finetune_command)
app.command("generate")(generate_command)
app.command("chat")(chat_command)
app.command("load-gpt2")(load_gpt2_command)
app.command("export-hf")(export_hf_command)
app.command("export-gguf")(export_gguf_command)
app.command("merge-lora")(merge_lora_command)
app.command("export-peft")(export_peft_command)
app.command("quantize")(quantize_command)
app.command("eval")(eval_command)
app.command("info")(info_command)
app.command("plot")(plot_command)
app.command("serve")(serve_command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gpt {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """gpt: from a text file to a trained GPT and back to text."""


def main(started: float | None = None) -> None:
    """The `gpt` command; `started`: when its process began (time.time()), for --max-time."""
    with command_clock(started):
        app()
