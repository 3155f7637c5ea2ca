// Every register block of the BiLSTM's step GEMM (bilstm_cell.h) against a plain triple loop,
// whatever CPU runs it: the library itself only ever runs the block of the CPU it is on.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "kdfast/bilstm_cell.h"

using namespace kdfast::cpu;

typedef float v16sf __attribute__((vector_size(64)));
typedef float v8sf __attribute__((vector_size(32)));
typedef float v4sf __attribute__((vector_size(16)));
typedef double v8df __attribute__((vector_size(64)));
typedef double v4df __attribute__((vector_size(32)));
typedef double v2df __attribute__((vector_size(16)));

template <class T, class V, int MR>
int check(const char* name) {
  std::mt19937 rng(0);
  std::uniform_real_distribution<double> u(-1, 1);
  constexpr int64_t NB = panel_width<T>();
  int bad = 0;
  for (int64_t n : {1, 2, 5, 6, 7, 8, 9, 13, 17})
    for (int64_t K : {1, 3, 17, 150})
      for (int64_t N : {1, 15, 33, 150, 600}) {
        const int64_t panels = (N + NB - 1) / NB, ldc = panels * NB, lda = K + 3;
        std::vector<T> a(n * lda), b(K * N), bp(panels * K * NB), c(n * ldc, T(-7));
        for (auto& x : a) x = T(u(rng));
        for (auto& x : b) x = T(u(rng));
        pack_panels(b.data(), K, N, /*src_is_nk=*/false, bp.data());
        gemm_packed<T, V, MR>(n, K, panels, a.data(), lda, bp.data(), c.data(), ldc);
        for (int64_t i = 0; i < n; ++i)
          for (int64_t j = 0; j < N; ++j) {
            double want = 0;
            for (int64_t k = 0; k < K; ++k) want += double(a[i * lda + k]) * double(b[k * N + j]);
            const double tol = (sizeof(T) == 4 ? 1e-5 : 1e-13) * (K + 1);
            if (!(std::fabs(double(c[i * ldc + j]) - want) <= tol)) {
              if (bad++ < 5)
                std::printf("%s n=%ld K=%ld N=%ld C[%ld,%ld]=%g want %g\n", name, (long)n, (long)K,
                            (long)N, (long)i, (long)j, double(c[i * ldc + j]), want);
            }
          }
      }
  return bad;
}

int main() {
  int bad = check<float, v16sf, 8>("f32 16x8") + check<float, v8sf, 6>("f32 8x6") +
            check<float, v4sf, 6>("f32 4x6") + check<double, v8df, 8>("f64 8x8") +
            check<double, v4df, 6>("f64 4x6") + check<double, v2df, 6>("f64 2x6");
  std::printf(bad ? "FAILED\n" : "ok\n");
  return bad != 0;
}
