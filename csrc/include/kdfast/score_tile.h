// The score tile of the relation losses, CPU (plain C++, no torch headers): S = c * Q K^T for
// up to BQ query rows against one tile of BK keys, register-blocked per ISA. Included by
// csrc/cpu/relation.cpp and by tests/cpp/register_blocks.cpp, which checks every block.
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

// S[r, v*W + j] = c * sum_e Q[r, e] KT[e, v*W + j] for MR rows and NV vectors of W columns.
template <class Acc, int VB, int MR, int NV>
KDFAST_INLINE void score_block(const Acc* __restrict Q, int64_t d, const Acc* __restrict KT,
                               int64_t ldk, Acc c, Acc* __restrict S) {
  typedef Acc V __attribute__((vector_size(VB)));
  constexpr int W = VB / sizeof(Acc);
  V acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = V{};
  for (int64_t e = 0; e < d; ++e) {
    V k[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) __builtin_memcpy(&k[v], KT + e * ldk + v * W, sizeof(V));
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const Acc x = Q[r * d + e];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] += x * k[v];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const V out = acc[r][v] * c;
      __builtin_memcpy(S + r * BK + v * W, &out, sizeof(V));
    }
}

// S[i, j] = c * sum_e Q[i, e] KT[e, j] for i < nq, j < BK (KT: [d, ldk] rows, tile at column 0).
template <class Tile, class Acc>
KDFAST_INLINE void score_tile(const Acc* __restrict Q, int64_t nq, int64_t d,
                              const Acc* __restrict KT, int64_t ldk, Acc c, Acc* __restrict S) {
  constexpr int MR = Tile::MR, NV = Tile::NV, cols = NV * Tile::VB / sizeof(Acc);
  static_assert(BK % cols == 0, "a key tile is a whole number of register blocks");
  for (int jg = 0; jg < BK; jg += cols) {
    int64_t i = 0;
    for (; i + MR <= nq; i += MR)
      score_block<Acc, Tile::VB, MR, NV>(Q + i * d, d, KT + jg, ldk, c, S + i * BK + jg);
    for (; i < nq; ++i)
      score_block<Acc, Tile::VB, 1, NV>(Q + i * d, d, KT + jg, ldk, c, S + i * BK + jg);
  }
}

}  // namespace kdfast::cpu
