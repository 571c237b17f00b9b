"""The one exception type users see.

Library code raises `GptError` for anything caused by the user's input (a missing file, a bad option,
a malformed tokenizer). The CLI prints its message as a single `error: ...` line and exits non-zero;
anything else is a bug and keeps its traceback.
"""


class GptError(Exception):
    """A problem with the user's input, reported as one line."""


class OptionError(GptError):
    """A bad value given to a command-line option: exit 2, as for an option that does not parse."""

    exit_code = 2


def first_validation_problem(e) -> tuple[str, str]:
    """First problem of a Pydantic ValidationError: ('field.path', 'message (and N more)')."""
    err = e.errors()[0]
    # a key from the input may hold anything, newlines included: quote what is not a plain name
    loc = ".".join(str(x) if isinstance(x, int) or str(x).isidentifier() else repr(x) for x in err["loc"])
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    return loc, err["msg"].removeprefix("Value error, ") + more


def one_line_validation_error(e) -> str:
    """First problem of a Pydantic ValidationError as 'field.path: message (and N more)'."""
    loc, message = first_validation_problem(e)
    return f"{loc}: {message}" if loc else message
