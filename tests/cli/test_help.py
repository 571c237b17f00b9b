"""Every `gpt` command answers --help, bad commands and options are one-line errors, shell completion
works, and options that mean the same thing have the same name everywhere.

Nothing here lists the commands by hand: they are walked from the Click tree Typer builds, so a command
added later (its help, its option names) is checked without touching this file.
"""

from collections import defaultdict
from collections.abc import Iterator

import pytest
import typer

from gptcli import __version__
from gptcli.cli import app
from tests.conftest import assert_one_line_error, run_cli


def walk(command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], object]]:
    """(path, command) for the root and every command and subcommand under it, depth first.

    Typer 0.29's groups are not click.Group subclasses (it vendors its own Click), so a group is
    recognised by its `commands` mapping."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from walk(sub, (*path, name))


ROOT = typer.main.get_command(app)
COMMANDS = list(walk(ROOT))
GROUPS = [(path, cmd) for path, cmd in COMMANDS if getattr(cmd, "commands", None)]


def name_of(path: tuple[str, ...]) -> str:
    return " ".join(("gpt", *path))


def options(command) -> list:
    return [p for p in command.params if p.param_type_name == "option"]


def long_names(option) -> list[str]:
    return [o for o in (*option.opts, *option.secondary_opts) if o.startswith("--")]


def short_names(option) -> list[str]:
    return [o for o in option.opts if not o.startswith("--")]


def flat(text: str) -> str:
    """Help text without Rich's box drawing and line wrapping, for substring checks."""
    return " ".join(text.replace("│", " ").split())


def test_the_walk_finds_the_commands():
    # guards the walker itself: if Typer changed how groups hold their commands, every test below
    # would silently shrink to the root alone
    names = {name_of(path) for path, _ in COMMANDS}
    assert {"gpt", "gpt train", "gpt generate", "gpt tokenizer", "gpt tokenizer train"} <= names
    assert len(names) >= 10


# ---------------------------------------------------------------------------------------------
# help


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("path", [path for path, _ in COMMANDS], ids=name_of)
def test_every_command_answers_help(path, flag, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # wide enough that Rich truncates no option name
    result = run_cli(*path, flag)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert "Traceback" not in result.stdout
    usage = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("Usage:")]
    assert usage and usage[0].startswith(f"Usage: {name_of(path)} "), result.stdout
    text = flat(result.stdout)
    command = dict(COMMANDS)[path]
    for option in options(command):  # every visible option is documented in its command's help
        if not option.hidden:
            for name in long_names(option):
                assert name in text, f"{name_of(path)} --help does not show {name}"
    for sub in getattr(command, "commands", {}):  # and a group lists its subcommands
        assert sub in text, f"{name_of(path)} --help does not list {sub}"


@pytest.mark.parametrize("path", [path for path, _ in COMMANDS], ids=name_of)
def test_help_shows_each_default_once_and_no_type_for_a_flag(path, monkeypatch):
    """`(default: auto)` once, never followed by Typer's own `[default: auto]`; a flag takes no
    value, so it shows no `<bool>` type."""
    monkeypatch.setenv("COLUMNS", "250")  # one row per option: nothing wrapped onto a second line
    result = run_cli(*path, "--help")
    assert result.exit_code == 0, result.stderr
    assert "[default" not in result.stdout, result.stdout
    assert "<bool>" not in result.stdout, result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert all(row.count("default") <= 1 for row in rows), result.stdout
    command = dict(COMMANDS)[path]
    for option in options(command):  # a value-taking option still shows its type
        if not option.hidden and not option.is_flag and long_names(option):
            row = next(r for r in rows if f" {long_names(option)[0]} " in r)
            assert "<" in row or f" {option.metavar} " in row, row  # <int>, or its own metavar


@pytest.mark.parametrize("path", [path for path, _ in GROUPS], ids=name_of)
def test_a_group_alone_shows_its_help(path):
    result = run_cli(*path)  # `gpt`, `gpt tokenizer`: help, not an error
    assert result.exit_code == 0, result.stderr
    assert f"Usage: {name_of(path)} [OPTIONS] COMMAND" in result.stdout
    commands = dict(GROUPS)[path].commands
    assert all(name in result.stdout for name in commands), result.stdout


def test_version():
    result = run_cli("--version")
    assert (result.exit_code, result.stdout, result.stderr) == (0, f"gpt {__version__}\n", "")
    # eager: it answers before a command would run or complain about its arguments
    assert run_cli("--version", "train", "--no-such-option").stdout == f"gpt {__version__}\n"


# ---------------------------------------------------------------------------------------------
# mistakes: one line on stderr, exit 2, a pointer to --help


@pytest.mark.parametrize("path", [path for path, _ in GROUPS], ids=name_of)
def test_an_unknown_command_is_a_one_line_error(path):
    result = run_cli(*path, "frobnicate")
    assert_one_line_error(result, "No such command 'frobnicate'", f"'{name_of(path)} --help'")
    assert result.exit_code == 2 and result.stdout == ""


def test_a_misspelt_command_gets_a_suggestion():
    assert_one_line_error(run_cli("trian"), "No such command 'trian'", "train")


@pytest.mark.parametrize("path", [path for path, _ in COMMANDS], ids=name_of)
def test_an_unknown_option_is_a_one_line_error(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # should a command run after all, it writes nothing into the repo
    result = run_cli(*path, "--no-such-option")
    assert_one_line_error(result, "No such option: --no-such-option", f"'{name_of(path)} --help'")
    assert result.exit_code == 2 and result.stdout == ""
    assert list(tmp_path.iterdir()) == []


# A bad value for a validated string option (one with a parser: checked as the command line is
# parsed); an option given a parser later must get its bad value here, or the test below fails.
BAD_PARSED_VALUES = {"--device": "banana", "--pattern": "(unclosed"}


def checked_options() -> list[tuple[tuple[str, ...], str, str]]:
    """(command path, flag, a bad value) for every option whose values are checked as the command
    line is parsed: a choice (a Literal or Enum type) or a string with a parser."""
    found = []
    for path, command in COMMANDS:
        for option in options(command):
            descriptor = getattr(option, "type_descriptor", None)
            if option.hidden or option.is_flag or descriptor is None:
                continue
            flag = long_names(option)[0]
            if descriptor.is_choice:
                found.append((path, flag, "not-a-choice"))
            elif descriptor.parameter_info.parser is not None:
                assert flag in BAD_PARSED_VALUES, (
                    f"{name_of(path)} {flag}: add a bad value to BAD_PARSED_VALUES"
                )
                found.append((path, flag, BAD_PARSED_VALUES[flag]))
    return found


CHECKED = checked_options()


def test_the_options_with_checked_values_are_found():
    # guards the enumeration: the options the README's exit codes were first promised for
    found = {(name_of(path), flag) for path, flag, _ in CHECKED}
    assert {
        ("gpt tokenizer train", "--kind"), ("gpt tokenizer train", "--pattern"),
        ("gpt tokenizer export", "--format"), ("gpt train", "--precision"), ("gpt train", "--device"),
        ("gpt train", "--arch"), ("gpt train", "--pos-emb"), ("gpt train", "--optimizer"),
        ("gpt generate", "--device"), ("gpt generate", "--precision"), ("gpt serve", "--device"),
        ("gpt serve", "--precision"), ("gpt eval", "--device"),
    } <= found, found  # fmt: skip


@pytest.mark.parametrize("path, flag, value", CHECKED, ids=[f"{name_of(p)} {f}" for p, f, _ in CHECKED])
def test_a_bad_value_for_a_checked_option_exits_2_naming_the_flag(path, flag, value, tmp_path, monkeypatch):
    """A bad option value is a usage error (exit 2, as the README says), whichever command has it and
    whether a choice or a parser refuses it: one line naming the flag, nothing run, no traceback."""
    monkeypatch.chdir(tmp_path)  # should a command run after all, it writes nothing into the repo
    result = run_cli(*path, flag, value)
    assert_one_line_error(result, f"'{flag}'", value, f"'{name_of(path)} --help'")
    assert result.exit_code == 2 and result.stdout == ""
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# shell completion (Typer's add_completion: --install-completion / --show-completion)


def test_completion_options_are_offered():
    names = {name for option in options(ROOT) for name in long_names(option)}
    assert {"--install-completion", "--show-completion"} <= names


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish", "powershell"])
def test_show_completion_prints_a_script(shell, monkeypatch):
    # Typer guesses the shell from the parent processes (shellingham), which differs between a
    # terminal and CI; with this variable set, --show-completion takes the shell name instead
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    result = run_cli("--show-completion", shell)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert "_GPT_COMPLETE" in result.stdout and "gpt" in result.stdout  # the hook the script calls back


def test_show_completion_for_an_unknown_shell_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    result = run_cli("--show-completion", "tcsh")
    assert_one_line_error(result, "tcsh")
    assert result.exit_code == 2


def complete(monkeypatch, words: str) -> list[str]:
    """What bash would offer for the last word of `words`, through the hook the script installs."""
    monkeypatch.setenv("_GPT_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", words)
    monkeypatch.setenv("COMP_CWORD", str(len(words.split(" ")) - 1))
    result = run_cli()
    assert result.exit_code == 0, result.stderr
    return result.stdout.split()


def visible(group) -> list[str]:
    return [name for name, command in group.commands.items() if not command.hidden]


def test_completion_offers_commands_subcommands_and_options(monkeypatch):
    assert complete(monkeypatch, "gpt ") == visible(ROOT)
    assert complete(monkeypatch, "gpt tok") == ["tokenizer"]
    assert complete(monkeypatch, "gpt tokenizer ") == visible(ROOT.commands["tokenizer"])
    assert complete(monkeypatch, "gpt train --resu") == ["--resume"]


# ---------------------------------------------------------------------------------------------
# consistent option names

# canonical name -> names that would mean the same thing; none of them may appear on any command
SYNONYMS = {
    "--checkpoint": ["--ckpt", "--ckpt-dir", "--checkpoint-dir", "--model-dir", "--load", "--from"],
    "--out": ["--output", "--output-dir", "--out-dir", "--outdir", "--dest", "--save", "--save-dir"],
    "--json": ["--as-json", "--json-output", "--format-json", "--machine", "--porcelain"],
    "--seed": ["--random-seed", "--rng-seed"],
    "--device": ["--dev", "--gpu", "--cuda", "--use-cuda", "--cpu"],
    "--precision": ["--dtype", "--amp", "--fp16", "--bf16"],
    "--tokenizer": ["--tok", "--tokenizer-path", "--tokenizer-file", "--vocab"],
    "--data": ["--data-file", "--input", "--input-file", "--dataset", "--train-data", "--corpus"],
    "--val-data": ["--eval-data", "--valid-data", "--validation-data"],
    "--config": ["--cfg", "--config-file"],
    "--batch-size": ["--bs", "--batch", "--batch_size"],
    "--max-iters": ["--steps", "--max-steps", "--iters", "--num-steps", "--num-iters"],
    "--max-new-tokens": ["--length", "--num-tokens", "--n-tokens", "--tokens"],
    "--num-samples": ["--samples", "--n-samples"],
    "--temperature": ["--temp"],
    "--lr": ["--learning-rate"],
    "--file": ["--infile", "--in"],
    "--quiet": ["--silent", "--no-progress"],
    "--verbose": ["--debug-output", "--loud"],
    "--overwrite": ["--force", "--clobber"],
    "--resume": ["--continue", "--restart"],
    "--vocab-size": ["--vocab", "--n-vocab"],
}


def option_names() -> dict[str, set[str]]:
    """Every long option name -> the commands that have it."""
    found: dict[str, set[str]] = defaultdict(set)
    for path, command in COMMANDS:
        for option in options(command):
            for name in long_names(option):
                found[name].add(name_of(path))
    return found


# a synonym's name where it means something else: option -> the commands allowed it, and why
NOT_SYNONYMS = {
    # a GGUF file's storage type (f32|f16|q8_0, llama.cpp's names; the command contract's), not a compute precision
    "--dtype": {"gpt export-gguf"},
}


def test_no_command_uses_a_synonym_of_a_canonical_option_name():
    found = option_names()
    clashes = {
        f"{name} (in {', '.join(sorted(found[name]))}): use {canonical}"
        for canonical, synonyms in SYNONYMS.items()
        for name in synonyms
        if found.get(name, set()) - NOT_SYNONYMS.get(name, set())
    }
    assert not clashes, clashes


def test_the_synonym_table_names_options_that_exist():
    # the table keeps its meaning only while its canonical names are in use
    found = option_names()
    in_use = {"--checkpoint", "--out", "--json", "--seed", "--device", "--tokenizer", "--data", "--quiet"}
    assert in_use <= found.keys(), in_use - found.keys()


def test_machine_output_is_a_json_flag_everywhere():
    for path, command in COMMANDS:
        for option in options(command):
            if "--json" in long_names(option):
                assert option.is_flag, f"{name_of(path)} --json takes a value"


# Short flags that do not agree yet across commands: drop an entry once it is fixed; any new
# disagreement fails the test below. (train's --config lost -c, which means --checkpoint elsewhere.)
KNOWN_SHORT_FLAG_CLASHES: dict[str, str] = {}


def test_short_flags_mean_the_same_option_everywhere():
    short_to_long: dict[str, set[str]] = defaultdict(set)
    long_to_short: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for _, command in COMMANDS:
        for option in options(command):
            longs, shorts = long_names(option), short_names(option)
            for short in shorts:
                short_to_long[short].add(longs[0] if longs else option.name)
            for name in longs[:1]:
                long_to_short[name].add(tuple(shorts))
    clashes = {short for short, longs in short_to_long.items() if len(longs) > 1}
    clashes |= {name for name, shorts in long_to_short.items() if len(shorts) > 1}
    assert clashes <= KNOWN_SHORT_FLAG_CLASHES.keys(), {
        c: short_to_long.get(c) or long_to_short.get(c) for c in clashes - KNOWN_SHORT_FLAG_CLASHES.keys()
    }
    fixed = KNOWN_SHORT_FLAG_CLASHES.keys() - clashes
    assert not fixed, f"fixed, so remove from KNOWN_SHORT_FLAG_CLASHES: {fixed}"
