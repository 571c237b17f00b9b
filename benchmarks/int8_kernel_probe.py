"""A probe for issue 29: would a hand-written int8 matrix-vector kernel beat `torch._weight_int8pack_mm`?

    .venv/bin/python benchmarks/int8_kernel_probe.py     # x86 with AVX-512 and a C++ compiler; ~40 s

Decoding at batch 1 reads every weight once, from memory. This times the 48 block matrices of a
GPT-2-124M shape (12 x c_attn, attn.c_proj, c_fc, mlp.c_proj: 85 M int8 weights, each a different
tensor read once per pass, so nothing stays in cache) two ways, at 1 and 2 threads:

- `torch._weight_int8pack_mm`, what gptcli.models.int8 runs today (bf16 activations);
- the simplest AVX-512 kernel (built here with torch.utils.cpp_extension): 32 int8 weights at a
  time widened to fp32 in registers and multiplied into two fp32 accumulators, fp32 activations,
  one row scale at the end; rows split over threads with at::parallel_for.

It is a measurement, not part of gptcli: the kernel has no ARM or non-AVX-512 path and is not wired
into the model. Results in benchmarks/README.md ("Int8 decoding", "Later").
"""

import time

import torch
from torch.utils.cpp_extension import load_inline

KERNEL = r"""
#include <torch/extension.h>
#include <immintrin.h>
// y[o] = scale[o] * sum_i x[i] * q[o, i]: x fp32 (in,), q int8 (out, in), scale fp32 (out,)
torch::Tensor int8_gemv(torch::Tensor x, torch::Tensor q, torch::Tensor scale) {
  const int64_t out = q.size(0), in = q.size(1);
  auto y = torch::empty({out}, x.options());
  const float* xp = x.data_ptr<float>();
  const int8_t* qp = q.data_ptr<int8_t>();
  const float* sp = scale.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, out, 16, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; o++) {
      const int8_t* row = qp + o * in;
      __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
      int64_t i = 0;
      for (; i + 32 <= in; i += 32) {  // 32 weights: two 16-wide int8 -> int32 -> fp32 widenings
        __m128i w0 = _mm_loadu_si128((const __m128i*)(row + i));
        __m128i w1 = _mm_loadu_si128((const __m128i*)(row + i + 16));
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(w0)), _mm512_loadu_ps(xp + i), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(w1)), _mm512_loadu_ps(xp + i + 16), acc1);
      }
      float s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
      for (; i < in; i++) s += xp[i] * row[i];
      yp[o] = s * sp[o];
    }
  });
  return y;
}
"""
SHAPES = [(2304, 768), (768, 768), (3072, 768), (768, 3072)] * 12  # GPT-2 124M's block matrices


def main() -> None:
    started = time.perf_counter()
    kernel = load_inline(
        "gptcli_int8_gemv_probe", cpp_sources=KERNEL, functions=["int8_gemv"],
        extra_cflags=["-O3", "-mavx512f", "-mavx512bw", "-fopenmp"], extra_ldflags=["-fopenmp"],
    )  # fmt: skip
    print(f"kernel built in {time.perf_counter() - started:.1f} s")
    g = torch.Generator().manual_seed(0)
    q = [torch.randint(-127, 128, s, dtype=torch.int8, generator=g) for s in SHAPES]
    scale = [torch.rand(s[0], generator=g) / 100 for s in SHAPES]
    x = [torch.randn(s[1], generator=g) for s in SHAPES]
    want = (q[0].float() @ x[0]) * scale[0]
    error = float((kernel.int8_gemv(x[0], q[0], scale[0]) - want).abs().max() / want.abs().max())
    print(f"largest error against fp32, relative to the largest output: {error:.1e}")
    scale16, x16 = [s.bfloat16() for s in scale], [v.view(1, -1).bfloat16() for v in x]
    sides = {
        "torch._weight_int8pack_mm": lambda: [torch._weight_int8pack_mm(a, b, s) for a, b, s in zip(x16, q, scale16)],
        "hand-written AVX-512": lambda: [kernel.int8_gemv(a, b, s) for a, b, s in zip(x, q, scale)],
    }  # fmt: skip
    weights = sum(a * b for a, b in SHAPES)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, run in sides.items():
            run()  # warm-up
            times = []
            for _ in range(5):
                t = time.perf_counter()
                run()
                times.append(time.perf_counter() - t)
            best = min(times)
            print(f"{threads} thread(s)  {name:<26} {best * 1e3:6.1f} ms  {weights / best / 1e9:5.1f} GB/s")


if __name__ == "__main__":
    main()
