"""gpt: a command-line toolkit that takes you from a text file to a trained GPT and back to text."""

__version__ = "0.1.0"
