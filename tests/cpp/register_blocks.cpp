// Every per-ISA register block (the BiLSTM's step GEMM in bilstm_cell.h, the relation losses'
// score tile in score_tile.h) against a plain triple loop, whatever CPU runs it: the library
// itself only ever runs the blocks of the CPU it is on.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "kdfast/bilstm_cell.h"
#include "kdfast/score_tile.h"

using namespace kdfast::cpu;


template <class T, class V, int MR>
int check_gemm(const char* name) {
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

// score_tile<Tile>: S[i, j] = c * sum_e Q[i, e] KT[e, j], i < nq, j < BK, KT with row stride ldk.
template <class Tile, class T>
int check_score_tile(const char* name) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<double> u(-1, 1);
  int bad = 0;
  for (int64_t nq : {1, 2, 3, 4, 5, 6, 7, 13, 32})
    for (int64_t d : {1, 5, 32, 65}) {
      const int64_t ldk = 3 * BK;
      std::vector<T> q(nq * d), kt(d * ldk), s(nq * BK, T(-7));
      for (auto& x : q) x = T(u(rng));
      for (auto& x : kt) x = T(u(rng));
      const T c = T(0.37);
      score_tile<Tile>(q.data(), nq, d, kt.data() + BK, ldk, c, s.data());
      for (int64_t i = 0; i < nq; ++i)
        for (int64_t j = 0; j < BK; ++j) {
          double want = 0;
          for (int64_t e = 0; e < d; ++e) want += double(q[i * d + e]) * double(kt[e * ldk + BK + j]);
          want *= double(c);
          const double tol = (sizeof(T) == 4 ? 1e-5 : 1e-13) * (d + 1);
          if (!(std::fabs(double(s[i * BK + j]) - want) <= tol)) {
            if (bad++ < 5)
              std::printf("%s nq=%ld d=%ld S[%ld,%ld]=%g want %g\n", name, (long)nq, (long)d,
                          (long)i, (long)j, double(s[i * BK + j]), want);
          }
        }
    }
  return bad;
}

int main() {
  int bad = check_gemm<float, v16sf, 8>("f32 16x8") + check_gemm<float, v8sf, 6>("f32 8x6") +
            check_gemm<float, v4sf, 6>("f32 4x6") + check_gemm<double, v8df, 8>("f64 8x8") +
            check_gemm<double, v4df, 6>("f64 4x6") + check_gemm<double, v2df, 6>("f64 2x6");
  bad += check_score_tile<TileAvx512, float>("tile avx512 f32") +
         check_score_tile<TileAvx2, float>("tile avx2 f32") +
         check_score_tile<TileBase, float>("tile base f32") +
         check_score_tile<TileAvx512, double>("tile avx512 f64") +
         check_score_tile<TileAvx2, double>("tile avx2 f64") +
         check_score_tile<TileBase, double>("tile base f64");
  std::printf(bad ? "FAILED\n" : "ok\n");
  return bad != 0;
}
