// Order-preserving integer keys of floating saliency values, shared by the CPU selection
// (mask_select) and ranking (mask_ranks) kernels.
//
// KeyOf<scalar_t>::bits: float32/float16/bfloat16 are widened to float32 (exact) and give its
// 32 bits; float64 gives 64 bits. KeyTraits<KeyT>::to_key maps those bits to an unsigned key whose
// integer order is the floating order, with -0.0 mapped to +0.0 (a tie, as in torch.sort);
// is_nan recognises NaN bits (callers reject NaN).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>

namespace sdecor {
namespace {

template <typename KeyT>
struct KeyTraits;

template <>
struct KeyTraits<uint32_t> {
  static constexpr int kBits = 32;
  static inline bool is_nan(uint32_t u) { return (u & 0x7fffffffu) > 0x7f800000u; }
  static inline uint32_t to_key(uint32_t u) {
    if ((u & 0x7fffffffu) == 0u) u = 0u;  // -0.0 -> +0.0
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  }
};

template <>
struct KeyTraits<uint64_t> {
  static constexpr int kBits = 64;
  static inline bool is_nan(uint64_t u) { return (u & 0x7fffffffffffffffull) > 0x7ff0000000000000ull; }
  static inline uint64_t to_key(uint64_t u) {
    if ((u & 0x7fffffffffffffffull) == 0ull) u = 0ull;
    return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
  }
};

template <typename scalar_t>
struct KeyOf {  // float32, float16, bfloat16: widen to float32 (exact), take its bits
  using KeyT = uint32_t;
  static inline uint32_t bits(scalar_t v) {
    float f = static_cast<float>(v);
    uint32_t u;
    std::memcpy(&u, &f, sizeof(u));
    return u;
  }
};

template <>
struct KeyOf<double> {
  using KeyT = uint64_t;
  static inline uint64_t bits(double v) {
    uint64_t u;
    std::memcpy(&u, &v, sizeof(u));
    return u;
  }
};

}  // namespace
}  // namespace sdecor
