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

// tile_gemm<Tile, ADD>: C[i, j] (+)= c * sum_e A[i, e] B[e, j] with strides past the row
// lengths, every remainder of rows and columns; score_tile is the case n = BK, lda = K.
template <class Tile, class T>
int check_tile_gemm(const char* name) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<double> u(-1, 1);
  int bad = 0;
  for (bool add : {false, true})
    for (int64_t m : {1, 2, 3, 4, 5, 6, 7, 13, 32})
      for (int64_t K : {1, 5, 32, 65})
        for (int64_t n : {1, 7, 8, 16, 24, 33, 64}) {
          const bool tile = n == BK;  // the score tile's own layout: Q [m, K], S [m, BK]
          const int64_t lda = tile ? K : K + 3, ldb = n + 5, ldc = tile ? BK : n + 2;
          std::vector<T> a(m * lda), b(K * ldb), c(m * ldc), c0;
          for (auto& x : a) x = T(u(rng));
          for (auto& x : b) x = T(u(rng));
          for (auto& x : c) x = T(u(rng));
          c0 = c;
          const T scale = T(0.37);
          if (add)
            tile_gemm<Tile, true>(a.data(), m, lda, K, b.data(), ldb, n, scale, c.data(), ldc);
          else if (tile)
            score_tile<Tile>(a.data(), m, K, b.data(), ldb, scale, c.data());
          else
            tile_gemm<Tile, false>(a.data(), m, lda, K, b.data(), ldb, n, scale, c.data(), ldc);
          for (int64_t i = 0; i < m; ++i)
            for (int64_t j = 0; j < ldc; ++j) {
              double want = double(c0[i * ldc + j]);  // columns past n stay untouched
              if (j < n) {
                double dot = 0;
                for (int64_t e = 0; e < K; ++e)
                  dot += double(a[i * lda + e]) * double(b[e * ldb + j]);
                want = double(scale) * dot + (add ? want : 0.0);
              }
              const double tol = (sizeof(T) == 4 ? 1e-5 : 1e-13) * (K + 2);
              if (!(std::fabs(double(c[i * ldc + j]) - want) <= tol)) {
                if (bad++ < 5)
                  std::printf("%s add=%d m=%ld K=%ld n=%ld C[%ld,%ld]=%g want %g\n", name, int(add),
                              (long)m, (long)K, (long)n, (long)i, (long)j, double(c[i * ldc + j]),
                              want);
              }
            }
        }
  return bad;
}

int main() {
  int bad = check_gemm<float, v16sf, 8>("f32 16x8") + check_gemm<float, v8sf, 6>("f32 8x6") +
            check_gemm<float, v4sf, 6>("f32 4x6") + check_gemm<double, v8df, 8>("f64 8x8") +
            check_gemm<double, v4df, 6>("f64 4x6") + check_gemm<double, v2df, 6>("f64 2x6");
  bad += check_tile_gemm<TileAvx512, float>("tile avx512 f32") +
         check_tile_gemm<TileAvx2, float>("tile avx2 f32") +
         check_tile_gemm<TileBase, float>("tile base f32") +
         check_tile_gemm<TileAvx512, double>("tile avx512 f64") +
         check_tile_gemm<TileAvx2, double>("tile avx2 f64") +
         check_tile_gemm<TileBase, double>("tile base f64");
  std::printf(bad ? "FAILED\n" : "ok\n");
  return bad != 0;
}
