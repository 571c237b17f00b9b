"""What every command shares: the stderr console, one-line errors, progress bars, reading input,
options documented by the config fields they set, and the options several commands take.

Nothing here imports torch: `gpt --help`, `gpt --version`, completion and the tokenizer commands
start without it. Commands import the library modules that need torch inside their bodies.
"""

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal

import typer
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from typer.core import TyperGroup

from gptcli.config import TrainConfig, validate
from gptcli.config_values import check_device
from gptcli.errors import GptError, OptionError, first_validation_problem

try:  # recent Typer releases vendor their own copy of Click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older Typer on the real Click
    from click import exceptions as click_errors
NoArgsIsHelp = getattr(click_errors, "NoArgsIsHelpError", ())  # Click >= 8.2


def validate_options(schema: type[BaseModel], flags: dict, values: dict | None = None):
    """A config from the options as typed (`flags`; None: not given, the field's default stays), or
    from `values` made of them (over a preset, say). A bad value that came from an option is a bad
    option: `--max-iters: Input should be ...`, exit 2; one from a preset, a --config file or a
    saved run stays `invalid TrainConfig: max_iters: ...`, exit 1."""
    if values is None:
        values = {name: value for name, value in flags.items() if value is not None}
    try:
        return schema(**values)
    except ValidationError as e:
        loc, message = first_validation_problem(e)
        name = loc.rpartition(".")[2]  # a model field's flag: model.n_layer -> --n-layer
        if flags.get(name) is not None:
            raise OptionError(f"--{name.replace('_', '-')}: {message}") from None
    return validate(schema, **values)  # fails again, as `invalid TrainConfig: field: message`


def config_option(
    model: type[BaseModel], name: str, *names: str, help: str | None = None, **options
) -> typer.models.OptionInfo:
    """A Typer option whose help is the config field's description (or `help`), plus its default
    where that text does not already say it: change a default in gptcli.config and the help follows."""
    field = model.model_fields[name]
    default = field.default_factory() if field.default_factory else field.default
    if default is False and not any("/" in n for n in names):
        default = None  # a flag with no --no- form is off unless given: nothing to say
    text = with_default(help or field.description or "", default_text(default))
    return typer.Option(*names, help=text, **options)


def with_default(text: str, default: str | None) -> str:
    """Help text ending in `(default: X)`, unless it says its default already or has none."""
    if default is None or "default" in text:
        return text
    end = "." if text.endswith(".") else ""
    return f"{text.removesuffix('.')} (default: {default}){end}"


def default_text(value) -> str | None:
    """How a default reads in help: on/off for flags; nothing for None, empty lists and required fields."""
    if value is None or value is PydanticUndefined or value in ([], "") or callable(value):
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)


def tidy_help(command, help_names: list[str]) -> None:
    """Every option of `command` and the commands under it, as --help shows them: a default once, as
    `(default: X)` at the end of its text (Typer would add its own `[default: X]` after a config
    field's), and no type column for a flag (`<bool>`: it takes no value). `help_names`: the help
    option's names (Click makes that option when first asked for it: asked here, with these)."""
    help_option = command.get_help_option(command.context_class(command, help_option_names=help_names))
    for param in [*command.params, *([help_option] if help_option is not None else [])]:
        flag = getattr(param, "is_flag", False)
        if flag:
            param.metavar = ""  # what the help's type column shows, and nothing else reads for a flag
        if getattr(param, "show_default", None) is True:  # options, and arguments alike
            pure_flag = flag and not param.secondary_opts
            default = None if pure_flag and not param.default else param.default
            param.help = with_default(param.help or "", default_text(default))
            param.show_default = False
    for sub in getattr(command, "commands", {}).values():
        tidy_help(sub, help_names)


# options that several commands share, declared once
CheckpointOption = Annotated[
    Path, typer.Option("--checkpoint", "-c", help="Checkpoint dir, or a run dir (its newest checkpoint).")
]
CheckpointOutOption = Annotated[  # gpt quantize, merge-lora: what they write
    Path, typer.Option("--out", "-o", help="Checkpoint directory to write (new, empty, or a checkpoint).")
]
BestOption = Annotated[
    bool, typer.Option("--best", help="With a run dir: the checkpoint with the lowest val loss.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of text.")]
StrictOption = Annotated[
    bool,
    typer.Option(
        "--strict",
        help="With a run dir: a damaged newest (or best) checkpoint is an error, not passed over with a warning.",
    ),
]


def device_option(**options) -> typer.models.OptionInfo:
    """--device, its name checked as it is parsed (a bad one exits 2, as a bad choice does)."""
    return config_option(TrainConfig, "device", "--device", parser=check_device, **options)


def precision_option(**options) -> typer.models.OptionInfo:
    return config_option(TrainConfig, "precision", "--precision", **options)


# --quantize on generate, chat, eval and serve (ServeConfig.quantize)
QuantizeOption = Annotated[
    Literal["int8"] | None,
    typer.Option(
        "--quantize",
        help="int8: decode with int8 weights, a scale per output row (a quarter of fp32's bytes read per "
        "token); an int8 checkpoint (gpt quantize) is int8 anyway.",
    ),
]


# Data (ids, text, JSON) goes to stdout; messages and progress go to stderr, so pipes stay clean.
console = Console(stderr=True, highlight=False, soft_wrap=True)
verbose = False  # --verbose: detail() prints too


def _set_quiet(value: bool) -> bool:
    if value:
        console.quiet = True  # everything on the console goes; errors and warnings do not use it
    return value


def _set_verbose(value: bool) -> bool:
    global verbose
    verbose = verbose or value
    return value


# every command takes these two, with the same meaning
QuietOption = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", callback=_set_quiet, help="Only results and errors: no progress, notes or summary."
    ),
]
VerboseOption = Annotated[
    bool,
    typer.Option(
        "--verbose", "-v", callback=_set_verbose, help="Also the settings used, timings and other detail."
    ),
]


_command_started: float | None = None  # when the `gpt` process began; None when called in-process


@contextmanager
def command_clock(started: float | None) -> Iterator[None]:
    """While a command line runs: its process's start, what command_started() answers."""
    global _command_started
    _command_started = started
    try:
        yield
    finally:
        _command_started = None


def command_started() -> float:
    """When this command began (time.time()): its process's start under `gpt`, else now (a command
    invoked in-process, as the tests do, starts when it is called)."""
    return time.time() if _command_started is None else _command_started


def detail(message: str) -> None:
    """A message for --verbose only."""
    if verbose:
        console.print(message, style="dim", markup=False, highlight=False)


def warn(message: str) -> None:
    """`warning: ...` on stderr, even under --quiet."""
    typer.echo(f"warning: {message}", err=True)


def reset_verbosity() -> None:
    """Back to normal output: each command line starts here (tests run many in one process)."""
    global verbose
    console.quiet, verbose = False, False


def fail(message: str, code: int = 1) -> None:
    """Print `error: message` on one line of stderr and exit non-zero."""
    message = " ".join(str(message).split()) if "\n" in str(message) else str(message)
    typer.echo(f"error: {message}", err=True)
    sys.exit(code)


class GptGroup(TyperGroup):
    """Top-level command group: turns every user error into one `error: ...` line and an exit code.

    GptError -> 1; a bad option or argument -> 2; Ctrl-C -> 130; an OS error (missing permission,
    disk full) -> 1. Anything else is a bug and keeps its traceback.
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        reset_verbosity()
        # the whole tree, Typer's completion options included (added after this group was made)
        tidy_help(self, self.context_settings.get("help_option_names", ["--help"]))
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except GptError as e:
            fail(str(e), getattr(e, "exit_code", 1))
        except NoArgsIsHelp as e:  # `gpt tokenizer` alone: show the group's help
            typer.echo(e.ctx.get_help())
            rv = 0
        except click_errors.UsageError as e:
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            # a value a parser refused comes through Pydantic, which starts its message so
            fail(e.format_message().replace(": Value error, ", ": ") + hint, 2)
        except typer.Abort:
            fail("interrupted", 130)
        except click_errors.ClickException as e:
            fail(e.format_message(), e.exit_code)
        except OSError as e:
            where = f": {e.filename}" if e.filename else ""
            fail(f"{e.strerror or e}{where}", 1)
        code = rv if isinstance(rv, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


@contextmanager
def stage_progress(enabled: bool = True) -> Iterator:
    """A `progress(stage, done, total)` callback for library code, drawn as one bar per stage."""
    if not enabled or not console.is_terminal:  # bars only make sense on a live terminal
        yield None
        return
    with progress_bar() as bar:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update


def read_input(text: str | None, file: Path | None, what: str) -> str:
    """The text of a positional argument, or of --file (`-` is stdin); exactly one of the two."""
    if text is not None and file is not None:
        raise GptError(f"give the {what} either as an argument or with --file, not both")
    if file is not None:
        return sys.stdin.read() if str(file) == "-" else read_text_file(file, "file")
    if text is not None:
        return text
    if not sys.stdin.isatty():
        return sys.stdin.read()
    raise GptError(f"no {what} given: pass it as an argument, with --file, or on stdin")


def read_text_file(path: Path, what: str) -> str:
    """A UTF-8 text file's contents; a missing or non-UTF-8 file is a one-line error."""
    if not path.is_file():
        raise GptError(f"{what} not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise GptError(f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def write_text(text: str) -> None:
    """Write text to stdout exactly; a final newline only for a terminal."""
    sys.stdout.write(text)
    if sys.stdout.isatty() and not text.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
