"""3. Encode throughput in MB/s on the held-out text repeated to --encode-mb: as one string and as
lines, on one thread and on all cores, best of --repeats."""

from collections.abc import Callable
from dataclasses import dataclass

from tokenizers import Tokenizer

from gptcli.tokenizers.bpe import BPETokenizer
from tokbench.common import MB, log, timed
from tokbench.trainers import hf_parallel


@dataclass
class EncodeCase:
    name: str
    arg: str  # the input: "text" (one string) or "lines"
    hf_parallel: bool
    ours: Callable
    hf: Callable
    has_target: bool


def encode_cases(ours: BPETokenizer, hf: Tokenizer) -> list[EncodeCase]:
    def ours_loop(lines: list[str]) -> list[list[int]]:
        return [ours.encode_ordinary(line) for line in lines]

    def ours_batch_1(lines: list[str]) -> list[list[int]]:
        return ours.encode_batch(lines, num_threads=1)

    def hf_encode(text: str) -> list[int]:
        return hf.encode(text, add_special_tokens=False).ids

    batch, fast = hf.encode_batch, hf.encode_batch_fast
    return [
        EncodeCase(
            "text, 1 thread: encode_ordinary | encode", "text", False, ours.encode_ordinary, hf_encode, True
        ),
        EncodeCase("lines, 1 thread: encode_batch | encode_batch", "lines", False, ours_batch_1, batch, True),
        EncodeCase(
            "lines, 1 thread: encode_ordinary loop | encode_batch", "lines", False, ours_loop, batch, False
        ),
        EncodeCase(
            "lines, 1 thread: encode_batch | encode_batch_fast", "lines", False, ours_batch_1, fast, False
        ),
        EncodeCase(
            "lines, all cores: encode_batch | encode_batch", "lines", True, ours.encode_batch, batch, True
        ),
        EncodeCase(
            "lines, all cores: encode_batch | encode_batch_fast",
            "lines",
            True,
            ours.encode_batch,
            fast,
            False,
        ),
    ]


def best_mb_per_s(fn: Callable, arg, n_bytes: int, repeats: int) -> float:
    return n_bytes / min(timed(fn, arg)[0] for _ in range(repeats)) / MB


def bench_encode(ours: BPETokenizer, hf: Tokenizer, heldout: str, target_mb: float, repeats: int) -> dict:
    copies = max(1, round(target_mb * MB / len(heldout.encode("utf-8"))))
    inputs = {"text": heldout * copies}
    inputs["lines"] = inputs["text"].splitlines(keepends=True)
    n_bytes = len(inputs["text"].encode("utf-8"))
    numbers: dict = {"text_mb": n_bytes / MB, "lines": len(inputs["lines"]), "cases": []}
    for case in encode_cases(ours, hf):
        log(f"encoding {n_bytes / MB:.1f} MB, {case.name} ...")
        hf_parallel(case.hf_parallel)
        ours_mbs = best_mb_per_s(case.ours, inputs[case.arg], n_bytes, repeats)
        hf_mbs = best_mb_per_s(case.hf, inputs[case.arg], n_bytes, repeats)
        ratio = ours_mbs / hf_mbs
        numbers["cases"].append(
            {
                "name": case.name,
                "ours_mb_s": ours_mbs,
                "hf_mb_s": hf_mbs,
                "ratio": ratio,
                "target": case.has_target,
            }
        )
    hf_parallel(True)
    return numbers
