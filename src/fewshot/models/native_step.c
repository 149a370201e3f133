/* The decoder layers of an int8 step in one call (built with native.c, native_gemv.c and
 * native_attention.c into one library; driven by native_step.py).
 *
 * A decode step of GPT-Neo-125M is ~20 small operations per layer; run from Python each costs
 * its module call, its dispatch and its allocation, ~3 ms a step against ~3 ms of reading the
 * weights. Here every layer of the stack runs in C, on the same kernels the models' eager
 * float32 code calls (the GEMV, RMSNorm, LayerNorm, the activations, rotary positions, the
 * decode attention; the K/V written to the pool as torch's index_copy writes it), in the same
 * order, so the hidden states that come out are bitwise the eager path's (tested). One layer,
 * pre-norm, each part optional where a family has no such part:
 *
 *     h = in_norm(x); q, k, v = h Wq, h Wk, h Wv; q, k = q_norm(q), k_norm(k) (per head);
 *     q, k = rope(q), rope(k); K/V[slot] = k, v; o = attention(q); a = o Wo;
 *     x = x + post_attn_norm(a)
 *     h = pre_ff_norm(x); u = act(h W1) [* h W3]; d = u W2; x = x + post_ff_norm(d)
 *
 * Every operation works row by row: each row of x is a query with its own K/V slot (`slots`),
 * block table (`tables`) and context end, position + 1 (`hi`), so a batch may mix decodes and
 * (short) prefill chunks; a chunk's own keys are written before any of its queries attends.
 *
 * Each call adds the time spent in each part of the layers to process-wide totals (one clock
 * read per part, ~1 us a call) that fs_step_phases reads and resets: the benchmark's profile
 * of where a step's time goes inside the native layers.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "native_gemv.h"

void fs_decode_attention(const float *q, const void *k, const void *v, const int64_t *tables,
                         int W, const int32_t *lo, const int32_t *hi, float *out, int B, int Hq,
                         int Hkv, int D, int BS, long nblk, float scale, float cap, int bf16,
                         int isa, int threads);
void fs_rms_norm(const float *x, const float *w, float offset, float eps, float *y, int rows,
                 int D, int threads);
void fs_layer_norm(const float *x, const float *w, const float *b, float eps, float *y, int rows,
                   int D, int threads);
void fs_act(const float *x, const float *mul, float *y, long n, int kind, int threads);
void fs_rope(const float *x, const float *cos, const float *sin, float *y, int N, int H, int D);

typedef struct { /* a packed int8 weight [N, K] (packed_weight.PackedWeight); q == NULL: absent */
  const int8_t *q;
  const uint16_t *s;
  const float *bias;
  int N, K, G;
} fs_lin;

typedef struct { /* kind 0: absent, 1: LayerNorm (w, b), 2: RMSNorm times (offset + w) */
  const float *w, *b;
  float offset, eps;
  int kind;
} fs_nrm;

typedef struct {
  fs_nrm in, post_attn, pre_ff, post_ff, qn, kn;
  fs_lin wq, wk, wv, wo, w1, w3, w2; /* w1: activated (c_fc, gate), w3: multiplied in (up) */
  int rope;                          /* -1: none, else the table (0 or 1) */
  int window;                        /* 0: every position, else the last `window` */
  float scale, softcap;
  /* qkv: wq holds q, k and v one after the other (one GEMV; wk, wv unused); gate_up: w1 holds
   * the gate and up projections (w3 unused) */
  int qkv, gate_up;
} fs_layer;

typedef struct { /* the model: read-only, shared by every call */
  int n_layers, C, Hq, Hkv, D, inner, act;
  const fs_layer *layers;
} fs_stack;

typedef struct { /* the KV pool of one call: per layer K and V [Hkv][NBLK][BS][D] */
  void *const *k, *const *v;
  int bf16, bs;
  long nblk;
} fs_pool;

static void lin(const fs_lin *l, const float *x, float *y, int B, int isa, int threads) {
  fs_gemv(x, l->K, l->q, l->s, l->bias, y, l->N, B, l->N, l->K, l->G, isa, threads);
}

/* A stored-together weight (qkv, gate_up) into its parts' outputs, each [B][width]. */
static void lin_parts(const fs_lin *l, const float *x, float *const *ys, const int *widths,
                      int n, int B, int isa, int threads) {
  fs_out outs[MAX_OUTS];
  for (int i = 0, n1 = 0; i < n; i++) {
    n1 += widths[i];
    outs[i] = (fs_out){ys[i], widths[i], n1};
  }
  fs_gemv_parts(x, l->K, l->q, l->s, l->bias, outs, n, B, l->N, l->K, l->G, isa, threads);
}

/* norm(x) into y (x itself when absent) */
static const float *norm(const fs_nrm *n, const float *x, float *y, int rows, int D,
                         int threads) {
  if (n->kind == 1)
    fs_layer_norm(x, n->w, n->b, n->eps, y, rows, D, threads);
  else if (n->kind == 2)
    fs_rms_norm(x, n->w, n->offset, n->eps, y, rows, D, threads);
  else
    return x;
  return y;
}

static uint16_t to_bf16(float f) { /* round to nearest even, as torch converts */
  uint32_t u;
  memcpy(&u, &f, 4);
  if (isnan(f)) return 0x7FC0;
  return (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

/* k or v rows [B][Hkv][D] into the pool at each sequence's slot */
static void store_kv(const fs_stack *st, const fs_pool *pool, void *cache, const float *x, int B,
                     const int64_t *slots) {
  const int H = st->Hkv, D = st->D;
  const long plane = pool->nblk * pool->bs; /* slots per head */
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++) {
      const float *src = x + ((long)b * H + h) * D;
      const long at = ((long)h * plane + slots[b]) * D;
      if (pool->bf16) {
        uint16_t *dst = (uint16_t *)cache + at;
        for (int d = 0; d < D; d++) dst[d] = to_bf16(src[d]);
      } else {
        memcpy((float *)cache + at, src, sizeof(float) * D);
      }
    }
}

/* The parts of a layer, in native.STEP_PHASES' order. */
enum { PH_NORM, PH_QKV, PH_ROPE_KV, PH_ATTN, PH_OUT, PH_UP, PH_ACT, PH_DOWN, N_PHASES };
static double phase_ns[N_PHASES];
static long phase_calls, phase_rows;

static double now_ns(void) {
  struct timespec ts;
  timespec_get(&ts, TIME_UTC);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* acc[phase] += the time since *t; *t = now */
static void lap(double *acc, int phase, double *t) {
  const double n = now_ns();
  acc[phase] += n - *t;
  *t = n;
}

/* The totals since the last call: ns[N_PHASES] (ns per part), counts[2] (calls, rows); reset. */
void fs_step_phases(double *ns, long *counts) {
#pragma omp critical(fs_phases)
  {
    for (int i = 0; i < N_PHASES; i++) ns[i] = phase_ns[i], phase_ns[i] = 0.0;
    counts[0] = phase_calls, counts[1] = phase_rows;
    phase_calls = phase_rows = 0;
  }
}

static void add(float *x, const float *y, long n) {
  for (long i = 0; i < n; i++) x[i] = x[i] + y[i];
}

/* x [B][C] float32 (B rows), in place: through every layer of the stack. Returns 0, or -1
 * when out of memory (x then holds no meaningful values). */
int fs_run_layers(const fs_stack *st, const fs_pool *pool, float *x, int B, const int64_t *slots,
                   const int64_t *tables, int W, const int32_t *hi, const float *const *cos,
                   const float *const *sin, int isa, int threads) {
  const int C = st->C, D = st->D, qw = st->Hq * D, kw = st->Hkv * D;
  const long wide = (long)B * st->inner;
  float *h = malloc(sizeof(float) * (size_t)B * C), *a = malloc(sizeof(float) * (size_t)B * C);
  float *q = malloc(sizeof(float) * (size_t)B * qw), *q2 = malloc(sizeof(float) * (size_t)B * qw);
  float *k = malloc(sizeof(float) * (size_t)B * kw), *k2 = malloc(sizeof(float) * (size_t)B * kw);
  float *v = malloc(sizeof(float) * (size_t)B * kw), *o = malloc(sizeof(float) * (size_t)B * qw);
  float *u = malloc(sizeof(float) * (size_t)wide), *u2 = malloc(sizeof(float) * (size_t)wide);
  int32_t *lo = malloc(sizeof(int32_t) * (size_t)B);
  int status = h && a && q && q2 && k && k2 && v && o && u && u2 && lo ? 0 : -1;
  double acc[N_PHASES] = {0}, t = now_ns();
  for (int li = 0; li < st->n_layers && status == 0; li++) {
    const fs_layer *L = st->layers + li;
    /* attention */
    const float *hn = norm(&L->in, x, h, B, C, threads);
    lap(acc, PH_NORM, &t);
    if (L->qkv) {
      float *const ys[3] = {q, k, v};
      const int widths[3] = {qw, kw, kw};
      lin_parts(&L->wq, hn, ys, widths, 3, B, isa, threads);
    } else {
      lin(&L->wq, hn, q, B, isa, threads);
      lin(&L->wk, hn, k, B, isa, threads);
      lin(&L->wv, hn, v, B, isa, threads);
    }
    lap(acc, PH_QKV, &t);
    norm(&L->qn, q, q, B * st->Hq, D, threads); /* in place: RMSNorm reads a row, then writes it */
    norm(&L->kn, k, k, B * st->Hkv, D, threads);
    lap(acc, PH_NORM, &t);
    const float *qr = q, *kr = k;
    if (L->rope >= 0) {
      fs_rope(q, cos[L->rope], sin[L->rope], q2, B, st->Hq, D);
      fs_rope(k, cos[L->rope], sin[L->rope], k2, B, st->Hkv, D);
      qr = q2, kr = k2;
    }
    store_kv(st, pool, pool->k[li], kr, B, slots);
    store_kv(st, pool, pool->v[li], v, B, slots);
    for (int b = 0; b < B; b++) lo[b] = L->window > 0 && hi[b] > L->window ? hi[b] - L->window : 0;
    lap(acc, PH_ROPE_KV, &t);
    fs_decode_attention(qr, pool->k[li], pool->v[li], tables, W, lo, hi, o, B, st->Hq, st->Hkv,
                        D, pool->bs, pool->nblk, L->scale, L->softcap, pool->bf16, isa, threads);
    lap(acc, PH_ATTN, &t);
    lin(&L->wo, o, a, B, isa, threads);
    lap(acc, PH_OUT, &t);
    add(x, norm(&L->post_attn, a, a, B, C, threads), (long)B * C);
    /* MLP */
    hn = norm(&L->pre_ff, x, h, B, C, threads);
    lap(acc, PH_NORM, &t);
    if (L->gate_up) {
      float *const ys[2] = {u, u2};
      const int widths[2] = {st->inner, st->inner};
      lin_parts(&L->w1, hn, ys, widths, 2, B, isa, threads);
    } else {
      lin(&L->w1, hn, u, B, isa, threads);
      if (L->w3.q) lin(&L->w3, hn, u2, B, isa, threads);
    }
    lap(acc, PH_UP, &t);
    fs_act(u, L->gate_up || L->w3.q ? u2 : NULL, u, wide, st->act, threads); /* act(u) [* u2] */
    lap(acc, PH_ACT, &t);
    lin(&L->w2, u, a, B, isa, threads);
    lap(acc, PH_DOWN, &t);
    add(x, norm(&L->post_ff, a, a, B, C, threads), (long)B * C);
    lap(acc, PH_NORM, &t);
  }
#pragma omp critical(fs_phases)
  {
    for (int i = 0; i < N_PHASES; i++) phase_ns[i] += acc[i];
    phase_calls++, phase_rows += B;
  }
  free(h), free(a), free(q), free(q2), free(k), free(k2), free(v), free(o), free(u), free(u2);
  free(lo);
  return status;
}
