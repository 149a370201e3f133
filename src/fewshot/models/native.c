/* Small CPU kernels of the native library (built and loaded by native.py; the int8 GEMV and
 * its weight layout are in native_gemv.c, decode attention in native_attention.c, the fused
 * decode step in native_step.c): RMSNorm, LayerNorm, the MLP activations, rotary positions,
 * the rescored LM head's float32 pass and the greedy choice. The models' eager float32 code
 * calls these same functions, so the fused step computes the same bits.
 */
#include <immintrin.h>
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "native_math.h"

/* 3: AVX-512 with VNNI, 2: AVX-512 (F, BW), 1: AVX2 and FMA, 0: plain C. */
int fs_amx(void); /* native_gemv.c: AMX-INT8 present and granted to this process */

int fs_isa(void) {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw"))
    return __builtin_cpu_supports("avx512vnni") ? 3 + fs_amx() : 2;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
  return 0;
}

/* RMSNorm of each row: y = x * (1 / sqrt(mean(x^2) + eps)) * (offset + w), float32, in that
 * order (x * r first), as the models' torch code computes it; the mean's sum runs in 16
 * interleaved partial sums (then in order), which the compiler vectorizes. */
__attribute__((target_clones("avx512f", "avx2", "default"))) static void rms_row(
    const float *x, const float *w, float offset, float eps, float *y, int D) {
  float part[16] = {0};
  int d = 0;
  for (; d + 16 <= D; d += 16)
    for (int t = 0; t < 16; t++) part[t] += x[d + t] * x[d + t];
  float ss = 0.0f;
  for (int t = 0; t < 16; t++) ss += part[t];
  for (; d < D; d++) ss += x[d] * x[d];
  const float r = 1.0f / sqrtf(ss / (float)D + eps);
  for (d = 0; d < D; d++) y[d] = x[d] * r * (offset + w[d]);
}

void fs_rms_norm(const float *x, const float *w, float offset, float eps, float *y, int rows,
                 int D, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if ((long)rows * D > (1L << 16))
  for (int r = 0; r < rows; r++) rms_row(x + (long)r * D, w, offset, eps, y + (long)r * D, D);
}

/* LayerNorm of each row: y = (x - mean) * (1 / sqrt(var + eps)) * w + b, float32, mean and
 * (biased) variance summed in 16 interleaved partial sums, then in order. */
__attribute__((target_clones("avx512f", "avx2", "default"))) static void ln_row(
    const float *x, const float *w, const float *b, float eps, float *y, int D) {
  float part[16] = {0};
  int d = 0;
  for (; d + 16 <= D; d += 16)
    for (int t = 0; t < 16; t++) part[t] += x[d + t];
  float sum = 0.0f;
  for (int t = 0; t < 16; t++) sum += part[t], part[t] = 0.0f;
  for (; d < D; d++) sum += x[d];
  const float mean = sum / (float)D;
  for (d = 0; d + 16 <= D; d += 16)
    for (int t = 0; t < 16; t++) part[t] += (x[d + t] - mean) * (x[d + t] - mean);
  float ss = 0.0f;
  for (int t = 0; t < 16; t++) ss += part[t];
  for (; d < D; d++) ss += (x[d] - mean) * (x[d] - mean);
  const float r = 1.0f / sqrtf(ss / (float)D + eps);
  for (d = 0; d < D; d++) y[d] = (x[d] - mean) * r * w[d] + b[d];
}

void fs_layer_norm(const float *x, const float *w, const float *b, float eps, float *y, int rows,
                   int D, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if ((long)rows * D > (1L << 16))
  for (int r = 0; r < rows; r++) ln_row(x + (long)r * D, w, b, eps, y + (long)r * D, D);
}

/* The MLP activations, elementwise: kind 1 tanh-approximated GELU (gelu_new,
 * gelu_pytorch_tanh), 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), tanh(|u|) as
 * (1 - e^-2|u|) / (1 + e^-2|u|); kind 2 SiLU, x / (1 + e^-x). Absolute error ~1e-7 of the
 * output's scale. With `mul` (a gated MLP's up projection), each result is then multiplied by
 * mul's element: the bits of torch's `act(gate) * up` over this function's act. */
__attribute__((target_clones("avx512f", "avx2", "default"))) static void act_span(
    const float *x, const float *mul, float *y, long n, int kind) {
  if (kind == 1) {
    for (long i = 0; i < n; i++) {
      const float v = x[i], u = 0.7978845608f * (v + 0.044715f * v * v * v);
      const float e = fs_exp(-2.0f * fabsf(u)), t = (1.0f - e) / (1.0f + e);
      y[i] = 0.5f * v * (1.0f + (u < 0.0f ? -t : t));
    }
  } else {
    for (long i = 0; i < n; i++) y[i] = x[i] / (1.0f + fs_exp(-x[i]));
  }
  if (mul != NULL)
    for (long i = 0; i < n; i++) y[i] = y[i] * mul[i];
}

/* act_span with AVX2 intrinsics: GCC does not vectorize act_span's loops for AVX2 (the clamps
 * and the sign are control flow it will not if-convert without AVX-512's masks). The same
 * operations in the same order as act_span's, so the same bits. */
__attribute__((target("avx2"))) static void act_span_avx2(const float *x, const float *mul,
                                                         float *y, long n, int kind) {
  const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
  long i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    __m256 r;
    if (kind == 1) {
      const __m256 cube = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.044715f), v), v), v);
      const __m256 u = _mm256_mul_ps(_mm256_set1_ps(0.7978845608f), _mm256_add_ps(v, cube));
      const __m256 e = fs_exp256(_mm256_mul_ps(_mm256_set1_ps(-2.0f), _mm256_andnot_ps(sign, u)));
      const __m256 t = _mm256_div_ps(_mm256_sub_ps(one, e), _mm256_add_ps(one, e));
      const __m256 neg = _mm256_cmp_ps(u, _mm256_setzero_ps(), _CMP_LT_OQ);
      const __m256 st = _mm256_blendv_ps(t, _mm256_xor_ps(t, sign), neg);
      r = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), v), _mm256_add_ps(one, st));
    } else {
      r = _mm256_div_ps(v, _mm256_add_ps(one, fs_exp256(_mm256_xor_ps(v, sign))));
    }
    if (mul != NULL) r = _mm256_mul_ps(r, _mm256_loadu_ps(mul + i));
    _mm256_storeu_ps(y + i, r);
  }
  if (i < n) act_span(x + i, mul == NULL ? NULL : mul + i, y + i, n - i, kind);
}

void fs_act(const float *x, const float *mul, float *y, long n, int kind, int threads) {
  const long span = 4096;
  __builtin_cpu_init();
  const int avx2 = __builtin_cpu_supports("avx2") && !__builtin_cpu_supports("avx512f");
#pragma omp parallel for schedule(static) num_threads(threads) if (n > 2 * span)
  for (long i = 0; i < n; i += span) {
    const long len = n - i < span ? n - i : span;
    if (avx2)
      act_span_avx2(x + i, mul == NULL ? NULL : mul + i, y + i, len, kind);
    else
      act_span(x + i, mul == NULL ? NULL : mul + i, y + i, len, kind);
  }
}

/* Rotary positions in the rotate_half convention, into y: for each row r (N of them), head h
 * and d < D / 2, with c = cos[r], s = sin[r] ([N, D] each):
 *   y[d] = x[d] * c[d] + (-x[d + D/2]) * s[d],   y[d + D/2] = x[d + D/2] * c[d + D/2] + x[d] * s[d + D/2]
 * each product and the sum rounded separately, as torch computes `x * cos + rotate_half(x) * sin`
 * (the same bits). The compiler vectorizes the inner loops. */
__attribute__((target_clones("avx512f", "avx2", "default"))) static void rope_head(
    const float *x, const float *c, const float *s, float *y, int half) {
  for (int d = 0; d < half; d++) {
    const float a = x[d] * c[d], b = -x[d + half] * s[d];
    y[d] = a + b;
  }
  for (int d = 0; d < half; d++) {
    const float a = x[d + half] * c[d + half], b = x[d] * s[d + half];
    y[d + half] = a + b;
  }
}

void fs_rope(const float *x, const float *cos, const float *sin, float *y, int N, int H, int D) {
  for (int r = 0; r < N; r++)
    for (int h = 0; h < H; h++) {
      const long o = ((long)r * H + h) * D;
      rope_head(x + o, cos + (long)r * D, sin + (long)r * D, y + o, D / 2);
    }
}

/* The outputs of one row that may be its maximum, for the rescored LM head: j qualifies when
 * y[j] + c * rs[j] >= max_i (y[i] - c * rs[i]) (c * rs[j]: a bound on output j's error).
 * Writes the first `cap` such j to out and returns how many there are (more than cap: the
 * caller falls back to a top-k). */
static float lower_max(const float *y, const float *rs, float c, int j, int N, float m) {
  for (; j < N; j++) { /* (every variant's scalar part: j from where its vectors stopped) */
    const float v = y[j] - c * rs[j];
    m = m > v ? m : v;
  }
  return m;
}

/* Appends to out (count so far) the qualifying j in [j, N); returns the new count. */
static long near_from(const float *y, const float *rs, float c, float lo, int j, int N,
                      int64_t *out, long cap, long count) {
  for (; j < N; j++)
    if (y[j] + c * rs[j] >= lo) {
      if (count < cap) out[count] = j;
      count++;
    }
  return count;
}

/* Appends j + b for each set bit b of mask (a vector's qualifying lanes). */
static inline long take_bits(unsigned mask, int j, int64_t *out, long cap, long count) {
  for (; mask; mask &= mask - 1) {
    if (count < cap) out[count] = j + __builtin_ctz(mask);
    count++;
  }
  return count;
}

__attribute__((target("avx512f"))) static float lower_max_avx512(const float *y, const float *rs,
                                                                 float c, int N) {
  __m512 m = _mm512_set1_ps(-INFINITY);
  const __m512 cv = _mm512_set1_ps(c);
  int j = 0;
  for (; j + 16 <= N; j += 16)
    m = _mm512_max_ps(m, _mm512_fnmadd_ps(cv, _mm512_loadu_ps(rs + j), _mm512_loadu_ps(y + j)));
  return lower_max(y, rs, c, j, N, _mm512_reduce_max_ps(m));
}

__attribute__((target("avx512f"))) static long near_avx512(const float *y, const float *rs,
                                                           float c, float lo, int N,
                                                           int64_t *out, long cap) {
  long count = 0;
  const __m512 cv = _mm512_set1_ps(c), lov = _mm512_set1_ps(lo);
  int j = 0;
  for (; j + 16 <= N; j += 16) {
    const __m512 hi = _mm512_fmadd_ps(cv, _mm512_loadu_ps(rs + j), _mm512_loadu_ps(y + j));
    count = take_bits(_mm512_cmp_ps_mask(hi, lov, _CMP_GE_OQ), j, out, cap, count);
  }
  return near_from(y, rs, c, lo, j, N, out, cap, count);
}

__attribute__((target("avx2,fma"))) static float lower_max_avx2(const float *y, const float *rs,
                                                               float c, int N) {
  __m256 m = _mm256_set1_ps(-INFINITY);
  const __m256 cv = _mm256_set1_ps(c);
  int j = 0;
  for (; j + 8 <= N; j += 8)
    m = _mm256_max_ps(m, _mm256_fnmadd_ps(cv, _mm256_loadu_ps(rs + j), _mm256_loadu_ps(y + j)));
  float lanes[8], r = -INFINITY;
  _mm256_storeu_ps(lanes, m);
  for (int i = 0; i < 8; i++) r = r > lanes[i] ? r : lanes[i];
  return lower_max(y, rs, c, j, N, r);
}

__attribute__((target("avx2,fma"))) static long near_avx2(const float *y, const float *rs, float c,
                                                         float lo, int N, int64_t *out, long cap) {
  long count = 0;
  const __m256 cv = _mm256_set1_ps(c), lov = _mm256_set1_ps(lo);
  int j = 0;
  for (; j + 8 <= N; j += 8) {
    const __m256 hi = _mm256_fmadd_ps(cv, _mm256_loadu_ps(rs + j), _mm256_loadu_ps(y + j));
    const unsigned mask = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(hi, lov, _CMP_GE_OQ));
    count = take_bits(mask, j, out, cap, count);
  }
  return near_from(y, rs, c, lo, j, N, out, cap, count);
}

static long fs_near_max(const float *y, const float *rs, float c, int N, int64_t *out,
                        long cap, int isa) {
  if (isa >= 2) return near_avx512(y, rs, c, lower_max_avx512(y, rs, c, N), N, out, cap);
  if (isa == 1) return near_avx2(y, rs, c, lower_max_avx2(y, rs, c, N), N, out, cap);
  return near_from(y, rs, c, lower_max(y, rs, c, 0, N, -INFINITY), 0, N, out, cap, 0);
}

/* The `cap` largest outputs of y [N] into out (a flat top, where more qualify): a min-heap of
 * their indices. */
static void largest(const float *y, int N, int64_t *out, long cap) {
  long n = 0;
  for (int j = 0; j < N; j++) {
    long i;
    if (n < cap) { /* sift the new one up */
      for (i = n++; i > 0 && y[out[(i - 1) / 2]] > y[j]; i = (i - 1) / 2) out[i] = out[(i - 1) / 2];
    } else if (y[j] > y[out[0]]) { /* replace the smallest, sift down */
      for (i = 0;;) {
        long c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && y[out[c + 1]] < y[out[c]]) c++;
        if (y[out[c]] >= y[j]) break;
        out[i] = out[c], i = c;
      }
    } else {
      continue;
    }
    out[i] = j;
  }
}

/* exact_j . x over K inputs, float32 (exact's row float32 or bfloat16) */
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) static float dot_512(const void *w, int bf16,
                                                                    const float *x, int K) {
  __m512 a = _mm512_setzero_ps();
  for (int k = 0; k < K; k += 16) {
    const __mmask16 m = K - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1);
    const __m512 v = bf16 ? widen_bf16_512(_mm256_maskz_loadu_epi16(m, (const uint16_t *)w + k))
                          : _mm512_maskz_loadu_ps(m, (const float *)w + k);
    a = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(m, x + k), a);
  }
  return _mm512_reduce_add_ps(a);
}

__attribute__((target("avx2,fma"))) static float dot_256(const void *w, int bf16, const float *x,
                                                        int K) {
  __m256 a = _mm256_setzero_ps();
  for (int k = 0; k < K; k += 8) {
    const __m256i m = lanes_below(K - k);
    __m256 v;
    if (!bf16) {
      v = _mm256_maskload_ps((const float *)w + k, m);
    } else if (K - k >= 8) {
      v = load_bf16_256((const uint16_t *)w + k);
    } else { /* the tail, staged (AVX2 has no masked 16-bit load) */
      uint16_t h[8] = {0};
      memcpy(h, (const uint16_t *)w + k, sizeof(uint16_t) * (size_t)(K - k));
      v = load_bf16_256(h);
    }
    a = _mm256_fmadd_ps(v, _mm256_maskload_ps(x + k, m), a);
  }
  float lanes[8], r = 0.0f;
  _mm256_storeu_ps(lanes, a);
  for (int i = 0; i < 8; i++) r += lanes[i];
  return r;
}

static float dot_c(const void *w, int bf16, const float *x, int K) {
  float a = 0.0f;
  for (int k = 0; k < K; k++)
    a += row_value(w, bf16, k) * x[k];
  return a;
}

/* The rescored LM head's float32 pass (quant.py's Int8Linear): in each row m of the int8 head's
 * y [M][N], every output that may be the row's maximum (fs_near_max, c = sqrt(12) |x_m|_2; the
 * `cap` largest on a flat top) becomes exact_j . x_m + bias_j, exact [N][K] float32 or bfloat16
 * (a tied input embedding). A row at a time, on its own. cap <= RESCORE_MAX. */
#define RESCORE_MAX 256
void fs_rescore(float *y, const float *x, const void *exact, int bf16, const float *bias,
                const float *rs, int M, int N, int K, long cap, int isa, int threads) {
  const size_t row = (size_t)K * (bf16 ? 2 : 4);
#pragma omp parallel for schedule(static) num_threads(threads) if (M > 1)
  for (int m = 0; m < M; m++) {
    float *ym = y + (long)m * N;
    const float *xm = x + (long)m * K;
    float ss = 0.0f;
    for (int k = 0; k < K; k++) ss += xm[k] * xm[k];
    int64_t idx[RESCORE_MAX];
    float val[RESCORE_MAX];
    long n = fs_near_max(ym, rs, sqrtf(ss) * 3.46410162f, N, idx, cap, isa);
    if (n > cap) largest(ym, N, idx, n = cap);
    for (long i = 0; i < n; i++) {
      const void *w = (const char *)exact + (size_t)idx[i] * row;
      val[i] = isa >= 2 ? dot_512(w, bf16, xm, K) : isa == 1 ? dot_256(w, bf16, xm, K)
                                                            : dot_c(w, bf16, xm, K);
      if (bias != NULL) val[i] = val[i] + bias[idx[i]];
    }
    for (long i = 0; i < n; i++) ym[idx[i]] = val[i];
  }
}

/* Greedy choice of each row of x [R][V] (float32 logits): the first index of the row's largest
 * value, as torch's max(dim) gives it, and that token's log-probability, -log(sum_j e^(x_j - max))
 * (float32 terms summed in double: torch's log_softmax up to float rounding). Two passes over a
 * row (the maximum, then the sum), a thread per row. */
__attribute__((target("avx512f,avx512bw,fma"))) static void greedy_row_512(const float *x, long V,
                                                                          int64_t *tok, float *lp) {
  __m512 vm = _mm512_set1_ps(-INFINITY);
  long j = 0;
  for (; j + 16 <= V; j += 16) vm = _mm512_max_ps(vm, _mm512_loadu_ps(x + j));
  const __mmask16 tail = (__mmask16)((1u << (V - j)) - 1);
  vm = _mm512_mask_max_ps(vm, tail, vm, _mm512_maskz_loadu_ps(tail, x + j));
  const float m = _mm512_reduce_max_ps(vm);
  const __m512 mv = _mm512_set1_ps(m);
  __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
  long at = -1;
  for (j = 0; j < V; j += 16) {
    const __mmask16 k = V - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (V - j)) - 1);
    const __m512 v = _mm512_maskz_loadu_ps(k, x + j);
    if (at < 0) {
      const __mmask16 hit = _mm512_mask_cmp_ps_mask(k, v, mv, _CMP_EQ_OQ);
      if (hit) at = j + __builtin_ctz(hit);
    }
    const __m512 e = _mm512_maskz_mov_ps(k, exp512(_mm512_sub_ps(v, mv)));
    s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
    s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
  }
  *tok = at < 0 ? 0 : at; /* no maximum: every value NaN */
  *lp = (float)-log(_mm512_reduce_add_pd(_mm512_add_pd(s0, s1)));
}

__attribute__((target("avx2,fma"))) static void greedy_row_256(const float *x, long V,
                                                              int64_t *tok, float *lp) {
  __m256 vm = _mm256_set1_ps(-INFINITY);
  long j = 0;
  for (; j + 8 <= V; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + j));
  float lanes[8], m = -INFINITY;
  _mm256_storeu_ps(lanes, vm);
  for (int i = 0; i < 8; i++) m = m > lanes[i] ? m : lanes[i];
  for (; j < V; j++) m = m > x[j] ? m : x[j];
  const __m256 mv = _mm256_set1_ps(m);
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  long at = -1;
  for (j = 0; j < V; j += 8) {
    const __m256i k = lanes_below(V - j);
    const __m256 v = _mm256_maskload_ps(x + j, k);
    if (at < 0) {
      const unsigned hit = (unsigned)_mm256_movemask_ps(
          _mm256_and_ps(_mm256_castsi256_ps(k), _mm256_cmp_ps(v, mv, _CMP_EQ_OQ)));
      if (hit) at = j + __builtin_ctz(hit);
    }
    const __m256 e = _mm256_and_ps(_mm256_castsi256_ps(k), fs_exp256(_mm256_sub_ps(v, mv)));
    s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
  }
  double sum[4];
  _mm256_storeu_pd(sum, _mm256_add_pd(s0, s1));
  *tok = at < 0 ? 0 : at; /* no maximum: every value NaN */
  *lp = (float)-log((sum[0] + sum[1]) + (sum[2] + sum[3]));
}

static void greedy_row_c(const float *x, long V, int64_t *tok, float *lp) {
  float m = -INFINITY;
  long at = 0;
  for (long j = 0; j < V; j++)
    if (x[j] > m) m = x[j], at = j;
  double s = 0.0;
  for (long j = 0; j < V; j++) s += fs_exp(x[j] - m);
  *tok = at;
  *lp = (float)-log(s);
}

void fs_greedy(const float *x, long R, long V, int64_t *tok, float *lp, int isa, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (R > 1)
  for (long r = 0; r < R; r++) {
    if (isa >= 2)
      greedy_row_512(x + r * V, V, tok + r, lp + r);
    else if (isa == 1)
      greedy_row_256(x + r * V, V, tok + r, lp + r);
    else
      greedy_row_c(x + r * V, V, tok + r, lp + r);
  }
}
