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

/* The lanes of one item: query i of the run is row r0 + (i0 + i) / G, query head
 * h * G + (i0 + i) % G. Fills qt [D][L] (padding lanes zero), each lane's range qlo/qhi
 * (padding lanes see no key) and the run's first and last position; zeroes the outputs. */
#define OUT_ROW(i) (out + ((r0 + (i0 + (i)) / G) * Hq + h * G + (i0 + (i)) % G) * D)
static void lanes(const float *q, const int32_t *lo, const int32_t *hi, float *out, long r0,
                  int i0, int nq, int L, int G, int h, int Hq, int D, float *qt, int32_t *qlo,
                  int32_t *qhi, long *pmin, long *pmax) {
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
    for (int d = 0; d < D; d++) qt[d * L + i] = i < nq ? qi[d] : 0.0f;
  }
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

/* `n` values of a key or value row (float32 or bf16) as float32 into dst (n a multiple of 16) */
TGT static inline void widen_row(const char *r, int bf16, int n, float *dst) {
  for (int d = 0; d < n; d += 16) {
    const __m512 v = bf16 ? load_bf16_512((const uint16_t *)r + d) : _mm512_loadu_ps((const float *)r + d);
    _mm512_storeu_ps(dst + d, v);
  }
}

/* s[j] = scale * (the 16 queries . key j), j < n: the sum over d in order, one FMA chain per
 * key; eight keys at a time, so eight chains are in flight (an FMA's latency is four cycles and
 * two issue per cycle: fewer chains wait on it) and each query column is loaded once for the
 * eight; then four, then one. */
TGT static inline void scores(const float *qt, const float *kf, int n, int D, float scale,
                              __m512 *s) {
  const __m512 sc = _mm512_set1_ps(scale);
  int j = 0;
  for (; j + 8 <= n; j += 8) {
    const float *k0 = kf + j * D;
    __m512 a[8];
    UNROLL8 for (int c = 0; c < 8; c++) a[c] = _mm512_setzero_ps();
    for (int d = 0; d < D; d++) {
      const __m512 qd = _mm512_load_ps(qt + d * L16);
      UNROLL8 for (int c = 0; c < 8; c++)
        a[c] = _mm512_fmadd_ps(qd, _mm512_set1_ps(k0[c * D + d]), a[c]);
    }
    UNROLL8 for (int c = 0; c < 8; c++) s[j + c] = _mm512_mul_ps(a[c], sc);
  }
  for (; j + 4 <= n; j += 4) {
    const float *k0 = kf + j * D, *k1 = k0 + D, *k2 = k1 + D, *k3 = k2 + D;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int d = 0; d < D; d++) {
      const __m512 qd = _mm512_load_ps(qt + d * L16);
      a0 = _mm512_fmadd_ps(qd, _mm512_set1_ps(k0[d]), a0);
      a1 = _mm512_fmadd_ps(qd, _mm512_set1_ps(k1[d]), a1);
      a2 = _mm512_fmadd_ps(qd, _mm512_set1_ps(k2[d]), a2);
      a3 = _mm512_fmadd_ps(qd, _mm512_set1_ps(k3[d]), a3);
    }
    s[j] = _mm512_mul_ps(a0, sc);
    s[j + 1] = _mm512_mul_ps(a1, sc);
    s[j + 2] = _mm512_mul_ps(a2, sc);
    s[j + 3] = _mm512_mul_ps(a3, sc);
  }
  for (; j < n; j++) {
    __m512 acc = _mm512_setzero_ps();
    for (int d = 0; d < D; d++)
      acc = _mm512_fmadd_ps(_mm512_load_ps(qt + d * L16), _mm512_set1_ps(kf[j * D + d]), acc);
    s[j] = _mm512_mul_ps(acc, sc);
  }
}

/* Output rows o_i [D] <- o_i * corr_i + sum over keys j < n of e[j * 16 + i] * v_j for the
 * queries i < nq, each 16-value slice summed over j in order. Two queries' 64-value pieces at a
 * time: eight chains in flight, each value slice loaded once for the two. */
TGT static inline void values(float *o, const float *corr, const float *e, const float *vf,
                              int n, int D, int nq) {
  int i = 0;
  if (D % 64 == 0)
    for (; i + 2 <= nq; i += 2)
      for (int d = 0; d < D; d += 64) {
        float *o0 = o + i * D + d, *o1 = o0 + D;
        __m512 a[4], b[4];
        UNROLL4 for (int c = 0; c < 4; c++) {
          a[c] = _mm512_mul_ps(_mm512_load_ps(o0 + 16 * c), _mm512_set1_ps(corr[i]));
          b[c] = _mm512_mul_ps(_mm512_load_ps(o1 + 16 * c), _mm512_set1_ps(corr[i + 1]));
        }
        for (int j = 0; j < n; j++) {
          const __m512 e0 = _mm512_set1_ps(e[j * L16 + i]);
          const __m512 e1 = _mm512_set1_ps(e[j * L16 + i + 1]);
          const float *v = vf + j * D + d;
          UNROLL4 for (int c = 0; c < 4; c++) {
            const __m512 vc = _mm512_loadu_ps(v + 16 * c);
            a[c] = _mm512_fmadd_ps(e0, vc, a[c]);
            b[c] = _mm512_fmadd_ps(e1, vc, b[c]);
          }
        }
        UNROLL4 for (int c = 0; c < 4; c++) {
          _mm512_store_ps(o0 + 16 * c, a[c]);
          _mm512_store_ps(o1 + 16 * c, b[c]);
        }
      }
  for (; i < nq; i++)
    for (int d = 0; d < D; d += 16) {
      __m512 acc = _mm512_mul_ps(_mm512_load_ps(o + i * D + d), _mm512_set1_ps(corr[i]));
      for (int j = 0; j < n; j++)
        acc = _mm512_fmadd_ps(_mm512_set1_ps(e[j * L16 + i]), _mm512_loadu_ps(vf + j * D + d), acc);
      _mm512_store_ps(o + i * D + d, acc);
    }
}

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
  /* qt [D][16], kf / vf [16][D], o [16][D], e [16][16] */
  float *buf = buffer((long)D * L16 * 4 + L16 * L16);
  if (buf == NULL) {
    for (int i = 0; i < nq; i++) memset(OUT_ROW(i), 0, sizeof(float) * D);
    return -1;
  }
  float *qt = buf, *kf = qt + D * L16, *vf = kf + D * L16, *o = vf + D * L16, *e = o + D * L16;
  int32_t qlo[L16], qhi[L16];
  long pmin, pmax;
  lanes(q, lo, hi, out, r0, i0, nq, L16, G, h, Hq, D, qt, qlo, qhi, &pmin, &pmax);
  memset(o, 0, sizeof(float) * D * L16);
  const __m512i lov = _mm512_loadu_si512(qlo), hiv = _mm512_loadu_si512(qhi);
  __m512 m = _mm512_set1_ps(-INFINITY), l = _mm512_setzero_ps();
  /* passes at multiples of 16 positions, whatever the other lanes: a pass outside a lane's
   * range leaves it exactly as it was, so a query's result depends on its range alone */
  for (long p0 = pmin < 0 ? 0 : pmin / L16 * L16; p0 < pmax; p0 += L16) {
    const int n = pmax - p0 < L16 ? (int)(pmax - p0) : L16;
    for (int j = 0; j < n; j++) {
      const long p = p0 + j;
      const size_t at = ((size_t)table[p / BS] * BS + p % BS) * D * esize;
      widen_row(kh + at, bf16, D, kf + j * D);
      widen_row(vh + at, bf16, D, vf + j * D);
    }
    __m512 s[L16];
    __mmask16 valid[L16];
    __m512 mx = m;
    scores(qt, kf, n, D, scale, s);
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
    values(o, cf, e, vf, n, D, nq);
  }
  float lf[L16];
  _mm512_storeu_ps(lf, l);
  finish(o, lf, out, r0, i0, nq, G, h, Hq, D);
  return 0;
}

/* AVX2: the same, 8 queries per item and 8 keys per pass; lane masks are vectors (all ones
 * where a key is in the lane's range). */
#define L8 8
#define TGT2 __attribute__((target("avx2,fma")))

TGT2 static inline void widen_row_256(const char *r, int bf16, int n, float *dst) {
  for (int d = 0; d < n; d += 8) {
    const __m256 v = bf16 ? load_bf16_256((const uint16_t *)r + d) : _mm256_loadu_ps((const float *)r + d);
    _mm256_storeu_ps(dst + d, v);
  }
}

/* s[j] = scale * (the 8 queries . key j), j < n: scores() with 8 lanes (eight chains of FMAs,
 * then four, then one; each key value broadcast from memory) */
TGT2 static inline void scores_256(const float *qt, const float *kf, int n, int D, float scale,
                                   __m256 *s) {
  const __m256 sc = _mm256_set1_ps(scale);
  int j = 0;
  for (; j + 8 <= n; j += 8) {
    const float *k0 = kf + j * D;
    __m256 a[8];
    UNROLL8 for (int c = 0; c < 8; c++) a[c] = _mm256_setzero_ps();
    for (int d = 0; d < D; d++) {
      const __m256 qd = _mm256_load_ps(qt + d * L8);
      UNROLL8 for (int c = 0; c < 8; c++)
        a[c] = _mm256_fmadd_ps(qd, _mm256_broadcast_ss(k0 + c * D + d), a[c]);
    }
    UNROLL8 for (int c = 0; c < 8; c++) s[j + c] = _mm256_mul_ps(a[c], sc);
  }
  for (; j + 4 <= n; j += 4) {
    const float *k0 = kf + j * D;
    __m256 a[4];
    UNROLL4 for (int c = 0; c < 4; c++) a[c] = _mm256_setzero_ps();
    for (int d = 0; d < D; d++) {
      const __m256 qd = _mm256_load_ps(qt + d * L8);
      UNROLL4 for (int c = 0; c < 4; c++)
        a[c] = _mm256_fmadd_ps(qd, _mm256_broadcast_ss(k0 + c * D + d), a[c]);
    }
    UNROLL4 for (int c = 0; c < 4; c++) s[j + c] = _mm256_mul_ps(a[c], sc);
  }
  for (; j < n; j++) {
    __m256 acc = _mm256_setzero_ps();
    for (int d = 0; d < D; d++)
      acc = _mm256_fmadd_ps(_mm256_load_ps(qt + d * L8), _mm256_broadcast_ss(kf + j * D + d), acc);
    s[j] = _mm256_mul_ps(acc, sc);
  }
}

/* values() with 8-value slices: two queries' 32-value pieces at a time (eight chains) */
TGT2 static inline void values_256(float *o, const float *corr, const float *e, const float *vf,
                                   int n, int D, int nq) {
  int i = 0;
  if (D % 32 == 0)
    for (; i + 2 <= nq; i += 2)
      for (int d = 0; d < D; d += 32) {
        float *o0 = o + i * D + d, *o1 = o0 + D;
        __m256 a[4], b[4];
        UNROLL4 for (int c = 0; c < 4; c++) {
          a[c] = _mm256_mul_ps(_mm256_load_ps(o0 + 8 * c), _mm256_set1_ps(corr[i]));
          b[c] = _mm256_mul_ps(_mm256_load_ps(o1 + 8 * c), _mm256_set1_ps(corr[i + 1]));
        }
        for (int j = 0; j < n; j++) {
          const __m256 e0 = _mm256_broadcast_ss(e + j * L8 + i);
          const __m256 e1 = _mm256_broadcast_ss(e + j * L8 + i + 1);
          const float *v = vf + j * D + d;
          UNROLL4 for (int c = 0; c < 4; c++) {
            const __m256 vc = _mm256_loadu_ps(v + 8 * c);
            a[c] = _mm256_fmadd_ps(e0, vc, a[c]);
            b[c] = _mm256_fmadd_ps(e1, vc, b[c]);
          }
        }
        UNROLL4 for (int c = 0; c < 4; c++) {
          _mm256_store_ps(o0 + 8 * c, a[c]);
          _mm256_store_ps(o1 + 8 * c, b[c]);
        }
      }
  for (; i < nq; i++)
    for (int d = 0; d < D; d += 8) {
      __m256 acc = _mm256_mul_ps(_mm256_load_ps(o + i * D + d), _mm256_set1_ps(corr[i]));
      for (int j = 0; j < n; j++)
        acc = _mm256_fmadd_ps(_mm256_broadcast_ss(e + j * L8 + i), _mm256_loadu_ps(vf + j * D + d), acc);
      _mm256_store_ps(o + i * D + d, acc);
    }
}

/* fs_attend_run on AVX2: queries qb * 8 .. qb * 8 + 7 of the run; D a multiple of 8. A float32
 * pool is read in place (a pass's 8 positions are consecutive rows of one block when the block
 * size is a multiple of 8); a bfloat16 one is widened into kf / vf first. */
TGT2 int fs_attend_run_256(const float *q, const void *k, const void *v, const int64_t *table,
                           const int32_t *lo, const int32_t *hi, float *out, long r0, int nrows,
                           int qb, int h, int Hq, int Hkv, int D, int BS, long nblk, float scale,
                           float cap, int bf16) {
  const int G = Hq / Hkv, i0 = qb * L8;
  const int nq = nrows * G - i0 < L8 ? nrows * G - i0 : L8; /* real lanes */
  const size_t esize = bf16 ? 2 : 4;
  const char *kh = (const char *)k + (size_t)h * nblk * BS * D * esize;
  const char *vh = (const char *)v + (size_t)h * nblk * BS * D * esize;
  /* qt [D][8], kf / vf [8][D], o [8][D], e [8][8] */
  float *buf = buffer((long)D * L8 * 4 + L8 * L8);
  if (buf == NULL) {
    for (int i = 0; i < nq; i++) memset(OUT_ROW(i), 0, sizeof(float) * D);
    return -1;
  }
  float *qt = buf, *kf = qt + D * L8, *vf = kf + D * L8, *o = vf + D * L8, *e = o + D * L8;
  int32_t qlo[L8], qhi[L8];
  long pmin, pmax;
  lanes(q, lo, hi, out, r0, i0, nq, L8, G, h, Hq, D, qt, qlo, qhi, &pmin, &pmax);
  memset(o, 0, sizeof(float) * D * L8);
  /* key p is in lane i's range when p > lo_i - 1 and hi_i > p */
  const __m256i lom1 = _mm256_sub_epi32(_mm256_loadu_si256((const __m256i *)qlo), _mm256_set1_epi32(1));
  const __m256i hiv = _mm256_loadu_si256((const __m256i *)qhi);
  const __m256 neg_inf = _mm256_set1_ps(-INFINITY);
  __m256 m = neg_inf, l = _mm256_setzero_ps();
  /* passes at multiples of 8 positions (see fs_attend_run) */
  for (long p0 = pmin < 0 ? 0 : pmin / L8 * L8; p0 < pmax; p0 += L8) {
    const int n = pmax - p0 < L8 ? (int)(pmax - p0) : L8;
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
