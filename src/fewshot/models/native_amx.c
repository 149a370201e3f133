/* The int8 GEMV on the AMX-INT8 tiles (isa 4, groups of 64 inputs, from 9 rows; native_gemv.c's
 * fs_gemv calls it, built with the other native sources into one library): the same integer
 * group sums on the tiles.
 * A tile multiplies bytes, so each int16 xq is split as xq = 256 * hi + lo (hi signed, lo
 * unsigned): I_g = 256 * sum(q hi) + sum(q lo), `tdpbssd` and `tdpbusd` over one group (64
 * inputs = one tile step), both exact in int32, then native_gemv.c's float steps, unchanged: the
 * results are bitwise the other variants'. A block's packed pairs are regrouped into the tiles'
 * layout (four inputs of a row per 32-bit word) in a per-thread scratch while the previous block
 * is on the tiles, and x is laid out per tile and group (contiguous tile loads). GPT-Neo-125M's
 * block weights, 2 threads, ms per pass against the VNNI tiles: 8 rows 3.5 / 3.5, 16 rows 4.9 /
 * 6.6, 24 rows 7.6 / 9.7, 64 rows 17.1 / 27.0 (one tile step costs about as much as the int32
 * sums' trip through memory and their scaling: the per-group scales bound the gain). */
#define _GNU_SOURCE /* syscall() under -std=c11 */
#include <cpuid.h>
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "native_gemv.h"

#if !defined(FS_NO_AMX) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))

int fs_amx(void) {
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

/* One group on the tiles: the hi / lo sums in tiles SH / SL, the weights in tile W, x's bytes in
 * tiles 2 and 3 (the tile numbers must be constants: a macro, not a function) */
#define TILE_STEP(SH, SL, W, HI, LO)                                                          \
  do {                                                                                        \
    _tile_zero(SH);                                                                           \
    _tile_zero(SL);                                                                           \
    _tile_loadd(2, xg, 64);                                                                   \
    _tile_loadd(3, xg + AMX_TILE_BYTES, 64);                                                  \
    _tile_loadd(W, wg, 64);                                                                   \
    _tile_dpbssd(SH, 2, W);                                                                   \
    _tile_dpbusd(SL, 3, W);                                                                   \
    _tile_stored(SH, HI, 64);                                                                 \
    _tile_stored(SL, LO, 64);                                                                 \
  } while (0)

/* Blocks [b0, b1) of this thread. While a block's groups go through the tiles, the next
 * block's are regrouped (its weights stream in meanwhile) into the other half of `bq`.
 * `rows` is the tile configuration's current row count (changed for a last partial tile). */
__attribute__((target("avx512f,avx512bw,avx512vl,fma,amx-tile,amx-int8"))) void fs_amx_blocks(
    const gemv_args *a, const int8_t *xt, int b0, int b1, int8_t *bq) {
  const long bb = (long)NB * a->KP; /* bytes of a block */
  int rows = a->M < 16 ? a->M : 16;
  amx_config(rows);
  if (b0 < b1)
    for (int g = 0; g < a->ng; g++) regroup(a->q + b0 * bb, bq, g);
  int32_t hi[2][16 * 16] __attribute__((aligned(64))), lo[2][16 * 16] __attribute__((aligned(64)));
  for (int b = b0; b < b1; b++) {
    const int8_t *cur = bq + ((b - b0) & 1) * bb, *next_p = a->q + (long)(b + 1) * bb;
    int8_t *next = bq + ((b - b0 + 1) & 1) * bb;
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
          if (g & 1)
            TILE_STEP(5, 6, 7, hi[1], lo[1]);
          else
            TILE_STEP(0, 1, 4, hi[0], lo[0]);
        }
        if (g == 0) continue;
        const int gp = g - 1;
        const int32_t *h = hi[gp & 1], *o = lo[gp & 1];
        const __m512 sv = load_bf16_512(sb + (long)gp * NB);
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
__attribute__((target("avx512f,avx512bw,avx512vl"))) void fs_amx_split_row(const int16_t *xq,
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
int8_t *fs_amx_scratch(size_t bytes) {
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

#else /* a toolchain without AMX (or -DFS_NO_AMX): nothing runs on the tiles */
int fs_amx(void) { return 0; }
int8_t *fs_amx_scratch(size_t bytes) { return (void)bytes, NULL; }
void fs_amx_split_row(const int16_t *xq, int m, int ng, int8_t *xt) {
  (void)xq, (void)m, (void)ng, (void)xt;
}
void fs_amx_blocks(const gemv_args *a, const int8_t *xt, int b0, int b1, int8_t *bq) {
  (void)a, (void)xt, (void)b0, (void)b1, (void)bq;
}
#endif
