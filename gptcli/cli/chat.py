"""`gpt chat`: flags -> SampleConfig -> gptcli.chat.ChatSession; a conversation in the terminal.

On a terminal: a prompt with line editing and history (readline), replies streamed as they are
written, slash commands, Ctrl-C to stop a reply (not the session), Ctrl-D or /exit to leave.
Without a terminal (a pipe, a file): each input line is one user turn, and each reply goes to
stdout followed by an empty line, or with --json one object per turn. Commands work in both; what
they say goes to stderr, so stdout holds only replies.
"""

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from gptcli.cli.common import (
    BestOption,
    CheckpointOption,
    QuantizeOption,
    QuietOption,
    VerboseOption,
    console,
    detail,
    device_option,
    precision_option,
    validate_options,
)
from gptcli.cli.generate import load_engine, sample_option
from gptcli.config import Precision, SampleConfig
from gptcli.errors import GptError

HELP = """commands:
  /system TEXT   set the system message (/system alone removes it)
  /reset         start over (the system message stays)
  /undo          drop the last exchange
  /retry         sample the last reply again
  /save FILE     save the conversation as {"messages": [...]} (what gpt finetune reads)
  /load FILE     continue a saved conversation
  /help          this list
  /exit          leave (Ctrl-D too)
A line starting with // is sent as a message starting with /. Ctrl-C stops a reply."""


def chat_command(
    checkpoint: CheckpointOption = Path("out"),
    best: BestOption = False,
    system: Annotated[str | None, typer.Option("--system", help="The system message.")] = None,
    max_new_tokens: Annotated[int | None, sample_option("max_new_tokens")] = None,
    temperature: Annotated[float | None, sample_option("temperature")] = None,
    top_k: Annotated[int | None, sample_option("top_k")] = None,
    top_p: Annotated[float | None, sample_option("top_p")] = None,
    seed: Annotated[int | None, sample_option("seed")] = None,
    stop: Annotated[list[str] | None, sample_option("stop")] = None,
    device: Annotated[str, device_option()] = "auto",
    precision: Annotated[Precision, precision_option()] = "auto",
    quantize: QuantizeOption = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Without a terminal: one JSON object per turn instead of the reply."),
    ] = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Talk to a fine-tuned checkpoint. Example: gpt chat -c chat-run --system "Answer briefly."

    Each turn prefills only its new tokens: the KV cache is kept between turns. Type /help for the
    commands. Without a terminal each input line is a turn: echo "Hi" | gpt chat -c chat-run --json
    """
    settings = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                    seed=seed, stop=stop)  # fmt: skip
    config = validate_options(SampleConfig, settings)
    from gptcli.chat.session import ChatSession  # torch loads only once the command runs

    engine = load_engine(checkpoint, device, precision, best, False, False, quantize)
    session = ChatSession(engine, config, system, on_note=note)
    detail(
        f"{engine.checkpoint} on {engine.device} ({engine.describe_weights()}); sampling {config.model_dump_json()}"
    )
    interactive = sys.stdin.isatty()
    if interactive and not quiet:
        params = sum(p.numel() for p in engine.model.parameters())
        console.print(
            f"[dim]gpt chat: {engine.checkpoint} ({params / 1e6:.2f}M parameters, context "
            f"{engine.block_size}). /help for the commands, Ctrl-D or /exit to leave.[/]"
        )
    repl = Repl(session, interactive, as_json and not interactive)
    if not repl.run():
        raise typer.Exit(1)


def note(message: str) -> None:
    console.print(f"note: {message}", style="dim", markup=False, highlight=False)


def say(message: str) -> None:
    console.print(message, markup=False, highlight=False)


class Repl:
    """Read a line, run a command or a turn, print; until the input ends or /exit."""

    def __init__(self, session, interactive: bool, as_json: bool):
        self.session, self.interactive, self.as_json = session, interactive, as_json
        self.ok = True  # without a terminal, an error makes the exit status 1
        if interactive:
            import readline  # noqa: F401  (input() gains line editing and history)

    def run(self) -> bool:
        while True:
            try:
                line = self.read()
            except EOFError:
                if self.interactive:
                    sys.stderr.write("\n")
                return self.ok
            except KeyboardInterrupt:  # at the prompt: a new prompt (a reply is stopped in turn())
                sys.stderr.write("\n")
                continue
            if line.strip() == "":
                continue
            try:
                if line.startswith("/") and not line.startswith("//"):
                    if not self.command(line):
                        return self.ok
                else:
                    self.turn(self.session.say, line[1:] if line.startswith("//") else line)
            except GptError as e:
                console.print(f"error: {e}", style="red", markup=False, highlight=False)
                self.ok = self.interactive

    def read(self) -> str:
        if self.interactive:
            return input("\001\033[1m\002>\001\033[0m\002 ")  # \001 \002: readline's zero-width marks
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\r\n")

    def command(self, line: str) -> bool:
        """Run a slash command; False: leave."""
        name, _, arg = line.partition(" ")
        arg, session = arg.strip(), self.session
        if name in ("/exit", "/quit"):
            return False
        if name == "/help":
            say(HELP)
        elif name == "/system":
            session.set_system(arg or None)
            say(f"system message {'set' if arg else 'removed'}")
        elif name == "/reset":
            session.reset()
            say("conversation cleared" + (" (the system message stays)" if session.system else ""))
        elif name == "/undo":
            say("dropped the last exchange" if session.undo() else "nothing to undo")
        elif name == "/retry":
            self.turn(session.retry)
        elif name in ("/save", "/load"):
            if not arg:
                raise GptError(f"{name} needs a file: {name} FILE")
            if name == "/save":
                try:
                    session.save(arg)
                except OSError as e:
                    raise GptError(f"cannot save to {arg}: {e.strerror or e}") from None
                say(f"saved {len(session.messages)} messages to {arg}")
            else:
                session.load(arg)
                say(f"loaded {len(session.messages)} messages from {arg}")
        else:
            raise GptError(f"unknown command {name} (/help lists them; // sends a message starting with /)")
        return True

    def turn(self, start, *args) -> None:
        """A reply (start(*args): a Turn), streamed to stdout or as one JSON object; Ctrl-C stops it and
        keeps what it wrote."""
        turn = start(*args)
        try:
            for text in turn:
                if not self.as_json:
                    sys.stdout.write(text)
                    sys.stdout.flush()
        except KeyboardInterrupt:
            turn.close()
            if not self.as_json:
                sys.stdout.write("\n")
            note("stopped: the partial reply stays in the conversation (/undo drops it, /retry redoes it)")
            return
        if self.as_json:
            sys.stdout.write(json.dumps(turn.result.to_json(), ensure_ascii=False) + "\n")
        else:
            sys.stdout.write("\n" if self.interactive else "\n\n")
        sys.stdout.flush()
