/* The int8 weight-only GEMV of CPU decoding, and the dequantization for larger batches (built
 * with native.c into one library).
 *
 * Weights are int8 with one bfloat16 scale per group of G inputs of an output row:
 * w[n, k] = q[n, k] * s[n, k / G]. They are stored *packed* in blocks of 16 output rows; in a
 * block, each pair of inputs (k, k + 1) of the 16 rows is 32 consecutive bytes, so one 32-byte
 * load widened to int16 is the right operand of a 16-lane pair dot product whose lanes are the
 * 16 rows:
 *
 *     q: [N16 / 16][KP / 2][16][2]      s: [N16 / 16][KP / G][16]
 *
 * (N16 = N rounded up to 16, KP = K rounded up to G, zero padded, zero scales).
 *
 * fs_gemv: y[m, n] = bias[n] + sum_k x[m, k] * w[n, k]. The products are integer: each row of
 * x is first rounded per group of G inputs to int16 (xq = round(x / xs), xs = max|x| / 32767:
 * a step 1/256 of the weights' own), so a group's sum is an exact int32 dot product (VNNI
 * `vpdpwssd`, or `vpmaddwd` and an add), converted to float32 and scaled once per group:
 *
 *     I_g = sum over k in group g of q[n, k] xq[m, k]          (int32, exact)
 *     F  <- fma((float) I_g, s[n, g] * xs[m, g], F)  for g = 0, 1, ...  (float32, F_0 = 0)
 *     y[m, n] = F + bias[n]
 *
 * Every variant (AVX-512 with or without VNNI, AVX2, plain C, and the AMX-INT8 tiles of
 * native_amx.c from 9 rows) computes exactly this, so a row's
 * result depends neither on the instruction set nor on the other rows of the batch. A block's
 * weights are widened once per tile of rows of x (up to 8 with AVX-512, 4 with AVX2) and each
 * group costs a tile row one conversion and one multiply-add for 16 outputs, so at a few rows
 * the work is reading the weights (the loop prefetches 2 KiB ahead into L1 and 8 KiB into L2,
 * which lets one core stream at the memory's speed) and at more rows one dot product per 32
 * multiply-adds.
 *
 * fs_dequant_t: rows [n0, n1) of the weight as float32, *transposed* (out[k][n - n0]), for
 * batches past the GEMV's rows (prefill): torch's float32 GEMM multiplies them a slice at a
 * time.
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "native_gemv.h"

#define XQ_MAX 32767.0f

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

__attribute__((target("avx2,fma"))) static void quantize256(const float *x, int K, int KP, int G,
                                                          int16_t *xq, float *xs) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int k0 = 0; k0 < KP; k0 += G) {
    __m256 mx = _mm256_setzero_ps();
    for (int k = k0; k < k0 + G && k < K; k += 8) {
      const __m256i mk = lanes_below(K - k);
      mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, _mm256_maskload_ps(x + k, mk)));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    const __m256 inv = _mm256_set1_ps(group_inv(amax));
    xs[k0 / G] = amax / XQ_MAX;
    for (int k = k0; k < k0 + G; k += 8) {
      const __m256i mk = lanes_below(K - k);
      const __m256i v = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_maskload_ps(x + k, mk), inv));
      const __m128i h = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
      _mm_storeu_si128((__m128i *)(xq + k), h); /* |v| <= 32767: no saturation */
    }
  }
}

#define DOT_VNNI(acc, w, x) _mm512_dpwssd_epi32(acc, w, x)
#define DOT_BW(acc, w, x) _mm512_add_epi32(acc, _mm512_madd_epi16(w, x))

/* MB rows of x (m0 ..) against one block of 16 weight rows: per pair of inputs, the pair of
 * each row of x broadcast to every lane, one dot product per row of x. */
#define TILE512(NAME, TARGET, DOT, MB)                                                        \
  __attribute__((target(TARGET))) static void NAME##_##MB(const gemv_args *a, int n, int m0) { \
    const int8_t *p = a->q + (long)n * a->KP;                                                 \
    const uint16_t *sb = a->s + (long)n * a->ng;                                              \
    const int32_t *xr[MB];                                                                    \
    UNROLL for (int i = 0; i < MB; i++) xr[i] = (const int32_t *)(a->xq + (long)(m0 + i) * a->KP); \
    __m512 f[MB];                                                                             \
    UNROLL for (int i = 0; i < MB; i++) f[i] = _mm512_setzero_ps();                           \
    for (int g = 0; g < a->ng; g++) {                                                         \
      __m512i acc[MB];                                                                        \
      UNROLL for (int i = 0; i < MB; i++) acc[i] = _mm512_setzero_si512();                    \
      const int p0 = g * a->G / 2;                                                            \
      for (int t = 0; t < a->G / 2; t += 2, p += 64) {                                        \
        _mm_prefetch((const char *)(p + PF_L1), _MM_HINT_T0);                                 \
        _mm_prefetch((const char *)(p + PF_L2), _MM_HINT_T1);                                 \
        const __m512i w0 = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)p));     \
        const __m512i w1 = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(p + 32))); \
        UNROLL for (int i = 0; i < MB; i++) {                                                 \
          acc[i] = DOT(acc[i], w0, _mm512_set1_epi32(xr[i][p0 + t]));                          \
          acc[i] = DOT(acc[i], w1, _mm512_set1_epi32(xr[i][p0 + t + 1]));                      \
        }                                                                                     \
      }                                                                                       \
      const __m512 sv = load_bf16_512(sb + (long)g * NB);                                     \
      UNROLL for (int i = 0; i < MB; i++) f[i] = _mm512_fmadd_ps(                             \
          _mm512_cvtepi32_ps(acc[i]),                                                         \
          _mm512_mul_ps(sv, _mm512_set1_ps(a->xs[(long)(m0 + i) * a->ng + g])), f[i]);        \
    }                                                                                         \
    float r[NB];                                                                              \
    for (int i = 0; i < MB; i++) {                                                            \
      _mm512_storeu_ps(r, f[i]);                                                              \
      store_row(a, r, n, m0 + i);                                                             \
    }                                                                                         \
  }

#define T_VNNI "avx512f,avx512bw,avx512vl,avx512vnni,fma"
#define T_BW "avx512f,avx512bw,avx512vl,fma"
TILE512(vnni, T_VNNI, DOT_VNNI, 1)
TILE512(vnni, T_VNNI, DOT_VNNI, 2)
TILE512(vnni, T_VNNI, DOT_VNNI, 3)
TILE512(vnni, T_VNNI, DOT_VNNI, 4)
TILE512(vnni, T_VNNI, DOT_VNNI, 5)
TILE512(vnni, T_VNNI, DOT_VNNI, 6)
TILE512(vnni, T_VNNI, DOT_VNNI, 7)
TILE512(vnni, T_VNNI, DOT_VNNI, 8)
TILE512(bw, T_BW, DOT_BW, 1)
TILE512(bw, T_BW, DOT_BW, 2)
TILE512(bw, T_BW, DOT_BW, 3)
TILE512(bw, T_BW, DOT_BW, 4)
TILE512(bw, T_BW, DOT_BW, 5)
TILE512(bw, T_BW, DOT_BW, 6)
TILE512(bw, T_BW, DOT_BW, 7)
TILE512(bw, T_BW, DOT_BW, 8)

/* Tiles of eight rows of x (the block's weights widened once per tile), then one tile of the
 * remaining 1-7: a tile's cost is mostly its widened weights and loads until its rows' products
 * dominate, so 7 rows as one tile take about the time of 8, as tiles of 4, 2 and 1 about 2.5x. */
#define BLOCK512(NAME)                                                                        \
  static void block_##NAME(const gemv_args *a, int n) {                                       \
    static void (*const tail[8])(const gemv_args *, int, int) = {                              \
        NULL, NAME##_1, NAME##_2, NAME##_3, NAME##_4, NAME##_5, NAME##_6, NAME##_7};           \
    int m0 = 0;                                                                               \
    for (; m0 + 8 <= a->M; m0 += 8) NAME##_8(a, n, m0);                                       \
    if (m0 < a->M) tail[a->M - m0](a, n, m0);                                                 \
  }
BLOCK512(vnni)
BLOCK512(bw)


/* AVX2: the block's 16 rows as two 8-lane halves, up to 4 rows of x per tile. The int32 sums
 * take 8 of the 16 vector registers; the float sums live in `f` (L1), touched once per group.
 * GCC's partial-redundancy elimination would hoist every product of a pair before its sums and
 * spill a sum to the stack (a store-to-load chain in the hot loop: 4 rows slower than 2), so
 * the tiles are compiled without it. (Slicing the inputs so that a block's weights stay in L1
 * while every tile passes over them measured the same: the tiles are compute-bound.) */
#define NO_PRE "no-tree-pre"
#define TILE256(MB)                                                                           \
  __attribute__((target("avx2,fma"), optimize(NO_PRE))) static void avx2_##MB(             \
      const gemv_args *a, int n, int m0) {                                                    \
    const int8_t *p = a->q + (long)n * a->KP;                                                 \
    const uint16_t *sb = a->s + (long)n * a->ng;                                              \
    const int32_t *xr[MB];                                                                    \
    UNROLL for (int i = 0; i < MB; i++) xr[i] = (const int32_t *)(a->xq + (long)(m0 + i) * a->KP); \
    float f[MB][NB] __attribute__((aligned(32))) = {{0}};                                     \
    for (int g = 0; g < a->ng; g++) {                                                         \
      __m256i acc[MB][2];                                                                     \
      UNROLL for (int i = 0; i < MB; i++) acc[i][0] = acc[i][1] = _mm256_setzero_si256();     \
      const int p0 = g * a->G / 2;                                                            \
      for (int t = 0; t < a->G / 2; t++, p += 32) {                                           \
        if (!(t & 1)) {                                                                       \
          _mm_prefetch((const char *)(p + PF_L1), _MM_HINT_T0);                               \
          _mm_prefetch((const char *)(p + PF_L2), _MM_HINT_T1);                               \
        }                                                                                     \
        UNROLL for (int h = 0; h < 2; h++) {                                                  \
          const __m256i w = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + 16 * h))); \
          UNROLL for (int i = 0; i < MB; i++)                                                 \
            acc[i][h] = _mm256_add_epi32(acc[i][h],                                           \
                                         _mm256_madd_epi16(w, _mm256_set1_epi32(xr[i][p0 + t]))); \
        }                                                                                     \
      }                                                                                       \
      const __m256 sv0 = load_bf16_256(sb + (long)g * NB);                                    \
      const __m256 sv1 = load_bf16_256(sb + (long)g * NB + 8);                                \
      UNROLL for (int i = 0; i < MB; i++) {                                                   \
        const __m256 xs = _mm256_set1_ps(a->xs[(long)(m0 + i) * a->ng + g]);                 \
        _mm256_store_ps(f[i], _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[i][0]),                 \
                                              _mm256_mul_ps(sv0, xs), _mm256_load_ps(f[i]))); \
        _mm256_store_ps(f[i] + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[i][1]),             \
                                                  _mm256_mul_ps(sv1, xs), _mm256_load_ps(f[i] + 8))); \
      }                                                                                       \
    }                                                                                         \
    for (int i = 0; i < MB; i++) store_row(a, f[i], n, m0 + i);                               \
  }
TILE256(2)
TILE256(3)
TILE256(4)

/* One row of x: pairs two at a time into separate sums (the int32 sums are exact, so their
 * order does not matter), which lets two pairs' products overlap. */
__attribute__((target("avx2,fma"), optimize(NO_PRE))) static void avx2_row(const gemv_args *a,
                                                                          int n, int m0) {
  const int8_t *p = a->q + (long)n * a->KP;
  const uint16_t *sb = a->s + (long)n * a->ng;
  const int32_t *xr = (const int32_t *)(a->xq + (long)m0 * a->KP);
  __m256 f0 = _mm256_setzero_ps(), f1 = _mm256_setzero_ps();
  for (int g = 0; g < a->ng; g++) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    const int p0 = g * a->G / 2;
    for (int t = 0; t < a->G / 2; t += 2, p += 64) {
      _mm_prefetch((const char *)(p + PF_L1), _MM_HINT_T0);
      _mm_prefetch((const char *)(p + PF_L2), _MM_HINT_T1);
      const __m256i xv = _mm256_set1_epi32(xr[p0 + t]), xw = _mm256_set1_epi32(xr[p0 + t + 1]);
      a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)p)), xv));
      a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + 16))), xv));
      a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + 32))), xw));
      a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + 48))), xw));
    }
    const __m256 xs = _mm256_set1_ps(a->xs[(long)m0 * a->ng + g]);
    f0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(a0, a2)),
                         _mm256_mul_ps(load_bf16_256(sb + (long)g * NB), xs), f0);
    f1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(a1, a3)),
                         _mm256_mul_ps(load_bf16_256(sb + (long)g * NB + 8), xs), f1);
  }
  float r[NB];
  _mm256_storeu_ps(r, f0);
  _mm256_storeu_ps(r + 8, f1);
  store_row(a, r, n, m0);
}

static void block_avx2(const gemv_args *a, int n) {
  static void (*const tail[4])(const gemv_args *, int, int) = {NULL, avx2_row, avx2_2, avx2_3};
  int m0 = 0;
  for (; m0 + 4 <= a->M; m0 += 4) avx2_4(a, n, m0);
  if (m0 < a->M) tail[a->M - m0](a, n, m0);
}

/* The same sums, one product at a time. */
static void block_c(const gemv_args *a, int n) {
  const int8_t *blk = a->q + (long)n * a->KP;
  const uint16_t *sb = a->s + (long)n * a->ng;
  for (int m = 0; m < a->M; m++) {
    const int16_t *xr = a->xq + (long)m * a->KP;
    float f[NB];
    for (int j = 0; j < NB; j++) {
      float acc_f = 0.0f;
      for (int g = 0; g < a->ng; g++) {
        int32_t acc = 0;
        for (int k = g * a->G; k < (g + 1) * a->G; k += 2) {
          const int8_t *w = blk + (long)(k / 2) * 32 + 2 * j;
          acc += w[0] * xr[k] + w[1] * xr[k + 1];
        }
        acc_f = fmaf((float)acc, widen_bf16(sb[(long)g * NB + j]) * a->xs[(long)m * a->ng + g], acc_f);
      }
      f[j] = acc_f;
    }
    store_row(a, f, n, m);
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

/* isa: 4 AMX-INT8 (and VNNI), 3 AVX-512 with VNNI, 2 AVX-512 (BW), 1 AVX2, 0 C (the caller's
 * choice, see fs_isa). The outputs go to `nout` (1 .. MAX_OUTS) parts, `outs` (fs_out). */
void fs_gemv_parts(const float *x, long ldx, const int8_t *q, const uint16_t *s,
                   const float *bias, const fs_out *outs, int nout, int M, int N, int K, int G,
                   int isa, int threads) {
  const int KP = (K + G - 1) / G * G, ng = KP / G, blocks = (N + NB - 1) / NB;
  const int amx = isa == 4 && G == AMX_G && M >= AMX_MIN_ROWS && fs_amx();
  if (isa == 4) isa = 3;
  if (isa == 3 && !has_vnni()) isa = 2;
  int16_t *xq = malloc(sizeof(int16_t) * (size_t)M * KP + 64);
  float *xs = malloc(sizeof(float) * (size_t)M * ng + 64);
  /* AMX: x's tile bytes, then the calling thread's regrouped blocks (other threads: their own) */
  const long xt_bytes = 2L * (M + 15) / 16 * 16 * KP;
  int8_t *xt = amx ? fs_amx_scratch((size_t)(xt_bytes + 2L * NB * KP)) : NULL;
  gemv_args a = {xq, xs, q, s, bias, {{0}}, M, N, KP, G, ng};
  for (int o = 0; o < nout; o++) a.out[o] = outs[o];
  a.out[nout - 1].n1 = N; /* store_row's search ends at the last part */
  if (!xq || !xs) { /* out of memory: NaN results rather than a crash */
    float nan_row[NB];
    for (int j = 0; j < NB; j++) nan_row[j] = NAN;
    a.bias = NULL;
    for (int m = 0; m < M; m++)
      for (int n = 0; n < N; n += NB) store_row(&a, nan_row, n, m);
    free(xq);
    free(xs);
    return;
  }
  int tiles_done = 1;
  /* one parallel region: the rows are quantized (and split for the tiles) in parallel, then
   * each thread takes its blocks */
#pragma omp parallel num_threads(threads) if ((long)M * N * K > (1L << 17)) \
    reduction(& : tiles_done)
  {
#pragma omp for schedule(static)
    for (int m = 0; m < M; m++) {
      if (isa >= 2)
        quantize512(x + (long)m * ldx, K, KP, G, xq + (long)m * KP, xs + (long)m * ng);
      else if (isa == 1)
        quantize256(x + (long)m * ldx, K, KP, G, xq + (long)m * KP, xs + (long)m * ng);
      else
        quantize_c(x + (long)m * ldx, K, KP, G, xq + (long)m * KP, xs + (long)m * ng);
      if (xt) fs_amx_split_row(xq + (long)m * KP, m, ng, xt);
    }
    if (xt) { /* native_amx.c; each thread its share of the blocks, in order */
      const int t = omp_get_thread_num(), T = omp_get_num_threads();
      int8_t *bq = t == 0 ? xt + xt_bytes : fs_amx_scratch((size_t)2 * NB * KP);
      const int b0 = (int)((long)blocks * t / T), b1 = (int)((long)blocks * (t + 1) / T);
      if (bq) fs_amx_blocks(&a, xt, b0, b1, bq);
      tiles_done = bq != NULL;
    }
    if (!xt) { /* guided: a thread slowed by a neighbour on its core takes fewer blocks (each
                * block is one thread's alone: the same bits whichever thread computes it) */
#pragma omp for schedule(guided)
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
    }
  }
  if (!tiles_done) /* a thread without memory for its blocks: the VNNI tiles, for every block */
    for (int b = 0; b < blocks; b++) block_vnni(&a, b * NB);
  free(xq);
  free(xs);
}

/* y [M][ldy] = x W^T + bias: one output part. */
void fs_gemv(const float *x, long ldx, const int8_t *q, const uint16_t *s, const float *bias,
             float *y, long ldy, int M, int N, int K, int G, int isa, int threads) {
  const fs_out out = {y, ldy, N};
  fs_gemv_parts(x, ldx, q, s, bias, &out, 1, M, N, K, G, isa, threads);
}

/* One block's rows [n, n + nb) into out[k][n - n0] (row stride ld), k < K. */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void dequant_t512(
    const int8_t *blk, const uint16_t *sb, int ng, int G, int K, float *out, long ld, int nb) {
  const __mmask16 mk = (__mmask16)((1u << nb) - 1);
  for (int g = 0; g < ng; g++) {
    const __m512 sv = load_bf16_512(sb + (long)g * NB);
    for (int k = g * G; k < (g + 1) * G && k < K; k += 2) {
      /* 16 rows x (k, k + 1): as int32 lanes, low halves are input k, high halves k + 1 */
      const __m512i w = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(blk + (long)k * 16)));
      const __m512i lo = _mm512_srai_epi32(_mm512_slli_epi32(w, 16), 16);
      const __m512i hi = _mm512_srai_epi32(w, 16);
      _mm512_mask_storeu_ps(out + (long)k * ld, mk, _mm512_mul_ps(_mm512_cvtepi32_ps(lo), sv));
      if (k + 1 < K)
        _mm512_mask_storeu_ps(out + (long)(k + 1) * ld, mk,
                              _mm512_mul_ps(_mm512_cvtepi32_ps(hi), sv));
    }
  }
}

__attribute__((target("avx2,fma"))) static void dequant_t256(
    const int8_t *blk, const uint16_t *sb, int ng, int G, int K, float *out, long ld, int nb) {
  __m256i mask[2];
  for (int h = 0; h < 2; h++) {
    int32_t lanes[8];
    for (int j = 0; j < 8; j++) lanes[j] = 8 * h + j < nb ? -1 : 0;
    mask[h] = _mm256_loadu_si256((const __m256i *)lanes);
  }
  for (int g = 0; g < ng; g++) {
    for (int h = 0; h < 2; h++) {
      const __m256 sv = load_bf16_256(sb + (long)g * NB + 8 * h);
      for (int k = g * G; k < (g + 1) * G && k < K; k += 2) {
        const __m256i w =
            _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(blk + (long)k * 16 + 16 * h)));
        const __m256i lo = _mm256_srai_epi32(_mm256_slli_epi32(w, 16), 16);
        const __m256i hi = _mm256_srai_epi32(w, 16);
        _mm256_maskstore_ps(out + (long)k * ld + 8 * h, mask[h],
                            _mm256_mul_ps(_mm256_cvtepi32_ps(lo), sv));
        if (k + 1 < K)
          _mm256_maskstore_ps(out + (long)(k + 1) * ld + 8 * h, mask[h],
                              _mm256_mul_ps(_mm256_cvtepi32_ps(hi), sv));
      }
    }
  }
}

static void dequant_t_c(const int8_t *blk, const uint16_t *sb, int ng, int G, int K, float *out,
                        long ld, int nb) {
  for (int g = 0; g < ng; g++)
    for (int k = g * G; k < (g + 1) * G && k < K; k++)
      for (int j = 0; j < nb; j++)
        out[(long)k * ld + j] = (float)blk[(long)(k / 2) * 32 + 2 * j + (k & 1)] *
                                widen_bf16(sb[(long)g * NB + j]);
}

/* Rows [n0, n1) of the weight (n0 a multiple of 16) into out[K][ld], transposed, float32. */
void fs_dequant_t(const int8_t *q, const uint16_t *s, float *out, long ld, int n0, int n1, int K,
                  int G, int isa, int threads) {
  const int KP = (K + G - 1) / G * G, ng = KP / G;
  const int blocks = (n1 - n0 + NB - 1) / NB;
#pragma omp parallel for schedule(static) num_threads(threads) if ((long)(n1 - n0) * K > (1L << 16))
  for (int b = 0; b < blocks; b++) {
    const int n = n0 + b * NB;
    const int nb = n1 - n < NB ? n1 - n : NB;
    const int8_t *blk = q + (long)n * KP;
    const uint16_t *sb = s + (long)n * ng;
    if (isa >= 2)
      dequant_t512(blk, sb, ng, G, K, out + (n - n0), ld, nb);
    else if (isa == 1)
      dequant_t256(blk, sb, ng, G, K, out + (n - n0), ld, nb);
    else
      dequant_t_c(blk, sb, ng, G, K, out + (n - n0), ld, nb);
  }
}
