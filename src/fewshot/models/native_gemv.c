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
 * Every variant (AVX-512 with or without VNNI, AVX2, plain C) computes exactly this, so a row's
 * result depends neither on the instruction set nor on the other rows of the batch. A block's
 * weights are widened once per tile of rows of x (up to 8 with AVX-512, 2 with AVX2) and each
 * group costs a tile row one conversion and one multiply-add for 16 outputs, so at a few rows
 * the work is reading the weights (the loop prefetches 2 KiB ahead into L1 and 8 KiB into L2,
 * which lets one core stream at the memory's speed) and at more rows one dot product per 32
 * multiply-adds.
 *
 * fs_dequant_t: rows [n0, n1) of the weight as float32, *transposed* (out[k][n - n0]), for
 * batches past the GEMV's rows (prefill): torch's float32 GEMM multiplies them a slice at a
 * time.
 */
#define _GNU_SOURCE /* syscall() under -std=c11 */
#include <cpuid.h>
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define NB 16 /* output rows per packed block */
#define UNROLL _Pragma("GCC unroll 8")
#define PF_L1 2048 /* prefetch distances, bytes ahead */
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

/* y[m, n .. n + 15] = f[0 .. 15] + bias for the block's real rows (the last block may have
 * fewer than 16). */
static void store_row(const gemv_args *a, const float *f, int n, int m) {
  const int nb = a->N - n < NB ? a->N - n : NB;
  for (int j = 0; j < nb; j++)
    a->y[(long)m * a->ldy + n + j] = f[j] + (a->bias ? a->bias[n + j] : 0.0f);
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
      const __m512 sv = _mm512_castsi512_ps(_mm512_slli_epi32(                                \
          _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(sb + (long)g * NB))), 16)); \
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

/* AMX-INT8 (isa 4, groups of 64 inputs, enough rows): the same integer group sums on the tiles.
 * A tile multiplies bytes, so each int16 xq is split as xq = 256 * hi + lo (hi signed, lo
 * unsigned): I_g = 256 * sum(q hi) + sum(q lo), `tdpbssd` and `tdpbusd` over one group (64
 * inputs = one tile step), both exact in int32, then the float steps above, unchanged: the
 * results are bitwise the other variants'. A block's packed pairs are regrouped into the tiles'
 * layout (four inputs of a row per 32-bit word) in a per-thread scratch while the previous block
 * is on the tiles, and x is laid out per tile and group (contiguous tile loads). GPT-Neo-125M's
 * block weights, 2 threads, ms per pass against the VNNI tiles: 8 rows 3.5 / 3.5, 16 rows 4.9 /
 * 6.6, 24 rows 7.6 / 9.7, 64 rows 17.1 / 27.0 (one tile step costs about as much as the int32
 * sums' trip through memory and their scaling: the per-group scales bound the gain). */
#if !defined(FS_NO_AMX) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define HAVE_AMX 1
#define AMX_G 64
#define AMX_TILE_BYTES 1024 /* 16 rows x 64 bytes */
#define AMX_MIN_ROWS 9 /* fewer rows stay on the VNNI tiles (measured: 8 rows the same time, 10 faster) */

static int has_amx(void) {
  static int known = -1;
  if (known < 0) {
    unsigned a, b, c, d;
    known = 0;
    /* CPUID.7.0: EDX bit 24 AMX-TILE, bit 25 AMX-INT8; then Linux's per-process permission */
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 24 & 1) && (d >> 25 & 1))
      known = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
  }
  return known;
}

typedef struct {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} tile_config;

/* tiles: 0, 1 the hi / lo sums (rows x 16 int32) of even groups, 5, 6 of odd ones; 2, 3 the hi /
 * lo bytes of `rows` rows of x; 4, 7 a group of the block's weights (16 rows of four inputs x 16
 * outputs), even and odd */
__attribute__((target("amx-tile,amx-int8"))) static void amx_config(int rows) {
  tile_config c;
  memset(&c, 0, sizeof c);
  c.palette = 1;
  for (int t = 0; t < 8; t++) c.rows[t] = (uint8_t)(t == 4 || t == 7 ? 16 : rows), c.colsb[t] = 64;
  /* GCC 12 takes ldtilecfg's operand for an address only and drops the stores above */
  __asm__ __volatile__("" : : "r"(&c) : "memory");
  _tile_loadconfig(&c);
}

__attribute__((target("amx-tile,amx-int8"))) static void amx_end(void) { _tile_release(); }


/* Group g of a block's packed pairs into the tiles' layout: pairs (k, k + 1) of 16 outputs,
 * then (k + 2, k + 3), as 16-bit units, interleaved. */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static inline void regroup(const int8_t *p,
                                                                            int8_t *bq, int g) {
  const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24,
                                       8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  for (long r = (long)g * AMX_G / 4; r < (long)(g + 1) * AMX_G / 4; r++) {
    _mm_prefetch((const char *)(p + r * 64 + PF_L1), _MM_HINT_T0);
    _mm_prefetch((const char *)(p + r * 64 + PF_L2), _MM_HINT_T1);
    _mm512_storeu_si512(bq + r * 64, _mm512_permutexvar_epi16(idx, _mm512_loadu_si512(p + r * 64)));
  }
}

/* Blocks [b0, b1) of this thread. While a block's groups go through the tiles, the next
 * block's are regrouped (its weights stream in meanwhile) into the other half of `bq`.
 * `rows` is the tile configuration's current row count (changed for a last partial tile). */
__attribute__((target("avx512f,avx512bw,avx512vl,fma,amx-tile,amx-int8"))) static void blocks_amx(
    const gemv_args *a, const int8_t *xt, int b0, int b1, int8_t *bq) {
  const long bb = (long)NB * a->KP; /* bytes of a block */
  int rows = a->M < 16 ? a->M : 16;
  amx_config(rows);
  if (b0 < b1)
    for (int g = 0; g < a->ng; g++) regroup(a->q + b0 * bb, bq, g);
  int32_t hi[2][16 * 16] __attribute__((aligned(64))), lo[2][16 * 16] __attribute__((aligned(64)));
  for (int b = b0; b < b1; b++) {
    const int8_t *cur = bq + (b - b0 & 1) * bb, *next_p = a->q + (long)(b + 1) * bb;
    int8_t *next = bq + (b - b0 + 1 & 1) * bb;
    const int n = b * NB;
    const uint16_t *sb = a->s + (long)n * a->ng;
    for (int m0 = 0; m0 < a->M; m0 += 16) {
      const int mr = a->M - m0 < 16 ? a->M - m0 : 16;
      if (mr != rows) amx_config(rows = mr);
      __m512 f[16];
      UNROLL for (int i = 0; i < 16; i++) f[i] = _mm512_setzero_ps();
      /* group g's products go on the tiles (even and odd groups on their own tiles) before
       * group g - 1's sums are scaled, so the two overlap; f still adds the groups in order */
      for (int g = 0; g <= a->ng; g++) {
        if (g < a->ng) {
          if (m0 == 0 && b + 1 < b1) regroup(next_p, next, g);
          const int8_t *xg = xt + ((long)m0 / 16 * a->ng + g) * 2 * AMX_TILE_BYTES;
          const int8_t *wg = cur + (long)g * AMX_TILE_BYTES;
          if (g & 1) {
            _tile_zero(5);
            _tile_zero(6);
            _tile_loadd(2, xg, 64);
            _tile_loadd(3, xg + AMX_TILE_BYTES, 64);
            _tile_loadd(7, wg, 64);
            _tile_dpbssd(5, 2, 7);
            _tile_dpbusd(6, 3, 7);
            _tile_stored(5, hi[1], 64);
            _tile_stored(6, lo[1], 64);
          } else {
            _tile_zero(0);
            _tile_zero(1);
            _tile_loadd(2, xg, 64);
            _tile_loadd(3, xg + AMX_TILE_BYTES, 64);
            _tile_loadd(4, wg, 64);
            _tile_dpbssd(0, 2, 4);
            _tile_dpbusd(1, 3, 4);
            _tile_stored(0, hi[0], 64);
            _tile_stored(1, lo[0], 64);
          }
        }
        if (g == 0) continue;
        const int gp = g - 1;
        const int32_t *h = hi[gp & 1], *o = lo[gp & 1];
        const __m512 sv = _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(sb + (long)gp * NB))), 16));
        UNROLL for (int i = 0; i < 16; i++) {
          if (i < mr) {
            const __m512i acc = _mm512_add_epi32(
                _mm512_slli_epi32(_mm512_load_si512(h + 16 * i), 8), _mm512_load_si512(o + 16 * i));
            f[i] = _mm512_fmadd_ps(
                _mm512_cvtepi32_ps(acc),
                _mm512_mul_ps(sv, _mm512_set1_ps(a->xs[(long)(m0 + i) * a->ng + gp])), f[i]);
          }
        }
      }
      float r[NB];
      for (int i = 0; i < mr; i++) {
        _mm512_storeu_ps(r, f[i]);
        store_row(a, r, n, m0 + i);
      }
    }
  }
  amx_end();
}

/* Row m of xq [KP] -> the tiles' bytes of x: per tile of 16 rows and per group, the 16 rows'
 * hi bytes (64 each) then their lo bytes, xq = 256 * hi + lo. (A last tile's rows past M are
 * never read: its tiles are configured with the rows it has.) */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void split_row(const int16_t *xq,
                                                                        int m, int ng,
                                                                        int8_t *xt) {
  const __m512i low = _mm512_set1_epi16(0xFF);
  for (int g = 0; g < ng; g++) {
    int8_t *h = xt + ((long)m / 16 * ng + g) * 2 * AMX_TILE_BYTES + (m % 16) * 64;
    for (int k = 0; k < AMX_G; k += 32) {
      const __m512i v = _mm512_loadu_si512(xq + g * AMX_G + k);
      _mm256_storeu_si256((__m256i *)(h + k), _mm512_cvtepi16_epi8(_mm512_srai_epi16(v, 8)));
      _mm256_storeu_si256((__m256i *)(h + AMX_TILE_BYTES + k),
                          _mm512_cvtepi16_epi8(_mm512_and_si512(v, low)));
    }
  }
}

/* This thread's scratch of at least `bytes` (64-byte aligned, kept between calls: a fresh
 * allocation of this size would be new pages, faulted in on every call); NULL without memory. */
static int8_t *scratch(size_t bytes) {
  static __thread int8_t *buf;
  static __thread size_t cap;
  if (bytes > cap) {
    free(buf);
    cap = (bytes + 4095) / 4096 * 4096;
    buf = aligned_alloc(64, cap);
    if (!buf) cap = 0;
  }
  return buf;
}

#else
#define AMX_G 0
#define AMX_MIN_ROWS 0
static int has_amx(void) { return 0; }
#endif

int fs_amx(void) { return has_amx(); }

/* AVX2: the block's 16 rows as two 8-lane halves. */
#define TILE256(MB)                                                                           \
  __attribute__((target("avx2,fma"))) static void avx2_##MB(const gemv_args *a, int n, int m0) { \
    const int8_t *p = a->q + (long)n * a->KP;                                                 \
    const uint16_t *sb = a->s + (long)n * a->ng;                                              \
    const int32_t *xr[MB];                                                                    \
    UNROLL for (int i = 0; i < MB; i++) xr[i] = (const int32_t *)(a->xq + (long)(m0 + i) * a->KP); \
    __m256 f[MB][2];                                                                          \
    UNROLL for (int i = 0; i < MB; i++) f[i][0] = f[i][1] = _mm256_setzero_ps();              \
    for (int g = 0; g < a->ng; g++) {                                                         \
      __m256i acc[MB][2];                                                                     \
      UNROLL for (int i = 0; i < MB; i++) acc[i][0] = acc[i][1] = _mm256_setzero_si256();     \
      const int p0 = g * a->G / 2;                                                            \
      for (int t = 0; t < a->G / 2; t++, p += 32) {                                           \
        if (!(t & 1)) {                                                                       \
          _mm_prefetch((const char *)(p + PF_L1), _MM_HINT_T0);                               \
          _mm_prefetch((const char *)(p + PF_L2), _MM_HINT_T1);                               \
        }                                                                                     \
        const __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)p));        \
        const __m256i w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + 16))); \
        UNROLL for (int i = 0; i < MB; i++) {                                                 \
          const __m256i xv = _mm256_set1_epi32(xr[i][p0 + t]);                                \
          acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(w0, xv));                 \
          acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(w1, xv));                 \
        }                                                                                     \
      }                                                                                       \
      const __m256i s16 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(sb + (long)g * NB))); \
      const __m256i s16b =                                                                    \
          _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(sb + (long)g * NB + 8)));   \
      const __m256 sv0 = _mm256_castsi256_ps(_mm256_slli_epi32(s16, 16));                     \
      const __m256 sv1 = _mm256_castsi256_ps(_mm256_slli_epi32(s16b, 16));                    \
      UNROLL for (int i = 0; i < MB; i++) {                                                   \
        const __m256 xs = _mm256_set1_ps(a->xs[(long)(m0 + i) * a->ng + g]);                 \
        f[i][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[i][0]), _mm256_mul_ps(sv0, xs), f[i][0]); \
        f[i][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[i][1]), _mm256_mul_ps(sv1, xs), f[i][1]); \
      }                                                                                       \
    }                                                                                         \
    float r[NB];                                                                              \
    for (int i = 0; i < MB; i++) {                                                            \
      _mm256_storeu_ps(r, f[i][0]);                                                           \
      _mm256_storeu_ps(r + 8, f[i][1]);                                                       \
      store_row(a, r, n, m0 + i);                                                             \
    }                                                                                         \
  }
TILE256(1)
TILE256(2)

static void block_avx2(const gemv_args *a, int n) {
  int m0 = 0;
  for (; m0 + 2 <= a->M; m0 += 2) avx2_2(a, n, m0);
  if (m0 < a->M) avx2_1(a, n, m0);
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
        acc_f = fmaf((float)acc, bf16f(sb[(long)g * NB + j]) * a->xs[(long)m * a->ng + g], acc_f);
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
 * choice, see fs_isa). */
void fs_gemv(const float *x, long ldx, const int8_t *q, const uint16_t *s, const float *bias,
             float *y, long ldy, int M, int N, int K, int G, int isa, int threads) {
  const int KP = (K + G - 1) / G * G, ng = KP / G, blocks = (N + NB - 1) / NB;
  if (isa == 4 && !has_amx()) isa = 3;
  const int amx = isa == 4 && G == AMX_G && M >= AMX_MIN_ROWS;
  if (isa == 4) isa = 3;
  if (isa == 3 && !has_vnni()) isa = 2;
  int16_t *xq = malloc(sizeof(int16_t) * (size_t)M * KP + 64);
  float *xs = malloc(sizeof(float) * (size_t)M * ng + 64);
  /* AMX: x's tile bytes, then the calling thread's regrouped blocks (other threads: their own) */
  const long xt_bytes = 2L * (M + 15) / 16 * 16 * KP;
#ifdef HAVE_AMX
  int8_t *xt = amx ? scratch((size_t)(xt_bytes + 2L * NB * KP)) : NULL;
#else
  int8_t *xt = NULL;
  (void)amx;
#endif
  if (!xq || !xs) { /* out of memory: NaN results rather than a crash */
    for (int m = 0; m < M; m++)
      for (int n = 0; n < N; n++) y[(long)m * ldy + n] = NAN;
    free(xq);
    free(xs);
    return;
  }
  const gemv_args a = {xq, xs, q, s, bias, y, ldy, M, N, KP, G, ng};
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
      else
        quantize_c(x + (long)m * ldx, K, KP, G, xq + (long)m * KP, xs + (long)m * ng);
#ifdef HAVE_AMX
      if (xt) split_row(xq + (long)m * KP, m, ng, xt);
#endif
    }
#ifdef HAVE_AMX
    if (xt) {
      const int t = omp_get_thread_num(), T = omp_get_num_threads();
      int8_t *bq = t == 0 ? xt + xt_bytes : scratch((size_t)2 * NB * KP);
      const int b0 = (int)((long)blocks * t / T), b1 = (int)((long)blocks * (t + 1) / T);
      if (bq) blocks_amx(&a, xt, b0, b1, bq);
      tiles_done = bq != NULL;
    }
#endif
    if (!xt) {
#pragma omp for schedule(static)
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

/* One block's rows [n, n + nb) into out[k][n - n0] (row stride ld), k < K. */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void dequant_t512(
    const int8_t *blk, const uint16_t *sb, int ng, int G, int K, float *out, long ld, int nb) {
  const __mmask16 mk = (__mmask16)((1u << nb) - 1);
  for (int g = 0; g < ng; g++) {
    const __m512 sv = _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(sb + (long)g * NB))), 16));
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
      const __m256 sv = _mm256_castsi256_ps(_mm256_slli_epi32(
          _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(sb + (long)g * NB + 8 * h))),
          16));
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
                                bf16f(sb[(long)g * NB + j]);
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
