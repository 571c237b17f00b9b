"""`gpt` and `python -m gptcli` (what torchrun launches): the command line's entry point.

`gpt --version` answers before the command tree is built: building it means building every
command's options from the Pydantic configs, which is most of the start-up time.
"""

import sys


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from gptcli import __version__

        print(f"gpt {__version__}")
        return
    from gptcli.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
