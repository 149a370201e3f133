/* What native_gemv.c (the int8 GEMV's AVX-512, AVX2 and C variants) and native_amx.c (its
 * AMX-INT8 variant) share: the packed weight's block, the GEMV's arguments, a row's store, and
 * the AMX variant's entry points (stubs that report no AMX where the toolchain lacks it). */
#ifndef FEWSHOT_NATIVE_GEMV_H
#define FEWSHOT_NATIVE_GEMV_H
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "native_math.h"

#define NB 16 /* output rows per packed block */
#define UNROLL _Pragma("GCC unroll 8")
#define PF_L1 2048 /* prefetch distances, bytes ahead */
#define PF_L2 8192

/* Where a GEMV's outputs go: columns [n1 of the previous part, n1) to y (row stride ldy). Several
 * weights with the same inputs stored one after the other (q, k and v; gate and up) are one
 * GEMV whose parts go to their own outputs; a part's width is a multiple of 16 but the last. */
typedef struct {
  float *y;
  long ldy;
  int n1;
} fs_out;

#define MAX_OUTS 3

void fs_gemv(const float *x, long ldx, const int8_t *q, const uint16_t *s, const float *bias,
             float *y, long ldy, int M, int N, int K, int G, int isa, int threads);
void fs_gemv_parts(const float *x, long ldx, const int8_t *q, const uint16_t *s,
                   const float *bias, const fs_out *outs, int nout, int M, int N, int K, int G,
                   int isa, int threads);

typedef struct {
  const int16_t *xq; /* [M][KP] the quantized activations, zero past K */
  const float *xs;   /* [M][ng] their scales */
  const int8_t *q;
  const uint16_t *s;
  const float *bias;
  fs_out out[MAX_OUTS];
  int M, N, KP, G, ng;
} gemv_args;

/* y[m, n .. n + 15] = f[0 .. 15] + bias for the block's real rows (the last block may have
 * fewer than 16), in the output part that holds the block. */
static inline void store_row(const gemv_args *a, const float *f, int n, int m) {
  const int nb = a->N - n < NB ? a->N - n : NB;
  int o = 0;
  while (n >= a->out[o].n1) o++;
  const int n0 = o ? a->out[o - 1].n1 : 0;
  float *y = a->out[o].y + (long)m * a->out[o].ldy + (n - n0);
  for (int j = 0; j < nb; j++) y[j] = f[j] + (a->bias ? a->bias[n + j] : 0.0f);
}

#define AMX_G 64         /* the AMX variant's group: one tile step of 64 inputs */
#define AMX_MIN_ROWS 9   /* fewer rows stay on the VNNI tiles (8 rows: the same time, 10 faster) */
#define AMX_TILE_BYTES 1024 /* 16 rows x 64 bytes */

int fs_amx(void); /* 1 when this CPU has AMX-INT8 and Linux grants it to this process */
int8_t *fs_amx_scratch(size_t bytes);
void fs_amx_split_row(const int16_t *xq, int m, int ng, int8_t *xt);
void fs_amx_blocks(const gemv_args *a, const int8_t *xt, int b0, int b1, int8_t *bq);
#endif
