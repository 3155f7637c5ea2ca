// Shared CPU numerics: a vectorisable exp, storage codecs for fp32/fp64/bf16/fp16, and the
// per-ISA cloning attribute. Plain C++ with no torch headers: the kernels that include it are
// compiled once per ISA by GCC's target_clones and picked at load time from what the CPU
// reports, so a wheel built on an AVX-512 machine still runs on a plain x86-64 one.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#define KDFAST_INLINE inline __attribute__((always_inline))

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define KDFAST_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
// Where one body does not suit every ISA (a register block sized to the vector registers), a
// function is written once per ISA with these (GCC's function multiversioning: same name and
// signature, picked at load time like the clones).
#define KDFAST_ISA_VERSIONS 1
#define KDFAST_ISA_AVX512 __attribute__((target("arch=x86-64-v4")))
#define KDFAST_ISA_AVX2 __attribute__((target("arch=x86-64-v3")))
#define KDFAST_ISA_BASE __attribute__((target("default")))
#else
#define KDFAST_CPU_CLONES
#define KDFAST_ISA_VERSIONS 0
#define KDFAST_ISA_BASE
#endif

namespace kdfast::cpu {

// GCC vectors one zmm / ymm / xmm register wide, for the per-ISA register blocks.
typedef float v16sf __attribute__((vector_size(64)));
typedef float v8sf __attribute__((vector_size(32)));
typedef float v4sf __attribute__((vector_size(16)));
typedef double v8df __attribute__((vector_size(64)));
typedef double v4df __attribute__((vector_size(32)));
typedef double v2df __attribute__((vector_size(16)));

template <class To, class From>
KDFAST_INLINE To bit_cast(From from) {
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}

// exp(x) in fp32 to ~2 ulp: Cody-Waite range reduction and a degree-6 polynomial. Written
// without calls or branches so that the loops using it vectorise. exp(-inf) is exactly 0.
KDFAST_INLINE float fast_exp(float x) {
  const float lo = -87.0f, hi = 88.0f;
  const float xc = x < lo ? lo : (x > hi ? hi : x);
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float scale = bit_cast<float>(static_cast<int32_t>((static_cast<int32_t>(n) + 127) << 23));
  return x < lo ? 0.0f : p * scale;
}

KDFAST_INLINE float exp_acc(float x) { return fast_exp(x); }
KDFAST_INLINE double exp_acc(double x) { return __builtin_exp(x); }

// Storage codecs: load to the accumulation type, store rounded to nearest even.
struct F32 {
  using T = float;
  using Acc = float;
  static KDFAST_INLINE Acc load(T v) { return v; }
  static KDFAST_INLINE T store(Acc v) { return v; }
};
struct F64 {
  using T = double;
  using Acc = double;
  static KDFAST_INLINE Acc load(T v) { return v; }
  static KDFAST_INLINE T store(Acc v) { return v; }
};
struct BF16 {
  using T = uint16_t;
  using Acc = float;
  static KDFAST_INLINE Acc load(T v) { return bit_cast<float>(static_cast<uint32_t>(v) << 16); }
  static KDFAST_INLINE T store(Acc v) {
    const uint32_t u = bit_cast<uint32_t>(v);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return v != v ? static_cast<T>(0x7fc0) : static_cast<T>(rounded);
  }
};
struct F16 {
  using T = _Float16;
  using Acc = float;
  static KDFAST_INLINE Acc load(T v) { return static_cast<float>(v); }
  static KDFAST_INLINE T store(Acc v) { return static_cast<T>(v); }
};

template <class Acc>
constexpr Acc neg_inf() {
  return -std::numeric_limits<Acc>::infinity();
}

}  // namespace kdfast::cpu
