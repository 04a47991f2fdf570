/* The expm1 quirk of docs/benchmarks/rl.md §1a without Python: libtorch's AVX-512
 * Sleef_expm1f16_u10, timed before and after one call of Sleef_tanhf16_u10.
 * On this project's machine: 0.56 ms before, 0.08 ms after (65,536 floats per pass).
 *
 *   L=.venv/lib/python3.11/site-packages/torch/lib
 *   gcc -O2 -mavx512f -mavx512dq -o /tmp/sleef_expm1_repro benchmarks/sleef_expm1_repro.c \
 *       -L$L -ltorch_cpu -Wl,-rpath,$L && /tmp/sleef_expm1_repro
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

__m512 Sleef_expm1f16_u10(__m512);
__m512 Sleef_tanhf16_u10(__m512);

static float input[65536];

static double cpu_seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

/* milliseconds of CPU time per pass of expm1 over `input` (mean of 20 passes) */
static double expm1_ms(void) {
  double start = cpu_seconds();
  __m512 sum = _mm512_setzero_ps();
  for (int pass = 0; pass < 20; pass++)
    for (int i = 0; i < 65536; i += 16)
      sum = _mm512_add_ps(sum, Sleef_expm1f16_u10(_mm512_loadu_ps(input + i)));
  volatile float keep = _mm512_reduce_add_ps(sum);
  (void)keep;
  return (cpu_seconds() - start) / 20 * 1e3;
}

int main(void) {
  for (int i = 0; i < 65536; i++) input[i] = (float)((i * 7919) % 2000) / 500.0f - 2.0f;
  printf("expm1 before any tanh: %.3f ms\n", expm1_ms());
  volatile __m512 once = Sleef_tanhf16_u10(_mm512_set1_ps(0.5f));
  (void)once;
  printf("expm1 after one tanh:  %.3f ms\n", expm1_ms());
  return 0;
}
