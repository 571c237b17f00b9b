"""Generation: a model and its tokenizer -> text.

engine.py    Engine (model + tokenizer on a device), GenerationRun (one call, streamable), generate()
cpu_matmul.py fp32 decoding on a CPU: input-major weights, OpenBLAS products where MKL is slow
sampling.py  the next token from the logits: temperature, top-k, top-p, a seeded draw
text.py      token bytes -> printable text: incremental UTF-8, stop strings, held-back text
"""

from gptcli.generation.engine import Engine, GenerationResult, GenerationRun, Sample, TokenEvent, generate

__all__ = ["Engine", "GenerationResult", "GenerationRun", "Sample", "TokenEvent", "generate"]
