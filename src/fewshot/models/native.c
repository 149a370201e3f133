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
 * with it: 26-36). At more rows the work is the multiply-adds: up to four rows convert the
 * weights in registers, more convert each block once into a buffer that all their tiles read
 * (GPT-Neo-125M's 72 block matrices on two Sapphire Rapids cores, against converting once per
 * tile of rows: 8 rows 12.8 -> 11.4 ms and 16 rows 25.5 -> 17.4 ms with AVX-512; 8 rows 30.2 ->
 * 20.0 ms with AVX2, where torch's float32 GEMM takes 24.7). Variants: AVX-512 (16 lanes), AVX2
 * (8 lanes), portable C; the caller picks one with fs_isa().
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
/* Unroll the tile's row and output loops before GCC lays out its accumulator arrays, so they
 * live in registers (without it they are stored to the stack on every step). */
#define UNROLL _Pragma("GCC unroll 8")
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

/* Every variant computes, for each (m, n): y = bias + sum over k of x[m, k] * w[n, k], with
 * w = q * s the exact float32 product (an 8-bit integer times a bfloat16 has at most 16
 * significant bits), summed in lanes of 16 inputs (AVX-512; AVX2 folds each 16 into 8 lanes)
 * in input order, the lanes then added in a fixed order. One row (M = 1) converts the weights in
 * registers as it streams them. More rows convert a block of four weight rows once into a
 * per-thread buffer (L1 or L2 sized) that every tile of MB rows then reads: the conversion and
 * the scaling are paid once per block instead of once per tile, and a tile's work is its FMAs.
 * Same products, same order either way: a row's result does not depend on M. The tile height
 * MB is a compile-time constant so the accumulators stay in registers. */

/* y[m0 + i, n + j] = r[i][j] + bias[n + j] for the block's real rows (the last may have < NB). */
static void store_tile(const gemv_args *a, const float *r, int mb, int n, int m0) {
  const int nb = a->N - n < NB ? a->N - n : NB;
  for (int i = 0; i < mb; i++)
    for (int j = 0; j < nb; j++)
      a->y[(long)(m0 + i) * a->ldy + n + j] = r[i * NB + j] + (a->bias ? a->bias[n + j] : 0.0f);
}

static __thread float *tls_wb;
static __thread long tls_wb_len;

/* A per-thread buffer of at least n floats, 64-byte aligned, kept for the thread's life. */
static float *block_buffer(long n) {
  if (n > tls_wb_len) {
    free(tls_wb);
    tls_wb = aligned_alloc(64, (size_t)((n + 15) / 16 * 64));
    tls_wb_len = tls_wb ? n : 0;
  }
  return tls_wb;
}

/* Scales of a group as vectors, one per row of the block. */
#define GROUP_SCALES(SET1, sv, sb, ng, g)                                                     \
  UNROLL for (int j = 0; j < NB; j++) sv[j] = SET1(bf16_to_f32((sb)[(long)j * (ng) + (g)]));

/* Up to four rows straight from the packed weights, each converted and scaled in registers. */
#define AVX512_DIRECT(MB)                                                                     \
  __attribute__((target("avx512f,avx512bw,avx512vl,fma"))) static void direct512_##MB(       \
      const gemv_args *a, int n) {                                                            \
    const int KP = (a->K + a->G - 1) / a->G * a->G, ng = KP / a->G, rem = a->K & 15;          \
    const __mmask16 tail = rem ? (__mmask16)((1u << rem) - 1) : (__mmask16)0xFFFF;           \
    const int8_t *p = a->q + (long)n * KP;                                                    \
    const uint16_t *sb = a->s + (long)n * ng;                                                 \
    __m512 acc[MB][NB], sv[NB];                                                               \
    UNROLL for (int i = 0; i < MB; i++)                                                       \
      UNROLL for (int j = 0; j < NB; j++) acc[i][j] = _mm512_setzero_ps();                    \
    for (int k0 = 0; k0 < a->K; k0 += a->G) {                                                 \
      GROUP_SCALES(_mm512_set1_ps, sv, sb, ng, k0 / a->G)                                     \
      const int k1 = k0 + a->G < a->K ? k0 + a->G : a->K;                                     \
      for (int k = k0; k < k1; k += 16, p += 64) {                                            \
        _mm_prefetch((const char *)(p + PF_L1), _MM_HINT_T0);                                 \
        _mm_prefetch((const char *)(p + PF_L2), _MM_HINT_T1);                                 \
        const __mmask16 mk = k + 16 <= a->K ? (__mmask16)0xFFFF : tail;                       \
        __m512 w[NB];                                                                         \
        UNROLL for (int j = 0; j < NB; j++) w[j] = _mm512_mul_ps(                             \
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(                                          \
                _mm_loadu_si128((const __m128i *)(p + 16 * j)))), sv[j]);                     \
        UNROLL for (int i = 0; i < MB; i++) {                                                 \
          const __m512 xv = _mm512_maskz_loadu_ps(mk, a->x + (long)i * a->ldx + k);           \
          UNROLL for (int j = 0; j < NB; j++) acc[i][j] = _mm512_fmadd_ps(xv, w[j], acc[i][j]); \
        }                                                                                     \
      }                                                                                       \
    }                                                                                         \
    float r[MB][NB];                                                                          \
    UNROLL for (int i = 0; i < MB; i++)                                                       \
      UNROLL for (int j = 0; j < NB; j++) r[i][j] = _mm512_reduce_add_ps(acc[i][j]);          \
    store_tile(a, &r[0][0], MB, n, 0);                                                        \
  }
AVX512_DIRECT(1)
AVX512_DIRECT(2)
AVX512_DIRECT(3)
AVX512_DIRECT(4)

/* The block's w = q * s into wb, in the packed order [K16 / 16][NB][16]. */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void widen512(const gemv_args *a,
                                                                          int n, float *wb) {
  const int KP = (a->K + a->G - 1) / a->G * a->G, ng = KP / a->G;
  const int8_t *p = a->q + (long)n * KP;
  const uint16_t *sb = a->s + (long)n * ng;
  __m512 sv[NB];
  for (int k0 = 0; k0 < a->K; k0 += a->G) {
    GROUP_SCALES(_mm512_set1_ps, sv, sb, ng, k0 / a->G)
    const int k1 = k0 + a->G < a->K ? k0 + a->G : a->K;
    for (int k = k0; k < k1; k += 16, p += 64, wb += 64) {
      _mm_prefetch((const char *)(p + PF_L1), _MM_HINT_T0);
      _mm_prefetch((const char *)(p + PF_L2), _MM_HINT_T1);
      UNROLL for (int j = 0; j < NB; j++)
        _mm512_store_ps(wb + 16 * j,
                        _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                          _mm_loadu_si128((const __m128i *)(p + 16 * j)))),
                                      sv[j]));
    }
  }
}

#define AVX512_TILE(MB)                                                                       \
  __attribute__((target("avx512f,avx512bw,avx512vl,fma"))) static void tile512_##MB(         \
      const gemv_args *a, const float *wb, int n, int m0) {                                   \
    const int rem = a->K & 15;                                                                \
    const __mmask16 tail = rem ? (__mmask16)((1u << rem) - 1) : (__mmask16)0xFFFF;           \
    __m512 acc[MB][NB];                                                                       \
    UNROLL for (int i = 0; i < MB; i++)                                                              \
      UNROLL for (int j = 0; j < NB; j++) acc[i][j] = _mm512_setzero_ps();                           \
    for (int k = 0; k < a->K; k += 16, wb += 64) {                                            \
      __m512 w[NB];                                                                           \
      UNROLL for (int j = 0; j < NB; j++) w[j] = _mm512_load_ps(wb + 16 * j);                        \
      const __mmask16 mk = k + 16 <= a->K ? (__mmask16)0xFFFF : tail;                         \
      UNROLL for (int i = 0; i < MB; i++) {                                                          \
        const __m512 xv = _mm512_maskz_loadu_ps(mk, a->x + (long)(m0 + i) * a->ldx + k);      \
        UNROLL for (int j = 0; j < NB; j++) acc[i][j] = _mm512_fmadd_ps(xv, w[j], acc[i][j]);        \
      }                                                                                       \
    }                                                                                         \
    float r[MB][NB]; /* every lane sum first: the accumulators never need an address */      \
    UNROLL for (int i = 0; i < MB; i++)                                                              \
      UNROLL for (int j = 0; j < NB; j++) r[i][j] = _mm512_reduce_add_ps(acc[i][j]);                 \
    store_tile(a, &r[0][0], MB, n, m0);                                                       \
  }
AVX512_TILE(1)
AVX512_TILE(2)
AVX512_TILE(3)
AVX512_TILE(4)
AVX512_TILE(5)
AVX512_TILE(6)

static void block_avx512(const gemv_args *a, int n) {
  switch (a->M) { /* one tile: convert in registers; more: once into the block buffer */
    case 1: direct512_1(a, n); return;
    case 2: direct512_2(a, n); return;
    case 3: direct512_3(a, n); return;
    case 4: direct512_4(a, n); return;
    default: break;
  }
  float *wb = block_buffer((long)NB * ((a->K + 15) / 16 * 16));
  widen512(a, n, wb);
  int m0 = 0;
  for (; m0 + 6 <= a->M; m0 += 6) tile512_6(a, wb, n, m0);
  switch (a->M - m0) {
    case 5: tile512_5(a, wb, n, m0); break;
    case 4: tile512_4(a, wb, n, m0); break;
    case 3: tile512_3(a, wb, n, m0); break;
    case 2: tile512_2(a, wb, n, m0); break;
    case 1: tile512_1(a, wb, n, m0); break;
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

__attribute__((target("avx2,fma"))) static __m256 widen8(const int8_t *p, __m256 s) {
  return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p))),
                       s);
}

__attribute__((target("avx2,fma"))) static void row256(const gemv_args *a, int n) {
  const int KP = (a->K + a->G - 1) / a->G * a->G, ng = KP / a->G;
  const int8_t *p = a->q + (long)n * KP;
  const uint16_t *sb = a->s + (long)n * ng;
  __m256 acc[NB], sv[NB];
  UNROLL for (int j = 0; j < NB; j++) acc[j] = _mm256_setzero_ps();
  for (int k0 = 0; k0 < a->K; k0 += a->G) {
    GROUP_SCALES(_mm256_set1_ps, sv, sb, ng, k0 / a->G)
    const int k1 = k0 + a->G < a->K ? k0 + a->G : a->K;
    for (int k = k0; k < k1; k += 16, p += 64) {
      _mm_prefetch((const char *)(p + PF_L1), _MM_HINT_T0);
      _mm_prefetch((const char *)(p + PF_L2), _MM_HINT_T1);
      const __m256 xl = load_x8(a->x, k, a->K), xh = load_x8(a->x, k + 8, a->K);
      UNROLL for (int j = 0; j < NB; j++) {
        acc[j] = _mm256_fmadd_ps(xl, widen8(p + 16 * j, sv[j]), acc[j]);
        acc[j] = _mm256_fmadd_ps(xh, widen8(p + 16 * j + 8, sv[j]), acc[j]);
      }
    }
  }
  float r[NB];
  UNROLL for (int j = 0; j < NB; j++) r[j] = hsum256(acc[j]);
  store_tile(a, r, 1, n, 0);
}

__attribute__((target("avx2,fma"))) static void widen256(const gemv_args *a, int n, float *wb) {
  const int KP = (a->K + a->G - 1) / a->G * a->G, ng = KP / a->G;
  const int8_t *p = a->q + (long)n * KP;
  const uint16_t *sb = a->s + (long)n * ng;
  __m256 sv[NB];
  for (int k0 = 0; k0 < a->K; k0 += a->G) {
    GROUP_SCALES(_mm256_set1_ps, sv, sb, ng, k0 / a->G)
    const int k1 = k0 + a->G < a->K ? k0 + a->G : a->K;
    for (int k = k0; k < k1; k += 16, p += 64, wb += 64) {
      _mm_prefetch((const char *)(p + PF_L1), _MM_HINT_T0);
      _mm_prefetch((const char *)(p + PF_L2), _MM_HINT_T1);
      UNROLL for (int j = 0; j < NB; j++) {
        _mm256_store_ps(wb + 16 * j, widen8(p + 16 * j, sv[j]));
        _mm256_store_ps(wb + 16 * j + 8, widen8(p + 16 * j + 8, sv[j]));
      }
    }
  }
}

#define AVX2_TILE(MB)                                                                         \
  __attribute__((target("avx2,fma"))) static void tile256_##MB(const gemv_args *a,           \
                                                               const float *wb, int n,        \
                                                               int m0) {                      \
    __m256 acc[MB][NB];                                                                       \
    UNROLL for (int i = 0; i < MB; i++)                                                              \
      UNROLL for (int j = 0; j < NB; j++) acc[i][j] = _mm256_setzero_ps();                           \
    for (int k = 0; k < a->K; k += 16, wb += 64) {                                            \
      __m256 xl[MB], xh[MB];                                                                  \
      UNROLL for (int i = 0; i < MB; i++) {                                                          \
        const float *xr = a->x + (long)(m0 + i) * a->ldx;                                     \
        xl[i] = load_x8(xr, k, a->K);                                                         \
        xh[i] = load_x8(xr, k + 8, a->K);                                                     \
      }                                                                                       \
      UNROLL for (int j = 0; j < NB; j++) {                                                          \
        const __m256 wl = _mm256_load_ps(wb + 16 * j), wh = _mm256_load_ps(wb + 16 * j + 8);  \
        UNROLL for (int i = 0; i < MB; i++) {                                                        \
          acc[i][j] = _mm256_fmadd_ps(xl[i], wl, acc[i][j]);                                  \
          acc[i][j] = _mm256_fmadd_ps(xh[i], wh, acc[i][j]);                                  \
        }                                                                                     \
      }                                                                                       \
    }                                                                                         \
    float r[MB][NB]; /* every lane sum first: the accumulators never need an address */      \
    UNROLL for (int i = 0; i < MB; i++)                                                              \
      UNROLL for (int j = 0; j < NB; j++) r[i][j] = hsum256(acc[i][j]);                              \
    store_tile(a, &r[0][0], MB, n, m0);                                                       \
  }
AVX2_TILE(1)
AVX2_TILE(2)

static void block_avx2(const gemv_args *a, int n) {
  if (a->M == 1) {
    row256(a, n);
    return;
  }
  float *wb = block_buffer((long)NB * ((a->K + 15) / 16 * 16));
  widen256(a, n, wb);
  int m0 = 0;
  for (; m0 + 2 <= a->M; m0 += 2) tile256_2(a, wb, n, m0);
  if (m0 < a->M) tile256_1(a, wb, n, m0);
}

/* The same sums as the vector variants (up to their lane order), one value at a time. */
static void block_c(const gemv_args *a, int n) {
  const int KP = (a->K + a->G - 1) / a->G * a->G, ng = KP / a->G;
  const int nb = a->N - n < NB ? a->N - n : NB;
  for (int m = 0; m < a->M; m++)
    for (int j = 0; j < nb; j++) {
      float tot = 0.0f;
      for (int k = 0; k < a->K; k++) {
        const int8_t q = a->q[(long)n * KP + (long)(k / 16) * 64 + 16 * j + k % 16];
        const float w = (float)q * bf16_to_f32(a->s[(long)(n + j) * ng + k / a->G]);
        tot += a->x[(long)m * a->ldx + k] * w;
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
    if (isa == 2)
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
