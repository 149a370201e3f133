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
 * G = Hq / Hkv query heads of a KV head read each key once. A long context splits into chunks
 * of CHUNK positions that run on different threads (flash-decoding), each giving its
 * unnormalized output, maximum score and sum, merged in chunk order. The work items are (KV
 * head, unit), heads outermost: a unit is one chunk of consecutive rows that start it at the
 * same position and read the same leading blocks (a cached few-shot prefix), up to
 * B * Hkv / threads rows so that the items still spread over the threads; with fewer (KV
 * head, unit) pairs than threads (one sequence over one KV head: Gemma 3 270M at batch 1), a
 * pair's query heads split over the threads (a head's scores and sums are its own calls either
 * way: the same bits; that shape at 350 positions, 2 Zen 3 threads, 126 -> 104 us a layer with
 * its K/V cold, 63 -> 54 warm). A unit reads each shared block once for all its rows, two rows
 * at a time (`dots2`, `axpys2`: one load of a key or value row for both, twice the independent
 * FMA chains), then each row's own blocks. Every
 * row's scores and sums are the same calls on the same data in the same order as for the row
 * alone, and the chunks depend on positions only: a sequence's result does not depend on the
 * batch, its unit or the thread count (tested bitwise). One layer, 8 sequences x 300-307
 * positions sharing 288, 2 Zen 3 threads (AVX2), against one row per item: GPT-Neo-125M's shape
 * (12 heads, D 64) float32 pool 159 -> 115 us, bf16 203 -> 156; Gemma 3 270M's (4 heads, 1 KV
 * head, D 256) 150 -> 117. Inside a step the keys and values arrive cold (the weights streamed
 * between layers evict them): each block's successor is prefetched while it is read; GPT-Neo's
 * 8-sequence decode step, attention 3.48 -> 2.69 ms for its 12 layers (both changes). CHUNK:
 * GPT-Neo-125M's 8 sequences x 340 positions, 2 threads, 135-148 us per layer with 512
 * against 159-165 with 256 (the merges). AVX-512 and AVX2
 * variants (head dimension a multiple of 16 / 8) and a portable one; the caller passes the
 * instruction set (native.c's fs_isa). On AVX-512 a bfloat16 pool with D a multiple of 32 is
 * read 32 values per load (`dots_pairs`, `axpys_pairs`, one row at a time: their scores sum in
 * another order than `dots2`'s): one layer, 8 sequences x 330 positions sharing 288, 2
 * threads: Gemma 3 270M's shape 110 -> 88-90 us, GPT-Neo-125M's 131 -> 122 us; one sequence
 * 29.5 -> 25.6 / 22.1 -> 21.5. The per-row pieces of each instruction set live in
 * native_attention_pieces.h; this file forms the units, attends one (`unit_*`) and merges the
 * chunks.
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

/* A work item's rows: consecutive rows whose chunk of the same positions starts at the same p0
 * and reads the same blocks up to ps (a block boundary; ps == p0: nothing shared, e.g. a unit
 * of one row). base: the chunk (positions [base * CHUNK, (base + 1) * CHUNK)). */
typedef struct {
  int b0, rows;
  long base, p0, ps;
} unit;
#define UNIT_ROWS 32 /* most rows per unit */

/* What one row of a unit needs: its query heads, block table, output part, scores, end. */
typedef struct {
  const float *q;
  const int64_t *table;
  float *part, *s;
  long L, p1;
} row_view;

/* The views of unit u's rows for KV head h and its query heads g0 .. g1 - 1, each row's part
 * of those heads cleared (no keys yet: m = -inf, l = 0) and its scores in the thread's buffer;
 * -1 when out of memory (the unit then counts for nothing). A row's chunk c (its parts' index)
 * is first[b] + the chunks before `base`. */
static int unit_rows(const attn_args *a, int h, int g0, int g1, const unit *u, float *parts,
                     const long *first, row_view *rv) {
  const int G = g1 - g0, D = a->D;
  const long width = (long)(a->Hq / a->Hkv) * (D + 2);
  long total = 0;
  for (int i = 0; i < u->rows; i++) {
    const int b = u->b0 + i;
    row_view *r = rv + i;
    r->p1 = (u->base + 1) * CHUNK < a->hi[b] ? (u->base + 1) * CHUNK : a->hi[b];
    r->L = r->p1 - u->p0;
    r->q = a->q + ((long)b * a->Hq + (long)h * (a->Hq / a->Hkv) + g0) * D;
    r->table = a->tables + (long)b * a->W;
    r->part = parts + ((first[b] + u->base - a->lo[b] / CHUNK) * a->Hkv + h) * width +
              (long)g0 * (D + 2);
    total += (long)G * r->L;
    for (int g = 0; g < G; g++) {
      memset(r->part + g * (D + 2), 0, sizeof(float) * D);
      r->part[g * (D + 2) + D] = -INFINITY;
      r->part[g * (D + 2) + D + 1] = 0.0f;
    }
  }
  float *s = scores_buffer(total);
  if (s == NULL) return -1;
  for (int i = 0; i < u->rows; i++) {
    rv[i].s = s;
    s += (long)G * rv[i].L;
  }
  return 0;
}

/* STEP(i, p, n, row) for every row i of unit u and every run of its positions p .. p + n - 1
 * inside one block, `row` the run's first key (or value) row under `base`: first the shared
 * blocks, each read once for all rows (block outer, rows inner; STEP2(i, ...) for rows i and
 * i + 1 together where `multi`), then each row's own blocks.
 * A row meets its runs in position order, split at the block boundaries as when alone. */
#define EACH_RUN(u, rv, BS, stride, base, multi, STEP, STEP2)                                               \
  do {                                                                                        \
    for (long p = (u)->p0, end; p < (u)->ps; p = end) {                                       \
      end = (p / (BS) + 1) * (BS);                                                            \
      const char *row = (base) + ((size_t)(rv)[0].table[p / (BS)] * (BS) + p % (BS)) * (stride); \
      if (end < (u)->ps) /* the next shared block, while this one is read */                 \
        prefetch_rows((base) + (size_t)(rv)[0].table[end / (BS)] * (BS) * (stride), (BS) * (stride)); \
      int i = 0;                                                                              \
      for (; (multi) && i + 1 < (u)->rows; i += 2) STEP2(i, p, (int)(end - p), row);         \
      for (; i < (u)->rows; i++) STEP(i, p, (int)(end - p), row);                             \
    }                                                                                         \
    for (int i = 0; i < (u)->rows; i++)                                                       \
      for (long p = (u)->ps, end; p < (rv)[i].p1; p = end) {                                  \
        end = (p / (BS) + 1) * (BS) < (rv)[i].p1 ? (p / (BS) + 1) * (BS) : (rv)[i].p1;        \
        const char *row = (base) + ((size_t)(rv)[i].table[p / (BS)] * (BS) + p % (BS)) * (stride); \
        if (end < (rv)[i].p1)                                                                 \
          prefetch_rows((base) + (size_t)(rv)[i].table[end / (BS)] * (BS) * (stride), (BS) * (stride)); \
        STEP(i, p, (int)(end - p), row);                                                      \
      }                                                                                       \
  } while (0)

/* One unit, KV head h and its query heads g0 .. g1 - 1 with the pieces of one instruction set.
 * Writes, per row and query head g, part[g * (D + 2)]: the unnormalized output sum_t e_t v_t
 * (D values), then m (the chunk's largest score) and l = sum_t e_t, where e_t = exp(s_t - m).
 * Every row's scores and sums come from the same calls on the same data in the same order as
 * for the row alone (a key's score is its own dot product; a value adds into the row's own
 * sums, key by key), so its bits do not depend on the unit: only how often the shared keys are
 * read from memory does. */
#define ATTEND(SUF, TGT)                                                                      \
  TGT static void unit_##SUF(const attn_args *a, int h, int g0, int g1, const unit *u,       \
                             float *parts, const long *first) {                              \
    const int G = g1 - g0, D = a->D, BS = a->BS;                                              \
    const size_t stride = (size_t)D * (a->bf16 ? 2 : 4);                                      \
    const char *kh = (const char *)a->k + (size_t)h * a->nblk * BS * stride;                  \
    const char *vh = (const char *)a->v + (size_t)h * a->nblk * BS * stride;                  \
    const int pairs = PAIRS_##SUF && a->bf16 && D % 32 == 0 && D <= PAIRS_MAX_D;              \
    const int multi = !pairs; /* two rows at a time over the shared blocks */                \
    row_view rv[UNIT_ROWS];                                                                   \
    if (unit_rows(a, h, g0, g1, u, parts, first, rv) != 0) return;                            \
    EACH_RUN(u, rv, BS, stride, kh, multi, DOTS_##SUF, DOTS2_##SUF);                                              \
    for (int i = 0; i < u->rows; i++)                                                         \
      for (int g = 0; g < G; g++) {                                                           \
        float *sg = rv[i].s + (long)g * rv[i].L, *pg = rv[i].part + g * (D + 2);              \
        if (a->cap > 0.0f)                                                                    \
          for (long t = 0; t < rv[i].L; t++) sg[t] = a->cap * tanhf(sg[t] / a->cap);          \
        pg[D] = SOFTMAX_##SUF(sg, rv[i].L, pg + D + 1);                                       \
      }                                                                                       \
    EACH_RUN(u, rv, BS, stride, vh, multi, AXPYS_##SUF, AXPYS2_##SUF);                                             \
  }
/* a run's scores (DOTS) and values (AXPYS) for row i of a unit, with each set's pieces; DOTS2
 * and AXPYS2: rows i and i + 1 together (not with the bf16 pairs, which sum scores in another
 * order than the one-row pieces) */
#define DOTS2_ANY(SUF, i, p, n, row)                                                          \
  dots2_##SUF(rv[i].q, rv[(i) + 1].q, row, stride, n, a->bf16, D, G, a->scale,                \
              rv[i].s + ((p) - u->p0), rv[i].L, rv[(i) + 1].s + ((p) - u->p0), rv[(i) + 1].L)
#define AXPYS2_ANY(SUF, i, p, n, row)                                                         \
  axpys2_##SUF(rv[i].part, rv[i].s + ((p) - u->p0), rv[i].L, rv[(i) + 1].part,                \
               rv[(i) + 1].s + ((p) - u->p0), rv[(i) + 1].L, row, stride, n, a->bf16, D + 2, G, D)
#define DOTS2_512(i, p, n, row) DOTS2_ANY(512, i, p, n, row)
#define DOTS2_256(i, p, n, row) DOTS2_ANY(256, i, p, n, row)
#define DOTS2_c(i, p, n, row) DOTS2_ANY(c, i, p, n, row)
#define AXPYS2_512(i, p, n, row) AXPYS2_ANY(512, i, p, n, row)
#define AXPYS2_256(i, p, n, row) AXPYS2_ANY(256, i, p, n, row)
#define AXPYS2_c(i, p, n, row) AXPYS2_ANY(c, i, p, n, row)
#define DOTS_ANY(SUF, i, p, n, row)                                                           \
  (PAIRS_##SUF && pairs                                                                       \
       ? dots_pairs(rv[i].q, row, stride, n, D, G, a->scale, rv[i].s + ((p) - u->p0), rv[i].L) \
       : dots_##SUF(rv[i].q, row, stride, n, a->bf16, D, G, a->scale,                         \
                    rv[i].s + ((p) - u->p0), rv[i].L))
#define AXPYS_ANY(SUF, i, p, n, row)                                                          \
  (PAIRS_##SUF && pairs                                                                       \
       ? axpys_pairs(rv[i].part, rv[i].s + ((p) - u->p0), rv[i].L, row, stride, n, D + 2, G, D) \
       : axpys_##SUF(rv[i].part, rv[i].s + ((p) - u->p0), rv[i].L, row, stride, n, a->bf16,  \
                     D + 2, G, D))
#define DOTS_512(i, p, n, row) DOTS_ANY(512, i, p, n, row)
#define DOTS_256(i, p, n, row) DOTS_ANY(256, i, p, n, row)
#define DOTS_c(i, p, n, row) DOTS_ANY(c, i, p, n, row)
#define AXPYS_512(i, p, n, row) AXPYS_ANY(512, i, p, n, row)
#define AXPYS_256(i, p, n, row) AXPYS_ANY(256, i, p, n, row)
#define AXPYS_c(i, p, n, row) AXPYS_ANY(c, i, p, n, row)
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
static __thread unit *tls_units;
static __thread long tls_units_len;
static __thread long *tls_unit_of;
static __thread long tls_unit_of_len;

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
  /* first[b]: row b's first chunk (a run's rows have none; chunks first[b] .. first[b + 1] - 1
   * are its parts); groups: the runs; blocks: their items; units: the other rows' items */
  long *first = grow((void **)&tls_first, &tls_first_len, 4L * B + 3, sizeof(long));
  if (first == NULL) return;
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
  const long chunks = first[B], width = (long)G * (D + 2), run_items = blocks[n_groups] * Hkv;
  unit *units = grow((void **)&tls_units, &tls_units_len, chunks + 1, sizeof(unit));
  long *unit_of = grow((void **)&tls_unit_of, &tls_unit_of_len, chunks + 1, sizeof(long));
  float *parts = grow((void **)&tls_parts, &tls_parts_len, chunks * Hkv * width + 1, sizeof(float));
  if (units == NULL || unit_of == NULL || parts == NULL) return;
  /* units: a row's chunk joins the previous row's unit of the same chunk when it starts at the
   * same position and reads the same first block; the shared part ends where their tables
   * part or at the shortest row's last whole block. Up to `most` rows per unit, so that the
   * (KV head, unit) items still spread over the threads. */
  const long most_rows = (long)B * Hkv / (threads > 0 ? threads : 1);
  const int most = most_rows < 1 ? 1 : most_rows > UNIT_ROWS ? UNIT_ROWS : (int)most_rows;
  long n_units = 0;
  for (int b = 0; b < B; b++)
    for (long c = first[b]; c < first[b + 1]; c++) {
      const long base = lo[b] / CHUNK + (c - first[b]), end = (base + 1) * CHUNK;
      const long p0 = base * CHUNK > lo[b] ? base * CHUNK : lo[b];
      const long j = b > 0 ? base - lo[b - 1] / CHUNK : -1; /* the previous row's same chunk */
      unit *u = j >= 0 && j < first[b] - first[b - 1] ? units + unit_of[first[b - 1] + j] : NULL;
      if (u != NULL && u->b0 + u->rows == b && u->rows < most && u->p0 == p0) {
        const int64_t *t0 = tables + (long)u->b0 * W, *tb = tables + (long)b * W;
        long ps = u->rows > 1 ? u->ps : (hi[u->b0] < end ? hi[u->b0] : end) / BS * BS;
        const long own = (hi[b] < end ? hi[b] : end) / BS * BS;
        if (own < ps) ps = own;
        long blk = p0 / BS;
        while (blk * BS < ps && t0[blk] == tb[blk]) blk++;
        if (blk * BS < ps) ps = blk * BS;
        if (ps > p0) {
          u->ps = ps;
          u->rows++;
          unit_of[c] = u - units;
          continue;
        }
      }
      units[n_units] = (unit){b, 1, base, p0, p0};
      unit_of[c] = n_units++;
    }
  /* fewer (KV head, unit) pairs than threads (one sequence over few KV heads: Gemma 3's one):
   * each pair's query heads split into `split` slices on different threads; a head's scores
   * and sums are its own calls on the same data either way, so the bits do not change */
  const long n_pairs = n_units * Hkv;
  const long per_pair = n_pairs > 0 ? (threads + n_pairs - 1) / n_pairs : 1;
  const int split = per_pair > 1 && G > 1 ? (int)(per_pair < G ? per_pair : G) : 1;
  const long items = n_pairs * split;
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
      const long pair = i / split;
      const int h = (int)(pair / n_units), slice = (int)(i % split);
      const int g0 = G * slice / split, g1 = G * (slice + 1) / split;
      const unit *u = units + pair % n_units;
      if (vec == 2)
        unit_512(&a, h, g0, g1, u, parts, first);
      else if (vec == 1)
        unit_256(&a, h, g0, g1, u, parts, first);
      else
        unit_c(&a, h, g0, g1, u, parts, first);
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
