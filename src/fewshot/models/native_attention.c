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
 * The per-row pieces of each instruction set live in native_attention_pieces.h; this file splits
 * the work into items, attends one item (`chunk_*`) and merges the chunks.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "native_attention_pieces.h"
#include "native_math.h"

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
