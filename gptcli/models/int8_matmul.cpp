// y = x (q s)^T + b: few rows of fp32 activations times an int8 weight with a scale per output row.
//
// The product of a decode step (gptcli/models/int8.py; int8_kernel.py builds this file on first use).
// At a few rows every weight is read once from memory and used for one multiply-add per row, so the
// speed is how fast the weights stream in. Each weight row is read 64 int8 weights (one cache line)
// at a time, widened to fp32 in registers and multiplied into four fp32 accumulators, while the line
// PREFETCH bytes ahead is requested: without that request the CPU's own prefetcher kept this loop at
// about 6.5 GB/s from memory on one core, with it 9-9.5 (benchmarks/README.md, "Int8 decoding").
//
// Every (row of x, row of q) pair is summed in the same order whatever the number of rows, so a row
// gives the same bits alone or in a batch. Output rows are split over torch's intra-op threads.
// x86 only (AVX-512 or AVX2 + FMA, chosen at run time); elsewhere int8_isa() is 0 and Python uses
// torch's own kernel.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define GPT_X86 1
#endif

namespace {

constexpr int64_t PREFETCH = 4096;  // bytes ahead of the line being read (2048-8192 measured alike)
constexpr int TILE = 4;             // rows of x multiplied by each widened weight chunk

#ifdef GPT_X86

// ---- AVX-512: 16 weights per register

__attribute__((target("avx512f"))) inline __m512 widen16(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

// y[m * ldy] = s * sum_i x[m * in + i] q[i] + b for the R rows m of x: one weight row q (in,)
template <int R>
__attribute__((target("avx512f"))) void dot_rows_avx512(
    const float* x, const int8_t* q, float s, float b, float* y, int64_t in, int64_t ldy) {
  __m512 acc[R][4];
  for (int r = 0; r < R; r++)
    for (int k = 0; k < 4; k++) acc[r][k] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 64 <= in; i += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(q + i + PREFETCH), _MM_HINT_T0);
    __m512 w[4];
    for (int k = 0; k < 4; k++) w[k] = widen16(q + i + 16 * k);
    for (int r = 0; r < R; r++)
      for (int k = 0; k < 4; k++) acc[r][k] = _mm512_fmadd_ps(w[k], _mm512_loadu_ps(x + r * in + i + 16 * k), acc[r][k]);
  }
  for (; i + 16 <= in; i += 16) {
    __m512 w = widen16(q + i);
    for (int r = 0; r < R; r++) acc[r][0] = _mm512_fmadd_ps(w, _mm512_loadu_ps(x + r * in + i), acc[r][0]);
  }
  for (int r = 0; r < R; r++) {
    float sum = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]), _mm512_add_ps(acc[r][2], acc[r][3])));
    for (int64_t j = i; j < in; j++) sum += x[r * in + j] * static_cast<float>(q[j]);
    y[r * ldy] = sum * s + b;
  }
}

// ---- AVX2 + FMA: 8 weights per register

__attribute__((target("avx2,fma"))) inline __m256 widen8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

__attribute__((target("avx2,fma"))) inline float reduce8(__m256 v) {
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}

template <int R>
__attribute__((target("avx2,fma"))) void dot_rows_avx2(
    const float* x, const int8_t* q, float s, float b, float* y, int64_t in, int64_t ldy) {
  __m256 acc[R][4];
  for (int r = 0; r < R; r++)
    for (int k = 0; k < 4; k++) acc[r][k] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 64 <= in; i += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(q + i + PREFETCH), _MM_HINT_T0);
    for (int half = 0; half < 2; half++) {  // 32 weights, then the next 32: the same four accumulators
      const int64_t at = i + 32 * half;
      __m256 w[4];
      for (int k = 0; k < 4; k++) w[k] = widen8(q + at + 8 * k);
      for (int r = 0; r < R; r++)
        for (int k = 0; k < 4; k++) acc[r][k] = _mm256_fmadd_ps(w[k], _mm256_loadu_ps(x + r * in + at + 8 * k), acc[r][k]);
    }
  }
  for (; i + 8 <= in; i += 8) {
    __m256 w = widen8(q + i);
    for (int r = 0; r < R; r++) acc[r][0] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + r * in + i), acc[r][0]);
  }
  for (int r = 0; r < R; r++) {
    float sum = reduce8(_mm256_add_ps(_mm256_add_ps(acc[r][0], acc[r][1]), _mm256_add_ps(acc[r][2], acc[r][3])));
    for (int64_t j = i; j < in; j++) sum += x[r * in + j] * static_cast<float>(q[j]);
    y[r * ldy] = sum * s + b;
  }
}

// the rows of x in tiles of TILE (then one at a time), for one weight row
template <bool AVX512>
void dot_all_rows(const float* x, const int8_t* q, float s, float b, float* y, int64_t rows, int64_t in, int64_t ldy) {
  int64_t m = 0;
  for (; m + TILE <= rows; m += TILE) {
    if (AVX512) dot_rows_avx512<TILE>(x + m * in, q, s, b, y + m * ldy, in, ldy);
    else dot_rows_avx2<TILE>(x + m * in, q, s, b, y + m * ldy, in, ldy);
  }
  for (; m < rows; m++) {
    if (AVX512) dot_rows_avx512<1>(x + m * in, q, s, b, y + m * ldy, in, ldy);
    else dot_rows_avx2<1>(x + m * in, q, s, b, y + m * ldy, in, ldy);
  }
}

#endif  // GPT_X86

// 2: AVX-512, 1: AVX2 + FMA, 0: neither (or not x86)
int64_t int8_isa() {
#ifdef GPT_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return 2;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
  return 0;
}

// x (rows, in) fp32, q (out, in) int8, scale (out,) fp32, bias (out,) fp32 or none -> (rows, out) fp32;
// isa as int8_isa() says
at::Tensor int8_matmul(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale,
                       const std::optional<at::Tensor>& bias, int64_t isa) {
  TORCH_CHECK(x.dim() == 2 && q.dim() == 2 && scale.dim() == 1, "int8_matmul: x (rows, in), q (out, in), scale (out,)");
  TORCH_CHECK(x.scalar_type() == at::kFloat && q.scalar_type() == at::kChar && scale.scalar_type() == at::kFloat,
              "int8_matmul: x fp32, q int8, scale fp32");
  TORCH_CHECK(x.is_contiguous() && q.is_contiguous() && scale.is_contiguous(), "int8_matmul: contiguous tensors");
  TORCH_CHECK(x.size(1) == q.size(1) && scale.size(0) == q.size(0), "int8_matmul: shapes do not match");
  const bool has_bias = bias.has_value() && bias->defined();
  TORCH_CHECK(!has_bias || (bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == q.size(0)),
              "int8_matmul: bias fp32 (out,)");
  TORCH_CHECK(isa >= 1 && isa <= int8_isa(), "int8_matmul: this CPU cannot run isa ", isa);
  const int64_t rows = x.size(0), out = q.size(0), in = q.size(1);
  at::Tensor y = at::empty({rows, out}, x.options());
#ifdef GPT_X86
  const float* xp = x.data_ptr<float>();
  const int8_t* qp = q.data_ptr<int8_t>();
  const float* sp = scale.data_ptr<float>();
  const float* bp = has_bias ? bias->data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, out, 16, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; o++) {
      const float b = bp ? bp[o] : 0.0f;
      if (isa == 2) dot_all_rows<true>(xp, qp + o * in, sp[o], b, yp + o, rows, in, out);
      else dot_all_rows<false>(xp, qp + o * in, sp[o], b, yp + o, rows, in, out);
    }
  });
#endif
  return y;
}

// the output's shape and dtype only: what torch.compile traces the product with
at::Tensor int8_matmul_meta(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale,
                            const std::optional<at::Tensor>& bias, int64_t isa) {
  return at::empty({x.size(0), q.size(0)}, x.options());
}

}  // namespace

TORCH_LIBRARY(gptcli_int8, m) {
  m.def("int8_isa() -> int", &int8_isa);
  m.def("int8_matmul(Tensor x, Tensor q, Tensor scale, Tensor? bias, int isa) -> Tensor");
}
TORCH_LIBRARY_IMPL(gptcli_int8, CPU, m) { m.impl("int8_matmul", &int8_matmul); }
TORCH_LIBRARY_IMPL(gptcli_int8, Meta, m) { m.impl("int8_matmul", &int8_matmul_meta); }
