"""The int8 product of a decode step alone: gptcli's kernels against torch's and fp32 BLAS.

    .venv/bin/python benchmarks/bench_int8_kernel.py [--repeats 5]     # ~30 s, the kernel built once

Decoding at batch 1 reads every weight once, from memory. This times the 48 block matrices of a
GPT-2-124M shape and its head (12 x c_attn, attn.c_proj, c_fc, mlp.c_proj, then 50,257 x 768:
124 M weights, each a different tensor read once per pass, so little stays in cache) at one row of
activations, at 1 and 2 threads (and the machine's count), each way this CPU runs:

- gptcli.models.int8_kernel: AVX-512 and AVX2 (what GPT_INT8_KERNEL picks), fp32 activations;
- `torch._weight_int8pack_mm`, torch's kernel (bf16 activations): what runs where ours cannot;
- fp32 BLAS (`F.linear` on input-major weights, as the Engine lays out fp32 models): the same
  matrices at four times the bytes.

Each figure is the best of --repeats passes, the sides interleaved; GB/s counts the bytes of the
weights read. Results in benchmarks/README.md ("Int8 decoding").
"""

import argparse
import os
import time

import torch
import torch.nn.functional as F

from gptcli.models import int8_kernel
from gptcli.models.int8 import quantize_rows

SHAPES = [(2304, 768), (768, 768), (3072, 768), (768, 3072)] * 12 + [(50257, 768)]  # (out, in)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(shape, generator=g) / 30 for shape in SHAPES]
    quantized = [quantize_rows(w) for w in weights]
    x = [torch.randn(1, shape[1], generator=g) for shape in SHAPES]
    x16, scale16 = [v.bfloat16() for v in x], [s.bfloat16() for _, s in quantized]
    input_major = [w.t().contiguous().t() for w in weights]
    del weights
    isa = int(int8_kernel.build().int8_isa()) if int8_kernel.build() is not None else 0

    def ours(level: int):
        return lambda: [int8_kernel.int8_matmul(a, q, s, None, level) for a, (q, s) in zip(x, quantized)]

    sides = {name: ours(level) for name, level in (("ours AVX-512", 2), ("ours AVX2", 1)) if level <= isa}
    sides["torch _weight_int8pack_mm"] = lambda: [
        torch._weight_int8pack_mm(a, q, s) for a, (q, _), s in zip(x16, quantized, scale16)
    ]
    sides["fp32 BLAS"] = lambda: [F.linear(a, w) for a, w in zip(x, input_major)]
    count = sum(a * b for a, b in SHAPES)
    print(f"{count / 1e6:.0f} M weights, GPT-2-124M's blocks and head, one row; best of {args.repeats}")
    for threads in sorted({1, 2, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        best = dict.fromkeys(sides, float("inf"))
        for run in sides.values():
            run()  # warm-up
        for _ in range(args.repeats):
            for name, run in sides.items():
                started = time.perf_counter()
                run()
                best[name] = min(best[name], time.perf_counter() - started)
        for name, seconds in best.items():
            size = count * (4 if name == "fp32 BLAS" else 1)
            ratio = best["torch _weight_int8pack_mm"] / seconds
            print(f"  {threads} thread(s)  {name:<26} {seconds * 1e3:6.2f} ms  {size / seconds / 1e9:5.1f} GB/s"
                  f"  {ratio:4.2f}x torch's int8")  # fmt: skip


if __name__ == "__main__":
    main()
