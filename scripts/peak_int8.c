/* The host's peak rate of the integer multiply-adds the int8 GEMV is built on: AVX-512
 * vpdpwssd (int16 x int16, 32 multiply-adds per instruction: what the GEMV uses), vpdpbusd
 * (uint8 x int8, 64: what int8 activations would use) and, for scale, 512-bit float FMA.
 * Twelve independent accumulator chains per thread, registers only (no memory traffic), 1 and
 * 2 OpenMP threads. BENCHMARKS.md compares the GEMV's achieved rate against these.
 *
 *   gcc -O2 -fopenmp scripts/peak_int8.c -o /tmp/peak_int8 && /tmp/peak_int8
 */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <time.h>

#define CHAINS 12
#define ITERS 100000000L

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

#define LOOP(NAME, TYPE, INIT_A, INIT_X, OP, REDUCE)                                         \
  __attribute__((target("avx512f,avx512bw,avx512vnni"))) static double NAME(void) {         \
    TYPE a[CHAINS];                                                                          \
    TYPE w = INIT_X(3), x = INIT_X(5);                                                       \
    for (int i = 0; i < CHAINS; i++) a[i] = INIT_A(i);                                       \
    for (long it = 0; it < ITERS; it++) {                                                    \
      _Pragma("GCC unroll 12") for (int i = 0; i < CHAINS; i++) a[i] = OP(a[i], w, x);       \
      __asm__ volatile("" : "+v"(w));                                                        \
    }                                                                                        \
    double s = 0;                                                                            \
    for (int i = 0; i < CHAINS; i++) s += REDUCE(a[i]);                                      \
    return s;                                                                                \
  }

#define SET_I32(i) _mm512_set1_epi32(i)
#define SET_I16(v) _mm512_set1_epi16(v)
#define SET_I8(v) _mm512_set1_epi8(v)
#define SET_F(v) _mm512_set1_ps((float)(v))
LOOP(wssd, __m512i, SET_I32, SET_I16, _mm512_dpwssd_epi32, _mm512_reduce_add_epi32)
LOOP(busd, __m512i, SET_I32, SET_I8, _mm512_dpbusd_epi32, _mm512_reduce_add_epi32)
LOOP(fmaps, __m512, SET_F, SET_F, _mm512_fmadd_ps, _mm512_reduce_add_ps)

static void report(const char *name, double (*fn)(void), double per_instr, int threads) {
  double sink = 0, t = now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
  sink += fn();
  const double dt = now() - t, instr = (double)ITERS * CHAINS / dt / 1e9;
  printf("%d thread(s) %-9s %5.2f G instructions/s per thread, %5.0f G multiply-adds/s in all%s\n",
         threads, name, instr, instr * per_instr * threads, sink == 0.5 ? " " : "");
}

int main(void) {
  for (int threads = 1; threads <= 2; threads++) {
    report("vpdpwssd", wssd, 32, threads);
    report("vpdpbusd", busd, 64, threads);
    report("vfmadd", fmaps, 16, threads);
  }
  return 0;
}
