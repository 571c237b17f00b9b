// y = x (q s)^T + b: few rows of fp32 activations times an int8 weight with a scale per output row.
//
// The product of a decode step (gptcli/models/int8.py; int8_kernel.py builds this file on first use).
// At a few rows every weight is read once from memory and used for one multiply-add per row, so the
// speed is how fast the weights stream in. Each weight row is read 64 int8 weights (one cache line)
// at a time, widened to fp32 in registers and multiplied into two fp32 accumulators, while the line
// PREFETCH bytes ahead is requested, and several rows far apart are read at once (see below): the
// CPU's own prefetcher alone kept a loop like this at 7.9 GB/s from memory on one core, the request
// at 8.6-9.5, four streams at 12.4 (benchmarks/README.md, "Int8 decoding").
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
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define GPT_X86 1
#endif

namespace {

constexpr int64_t PREFETCH = 4096;  // bytes ahead of the line being read (2048-8192 measured alike)

#ifdef GPT_X86

// Each kernel below multiplies S weight rows q[o[0]], ..., q[o[S-1]] by R rows of x and writes
// y[r * ldy + o[s]] = scale[o[s]] * sum_i x[r * in + i] q[o[s], i] + bias[o[s]]. The S rows are
// far apart (from S equal parts of a thread's rows): S streams in flight at once kept the memory
// busier than one (at one row of x, 8.6 -> 12.4 GB/s on one core, 20.6 -> 27-29 GB/s on two). Every
// (r, s) sums in the same order for any S and R: two accumulators taking turns over 64 weights at a
// time, one register's worth at a time into the first for the rest, their sum, then one by one.

__attribute__((target("avx512f"))) inline __m512 widen16(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

template <int S, int R>
__attribute__((target("avx512f"))) void dot_avx512(const float* x, const int8_t* q, const float* scale,
                                                   const float* bias, const int64_t* o, float* y,
                                                   int64_t in, int64_t ldy) {
  const int8_t* w[S];
  for (int s = 0; s < S; s++) w[s] = q + o[s] * in;
  __m512 acc[S][R][2];
  for (int s = 0; s < S; s++)
    for (int r = 0; r < R; r++)
      for (int k = 0; k < 2; k++) acc[s][r][k] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 64 <= in; i += 64) {
    for (int s = 0; s < S; s++) _mm_prefetch(reinterpret_cast<const char*>(w[s] + i + PREFETCH), _MM_HINT_T0);
    for (int k = 0; k < 4; k++) {  // 4 x 16 weights, into accumulator k % 2
      __m512 wk[S];
      for (int s = 0; s < S; s++) wk[s] = widen16(w[s] + i + 16 * k);
      for (int r = 0; r < R; r++) {
        const __m512 xv = _mm512_loadu_ps(x + r * in + i + 16 * k);
        for (int s = 0; s < S; s++) acc[s][r][k % 2] = _mm512_fmadd_ps(wk[s], xv, acc[s][r][k % 2]);
      }
    }
  }
  for (; i + 16 <= in; i += 16)
    for (int s = 0; s < S; s++) {
      const __m512 wv = widen16(w[s] + i);
      for (int r = 0; r < R; r++) acc[s][r][0] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + r * in + i), acc[s][r][0]);
    }
  for (int s = 0; s < S; s++)
    for (int r = 0; r < R; r++) {
      float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc[s][r][0], acc[s][r][1]));
      for (int64_t j = i; j < in; j++) sum += x[r * in + j] * static_cast<float>(w[s][j]);
      y[r * ldy + o[s]] = sum * scale[o[s]] + (bias ? bias[o[s]] : 0.0f);
    }
}

// AVX2 + FMA: 8 weights per register, and two streams (16 registers, not 32)

__attribute__((target("avx2,fma"))) inline __m256 widen8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

__attribute__((target("avx2,fma"))) inline float reduce8(__m256 v) {
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}

template <int S, int R>
__attribute__((target("avx2,fma"))) void dot_avx2(const float* x, const int8_t* q, const float* scale,
                                                 const float* bias, const int64_t* o, float* y,
                                                 int64_t in, int64_t ldy) {
  const int8_t* w[S];
  for (int s = 0; s < S; s++) w[s] = q + o[s] * in;
  __m256 acc[S][R][2];
  for (int s = 0; s < S; s++)
    for (int r = 0; r < R; r++)
      for (int k = 0; k < 2; k++) acc[s][r][k] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 64 <= in; i += 64) {
    for (int s = 0; s < S; s++) _mm_prefetch(reinterpret_cast<const char*>(w[s] + i + PREFETCH), _MM_HINT_T0);
    for (int k = 0; k < 8; k++) {  // 8 x 8 weights, into accumulator k % 2
      __m256 wk[S];
      for (int s = 0; s < S; s++) wk[s] = widen8(w[s] + i + 8 * k);
      for (int r = 0; r < R; r++) {
        const __m256 xv = _mm256_loadu_ps(x + r * in + i + 8 * k);
        for (int s = 0; s < S; s++) acc[s][r][k % 2] = _mm256_fmadd_ps(wk[s], xv, acc[s][r][k % 2]);
      }
    }
  }
  for (; i + 8 <= in; i += 8)
    for (int s = 0; s < S; s++) {
      const __m256 wv = widen8(w[s] + i);
      for (int r = 0; r < R; r++) acc[s][r][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + r * in + i), acc[s][r][0]);
    }
  for (int s = 0; s < S; s++)
    for (int r = 0; r < R; r++) {
      float sum = reduce8(_mm256_add_ps(acc[s][r][0], acc[s][r][1]));
      for (int64_t j = i; j < in; j++) sum += x[r * in + j] * static_cast<float>(w[s][j]);
      y[r * ldy + o[s]] = sum * scale[o[s]] + (bias ? bias[o[s]] : 0.0f);
    }
}

template <bool AVX512, int S, int R>
inline void dot(const float* x, const int8_t* q, const float* scale, const float* bias, const int64_t* o,
                float* y, int64_t in, int64_t ldy) {
  if (AVX512) dot_avx512<S, R>(x, q, scale, bias, o, y, in, ldy);
  else dot_avx2<S, R>(x, q, scale, bias, o, y, in, ldy);
}

// Weight rows o[0..S) times every row of x: R rows of x at a time (each widened weight used R
// times), then two, then one. The weight rows stay in L1 from one group of x's rows to the next.
template <bool AVX512, int S, int R>
void all_rows_of_x(const float* x, const int8_t* q, const float* scale, const float* bias, const int64_t* o,
                   float* y, int64_t rows, int64_t in, int64_t out) {
  int64_t m = 0;
  for (; m + R <= rows; m += R) dot<AVX512, S, R>(x + m * in, q, scale, bias, o, y + m * out, in, out);
  if (R > 2)
    for (; m + 2 <= rows; m += 2) dot<AVX512, S, 2>(x + m * in, q, scale, bias, o, y + m * out, in, out);
  for (; m < rows; m++) dot<AVX512, S, 1>(x + m * in, q, scale, bias, o, y + m * out, in, out);
}

// One thread's weight rows [begin, end), read S at a time from S equal parts (S streams), the last
// few alone; each group times every row of x, so the weights are read from memory once.
template <bool AVX512, int S, int R>
void thread_rows(const float* x, const int8_t* q, const float* scale, const float* bias, float* y,
                 int64_t rows, int64_t in, int64_t out, int64_t begin, int64_t end) {
  const int64_t per = (end - begin) / S;
  for (int64_t j = 0; j < per; j++) {
    int64_t o[S];
    for (int s = 0; s < S; s++) o[s] = begin + s * per + j;
    all_rows_of_x<AVX512, S, R>(x, q, scale, bias, o, y, rows, in, out);
  }
  for (int64_t o = begin + S * per; o < end; o++) all_rows_of_x<AVX512, 1, R>(x, q, scale, bias, &o, y, rows, in, out);
}

// Streams and rows of x at a time, within the registers (two accumulators each, a widened weight
// per stream): four streams at one row of x (8 accumulators); at several rows, two streams of four
// rows with AVX-512's 32 registers (16), one stream of four with AVX2's 16 (8), so that each widened
// weight serves four rows: from 4 rows on the kernel is bound by that work, not the memory.
template <bool AVX512>
void thread_part(const float* x, const int8_t* q, const float* scale, const float* bias, float* y,
                 int64_t rows, int64_t in, int64_t out, int64_t begin, int64_t end) {
  if (rows == 1) thread_rows<AVX512, 4, 1>(x, q, scale, bias, y, rows, in, out, begin, end);
  else thread_rows<AVX512, AVX512 ? 2 : 1, 4>(x, q, scale, bias, y, rows, in, out, begin, end);
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

// the shape of x (..., in) with out for in
std::vector<int64_t> out_shape(const at::Tensor& x, int64_t out) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out;
  return shape;
}

// x (..., in) fp32, q (out, in) int8, scale (out,) fp32, bias (out,) fp32 or none -> (..., out) fp32;
// isa as int8_isa() says
at::Tensor int8_matmul(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale,
                       const std::optional<at::Tensor>& bias, int64_t isa) {
  TORCH_CHECK(x.dim() >= 1 && q.dim() == 2 && scale.dim() == 1, "int8_matmul: x (..., in), q (out, in), scale (out,)");
  TORCH_CHECK(x.scalar_type() == at::kFloat && q.scalar_type() == at::kChar && scale.scalar_type() == at::kFloat,
              "int8_matmul: x fp32, q int8, scale fp32");
  TORCH_CHECK(x.is_contiguous() && q.is_contiguous() && scale.is_contiguous(), "int8_matmul: contiguous tensors");
  TORCH_CHECK(x.size(-1) == q.size(1) && scale.size(0) == q.size(0), "int8_matmul: shapes do not match");
  const bool has_bias = bias.has_value() && bias->defined();
  TORCH_CHECK(!has_bias || (bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == q.size(0)),
              "int8_matmul: bias fp32 (out,)");
  TORCH_CHECK(isa >= 1 && isa <= int8_isa(), "int8_matmul: this CPU cannot run isa ", isa);
  const int64_t out = q.size(0), in = q.size(1), rows = in ? x.numel() / in : 0;
  at::Tensor y = at::empty(out_shape(x, out), x.options());
#ifdef GPT_X86
  const float* xp = x.data_ptr<float>();
  const int8_t* qp = q.data_ptr<int8_t>();
  const float* sp = scale.data_ptr<float>();
  const float* bp = has_bias ? bias->data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, out, 64, [&](int64_t begin, int64_t end) {
    if (isa == 2) thread_part<true>(xp, qp, sp, bp, yp, rows, in, out, begin, end);
    else thread_part<false>(xp, qp, sp, bp, yp, rows, in, out, begin, end);
  });
#endif
  return y;
}

// the output's shape and dtype only: what torch.compile traces the product with
at::Tensor int8_matmul_meta(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale,
                            const std::optional<at::Tensor>& bias, int64_t isa) {
  return at::empty(out_shape(x, q.size(0)), x.options());
}

}  // namespace

TORCH_LIBRARY(gptcli_int8, m) {
  m.def("int8_isa() -> int", &int8_isa);
  m.def("int8_matmul(Tensor x, Tensor q, Tensor scale, Tensor? bias, int isa) -> Tensor");
}
TORCH_LIBRARY_IMPL(gptcli_int8, CPU, m) { m.impl("int8_matmul", &int8_matmul); }
TORCH_LIBRARY_IMPL(gptcli_int8, Meta, m) { m.impl("int8_matmul", &int8_matmul_meta); }
