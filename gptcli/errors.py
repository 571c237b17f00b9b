"""The one exception type users see.

Library code raises `GptError` for anything caused by the user's input (a missing file, a bad option,
a malformed tokenizer). The CLI prints its message as a single `error: ...` line and exits non-zero;
anything else is a bug and keeps its traceback.
"""


class GptError(Exception):
    """A problem with the user's input, reported as one line."""


def one_line_validation_error(e) -> str:
    """First problem of a Pydantic ValidationError as 'field.path: message (and N more)'."""
    err = e.errors()[0]
    # a key from the input may hold anything, newlines included: quote what is not a plain name
    loc = ".".join(str(x) if isinstance(x, int) or str(x).isidentifier() else repr(x) for x in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    return f"{loc}: {msg}{more}" if loc else f"{msg}{more}"
