/* Attention for a run of queries: the consecutive positions of one sequence's prefill chunk
 * (a few-shot query after its cached prefix), for native_attention.c's fs_decode_attention on
 * AVX-512 (`fs_attend_run`, 16 lanes) and AVX2 (`fs_attend_run_256`, 8 lanes); built with the
 * other native sources into one library.
 *
 * Attending each query alone reduces every q . k across the vector (a horizontal sum per key
 * and query). Here L queries of a run (rows x their G query heads) are the L lanes: the run's
 * queries are transposed once to [D][L], and each pass over L keys (widened once to float32)
 * costs D multiply-adds per key for all L queries' scores; the softmax is taken online (running
 * maximum and sum per lane, rescaled when a larger score arrives) and the values are summed per
 * query. Scores, softmax and sums in float32, as the single-query kernel. Each query sees exactly
 * its own positions [lo, hi), so its result does not depend on the other queries of its run or
 * batch; it is not bitwise the single-query kernel's (the same sums in another order), nor the
 * other width's.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "native_math.h"

#define L16 16 /* queries per item (vector lanes) and keys per pass */

static __thread float *tls_buf;
static __thread long tls_buf_len;

static float *buffer(long n) {
  if (n > tls_buf_len) {
    free(tls_buf);
    tls_buf = aligned_alloc(64, (size_t)(n + 15) / 16 * 64);
    tls_buf_len = tls_buf ? n : 0;
  }
  return tls_buf;
}

/* An item's lanes: query i of the run is row r0 + (i0 + i) / G, query head h * G + (i0 + i) % G.
 * Returns its scratch from the thread's buffer: qt [D][L] (the queries, padding lanes zero),
 * then kf / vf [L][D], o [L][D] (zeroed) and e [L][L]; fills each lane's range qlo / qhi
 * (padding lanes see no key) and the run's first and last position, and zeroes the lanes'
 * outputs. NULL when out of memory (the outputs then stay zero). */
#define OUT_ROW(i) (out + ((r0 + (i0 + (i)) / G) * Hq + h * G + (i0 + (i)) % G) * D)
static float *item(const float *q, const int32_t *lo, const int32_t *hi, float *out, long r0,
                   int i0, int nq, int L, int G, int h, int Hq, int D, int32_t *qlo,
                   int32_t *qhi, long *pmin, long *pmax) {
  float *qt = buffer((long)D * L * 4 + L * L);
  *pmin = -1;
  *pmax = 0;
  for (int i = 0; i < L; i++) {
    const long r = r0 + (i0 + i) / G;
    qlo[i] = i < nq ? lo[r] : 0;
    qhi[i] = i < nq ? hi[r] : 0;
    if (i < nq) {
      *pmin = *pmin < 0 || qlo[i] < *pmin ? qlo[i] : *pmin;
      *pmax = qhi[i] > *pmax ? qhi[i] : *pmax;
      memset(OUT_ROW(i), 0, sizeof(float) * D);
    }
    const float *qi = q + (r * Hq + h * G + (i0 + i) % G) * D;
    for (int d = 0; qt != NULL && d < D; d++) qt[d * L + i] = i < nq ? qi[d] : 0.0f;
  }
  if (qt != NULL) memset(qt + 3L * D * L, 0, sizeof(float) * D * L);
  return qt;
}

/* At the first pass of a block, the next block's keys and values (if the item reads it) into
 * the cache while this block is read. */
static inline void next_block(const char *kh, const char *vh, const int64_t *table, long p0,
                              long pmax, int BS, size_t row) {
  if (p0 % BS || (p0 / BS + 1) * BS >= pmax) return;
  const size_t at = (size_t)table[p0 / BS + 1] * BS * row;
  prefetch_rows(kh + at, BS * row);
  prefetch_rows(vh + at, BS * row);
}

/* Each real lane's output row: its summed values o [L][D] over its sum of weights l. */
static void finish(const float *o, const float *l, float *out, long r0, int i0, int nq, int G,
                   int h, int Hq, int D) {
  for (int i = 0; i < nq; i++) {
    const float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
    float *dst = OUT_ROW(i);
    for (int d = 0; d < D; d++) dst[d] = o[i * D + d] * inv;
  }
}

#define TGT __attribute__((target("avx512f,avx512bw,fma")))
#define UNROLL4 _Pragma("GCC unroll 4")
#define UNROLL8 _Pragma("GCC unroll 8")

/* The pieces of an item, for AVX-512 (SUF 512: W = 16 lanes) and AVX2 (256: W = 8):
 *   widen_row: `n` values of a key or value row (float32 or bf16) as float32 into dst (n a
 *     multiple of W);
 *   scores: s[j] = scale * (the W queries . key j), j < n: the sum over d in order, one FMA
 *     chain per key; eight keys at a time, so eight chains are in flight (an FMA's latency is
 *     four cycles and two issue per cycle: fewer chains wait on it) and each query column is
 *     loaded once for the eight; then four, then one;
 *   values: output rows o_i [D] <- o_i * corr_i + sum over keys j < n of e[j * W + i] * v_j
 *     for the queries i < nq, each W-value slice summed over j in order; two queries'
 *     4W-value pieces at a time (eight chains, each value slice loaded once for the two). */
/* scores' keys j .. j + NK - 1 at a time while NK remain: NK chains, one per key */
#define SCORE_KEYS(VT, W, LOAD, SET1, FMA, MUL, ZERO, NK)                                     \
  for (; j + (NK) <= n; j += (NK)) {                                                          \
    const float *k0 = kf + j * D;                                                             \
    VT a[NK];                                                                                 \
    UNROLL8 for (int c = 0; c < (NK); c++) a[c] = ZERO();                                     \
    for (int d = 0; d < D; d++) {                                                             \
      const VT qd = LOAD(qt + d * W);                                                         \
      UNROLL8 for (int c = 0; c < (NK); c++) a[c] = FMA(qd, SET1(k0[c * D + d]), a[c]);      \
    }                                                                                         \
    UNROLL8 for (int c = 0; c < (NK); c++) s[j + c] = MUL(a[c], sc);                          \
  }

#define RUN_PIECES(SUF, TGT, VT, W, LOADB, LOADU, LOAD, STOREU, STORE, SET1, FMA, MUL, ZERO)     \
  TGT static inline void widen_row_##SUF(const char *r, int bf16, int n, float *dst) {        \
    for (int d = 0; d < n; d += W)                                                            \
      STOREU(dst + d, bf16 ? LOADB((const uint16_t *)r + d) : LOADU((const float *)r + d));   \
  }                                                                                           \
  TGT static inline void scores_##SUF(const float *qt, const float *kf, int n, int D,         \
                                      float scale, VT *s) {                                   \
    const VT sc = SET1(scale);                                                                \
    int j = 0;                                                                                \
    SCORE_KEYS(VT, W, LOAD, SET1, FMA, MUL, ZERO, 8)                                          \
    SCORE_KEYS(VT, W, LOAD, SET1, FMA, MUL, ZERO, 4)                                          \
    for (; j < n; j++) {                                                                      \
      VT acc = ZERO();                                                                        \
      for (int d = 0; d < D; d++) acc = FMA(LOAD(qt + d * W), SET1(kf[j * D + d]), acc);      \
      s[j] = MUL(acc, sc);                                                                    \
    }                                                                                         \
  }                                                                                           \
  TGT static inline void values_##SUF(float *o, const float *corr, const float *e,            \
                                      const float *vf, int n, int D, int nq) {                \
    int i = 0;                                                                                \
    if (D % (4 * W) == 0)                                                                     \
      for (; i + 2 <= nq; i += 2)                                                             \
        for (int d = 0; d < D; d += 4 * W) {                                                  \
          float *o0 = o + i * D + d, *o1 = o0 + D;                                            \
          VT a[4], b[4];                                                                      \
          UNROLL4 for (int c = 0; c < 4; c++) {                                               \
            a[c] = MUL(LOAD(o0 + W * c), SET1(corr[i]));                                      \
            b[c] = MUL(LOAD(o1 + W * c), SET1(corr[i + 1]));                                  \
          }                                                                                   \
          for (int j = 0; j < n; j++) {                                                       \
            const VT e0 = SET1(e[j * W + i]), e1 = SET1(e[j * W + i + 1]);                    \
            const float *v = vf + j * D + d;                                                  \
            UNROLL4 for (int c = 0; c < 4; c++) {                                             \
              const VT vc = LOADU(v + W * c);                                                 \
              a[c] = FMA(e0, vc, a[c]);                                                       \
              b[c] = FMA(e1, vc, b[c]);                                                       \
            }                                                                                 \
          }                                                                                   \
          UNROLL4 for (int c = 0; c < 4; c++) {                                               \
            STORE(o0 + W * c, a[c]);                                                          \
            STORE(o1 + W * c, b[c]);                                                          \
          }                                                                                   \
        }                                                                                     \
    for (; i < nq; i++)                                                                       \
      for (int d = 0; d < D; d += W) {                                                        \
        VT acc = MUL(LOAD(o + i * D + d), SET1(corr[i]));                                     \
        for (int j = 0; j < n; j++) acc = FMA(SET1(e[j * W + i]), LOADU(vf + j * D + d), acc); \
        STORE(o + i * D + d, acc);                                                            \
      }                                                                                       \
  }

#define TGT2 __attribute__((target("avx2,fma")))
RUN_PIECES(512, TGT, __m512, 16, load_bf16_512, _mm512_loadu_ps, _mm512_load_ps,
           _mm512_storeu_ps, _mm512_store_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_mul_ps,
           _mm512_setzero_ps)
RUN_PIECES(256, TGT2, __m256, 8, load_bf16_256, _mm256_loadu_ps, _mm256_load_ps,
           _mm256_storeu_ps, _mm256_store_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_mul_ps,
           _mm256_setzero_ps)

/* KV head h, queries qb * 16 .. qb * 16 + 15 of the run of rows r0 .. r0 + nrows - 1 (one
 * block table, `table`); query i of the run is row r0 + i / G, query head h * G + i % G. q and
 * out [rows][Hq][D], lo / hi per row of the batch; D a multiple of 16. Returns 0, or -1 when out
 * of memory (the outputs are then zero). */
TGT int fs_attend_run(const float *q, const void *k, const void *v, const int64_t *table,
                      const int32_t *lo, const int32_t *hi, float *out, long r0, int nrows, int qb,
                      int h, int Hq, int Hkv, int D, int BS, long nblk, float scale, float cap,
                      int bf16) {
  const int G = Hq / Hkv, i0 = qb * L16;
  const int nq = nrows * G - i0 < L16 ? nrows * G - i0 : L16; /* real lanes */
  const size_t esize = bf16 ? 2 : 4;
  const char *kh = (const char *)k + (size_t)h * nblk * BS * D * esize;
  const char *vh = (const char *)v + (size_t)h * nblk * BS * D * esize;
  int32_t qlo[L16], qhi[L16];
  long pmin, pmax;
  float *qt = item(q, lo, hi, out, r0, i0, nq, L16, G, h, Hq, D, qlo, qhi, &pmin, &pmax);
  if (qt == NULL) return -1;
  float *kf = qt + D * L16, *vf = kf + D * L16, *o = vf + D * L16, *e = o + D * L16;
  const __m512i lov = _mm512_loadu_si512(qlo), hiv = _mm512_loadu_si512(qhi);
  __m512 m = _mm512_set1_ps(-INFINITY), l = _mm512_setzero_ps();
  /* passes at multiples of 16 positions, whatever the other lanes: a pass outside a lane's
   * range leaves it exactly as it was, so a query's result depends on its range alone */
  for (long p0 = pmin < 0 ? 0 : pmin / L16 * L16; p0 < pmax; p0 += L16) {
    const int n = pmax - p0 < L16 ? (int)(pmax - p0) : L16;
    next_block(kh, vh, table, p0, pmax, BS, (size_t)D * esize);
    for (int j = 0; j < n; j++) {
      const long p = p0 + j;
      const size_t at = ((size_t)table[p / BS] * BS + p % BS) * D * esize;
      widen_row_512(kh + at, bf16, D, kf + j * D);
      widen_row_512(vh + at, bf16, D, vf + j * D);
    }
    __m512 s[L16];
    __mmask16 valid[L16];
    __m512 mx = m;
    scores_512(qt, kf, n, D, scale, s);
    for (int j = 0; j < n; j++) {
      if (cap > 0.0f) {
        float t[L16];
        _mm512_storeu_ps(t, s[j]);
        for (int i = 0; i < L16; i++) t[i] = cap * tanhf(t[i] / cap);
        s[j] = _mm512_loadu_ps(t);
      }
      const __m512i pos = _mm512_set1_epi32((int)(p0 + j));
      valid[j] = _mm512_cmpge_epi32_mask(pos, lov) & _mm512_cmplt_epi32_mask(pos, hiv);
      mx = _mm512_mask_max_ps(mx, valid[j], mx, s[j]);
    }
    /* lanes with no key yet keep m = -inf: their correction is 0 (nothing to rescale) */
    const __mmask16 seen = _mm512_cmp_ps_mask(m, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ);
    const __m512 corr = _mm512_maskz_mov_ps(seen, exp512(_mm512_sub_ps(m, mx)));
    __m512 sum = _mm512_setzero_ps();
    for (int j = 0; j < n; j++) {
      const __m512 ej = _mm512_maskz_mov_ps(valid[j], exp512(_mm512_sub_ps(s[j], mx)));
      sum = _mm512_add_ps(sum, ej);
      _mm512_store_ps(e + j * L16, ej);
    }
    l = _mm512_fmadd_ps(l, corr, sum);
    m = mx;
    float cf[L16];
    _mm512_storeu_ps(cf, corr);
    values_512(o, cf, e, vf, n, D, nq);
  }
  float lf[L16];
  _mm512_storeu_ps(lf, l);
  finish(o, lf, out, r0, i0, nq, G, h, Hq, D);
  return 0;
}

#define L8 8

/* fs_attend_run on AVX2: queries qb * 8 .. qb * 8 + 7 of the run, 8 keys per pass; D a multiple
 * of 8. Lane masks are vectors (all ones where a key is in the lane's range). A float32 pool is
 * read in place (a pass's 8 positions are consecutive rows of one block when the block size is
 * a multiple of 8); a bfloat16 one is widened into kf / vf first. */
TGT2 int fs_attend_run_256(const float *q, const void *k, const void *v, const int64_t *table,
                           const int32_t *lo, const int32_t *hi, float *out, long r0, int nrows,
                           int qb, int h, int Hq, int Hkv, int D, int BS, long nblk, float scale,
                           float cap, int bf16) {
  const int G = Hq / Hkv, i0 = qb * L8;
  const int nq = nrows * G - i0 < L8 ? nrows * G - i0 : L8; /* real lanes */
  const size_t esize = bf16 ? 2 : 4;
  const char *kh = (const char *)k + (size_t)h * nblk * BS * D * esize;
  const char *vh = (const char *)v + (size_t)h * nblk * BS * D * esize;
  int32_t qlo[L8], qhi[L8];
  long pmin, pmax;
  float *qt = item(q, lo, hi, out, r0, i0, nq, L8, G, h, Hq, D, qlo, qhi, &pmin, &pmax);
  if (qt == NULL) return -1;
  float *kf = qt + D * L8, *vf = kf + D * L8, *o = vf + D * L8, *e = o + D * L8;
  /* key p is in lane i's range when p > lo_i - 1 and hi_i > p */
  const __m256i lom1 = _mm256_sub_epi32(_mm256_loadu_si256((const __m256i *)qlo), _mm256_set1_epi32(1));
  const __m256i hiv = _mm256_loadu_si256((const __m256i *)qhi);
  const __m256 neg_inf = _mm256_set1_ps(-INFINITY);
  __m256 m = neg_inf, l = _mm256_setzero_ps();
  /* passes at multiples of 8 positions (see fs_attend_run) */
  for (long p0 = pmin < 0 ? 0 : pmin / L8 * L8; p0 < pmax; p0 += L8) {
    const int n = pmax - p0 < L8 ? (int)(pmax - p0) : L8;
    next_block(kh, vh, table, p0, pmax, BS, (size_t)D * esize);
    const float *kp = kf, *vp = vf;
    if (!bf16 && BS % L8 == 0) { /* the pass's keys are consecutive rows of one block */
      const size_t at = ((size_t)table[p0 / BS] * BS + p0 % BS) * D * esize;
      kp = (const float *)(kh + at);
      vp = (const float *)(vh + at);
    } else
      for (int j = 0; j < n; j++) {
        const long p = p0 + j;
        const size_t at = ((size_t)table[p / BS] * BS + p % BS) * D * esize;
        widen_row_256(kh + at, bf16, D, kf + j * D);
        widen_row_256(vh + at, bf16, D, vf + j * D);
      }
    __m256 s[L8], valid[L8];
    __m256 mx = m;
    scores_256(qt, kp, n, D, scale, s);
    for (int j = 0; j < n; j++) {
      if (cap > 0.0f) {
        float t[L8];
        _mm256_storeu_ps(t, s[j]);
        for (int i = 0; i < L8; i++) t[i] = cap * tanhf(t[i] / cap);
        s[j] = _mm256_loadu_ps(t);
      }
      const __m256i pos = _mm256_set1_epi32((int)(p0 + j));
      valid[j] = _mm256_castsi256_ps(
          _mm256_and_si256(_mm256_cmpgt_epi32(pos, lom1), _mm256_cmpgt_epi32(hiv, pos)));
      mx = _mm256_blendv_ps(mx, _mm256_max_ps(mx, s[j]), valid[j]);
    }
    /* lanes with no key yet keep m = -inf: their correction is 0 (nothing to rescale) */
    const __m256 seen = _mm256_cmp_ps(m, neg_inf, _CMP_NEQ_OQ);
    const __m256 corr = _mm256_and_ps(seen, fs_exp256(_mm256_sub_ps(m, mx)));
    __m256 sum = _mm256_setzero_ps();
    for (int j = 0; j < n; j++) {
      const __m256 ej = _mm256_and_ps(valid[j], fs_exp256(_mm256_sub_ps(s[j], mx)));
      sum = _mm256_add_ps(sum, ej);
      _mm256_store_ps(e + j * L8, ej);
    }
    l = _mm256_fmadd_ps(l, corr, sum);
    m = mx;
    float cf[L8];
    _mm256_storeu_ps(cf, corr);
    values_256(o, cf, e, vp, n, D, nq);
  }
  float lf[L8];
  _mm256_storeu_ps(lf, l);
  finish(o, lf, out, r0, i0, nq, G, h, Hq, D);
  return 0;
}
#undef OUT_ROW
