"""`python -m gptcli ...` is the same as `gpt ...` (and is what torchrun launches)."""

from gptcli.cli import main

if __name__ == "__main__":
    main()
