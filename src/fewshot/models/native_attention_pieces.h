/* The per-row pieces of native_attention.c's decode attention, one set per instruction set
 * (included by it alone): scores of n consecutive keys against the G query heads of a KV head
 * (`dots_*`), the values they weight added into the outputs (`axpys_*`), the same for two rows
 * over keys they share (`dots2_*`, `axpys2_*`: each key or value row loaded once, each row's
 * bits those of the one-row pieces), and a softmax's numerators and sum
 * (`softmax_numerators*`). AVX-512 (16 lanes) and AVX2 (8 lanes) for head
 * dimensions a multiple of the lanes, AVX-512 pairs for bfloat16 pools with D a multiple of 32,
 * and portable C for any D. Keys and values are rows of `stride` bytes in float32 or bfloat16
 * (widened exactly). */
#ifndef FEWSHOT_NATIVE_ATTENTION_PIECES_H
#define FEWSHOT_NATIVE_ATTENTION_PIECES_H
#include <immintrin.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "native_math.h"

#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

/* axpys' slices of NC * W values of o_g (accumulators in registers), while they fit in D */
#define AXPY_CHAINS(SUF, VT, W, LOADF, FMA, SET1, STORE, NC)                                  \
  for (; d + (NC) * W <= D; d += (NC) * W) {                                                  \
    VT a[NC];                                                                                 \
    _Pragma("GCC unroll 4") for (int c = 0; c < (NC); c++) a[c] = LOADF(og + d + c * W);     \
    for (int t = 0; t < n; t++) {                                                             \
      const VT pt = SET1(pg[t]);                                                              \
      const char *r = v + t * stride;                                                         \
      _Pragma("GCC unroll 4") for (int c = 0; c < (NC); c++)                                 \
        a[c] = FMA(pt, row_##SUF(r, bf16, d + c * W), a[c]);                                  \
    }                                                                                         \
    _Pragma("GCC unroll 4") for (int c = 0; c < (NC); c++) STORE(og + d + c * W, a[c]);      \
  }

/* axpys2's slices: two rows' sums over the same values, each value slice loaded once */
#define AXPY2_CHAINS(SUF, VT, W, LOADF, FMA, SET1, STORE, NC)                                 \
  for (; d + (NC) * W <= D; d += (NC) * W) {                                                  \
    VT a[NC], b[NC];                                                                          \
    _Pragma("GCC unroll 4") for (int c = 0; c < (NC); c++) {                                 \
      a[c] = LOADF(oa + d + c * W);                                                           \
      b[c] = LOADF(ob + d + c * W);                                                           \
    }                                                                                         \
    for (int t = 0; t < n; t++) {                                                             \
      const VT pa_t = SET1(pa[t]), pb_t = SET1(pb[t]);                                        \
      const char *r = v + t * stride;                                                         \
      _Pragma("GCC unroll 4") for (int c = 0; c < (NC); c++) {                               \
        const VT x = row_##SUF(r, bf16, d + c * W);                                           \
        a[c] = FMA(pa_t, x, a[c]);                                                            \
        b[c] = FMA(pb_t, x, b[c]);                                                            \
      }                                                                                       \
    }                                                                                         \
    _Pragma("GCC unroll 4") for (int c = 0; c < (NC); c++) {                                 \
      STORE(oa + d + c * W, a[c]);                                                            \
      STORE(ob + d + c * W, b[c]);                                                            \
    }                                                                                         \
  }

/* The vector pieces, for AVX-512 (W = 16 lanes) and AVX2 (W = 8); D a multiple of W. A key or
 * value row widens to float32 W at a time (bf16: shift into the high half). */
#define VEC_PIECES(SUF, TGT, VT, W, LOADF, LOADB, FMA, SET1, ZERO, STORE, HSUM)                 \
  TGT static inline VT row_##SUF(const char *r, int bf16, int d) {                            \
    return bf16 ? LOADB((const uint16_t *)r + d) : LOADF((const float *)r + d);              \
  }                                                                                           \
  /* s[g * L + t] = scale * q_g . k_t for n consecutive keys (rows of `stride` bytes) and the  \
   * G query heads of one KV head: four keys at a time, four independent FMA chains */         \
  TGT static inline void dots_##SUF(const float *q, const char *k, size_t stride, int n,      \
                                    int bf16, int D, int G, float scale, float *s, long L) {  \
    for (int g = 0; g < G; g++) {                                                             \
      const float *qg = q + g * D;                                                            \
      int t = 0;                                                                              \
      for (; t + 4 <= n; t += 4) {                                                            \
        VT a0 = ZERO(), a1 = ZERO(), a2 = ZERO(), a3 = ZERO();                                \
        const char *r = k + t * stride;                                                       \
        for (int d = 0; d < D; d += W) {                                                      \
          const VT qv = LOADF(qg + d);                                                        \
          a0 = FMA(qv, row_##SUF(r, bf16, d), a0);                                            \
          a1 = FMA(qv, row_##SUF(r + stride, bf16, d), a1);                                   \
          a2 = FMA(qv, row_##SUF(r + 2 * stride, bf16, d), a2);                               \
          a3 = FMA(qv, row_##SUF(r + 3 * stride, bf16, d), a3);                               \
        }                                                                                     \
        s[g * L + t] = HSUM(a0) * scale;                                                      \
        s[g * L + t + 1] = HSUM(a1) * scale;                                                  \
        s[g * L + t + 2] = HSUM(a2) * scale;                                                  \
        s[g * L + t + 3] = HSUM(a3) * scale;                                                  \
      }                                                                                       \
      for (; t < n; t++) {                                                                    \
        VT a0 = ZERO();                                                                       \
        for (int d = 0; d < D; d += W)                                                        \
          a0 = FMA(LOADF(qg + d), row_##SUF(k + t * stride, bf16, d), a0);                    \
        s[g * L + t] = HSUM(a0) * scale;                                                      \
      }                                                                                       \
    }                                                                                         \
  }                                                                                           \
  /* o_g += sum over n consecutive values v_t of p[g * L + t] * v_t: four W-wide slices at a  \
   * time (four FMA chains in flight; one slice at a time waited on each FMA's latency: Zen 3, \
   * one decode attention call 1.1-1.7x faster; eight chains measured the same as four), then \
   * one; each value's sum runs over t in order, so the bits are the one-slice loop's */       \
  TGT static inline void axpys_##SUF(float *o, const float *p, long L, const char *v,         \
                                     size_t stride, int n, int bf16, int ostride, int G,      \
                                     int D) {                                                 \
    for (int g = 0; g < G; g++) {                                                             \
      float *og = o + g * ostride;                                                            \
      const float *pg = p + g * L;                                                            \
      int d = 0;                                                                              \
      AXPY_CHAINS(SUF, VT, W, LOADF, FMA, SET1, STORE, 4)                                     \
      AXPY_CHAINS(SUF, VT, W, LOADF, FMA, SET1, STORE, 1)                                     \
    }                                                                                         \
  }                                                                                           \
  /* dots for two rows' queries (q0 into s0 of row length L0, q1 into s1) over the same keys: \
   * each key row loaded once for both, twice the independent FMA chains; every score is the  \
   * same chain as in dots, so the bits are dots' */                                          \
  TGT static inline void dots2_##SUF(const float *q0, const float *q1, const char *k,         \
                                     size_t stride, int n, int bf16, int D, int G, float scale, \
                                     float *s0, long L0, float *s1, long L1) {                \
    for (int g = 0; g < G; g++) {                                                             \
      const float *qa = q0 + g * D, *qb = q1 + g * D;                                         \
      int t = 0;                                                                              \
      for (; t + 4 <= n; t += 4) {                                                            \
        VT a[4], b[4];                                                                        \
        _Pragma("GCC unroll 4") for (int j = 0; j < 4; j++) a[j] = b[j] = ZERO();            \
        const char *r = k + t * stride;                                                       \
        for (int d = 0; d < D; d += W) {                                                      \
          const VT x = LOADF(qa + d), y = LOADF(qb + d);                                      \
          _Pragma("GCC unroll 4") for (int j = 0; j < 4; j++) {                              \
            const VT kv = row_##SUF(r + j * stride, bf16, d);                                 \
            a[j] = FMA(x, kv, a[j]);                                                          \
            b[j] = FMA(y, kv, b[j]);                                                          \
          }                                                                                   \
        }                                                                                     \
        _Pragma("GCC unroll 4") for (int j = 0; j < 4; j++) {                                \
          s0[g * L0 + t + j] = HSUM(a[j]) * scale;                                            \
          s1[g * L1 + t + j] = HSUM(b[j]) * scale;                                            \
        }                                                                                     \
      }                                                                                       \
      for (; t < n; t++) {                                                                    \
        VT a0 = ZERO(), b0 = ZERO();                                                          \
        for (int d = 0; d < D; d += W) {                                                      \
          const VT kv = row_##SUF(k + t * stride, bf16, d);                                   \
          a0 = FMA(LOADF(qa + d), kv, a0);                                                    \
          b0 = FMA(LOADF(qb + d), kv, b0);                                                    \
        }                                                                                     \
        s0[g * L0 + t] = HSUM(a0) * scale;                                                    \
        s1[g * L1 + t] = HSUM(b0) * scale;                                                    \
      }                                                                                       \
    }                                                                                         \
  }                                                                                           \
  /* axpys for two rows (o0 with weights p0 of row length L0, o1 with p1) over the same       \
   * values, each value slice loaded once; each row's sums as in axpys (same bits) */          \
  TGT static inline void axpys2_##SUF(float *o0, const float *p0, long L0, float *o1,         \
                                      const float *p1, long L1, const char *v, size_t stride, \
                                      int n, int bf16, int ostride, int G, int D) {           \
    for (int g = 0; g < G; g++) {                                                             \
      float *oa = o0 + g * ostride, *ob = o1 + g * ostride;                                   \
      const float *pa = p0 + g * L0, *pb = p1 + g * L1;                                       \
      int d = 0;                                                                              \
      AXPY2_CHAINS(SUF, VT, W, LOADF, FMA, SET1, STORE, 4)                                    \
      AXPY2_CHAINS(SUF, VT, W, LOADF, FMA, SET1, STORE, 1)                                    \
    }                                                                                         \
  }

__attribute__((target("avx2,fma"))) static inline float hsum_256(__m256 v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

VEC_PIECES(512, __attribute__((target("avx512f,avx512bw,fma"))), __m512, 16, _mm512_loadu_ps,
           load_bf16_512, _mm512_fmadd_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps,
           _mm512_reduce_add_ps)
VEC_PIECES(256, __attribute__((target("avx2,fma"))), __m256, 8, _mm256_loadu_ps, load_bf16_256,
           _mm256_fmadd_ps, _mm256_set1_ps, _mm256_setzero_ps, _mm256_storeu_ps, hsum_256)

/* AVX-512 on a bfloat16 pool with D a multiple of 32 (up to PAIRS_MAX_D): 32 values of a row
 * in one 64-byte load, widened as two float32 vectors, the even-indexed values (the low halves
 * of the 32-bit words, shifted up) and the odd-indexed ones (the high halves, masked): two
 * operations per 32 values against four, and no cross-lane conversion. The query is split the
 * same way, once per call. The values' sums stay element by element in key order (bitwise
 * axpys_512's); a score adds its products in another order than dots_512, and four keys'
 * scores are reduced together. */
#define PAIRS_MAX_D 512
#define TGT512 __attribute__((target("avx512f,avx512bw,fma")))
#define UNROLL4 _Pragma("GCC unroll 4")

TGT512 static inline __m512i even_idx(void) {
  return _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
}
TGT512 static inline __m512i odd_idx(void) {
  return _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
}
TGT512 static inline __m512 lo_half(__m512i w) { return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)); }
TGT512 static inline __m512 hi_half(__m512i w) {
  return _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32((int)0xFFFF0000u)));
}

/* the scale times each of four 16-lane sums, into s[0..3] */
TGT512 static inline void sum4(__m512 a0, __m512 a1, __m512 a2, __m512 a3, float scale, float *s) {
  const __m512 x = _mm512_add_ps(_mm512_shuffle_f32x4(a0, a1, 0x44), _mm512_shuffle_f32x4(a0, a1, 0xEE));
  const __m512 y = _mm512_add_ps(_mm512_shuffle_f32x4(a2, a3, 0x44), _mm512_shuffle_f32x4(a2, a3, 0xEE));
  __m512 z = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x88), _mm512_shuffle_f32x4(x, y, 0xDD));
  z = _mm512_add_ps(z, _mm512_permute_ps(z, 0xB1));
  z = _mm512_add_ps(z, _mm512_permute_ps(z, 0x4E));
  const __m512 t = _mm512_permutexvar_ps(_mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0), z);
  _mm_storeu_ps(s, _mm_mul_ps(_mm512_castps512_ps128(t), _mm_set1_ps(scale)));
}

TGT512 static inline void dots_pairs(const float *q, const char *k, size_t stride, int n, int D,
                                     int G, float scale, float *s, long L) {
  const int nc = D / 32;
  __m512 qe[PAIRS_MAX_D / 32], qo[PAIRS_MAX_D / 32];
  for (int g = 0; g < G; g++) {
    const float *qg = q + g * D;
    for (int c = 0; c < nc; c++) {
      const __m512 a = _mm512_loadu_ps(qg + 32 * c), b = _mm512_loadu_ps(qg + 32 * c + 16);
      qe[c] = _mm512_permutex2var_ps(a, even_idx(), b);
      qo[c] = _mm512_permutex2var_ps(a, odd_idx(), b);
    }
    int t = 0;
    for (; t + 4 <= n; t += 4) {
      __m512 e[4], o[4];
      UNROLL4 for (int j = 0; j < 4; j++) e[j] = _mm512_setzero_ps(), o[j] = _mm512_setzero_ps();
      for (int c = 0; c < nc; c++) {
        UNROLL4 for (int j = 0; j < 4; j++) {
          const __m512i w = _mm512_loadu_si512(k + (t + j) * stride + 64 * c);
          e[j] = _mm512_fmadd_ps(qe[c], lo_half(w), e[j]);
          o[j] = _mm512_fmadd_ps(qo[c], hi_half(w), o[j]);
        }
      }
      sum4(_mm512_add_ps(e[0], o[0]), _mm512_add_ps(e[1], o[1]), _mm512_add_ps(e[2], o[2]),
           _mm512_add_ps(e[3], o[3]), scale, s + g * L + t);
    }
    for (; t < n; t++) {
      __m512 e = _mm512_setzero_ps(), o = _mm512_setzero_ps();
      for (int c = 0; c < nc; c++) {
        const __m512i w = _mm512_loadu_si512(k + t * stride + 64 * c);
        e = _mm512_fmadd_ps(qe[c], lo_half(w), e);
        o = _mm512_fmadd_ps(qo[c], hi_half(w), o);
      }
      s[g * L + t] = _mm512_reduce_add_ps(_mm512_add_ps(e, o)) * scale;
    }
  }
}

TGT512 static inline void axpys_pairs(float *o, const float *p, long L, const char *v,
                                      size_t stride, int n, int ostride, int G, int D) {
  const __m512i lo_idx = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i hi_idx = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
  for (int g = 0; g < G; g++)
    for (int d0 = 0; d0 < D; d0 += 128) { /* up to four slices of 32 in flight */
      const int nc = (D - d0) / 32 < 4 ? (D - d0) / 32 : 4;
      float *og = o + g * ostride + d0;
      __m512 e[4], f[4];
      UNROLL4 for (int c = 0; c < 4; c++) if (c < nc) {
        const __m512 a = _mm512_loadu_ps(og + 32 * c), b = _mm512_loadu_ps(og + 32 * c + 16);
        e[c] = _mm512_permutex2var_ps(a, even_idx(), b);
        f[c] = _mm512_permutex2var_ps(a, odd_idx(), b);
      } else {
        e[c] = f[c] = _mm512_setzero_ps(); /* unused (c >= nc); set for the compiler */
      }
      for (int t = 0; t < n; t++) {
        const __m512 pt = _mm512_set1_ps(p[g * L + t]);
        const char *r = v + t * stride + 2 * d0;
        UNROLL4 for (int c = 0; c < 4; c++) if (c < nc) {
          const __m512i w = _mm512_loadu_si512(r + 64 * c);
          e[c] = _mm512_fmadd_ps(pt, lo_half(w), e[c]);
          f[c] = _mm512_fmadd_ps(pt, hi_half(w), f[c]);
        }
      }
      UNROLL4 for (int c = 0; c < 4; c++) if (c < nc) {
        _mm512_storeu_ps(og + 32 * c, _mm512_permutex2var_ps(e[c], lo_idx, f[c]));
        _mm512_storeu_ps(og + 32 * c + 16, _mm512_permutex2var_ps(e[c], hi_idx, f[c]));
      }
    }
}

/* The portable pieces (any D). */
static void dots_c(const float *q, const char *k, size_t stride, int n, int bf16, int D, int G,
                   float scale, float *s, long L) {
  for (int g = 0; g < G; g++)
    for (int t = 0; t < n; t++) {
      float acc = 0.0f;
      for (int d = 0; d < D; d++) acc += q[g * D + d] * row_value(k + t * stride, bf16, d);
      s[g * L + t] = acc * scale;
    }
}
static void axpys_c(float *o, const float *p, long L, const char *v, size_t stride, int n,
                    int bf16, int ostride, int G, int D) {
  for (int g = 0; g < G; g++)
    for (int t = 0; t < n; t++)
      for (int d = 0; d < D; d++)
        o[g * ostride + d] += p[g * L + t] * row_value(v + t * stride, bf16, d);
}

static void dots2_c(const float *q0, const float *q1, const char *k, size_t stride, int n,
                    int bf16, int D, int G, float scale, float *s0, long L0, float *s1, long L1) {
  dots_c(q0, k, stride, n, bf16, D, G, scale, s0, L0);
  dots_c(q1, k, stride, n, bf16, D, G, scale, s1, L1);
}
static void axpys2_c(float *o0, const float *p0, long L0, float *o1, const float *p1, long L1,
                     const char *v, size_t stride, int n, int bf16, int ostride, int G, int D) {
  axpys_c(o0, p0, L0, v, stride, n, bf16, ostride, G, D);
  axpys_c(o1, p1, L1, v, stride, n, bf16, ostride, G, D);
}

/* s <- exp(s - m) over L scores, m their maximum (returned); *sum gets their sum. */
CLONES static float softmax_numerators(float *s, long L, float *sum_out) {
  float m = -INFINITY;
  for (long t = 0; t < L; t++) m = s[t] > m ? s[t] : m;
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (long t = 0; t < L; t++) {
    s[t] = fs_exp(s[t] - m);
    sum += s[t];
  }
  *sum_out = sum;
  return m;
}

/* softmax_numerators with AVX2 intrinsics (GCC does not vectorize its loops for AVX2: the
 * clamps in fs_exp are control flow it will not if-convert without AVX-512's masks). Not
 * inlined: inside the item (then `chunk_256`) it made the whole item 10-25% slower on Zen 3. */
__attribute__((target("avx2"), noinline)) static float softmax_numerators_256(float *s, long L,
                                                                   float *sum_out) {
  __m256 mv = _mm256_set1_ps(-INFINITY);
  long t = 0;
  for (; t + 8 <= L; t += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(s + t));
  float lanes[8], m = -INFINITY;
  _mm256_storeu_ps(lanes, mv);
  for (int i = 0; i < 8; i++) m = lanes[i] > m ? lanes[i] : m;
  for (long u = t; u < L; u++) m = s[u] > m ? s[u] : m;
  const __m256 mb = _mm256_set1_ps(m);
  __m256 acc = _mm256_setzero_ps();
  for (t = 0; t + 8 <= L; t += 8) {
    const __m256 e = fs_exp256(_mm256_sub_ps(_mm256_loadu_ps(s + t), mb));
    _mm256_storeu_ps(s + t, e);
    acc = _mm256_add_ps(acc, e);
  }
  _mm256_storeu_ps(lanes, acc);
  float sum = 0.0f;
  for (int i = 0; i < 8; i++) sum += lanes[i];
  for (; t < L; t++) {
    s[t] = fs_exp(s[t] - m);
    sum += s[t];
  }
  *sum_out = sum;
  return m;
}
#endif
