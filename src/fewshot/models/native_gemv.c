/* The int8 weight-only GEMV of CPU decoding (built with native.c into one library).
 *
 * y[m, n] = bias[n] + sum_k x[m, k] * q[n, k] * s[n, k / G], weights packed as native.c
 * describes (rows in blocks of four, 16 inputs of each row side by side, bfloat16 scales
 * [N4, KP / G]). The products are integer: each row of x is first quantized per group of G
 * inputs to int16 (xq = round(x / xs), xs = max|x| / 32767: a rounding 1/256 of the weights'
 * own), so a group's sums are exact int32 dot products (VNNI `vpdpwssd`, or `vpmaddwd` and an
 * add), converted to float32 and scaled once per group:
 *
 *     lane l of (m, n), l = 0..7:   I = sum over the group's 16-input steps of
 *                                       q[k + 2l] xq[k + 2l] + q[k + 2l + 1] xq[k + 2l + 1]
 *                                   F_l = fma((float) I, s[n, g] * xs[m, g], F_l)
 *     y[m, n] = ((F_0 + F_1) + (F_2 + F_3)) + ((F_4 + F_5) + (F_6 + F_7)) + bias[n]
 *
 * (I is exact in float32: |I| <= 4 * 127 * 32767 < 2^24 for G = 32.) Every variant (AVX-512
 * with or without VNNI, AVX2, plain C) computes exactly this, so a row's result depends
 * neither on the instruction set nor on the other rows of the batch. Against converting each
 * weight to float, scaling it and a float multiply-add (the previous kernel), a step of 16
 * inputs of four rows takes two widening loads and two dot products instead of 16 operations:
 * on two Zen 4 cores GPT-Neo-125M's 768 x 3072 matrix streams at ~40 instead of ~23 GB/s.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NB 4 /* output rows per packed block */
#define UNROLL _Pragma("GCC unroll 8")
#define PF_L1 2048 /* prefetch distances (bytes ahead): what lets a core stream the weights */
#define PF_L2 8192
#define XQ_MAX 32767.0f

static inline float bf16f(uint16_t h) {
  const uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

typedef struct {
  const int16_t *xq; /* [M][KP] the quantized activations, zero past K */
  const float *xs;   /* [M][ng] their scales */
  const int8_t *q;
  const uint16_t *s;
  const float *bias;
  float *y;
  long ldy;
  int M, N, KP, G, ng;
} gemv_args;

static inline float sum8(const float *l) {
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

static inline float group_inv(float amax) { return amax > 0.0f ? XQ_MAX / amax : 0.0f; }

/* Row x[0..K) -> xq[0..KP), xs[0..KP/G), one group at a time (round to nearest even). */
static void quantize_c(const float *x, int K, int KP, int G, int16_t *xq, float *xs) {
  for (int k0 = 0; k0 < KP; k0 += G) {
    float amax = 0.0f;
    for (int k = k0; k < k0 + G && k < K; k++) amax = fmaxf(amax, fabsf(x[k]));
    const float inv = group_inv(amax);
    xs[k0 / G] = amax / XQ_MAX;
    for (int k = k0; k < k0 + G; k++) xq[k] = k < K ? (int16_t)lrintf(x[k] * inv) : 0;
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) static void quantize512(
    const float *x, int K, int KP, int G, int16_t *xq, float *xs) {
  for (int k0 = 0; k0 < KP; k0 += G) {
    __m512 mx = _mm512_setzero_ps();
    for (int k = k0; k < k0 + G; k += 16) {
      const __mmask16 mk = k + 16 <= K ? 0xFFFF : k < K ? (__mmask16)((1u << (K - k)) - 1) : 0;
      mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_maskz_loadu_ps(mk, x + k)));
    }
    const float amax = _mm512_reduce_max_ps(mx);
    const __m512 inv = _mm512_set1_ps(group_inv(amax));
    xs[k0 / G] = amax / XQ_MAX;
    for (int k = k0; k < k0 + G; k += 16) {
      const __mmask16 mk = k + 16 <= K ? 0xFFFF : k < K ? (__mmask16)((1u << (K - k)) - 1) : 0;
      const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(mk, x + k), inv));
      _mm256_storeu_si256((__m256i *)(xq + k), _mm512_cvtepi32_epi16(v));
    }
  }
}

/* y[m0 + i, n + j] = r[i][j] + bias[n + j] for the block's real rows (the last may have < NB). */
static void store_tile(const gemv_args *a, const float *r, int mb, int n, int m0) {
  const int nb = a->N - n < NB ? a->N - n : NB;
  for (int i = 0; i < mb; i++)
    for (int j = 0; j < nb; j++)
      a->y[(long)(m0 + i) * a->ldy + n + j] = r[i * NB + j] + (a->bias ? a->bias[n + j] : 0.0f);
}

#define DOT_VNNI(acc, w, x) _mm512_dpwssd_epi32(acc, w, x)
#define DOT_BW(acc, w, x) _mm512_add_epi32(acc, _mm512_madd_epi16(w, x))

/* MB rows of x against one block of four weight rows: rows 0 and 1 of the block share a
 * vector (their 16 inputs widened to int16 side by side), rows 2 and 3 another; each row of x
 * is broadcast to both halves. */
#define TILE512(NAME, TARGET, DOT, MB)                                                        \
  __attribute__((target(TARGET))) static void NAME##_##MB(const gemv_args *a, int n, int m0) { \
    const int8_t *p = a->q + (long)n * a->KP;                                                 \
    const uint16_t *sb = a->s + (long)n * a->ng;                                              \
    const __m512i lo = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);     \
    const __m512i hi = _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2);     \
    __m512 f[MB][2];                                                                          \
    UNROLL for (int i = 0; i < MB; i++) f[i][0] = f[i][1] = _mm512_setzero_ps();              \
    for (int g = 0; g < a->ng; g++) {                                                         \
      __m512i acc[MB][2];                                                                     \
      UNROLL for (int i = 0; i < MB; i++) acc[i][0] = acc[i][1] = _mm512_setzero_si512();     \
      for (int t = 0; t < a->G; t += 16, p += 64) {                                           \
        _mm_prefetch((const char *)(p + PF_L1), _MM_HINT_T0);                                 \
        _mm_prefetch((const char *)(p + PF_L2), _MM_HINT_T1);                                 \
        const __m512i w01 = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)p));    \
        const __m512i w23 = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(p + 32))); \
        UNROLL for (int i = 0; i < MB; i++) {                                                 \
          const __m512i xv = _mm512_broadcast_i64x4(_mm256_loadu_si256(                       \
              (const __m256i *)(a->xq + (long)(m0 + i) * a->KP + (long)g * a->G + t)));       \
          acc[i][0] = DOT(acc[i][0], w01, xv);                                                \
          acc[i][1] = DOT(acc[i][1], w23, xv);                                                \
        }                                                                                     \
      }                                                                                       \
      const __m512 s4 = _mm512_zextps128_ps512(_mm_setr_ps(                                   \
          bf16f(sb[g]), bf16f(sb[a->ng + g]), bf16f(sb[2L * a->ng + g]),                      \
          bf16f(sb[3L * a->ng + g])));                                                        \
      const __m512 s01 = _mm512_permutexvar_ps(lo, s4), s23 = _mm512_permutexvar_ps(hi, s4);  \
      UNROLL for (int i = 0; i < MB; i++) {                                                   \
        const __m512 xs = _mm512_set1_ps(a->xs[(long)(m0 + i) * a->ng + g]);                  \
        f[i][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][0]), _mm512_mul_ps(s01, xs), f[i][0]); \
        f[i][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][1]), _mm512_mul_ps(s23, xs), f[i][1]); \
      }                                                                                       \
    }                                                                                         \
    float r[MB][NB], l[32];                                                                   \
    for (int i = 0; i < MB; i++) {                                                            \
      _mm512_storeu_ps(l, f[i][0]);                                                           \
      _mm512_storeu_ps(l + 16, f[i][1]);                                                      \
      for (int j = 0; j < NB; j++) r[i][j] = sum8(l + 8 * j);                                 \
    }                                                                                         \
    store_tile(a, &r[0][0], MB, n, m0);                                                       \
  }

#define T_VNNI "avx512f,avx512bw,avx512vl,avx512vnni,fma"
#define T_BW "avx512f,avx512bw,avx512vl,fma"
TILE512(vnni, T_VNNI, DOT_VNNI, 1)
TILE512(vnni, T_VNNI, DOT_VNNI, 2)
TILE512(vnni, T_VNNI, DOT_VNNI, 3)
TILE512(vnni, T_VNNI, DOT_VNNI, 4)
TILE512(bw, T_BW, DOT_BW, 1)
TILE512(bw, T_BW, DOT_BW, 2)
TILE512(bw, T_BW, DOT_BW, 3)
TILE512(bw, T_BW, DOT_BW, 4)

/* Tiles of four rows of x (the weights are widened once per tile), then the rest. */
#define BLOCK512(NAME)                                                                        \
  static void block_##NAME(const gemv_args *a, int n) {                                       \
    int m0 = 0;                                                                               \
    for (; m0 + 4 <= a->M; m0 += 4) NAME##_4(a, n, m0);                                       \
    switch (a->M - m0) {                                                                      \
      case 3: NAME##_3(a, n, m0); break;                                                      \
      case 2: NAME##_2(a, n, m0); break;                                                      \
      case 1: NAME##_1(a, n, m0); break;                                                      \
      default: break;                                                                         \
    }                                                                                         \
  }
BLOCK512(vnni)
BLOCK512(bw)

/* One row of x against a block: each weight row's 16 inputs widened into one 256-bit vector. */
__attribute__((target("avx2,fma"))) static void row_avx2(const gemv_args *a, int n, int m) {
  const int8_t *p = a->q + (long)n * a->KP;
  const uint16_t *sb = a->s + (long)n * a->ng;
  const int16_t *xr = a->xq + (long)m * a->KP;
  __m256 f[NB];
  UNROLL for (int j = 0; j < NB; j++) f[j] = _mm256_setzero_ps();
  for (int g = 0; g < a->ng; g++) {
    __m256i acc[NB];
    UNROLL for (int j = 0; j < NB; j++) acc[j] = _mm256_setzero_si256();
    for (int t = 0; t < a->G; t += 16, p += 64) {
      _mm_prefetch((const char *)(p + PF_L1), _MM_HINT_T0);
      _mm_prefetch((const char *)(p + PF_L2), _MM_HINT_T1);
      const __m256i xv = _mm256_loadu_si256((const __m256i *)(xr + (long)g * a->G + t));
      UNROLL for (int j = 0; j < NB; j++) acc[j] = _mm256_add_epi32(
          acc[j], _mm256_madd_epi16(
                      _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + 16 * j))), xv));
    }
    const float xs = a->xs[(long)m * a->ng + g];
    UNROLL for (int j = 0; j < NB; j++) f[j] = _mm256_fmadd_ps(
        _mm256_cvtepi32_ps(acc[j]), _mm256_set1_ps(bf16f(sb[(long)j * a->ng + g]) * xs), f[j]);
  }
  float r[NB], l[8];
  for (int j = 0; j < NB; j++) {
    _mm256_storeu_ps(l, f[j]);
    r[j] = sum8(l);
  }
  store_tile(a, r, 1, n, m);
}

static void block_avx2(const gemv_args *a, int n) {
  for (int m = 0; m < a->M; m++) row_avx2(a, n, m);
}

/* The same sums, one product at a time. */
static void block_c(const gemv_args *a, int n) {
  const int8_t *blk = a->q + (long)n * a->KP;
  for (int m = 0; m < a->M; m++) {
    const int16_t *xr = a->xq + (long)m * a->KP;
    float r[NB];
    for (int j = 0; j < NB; j++) {
      float f[8] = {0};
      for (int g = 0; g < a->ng; g++) {
        int32_t acc[8] = {0};
        for (int t = 0; t < a->G; t += 16) {
          const int k = g * a->G + t;
          const int8_t *w = blk + (long)(k / 16) * 64 + 16 * j;
          for (int l = 0; l < 8; l++)
            acc[l] += w[2 * l] * xr[k + 2 * l] + w[2 * l + 1] * xr[k + 2 * l + 1];
        }
        const float c = bf16f(a->s[(long)(n + j) * a->ng + g]) * a->xs[(long)m * a->ng + g];
        for (int l = 0; l < 8; l++) f[l] = fmaf((float)acc[l], c, f[l]);
      }
      r[j] = sum8(f);
    }
    store_tile(a, r, 1, n, m);
  }
}

static int has_vnni(void) {
  static int known = -1;
  if (known < 0) {
    __builtin_cpu_init();
    known = __builtin_cpu_supports("avx512vnni") ? 1 : 0;
  }
  return known;
}

/* isa: 3 AVX-512 with VNNI, 2 AVX-512 (BW), 1 AVX2, 0 C (the caller's choice, see fs_isa). */
void fs_gemv(const float *x, long ldx, const int8_t *q, const uint16_t *s, const float *bias,
             float *y, long ldy, int M, int N, int K, int G, int isa, int threads) {
  const int KP = (K + G - 1) / G * G, ng = KP / G;
  int16_t *xq = malloc(sizeof(int16_t) * (size_t)M * KP + 64);
  float *xs = malloc(sizeof(float) * (size_t)M * ng + 64);
  if (!xq || !xs) { /* out of memory: NaN results rather than a crash */
    for (int m = 0; m < M; m++)
      for (int n = 0; n < N; n++) y[(long)m * ldy + n] = NAN;
    free(xq);
    free(xs);
    return;
  }
  for (int m = 0; m < M; m++) {
    if (isa >= 2)
      quantize512(x + (long)m * ldx, K, KP, G, xq + (long)m * KP, xs + (long)m * ng);
    else
      quantize_c(x + (long)m * ldx, K, KP, G, xq + (long)m * KP, xs + (long)m * ng);
  }
  const gemv_args a = {xq, xs, q, s, bias, y, ldy, M, N, KP, G, ng};
  const int blocks = (N + NB - 1) / NB;
  const long work = (long)M * N * K;
  if (isa == 3 && !has_vnni()) isa = 2;
#pragma omp parallel for schedule(static) num_threads(threads) if (work > (1L << 17))
  for (int b = 0; b < blocks; b++) {
    if (isa == 3)
      block_vnni(&a, b * NB);
    else if (isa == 2)
      block_bw(&a, b * NB);
    else if (isa == 1)
      block_avx2(&a, b * NB);
    else
      block_c(&a, b * NB);
  }
  free(xq);
  free(xs);
}
