"""`gpt` and `python -m gptcli` (what torchrun launches): the command line's entry point.

`gpt --version` answers before the command tree is built: building it means building every
command's options from the Pydantic configs, which is most of the start-up time. After a command,
the objects left are frozen (gc.freeze) so that Python's exit does not spend a second collecting them.
"""

import gc
import sys
import time


def main() -> None:
    started = time.time()  # what --max-time counts from: building the commands is part of the command
    if sys.argv[1:] == ["--version"]:
        from gptcli import __version__

        print(f"gpt {__version__}")
        return
    from gptcli.cli import main as cli_main

    try:
        cli_main(started)
    finally:
        # Python's exit collects every object left, and torch's modules leave millions: ~1 s after
        # any command that loaded torch (1.4 s with torch.compile's). Frozen, they are left to the
        # OS, as the rest of the process is; the commands close their own files.
        gc.freeze()


if __name__ == "__main__":
    main()
