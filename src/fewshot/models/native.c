/* int8 weight-only matrix kernels for CPU decoding (built and loaded by native.py).
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
 * fs_gemv: y[m, n] = bias[n] + sum_k x[m, k] * (q[n, k] * s[n, k / G]), x and y float32. Each
 * (m, n) is summed by one thread in the same order whatever M is and whatever else is in the
 * batch, so a row's result does not depend on the batch. At a few rows the work is reading the
 * weights; the loop prefetches 2 KiB ahead into L1 and 8 KiB ahead into L2, which is what lets
 * one core stream at the memory's speed (without it: ~14 GB/s on two Sapphire Rapids cores,
 * with it: 26-36). Variants: AVX-512 (16 lanes), AVX2 (8 lanes), portable C; the caller picks
 * one with fs_isa().
 *
 * fs_dequant: rows of the weight in float32, for large batches (prefill), which torch's GEMM
 * then multiplies a slice at a time.
 */
#include <immintrin.h>
#include <stdint.h>
#include <math.h>
#include <string.h>

#define NB 4 /* output rows per block */
#define PF_L1 2048
#define PF_L2 8192

static inline float bf16_to_f32(uint16_t h) {
  const uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

int fs_isa(void) {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) return 2;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
  return 0;
}

typedef struct {
  const float *x;
  long ldx;
  const int8_t *q;
  const uint16_t *s;
  const float *bias;
  float *y;
  long ldy;
  int M, N, K, G;
} gemv_args;

/* Every variant computes, for each (m, n): per group g, acc = sum over the group's inputs of
 * x * q (q converted to float exactly), in input order, then tot += acc * s[n, g], groups in
 * order; y = tot (summed across lanes in a fixed order) + bias. The tile height MB is a
 * compile-time constant so the accumulators stay in registers. */
#define AVX512_TILE(MB)                                                                       \
  __attribute__((target("avx512f,avx512bw,avx512vl,fma"))) static void tile512_##MB(         \
      const gemv_args *a, int n, int m0) {                                                    \
    const int KP = (a->K + a->G - 1) / a->G * a->G, ng = KP / a->G, rem = a->K & 15;          \
    const __mmask16 tail = rem ? (__mmask16)((1u << rem) - 1) : (__mmask16)0xFFFF;           \
    const int8_t *p = a->q + (long)n * KP;                                                    \
    const uint16_t *sb = a->s + (long)n * ng;                                                 \
    const int nb = a->N - n < NB ? a->N - n : NB;                                             \
    __m512 tot[MB][NB];                                                                       \
    for (int i = 0; i < MB; i++)                                                              \
      for (int j = 0; j < NB; j++) tot[i][j] = _mm512_setzero_ps();                           \
    for (int k0 = 0; k0 < a->K; k0 += a->G) {                                                 \
      __m512 acc[MB][NB];                                                                     \
      for (int i = 0; i < MB; i++)                                                            \
        for (int j = 0; j < NB; j++) acc[i][j] = _mm512_setzero_ps();                         \
      const int k1 = k0 + a->G < a->K ? k0 + a->G : a->K;                                     \
      for (int k = k0; k < k1; k += 16, p += 64) {                                            \
        _mm_prefetch((const char *)(p + PF_L1), _MM_HINT_T0);                                 \
        _mm_prefetch((const char *)(p + PF_L2), _MM_HINT_T1);                                 \
        __m512 w[NB];                                                                         \
        for (int j = 0; j < NB; j++)                                                          \
          w[j] = _mm512_cvtepi32_ps(                                                          \
              _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 16 * j))));          \
        const __mmask16 mk = k + 16 <= a->K ? (__mmask16)0xFFFF : tail;                       \
        for (int i = 0; i < MB; i++) {                                                        \
          const __m512 xv = _mm512_maskz_loadu_ps(mk, a->x + (long)(m0 + i) * a->ldx + k);    \
          for (int j = 0; j < NB; j++) acc[i][j] = _mm512_fmadd_ps(xv, w[j], acc[i][j]);      \
        }                                                                                     \
      }                                                                                       \
      for (int j = 0; j < NB; j++) {                                                          \
        const __m512 sv = _mm512_set1_ps(bf16_to_f32(sb[(long)j * ng + k0 / a->G]));          \
        for (int i = 0; i < MB; i++) tot[i][j] = _mm512_fmadd_ps(acc[i][j], sv, tot[i][j]);   \
      }                                                                                       \
    }                                                                                         \
    for (int i = 0; i < MB; i++)                                                              \
      for (int j = 0; j < nb; j++)                                                            \
        a->y[(long)(m0 + i) * a->ldy + n + j] =                                               \
            _mm512_reduce_add_ps(tot[i][j]) + (a->bias ? a->bias[n + j] : 0.0f);              \
  }
AVX512_TILE(1)
AVX512_TILE(2)
AVX512_TILE(3)
AVX512_TILE(4)

static void block_avx512(const gemv_args *a, int n) {
  int m0 = 0;
  for (; m0 + 4 <= a->M; m0 += 4) tile512_4(a, n, m0);
  switch (a->M - m0) {
    case 3: tile512_3(a, n, m0); break;
    case 2: tile512_2(a, n, m0); break;
    case 1: tile512_1(a, n, m0); break;
    default: break;
  }
}

__attribute__((target("avx2,fma"))) static float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) static __m256 load_x8(const float *x, int k, int K) {
  if (k + 8 <= K) return _mm256_loadu_ps(x + k);
  float buf[8] = {0};
  for (int t = 0; k + t < K && t < 8; t++) buf[t] = x[k + t];
  return _mm256_loadu_ps(buf);
}

#define AVX2_TILE(MB)                                                                         \
  __attribute__((target("avx2,fma"))) static void tile256_##MB(const gemv_args *a, int n,    \
                                                               int m0) {                      \
    const int KP = (a->K + a->G - 1) / a->G * a->G, ng = KP / a->G;                           \
    const int8_t *p = a->q + (long)n * KP;                                                    \
    const uint16_t *sb = a->s + (long)n * ng;                                                 \
    const int nb = a->N - n < NB ? a->N - n : NB;                                             \
    __m256 tot[MB][NB];                                                                       \
    for (int i = 0; i < MB; i++)                                                              \
      for (int j = 0; j < NB; j++) tot[i][j] = _mm256_setzero_ps();                           \
    for (int k0 = 0; k0 < a->K; k0 += a->G) {                                                 \
      __m256 acc[MB][NB];                                                                     \
      for (int i = 0; i < MB; i++)                                                            \
        for (int j = 0; j < NB; j++) acc[i][j] = _mm256_setzero_ps();                         \
      const int k1 = k0 + a->G < a->K ? k0 + a->G : a->K;                                     \
      for (int k = k0; k < k1; k += 16, p += 64) {                                            \
        _mm_prefetch((const char *)(p + PF_L1), _MM_HINT_T0);                                 \
        _mm_prefetch((const char *)(p + PF_L2), _MM_HINT_T1);                                 \
        __m256 xl[MB], xh[MB];                                                                \
        for (int i = 0; i < MB; i++) {                                                        \
          const float *xr = a->x + (long)(m0 + i) * a->ldx;                                   \
          xl[i] = load_x8(xr, k, a->K);                                                       \
          xh[i] = load_x8(xr, k + 8, a->K);                                                   \
        }                                                                                     \
        for (int j = 0; j < NB; j++) {                                                        \
          const __m256 wl = _mm256_cvtepi32_ps(                                               \
              _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p + 16 * j))));          \
          const __m256 wh = _mm256_cvtepi32_ps(                                               \
              _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p + 16 * j + 8))));      \
          for (int i = 0; i < MB; i++) {                                                      \
            acc[i][j] = _mm256_fmadd_ps(xl[i], wl, acc[i][j]);                                \
            acc[i][j] = _mm256_fmadd_ps(xh[i], wh, acc[i][j]);                                \
          }                                                                                   \
        }                                                                                     \
      }                                                                                       \
      for (int j = 0; j < NB; j++) {                                                          \
        const __m256 sv = _mm256_set1_ps(bf16_to_f32(sb[(long)j * ng + k0 / a->G]));          \
        for (int i = 0; i < MB; i++) tot[i][j] = _mm256_fmadd_ps(acc[i][j], sv, tot[i][j]);   \
      }                                                                                       \
    }                                                                                         \
    for (int i = 0; i < MB; i++)                                                              \
      for (int j = 0; j < nb; j++)                                                            \
        a->y[(long)(m0 + i) * a->ldy + n + j] =                                               \
            hsum256(tot[i][j]) + (a->bias ? a->bias[n + j] : 0.0f);                           \
  }
AVX2_TILE(1)
AVX2_TILE(2)

static void block_avx2(const gemv_args *a, int n) {
  int m0 = 0;
  for (; m0 + 2 <= a->M; m0 += 2) tile256_2(a, n, m0);
  if (m0 < a->M) tile256_1(a, n, m0);
}

/* The same sums as the vector variants (up to their lane order), one value at a time. */
static void block_c(const gemv_args *a, int n) {
  const int KP = (a->K + a->G - 1) / a->G * a->G, ng = KP / a->G;
  const int nb = a->N - n < NB ? a->N - n : NB;
  for (int m = 0; m < a->M; m++)
    for (int j = 0; j < nb; j++) {
      float tot = 0.0f;
      for (int k0 = 0; k0 < a->K; k0 += a->G) {
        float acc = 0.0f;
        for (int k = k0; k < k0 + a->G && k < a->K; k++) {
          const int8_t q = a->q[(long)n * KP + (long)(k / 16) * 64 + 16 * j + k % 16];
          acc += a->x[(long)m * a->ldx + k] * (float)q;
        }
        tot += acc * bf16_to_f32(a->s[(long)(n + j) * ng + k0 / a->G]);
      }
      a->y[(long)m * a->ldy + n + j] = tot + (a->bias ? a->bias[n + j] : 0.0f);
    }
}

void fs_gemv(const float *x, long ldx, const int8_t *q, const uint16_t *s, const float *bias,
             float *y, long ldy, int M, int N, int K, int G, int isa, int threads) {
  const gemv_args a = {x, ldx, q, s, bias, y, ldy, M, N, K, G};
  const int blocks = (N + NB - 1) / NB;
  const long work = (long)M * N * K;
#pragma omp parallel for schedule(static) num_threads(threads) if (work > (1L << 17))
  for (int b = 0; b < blocks; b++) {
    if (isa == 2)
      block_avx512(&a, b * NB);
    else if (isa == 1)
      block_avx2(&a, b * NB);
    else
      block_c(&a, b * NB);
  }
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

__attribute__((target_clones("avx2", "default"))) static void dequant_c(
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
    if (isa == 2)
      dequant_avx512(q + (long)n * KP, s + (long)n * ng, ng, out, (long)b * NB, nb, K, G);
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
  if (isa == 2) return near_avx512(y, rs, c, lower_max_avx512(y, rs, c, N), N, out, cap);
  const float lo = lower_max(y, rs, c, N);
  long count = 0;
  for (int j = 0; j < N; j++)
    if (y[j] + c * rs[j] >= lo) {
      if (count < cap) out[count] = j;
      count++;
    }
  return count;
}
