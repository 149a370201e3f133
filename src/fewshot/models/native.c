/* int8 weight-only matrix kernels for CPU decoding (built and loaded by native.py): the
 * packed layout, dequantization, RMSNorm and the rescored head's candidate search.
 *
 * Weights are int8 with one float32 scale per group of G inputs of an output row:
 * w[n, k] = q[n, k] * s[n, k / G]. They are stored *packed*: rows in blocks of four, and in each
 * block, 16 inputs of each of the four rows side by side, so a block is read as one sequential
 * stream of 64-byte lines:
 *
 *     packed[N4 / 4][KP / 16][4][16]   (N4 = N rounded up to 4, KP = K rounded up to G)
 *
 * padded with zeros (and zero scales). Scales are bfloat16 [N4, KP / G] (the quantizer rounds
 * each scale to bfloat16 before it rounds the weights, so the scale's precision costs nothing).
 *
 * fs_gemv (native_gemv.c): y = x W^T + bias for a few rows of x, the decode step's products.
 *
 * fs_dequant: rows of the weight in float32, for large batches (prefill), which torch's GEMM
 * then multiplies a slice at a time (AVX-512, AVX2 or C; with AVX2 intrinsics instead of the
 * compiler's loop, GPT-Neo-125M's 72 matrices at 26 rows: 45.5 -> 35.8 ms, fp32 GEMM 33.4).
 */
#include <immintrin.h>
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define NB 4 /* output rows per block */

static inline float bf16_to_f32(uint16_t h) {
  const uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* 3: AVX-512 with VNNI, 2: AVX-512 (F, BW), 1: AVX2 and FMA, 0: plain C. */
int fs_isa(void) {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw"))
    return __builtin_cpu_supports("avx512vnni") ? 3 : 2;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
  return 0;
}

__attribute__((target("avx2,fma"))) static __m256 widen8(const int8_t *p, __m256 s) {
  return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p))),
                       s);
}

/* Rows [n0, n1) of the weight (n0 a multiple of NB) into out[n1 - n0][K], float32. */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void dequant_avx512(
    const int8_t *blk, const uint16_t *sb, int ng, float *out, long row0, int nb, int K, int G) {
  for (int k = 0; k < K; k += 16) {
    const int len = K - k < 16 ? K - k : 16;
    const __mmask16 mk = (__mmask16)((1u << len) - 1);
    for (int j = 0; j < nb; j++) {
      const __m128i q = _mm_loadu_si128((const __m128i *)(blk + (long)(k / 16) * 64 + 16 * j));
      const __m512 w = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)),
                                     _mm512_set1_ps(bf16_to_f32(sb[(long)j * ng + k / G])));
      _mm512_mask_storeu_ps(out + (row0 + j) * K + k, mk, w);
    }
  }
}

__attribute__((target("avx2,fma"))) static void dequant_avx2(
    const int8_t *blk, const uint16_t *sb, int ng, float *out, long row0, int nb, int K, int G) {
  for (int k = 0; k < K; k += 16) {
    const int len = K - k < 16 ? K - k : 16;
    for (int j = 0; j < nb; j++) {
      const int8_t *src = blk + (long)(k / 16) * 64 + 16 * j;
      const __m256 sc = _mm256_set1_ps(bf16_to_f32(sb[(long)j * ng + k / G]));
      float *dst = out + (row0 + j) * K + k;
      if (len == 16) {
        _mm256_storeu_ps(dst, widen8(src, sc));
        _mm256_storeu_ps(dst + 8, widen8(src + 8, sc));
      } else {
        for (int t = 0; t < len; t++) dst[t] = (float)src[t] * bf16_to_f32(sb[(long)j * ng + k / G]);
      }
    }
  }
}

static void dequant_c(
    const int8_t *blk, const uint16_t *sb, int ng, float *out, long row0, int nb, int K, int G) {
  for (int k = 0; k < K; k += 16) {
    const int len = K - k < 16 ? K - k : 16;
    for (int j = 0; j < nb; j++) {
      const int8_t *src = blk + (long)(k / 16) * 64 + 16 * j;
      const float sc = bf16_to_f32(sb[(long)j * ng + k / G]);
      for (int t = 0; t < len; t++) out[(row0 + j) * K + k + t] = (float)src[t] * sc;
    }
  }
}

void fs_dequant(const int8_t *q, const uint16_t *s, float *out, int n0, int n1, int K, int G,
                int isa, int threads) {
  const int KP = (K + G - 1) / G * G, ng = KP / G;
  const int blocks = (n1 - n0 + NB - 1) / NB;
#pragma omp parallel for schedule(static) num_threads(threads) if ((long)(n1 - n0) * K > (1L << 16))
  for (int b = 0; b < blocks; b++) {
    const int n = n0 + b * NB;
    const int nb = n1 - n < NB ? n1 - n : NB;
    if (isa >= 2)
      dequant_avx512(q + (long)n * KP, s + (long)n * ng, ng, out, (long)b * NB, nb, K, G);
    else if (isa == 1)
      dequant_avx2(q + (long)n * KP, s + (long)n * ng, ng, out, (long)b * NB, nb, K, G);
    else
      dequant_c(q + (long)n * KP, s + (long)n * ng, ng, out, (long)b * NB, nb, K, G);
  }
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
static float lower_max(const float *y, const float *rs, float c, int N) {
  float m = -INFINITY;
  for (int j = 0; j < N; j++) {
    const float v = y[j] - c * rs[j];
    m = m > v ? m : v;
  }
  return m;
}

__attribute__((target("avx512f"))) static float lower_max_avx512(const float *y, const float *rs,
                                                                 float c, int N) {
  __m512 m = _mm512_set1_ps(-INFINITY);
  const __m512 cv = _mm512_set1_ps(c);
  int j = 0;
  for (; j + 16 <= N; j += 16)
    m = _mm512_max_ps(m, _mm512_fnmadd_ps(cv, _mm512_loadu_ps(rs + j), _mm512_loadu_ps(y + j)));
  float r = _mm512_reduce_max_ps(m);
  for (; j < N; j++) {
    const float v = y[j] - c * rs[j];
    r = r > v ? r : v;
  }
  return r;
}

__attribute__((target("avx512f"))) static long near_avx512(const float *y, const float *rs,
                                                           float c, float lo, int N,
                                                           int64_t *out, long cap) {
  long count = 0;
  const __m512 cv = _mm512_set1_ps(c), lov = _mm512_set1_ps(lo);
  int j = 0;
  for (; j + 16 <= N; j += 16) {
    const __m512 hi = _mm512_fmadd_ps(cv, _mm512_loadu_ps(rs + j), _mm512_loadu_ps(y + j));
    unsigned mask = _mm512_cmp_ps_mask(hi, lov, _CMP_GE_OQ);
    while (mask) {
      if (count < cap) out[count] = j + __builtin_ctz(mask);
      count++;
      mask &= mask - 1;
    }
  }
  for (; j < N; j++)
    if (y[j] + c * rs[j] >= lo) {
      if (count < cap) out[count] = j;
      count++;
    }
  return count;
}

long fs_near_max(const float *y, const float *rs, float c, int N, int64_t *out, long cap,
                 int isa) {
  if (isa >= 2) return near_avx512(y, rs, c, lower_max_avx512(y, rs, c, N), N, out, cap);
  const float lo = lower_max(y, rs, c, N);
  long count = 0;
  for (int j = 0; j < N; j++)
    if (y[j] + c * rs[j] >= lo) {
      if (count < cap) out[count] = j;
      count++;
    }
  return count;
}
