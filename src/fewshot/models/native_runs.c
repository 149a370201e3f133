/* Attention for a run of queries: the consecutive positions of one sequence's prefill chunk
 * (a few-shot query after its cached prefix), for native_attention.c's fs_decode_attention on
 * AVX-512 (built with the other native sources into one library).
 *
 * Attending each query alone reduces every q . k across the vector (a horizontal sum per key
 * and query). Here 16 queries of a run (rows x their G query heads) are the 16 lanes: the run's
 * queries are transposed once to [D][16], and each pass over 16 keys (widened once to float32)
 * costs D multiply-adds per key for all 16 queries' scores; the softmax is taken online (running
 * maximum and sum per lane, rescaled when a larger score arrives) and the values are summed per
 * query. Scores, softmax and sums in float32, as the single-query kernel. Each query sees exactly
 * its own positions [lo, hi), so its result does not depend on the other queries of its run or
 * batch; it is not bitwise the single-query kernel's (the same sums in another order).
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
#define OUT_ROW(i) (out + ((r0 + (i0 + (i)) / G) * Hq + h * G + (i0 + (i)) % G) * D)
  for (int i = 0; i < nq; i++) memset(OUT_ROW(i), 0, sizeof(float) * D);
  /* qt [D][16], kf / vf [16][D], o [16][D], e [16][16] */
  float *buf = buffer((long)D * L16 * 4 + L16 * L16);
  if (buf == NULL) return -1;
  float *qt = buf, *kf = qt + D * L16, *vf = kf + D * L16, *o = vf + D * L16, *e = o + D * L16;
  int32_t qlo[L16], qhi[L16];
  long pmin = -1, pmax = 0;
  for (int i = 0; i < L16; i++) {
    const long r = r0 + (i0 + i) / G;
    qlo[i] = i < nq ? lo[r] : 0;
    qhi[i] = i < nq ? hi[r] : 0; /* padding lanes see no key */
    if (i < nq) {
      pmin = pmin < 0 || qlo[i] < pmin ? qlo[i] : pmin;
      pmax = qhi[i] > pmax ? qhi[i] : pmax;
    }
    const float *qi = q + (r * Hq + h * G + (i0 + i) % G) * D;
    for (int d = 0; d < D; d++) qt[d * L16 + i] = i < nq ? qi[d] : 0.0f;
  }
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
  for (int i = 0; i < nq; i++) {
    const float inv = lf[i] > 0.0f ? 1.0f / lf[i] : 0.0f;
    float *dst = OUT_ROW(i);
    for (int d = 0; d < D; d++) dst[d] = o[i * D + d] * inv;
  }
#undef OUT_ROW
  return 0;
}
