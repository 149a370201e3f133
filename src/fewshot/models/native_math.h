/* Math shared by the native kernels' sources (native.c, native_attention.c, native_runs.c and,
 * through native_gemv.h, native_gemv.c and native_amx.c). */
#ifndef FEWSHOT_NATIVE_MATH_H
#define FEWSHOT_NATIVE_MATH_H
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

/* A bfloat16's bits as float32 (exact: bf16 is float32's upper half). */
static inline float widen_bf16(uint16_t h) {
  const uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* Element d of a row of float32 or bfloat16 values, as float32. */
static inline float row_value(const void *r, int bf16, long d) {
  return bf16 ? widen_bf16(((const uint16_t *)r)[d]) : ((const float *)r)[d];
}

/* 16 bfloat16 values as float32 (AVX-512; exact, each into the upper half of its lane). */
__attribute__((target("avx512f"))) static inline __m512 widen_bf16_512(__m256i h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
__attribute__((target("avx512f"))) static inline __m512 load_bf16_512(const uint16_t *p) {
  return widen_bf16_512(_mm256_loadu_si256((const __m256i *)p));
}
/* 8 bfloat16 values as float32 (AVX2). */
__attribute__((target("avx2"))) static inline __m256 load_bf16_256(const uint16_t *p) {
  return _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

/* e^x, x clamped to [-87, 87]: x = n ln2 + r, |r| <= ln2 / 2, e^r by its Taylor polynomial to
 * r^7 (relative error ~2e-7), times 2^n from the exponent bits. Branch-free, so the loops that
 * call it vectorize. */
static inline float fs_exp(float x) {
  x = x < -87.0f ? -87.0f : x > 87.0f ? 87.0f : x;
  const float n = __builtin_rintf(x * 1.44269504f);
  const float r = (x - n * 0.693145752f) - n * 1.42860677e-6f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = ((int32_t)n + 127) << 23;
  float two_n;
  memcpy(&two_n, &bits, 4);
  return p * two_n;
}

/* fs_exp on 8 lanes, operation for operation (no fused multiply-adds: the same bits; AVX2). */
__attribute__((target("avx2"))) static inline __m256 fs_exp256(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 r = _mm256_sub_ps(_mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(0.693145752f))),
                                 _mm256_mul_ps(n, _mm256_set1_ps(1.42860677e-6f)));
  static const float c[7] = {1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f, 1.0f / 6.0f, 0.5f, 1.0f,
                             1.0f};
  __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
  for (int i = 0; i < 7; i++) p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(c[i]));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* e^x lane by lane, x clamped to [-87, 87] (fs_exp above, vectorized; AVX-512) */
__attribute__((target("avx512f,avx512bw,fma"))) static inline __m512 exp512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f),
                                    _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x));
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

/* Asks for `bytes` bytes from r into the cache: a block of keys or values read next (inside a
 * step they arrive cold, the weights streamed between layers having evicted them). */
static inline void prefetch_rows(const char *r, size_t bytes) {
  for (size_t o = 0; o < bytes; o += 64) _mm_prefetch(r + o, _MM_HINT_T0);
}

/* Lanes [0, n) of 8 set (all ones), the rest clear: a mask for AVX2's masked loads. */
__attribute__((target("avx2"))) static inline __m256i lanes_below(long n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n > 8 ? 8 : (int)n),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

#endif
