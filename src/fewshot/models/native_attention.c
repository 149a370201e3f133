/* Decode attention over the paged KV pool (built with native.c into one library).
 *
 * fs_decode_attention: every sequence of a batch has one new query; it attends to positions
 * lo[b] .. hi[b] - 1 of its cache, read in place from the pool through its block table (no
 * gathered copy). The pool holds, per layer, K and V as [Hkv][NBLK][BS][D] in float32 or
 * bfloat16; position p of sequence b is at block tables[b * W + p / BS], offset p % BS.
 *
 *     s_t = scale * q . k_t   (then cap * tanh(s_t / cap) when cap > 0)
 *     out = sum_t softmax(s)_t * v_t
 *
 * all in float32 (bfloat16 keys and values widen exactly). Grouped-query attention: the
 * G = Hq / Hkv query heads of a KV head read each key once. The work is split over (KV head,
 * sequence, chunk of CHUNK positions) items, heads outermost, so the blocks several sequences
 * share (a cached few-shot prefix) come from cache after the first sequence reads them; a long
 * context splits into chunks that run on different threads (flash-decoding), each giving its
 * unnormalized output, maximum score and sum, merged in chunk order. The chunks depend on
 * positions only and every item is computed alone, in the same order whatever the batch: a
 * sequence's result does not depend on the batch or the thread count. CHUNK: GPT-Neo-125M's 8
 * sequences x 340 positions, 2 threads, 135-148 us per layer with 512 against 159-165 with 256
 * (the merges); longer contexts still split. AVX-512 and AVX2 variants (head dimension a multiple of 16 / 8) and a portable one;
 * the caller passes the instruction set (native.c's fs_isa). On AVX-512 a bfloat16 pool with D a
 * multiple of 32 is read 32 values per load (`dots_pairs`, `axpys_pairs`): one layer, 8 sequences
 * x 330 positions sharing 288, 2 threads: Gemma 3 270M's shape (4 heads, 1 KV head, D 256) 110 ->
 * 88-90 us, GPT-Neo-125M's (12 heads, D 64) 131 -> 122 us; one sequence 29.5 -> 25.6 / 22.1 -> 21.5.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "native_math.h"

#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

typedef struct {
  const float *q; /* [B][Hq][D] */
  const void *k, *v; /* [Hkv][NBLK][BS][D] */
  const int64_t *tables; /* [B][W] */
  const int32_t *lo, *hi; /* [B] */
  long nblk;
  int B, Hq, Hkv, D, BS, W, bf16;
  float scale, cap;
} attn_args;

/* Positions per work item (see the top of the file). */
#define CHUNK 512
/* Runs of this many rows or more (a prefill chunk's queries) go to native_runs.c. */
#define RUN_MIN 4

typedef int (*attend_run_fn)(const float *q, const void *k, const void *v,
                             const int64_t *table, const int32_t *lo, const int32_t *hi,
                             float *out, long r0, int nrows, int qb, int h, int Hq, int Hkv,
                             int D, int BS, long nblk, float scale, float cap, int bf16);
int fs_attend_run(const float *q, const void *k, const void *v, const int64_t *table,
                  const int32_t *lo, const int32_t *hi, float *out, long r0, int nrows, int qb,
                  int h, int Hq, int Hkv, int D, int BS, long nblk, float scale, float cap,
                  int bf16);
int fs_attend_run_256(const float *q, const void *k, const void *v, const int64_t *table,
                      const int32_t *lo, const int32_t *hi, float *out, long r0, int nrows,
                      int qb, int h, int Hq, int Hkv, int D, int BS, long nblk, float scale,
                      float cap, int bf16);

static __thread float *tls_scores;
static __thread long tls_scores_len;

static float *scores_buffer(long n) {
  if (n > tls_scores_len) {
    free(tls_scores);
    tls_scores = malloc((size_t)n * sizeof(float));
    tls_scores_len = tls_scores ? n : 0;
  }
  return tls_scores;
}

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
 * inlined: inside chunk_256 it made the whole chunk 10-25% slower on Zen 3. */
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

/* One chunk of one (KV head, sequence) pair: positions [p0, p1) with the pieces of one
 * instruction set. Writes, per query head g, part[g * (D + 2)]: the unnormalized output
 * sum_t e_t v_t (D values), then m (the chunk's largest score) and l = sum_t e_t, where
 * e_t = exp(s_t - m). */
#define ATTEND(SUF, TGT)                                                                      \
  TGT static void chunk_##SUF(const attn_args *a, int h, int b, long p0, long p1,             \
                              float *part) {                                                  \
    const int G = a->Hq / a->Hkv, D = a->D, BS = a->BS;                                       \
    const size_t esize = a->bf16 ? 2 : 4;                                                     \
    const long L = p1 - p0;                                                                   \
    const float *q = a->q + ((long)b * a->Hq + (long)h * G) * D;                              \
    const int64_t *table = a->tables + (long)b * a->W;                                        \
    const char *kh = (const char *)a->k + (size_t)h * a->nblk * BS * D * esize;               \
    const char *vh = (const char *)a->v + (size_t)h * a->nblk * BS * D * esize;               \
    float *s = scores_buffer((long)G * L);                                                    \
    const int pairs = a->bf16 && D % 32 == 0 && D <= PAIRS_MAX_D;                              \
    for (int g = 0; g < G; g++) {                                                             \
      memset(part + g * (D + 2), 0, sizeof(float) * D);                                       \
      part[g * (D + 2) + D] = -INFINITY;                                                      \
      part[g * (D + 2) + D + 1] = 0.0f;                                                       \
    }                                                                                         \
    if (s == NULL) return; /* out of memory: this chunk counts for nothing */                 \
    for (long p = p0; p < p1;) { /* a block's run of positions at a time */                   \
      const long end = (p / BS + 1) * BS < p1 ? (p / BS + 1) * BS : p1;                       \
      const char *kr = kh + ((size_t)table[p / BS] * BS + p % BS) * D * esize;                 \
      if (PAIRS_##SUF && pairs)                                                               \
        dots_pairs(q, kr, D * esize, (int)(end - p), D, G, a->scale, s + (p - p0), L);         \
      else                                                                                    \
        dots_##SUF(q, kr, D * esize, (int)(end - p), a->bf16, D, G, a->scale, s + (p - p0), L); \
      p = end;                                                                                \
    }                                                                                         \
    for (int g = 0; g < G; g++) {                                                             \
      float *sg = s + (long)g * L;                                                            \
      if (a->cap > 0.0f)                                                                      \
        for (long t = 0; t < L; t++) sg[t] = a->cap * tanhf(sg[t] / a->cap);                  \
      part[g * (D + 2) + D] = SOFTMAX_##SUF(sg, L, part + g * (D + 2) + D + 1);               \
    }                                                                                         \
    for (long p = p0; p < p1;) {                                                              \
      const long end = (p / BS + 1) * BS < p1 ? (p / BS + 1) * BS : p1;                       \
      const char *vr = vh + ((size_t)table[p / BS] * BS + p % BS) * D * esize;                 \
      if (PAIRS_##SUF && pairs)                                                               \
        axpys_pairs(part, s + (p - p0), L, vr, D * esize, (int)(end - p), D + 2, G, D);        \
      else                                                                                    \
        axpys_##SUF(part, s + (p - p0), L, vr, D * esize, (int)(end - p), a->bf16, D + 2, G, D); \
      p = end;                                                                                \
    }                                                                                         \
  }
#define PAIRS_512 1
#define PAIRS_256 0
#define PAIRS_c 0
#define SOFTMAX_512 softmax_numerators
#define SOFTMAX_256 softmax_numerators_256
#define SOFTMAX_c softmax_numerators
ATTEND(512, __attribute__((target("avx512f,avx512bw,fma"))))
ATTEND(256, __attribute__((target("avx2,fma"))))
ATTEND(c, )

static __thread float *tls_parts;
static __thread long tls_parts_len;
static __thread long *tls_first;
static __thread long tls_first_len;

/* Grow a thread's buffer to n elements of `size` bytes; NULL when memory runs out. */
static void *grow(void **buf, long *len, long n, size_t size) {
  if (n > *len) {
    free(*buf);
    *buf = malloc((size_t)n * size);
    *len = *buf ? n : 0;
  }
  return *buf;
}

void fs_decode_attention(const float *q, const void *k, const void *v, const int64_t *tables,
                         int W, const int32_t *lo, const int32_t *hi, float *out, int B, int Hq,
                         int Hkv, int D, int BS, long nblk, float scale, float cap, int bf16,
                         int isa, int threads) {
  const attn_args a = {q, k, v, tables, lo, hi, nblk, B, Hq, Hkv, D, BS, W, bf16, scale, cap};
  const int G = Hq / Hkv, vec = isa >= 2 && D % 16 == 0 ? 2 : isa >= 1 && D % 8 == 0 ? 1 : 0;
  /* runs: RUN_MIN or more rows at consecutive positions with one block table (a prefill
   * chunk) attend together (native_runs.c: AVX-512 16 queries per item, AVX2 8); run g is rows
   * groups[2g] .. + groups[2g+1] */
  const int lanes = vec == 2 ? 16 : 8;
  const attend_run_fn attend_run = vec == 2 ? fs_attend_run : fs_attend_run_256;
  long *first = grow((void **)&tls_first, &tls_first_len, 4L * B + 3, sizeof(long));
  if (first == NULL) return;
  /* work items of the rows outside runs: (row, chunk of CHUNK positions, KV head); a row's
   * chunks start at first[b] (a run's rows have none) */
  long *groups = first + B + 1, n_groups = 0;
  first[0] = 0;
  for (int b0 = 0, b1; b0 < B; b0 = b1) {
    for (b1 = b0 + 1; vec >= 1 && b1 < B && hi[b1] == hi[b1 - 1] + 1 &&
                      !memcmp(tables + (long)b1 * W, tables + (long)b0 * W, sizeof(int64_t) * W);
         b1++)
      ;
    if (b1 - b0 >= RUN_MIN) {
      groups[2 * n_groups] = b0;
      groups[2 * n_groups++ + 1] = b1 - b0;
      for (int b = b0; b < b1; b++) first[b + 1] = first[b];
    } else { /* a row alone; the next row may start a run */
      b1 = b0 + 1;
      first[b1] = first[b0] + (hi[b0] > lo[b0] ? (hi[b0] - 1) / CHUNK - lo[b0] / CHUNK + 1 : 0);
    }
  }
  /* a run's items: (KV head, block of `lanes` of its rows x G queries); run g's blocks start
   * at blocks[g] */
  long *blocks = groups + 2 * n_groups;
  blocks[0] = 0;
  for (long g = 0; g < n_groups; g++)
    blocks[g + 1] = blocks[g] + (groups[2 * g + 1] * G + lanes - 1) / lanes;
  const long items = first[B] * Hkv, width = (long)G * (D + 2), run_items = blocks[n_groups] * Hkv;
  float *parts = grow((void **)&tls_parts, &tls_parts_len, items * width + 1, sizeof(float));
  if (parts == NULL) return;
#pragma omp parallel num_threads(threads) if (items + run_items > 1)
  {
#pragma omp for schedule(static) nowait
    for (long i = 0; i < run_items; i++) { /* heads outermost, as below */
      const long c = i % blocks[n_groups];
      long g = 0;
      while (blocks[g + 1] <= c) g++;
      const long r0 = groups[2 * g];
      attend_run(q, k, v, tables + r0 * W, lo, hi, out, r0, (int)groups[2 * g + 1],
                 (int)(c - blocks[g]), (int)(i / blocks[n_groups]), Hq, Hkv, D, BS, nblk, scale,
                 cap, bf16);
    }
#pragma omp for schedule(static)
    for (long i = 0; i < items; i++) { /* heads outermost: a shared prefix stays in cache */
      const int h = (int)(i / first[B]);
      const long c = i % first[B];
      int b = 0;
      while (first[b + 1] <= c) b++;
      const long base = lo[b] / CHUNK + (c - first[b]);
      const long p0 = base * CHUNK > lo[b] ? base * CHUNK : lo[b];
      const long p1 = (base + 1) * CHUNK < hi[b] ? (base + 1) * CHUNK : hi[b];
      float *part = parts + (c * Hkv + h) * width;
      if (vec == 2)
        chunk_512(&a, h, b, p0, p1, part);
      else if (vec == 1)
        chunk_256(&a, h, b, p0, p1, part);
      else
        chunk_c(&a, h, b, p0, p1, part);
    }
    /* merge each (sequence, query head)'s chunks, in order */
#pragma omp for schedule(static)
    for (long r = 0; r < (long)B * Hq; r++) {
      const int b = (int)(r / Hq), hq = (int)(r % Hq), h = hq / G, g = hq % G;
      if (first[b + 1] == first[b] && hi[b] > lo[b]) continue; /* a run's row: written above */
      float *o = out + r * D;
      float m = -INFINITY, l = 0.0f;
      for (long c = first[b]; c < first[b + 1]; c++) {
        const float *part = parts + (c * Hkv + h) * width + g * (D + 2);
        m = part[D] > m ? part[D] : m;
      }
      for (int d = 0; d < D; d++) o[d] = 0.0f;
      for (long c = first[b]; c < first[b + 1]; c++) {
        const float *part = parts + (c * Hkv + h) * width + g * (D + 2);
        const float w = part[D] == -INFINITY ? 0.0f : expf(part[D] - m);
        l += w * part[D + 1];
        for (int d = 0; d < D; d++) o[d] += w * part[d];
      }
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
      for (int d = 0; d < D; d++) o[d] *= inv;
    }
  }
}
