// The relation losses' small GEMMs, CPU (plain C++, no torch headers): the score tile S = c *
// Q K^T of up to BQ query rows against one tile of BK keys, and the gradients' dQ += dS K and
// dK^T += Q^T dS, register-blocked per ISA. Included by csrc/cpu/relation.cpp and by
// tests/cpp/register_blocks.cpp, which checks every block.
#pragma once

#include <cstdint>

#include "kdfast/cpu_math.h"

namespace kdfast::cpu {

constexpr int BK = 64;  // keys per tile / per loop-2 task of relation.cpp

// The score tile's register block per ISA: MR rows x NV vectors of VB bytes in accumulators,
// sized to the vector registers (32 zmm on AVX-512; 16 ymm / xmm on AVX2 and the baseline,
// where GCC would split a 64-byte vector in two and spill a 4 x 4 block to the stack: the
// KL from Q/K ran ~20x slower on an AVX2-only EPYC).
struct TileAvx512 { static constexpr int VB = 64, MR = 4, NV = 4; };
struct TileAvx2 { static constexpr int VB = 32, MR = 6, NV = 2; };
struct TileBase { static constexpr int VB = 16, MR = 6, NV = 2; };

// C[r, v*W + j] (+)= c * sum_e A[r*lda + e] B[e*ldb + v*W + j] for MR rows and NV vectors of
// W columns (ADD: accumulate into C, else overwrite).
template <class Acc, int VB, int MR, int NV, bool ADD>
KDFAST_INLINE void gemm_block(const Acc* __restrict A, int64_t lda, int64_t K,
                              const Acc* __restrict B, int64_t ldb, Acc c, Acc* __restrict C,
                              int64_t ldc) {
  typedef Acc V __attribute__((vector_size(VB)));
  constexpr int W = VB / sizeof(Acc);
  V acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = V{};
  for (int64_t e = 0; e < K; ++e) {
    V b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) __builtin_memcpy(&b[v], B + e * ldb + v * W, sizeof(V));
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const Acc x = A[r * lda + e];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] += x * b[v];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      V out = acc[r][v] * c;
      if constexpr (ADD) {
        V old;
        __builtin_memcpy(&old, C + r * ldc + v * W, sizeof(V));
        out += old;
      }
      __builtin_memcpy(C + r * ldc + v * W, &out, sizeof(V));
    }
}

// The rows of one column strip of tile_gemm: MR at a time, then one at a time.
template <class Tile, int NV, bool ADD, class Acc>
KDFAST_INLINE void strip_rows(const Acc* __restrict A, int64_t m, int64_t lda, int64_t K,
                              const Acc* __restrict B, int64_t ldb, Acc c, Acc* __restrict C,
                              int64_t ldc) {
  constexpr int MR = Tile::MR;
  int64_t i = 0;
  for (; i + MR <= m; i += MR)
    gemm_block<Acc, Tile::VB, MR, NV, ADD>(A + i * lda, lda, K, B, ldb, c, C + i * ldc, ldc);
  for (; i < m; ++i)
    gemm_block<Acc, Tile::VB, 1, NV, ADD>(A + i * lda, lda, K, B, ldb, c, C + i * ldc, ldc);
}

// C[i, j] (+)= c * sum_e A[i, e] B[e, j] for i < m, j < n (A: rows of stride lda, B: [K, ldb],
// C: rows of stride ldc), register-blocked by Tile; columns past the widest blocks take
// one-vector blocks, then a scalar loop.
template <class Tile, bool ADD, class Acc>
KDFAST_INLINE void tile_gemm(const Acc* __restrict A, int64_t m, int64_t lda, int64_t K,
                             const Acc* __restrict B, int64_t ldb, int64_t n, Acc c,
                             Acc* __restrict C, int64_t ldc) {
  constexpr int NV = Tile::NV, W = Tile::VB / sizeof(Acc);
  int64_t j = 0;
  for (; j + NV * W <= n; j += NV * W)
    strip_rows<Tile, NV, ADD>(A, m, lda, K, B + j, ldb, c, C + j, ldc);
  for (; j + W <= n; j += W) strip_rows<Tile, 1, ADD>(A, m, lda, K, B + j, ldb, c, C + j, ldc);
  for (int64_t i = 0; j < n && i < m; ++i) {
    for (int64_t jj = j; jj < n; ++jj) {
      Acc x = 0;
      for (int64_t e = 0; e < K; ++e) x += A[i * lda + e] * B[e * ldb + jj];
      C[i * ldc + jj] = ADD ? C[i * ldc + jj] + c * x : c * x;
    }
  }
}

// The score tile: S[i, j] = c * sum_e Q[i, e] KT[e, j] for i < nq, j < BK (Q: [nq, d]; KT: [d,
// ldk] rows, tile at column 0; S: [nq, BK]).
template <class Tile, class Acc>
KDFAST_INLINE void score_tile(const Acc* __restrict Q, int64_t nq, int64_t d,
                              const Acc* __restrict KT, int64_t ldk, Acc c, Acc* __restrict S) {
  static_assert(BK % (Tile::NV * Tile::VB / sizeof(Acc)) == 0, "a key tile is whole blocks");
  tile_gemm<Tile, false>(Q, nq, d, d, KT, ldk, BK, c, S, BK);
}

}  // namespace kdfast::cpu
