// CPU kernels of batched saliency masking: sdecor::mask_select and sdecor::mask_fill_uniform.
//
// mask_select, per sample (parallel over the batch with at::parallel_for): an exact radix select
// on order-preserving integer keys of the saliency values.
//   pass 1: histogram of the top 11 key bits over the row;
//   pass 2: positions in buckets below the k-th one are masked, those in the k-th bucket are
//           compacted (in index order) into a candidate list;
//   then the candidates are narrowed digit by digit (11 bits at a time) the same way, always in
//   index order, until the remaining count r equals the candidates left or the keys are
//   exhausted (all candidates hold the same value): the first r candidates (lowest flat indices)
//   are masked. That is exactly "rank of (value, index) < k", the stable-sort rule of the
//   reference, in O(F) per sample with no comparison sort.
// Keys: float32/float16/bfloat16 -> float32 bits (exact widening), float64 -> 64-bit keys; -0.0 is
// mapped to +0.0 (a tie, as in torch.sort); largest=True complements the keys. NaN is rejected.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../mask_fill_checks.h"
#include "sortable_keys.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace sdecor {
namespace {

constexpr int kDigitBits = 11;
constexpr int kBins = 1 << kDigitBits;

// Selects the k smallest keys of one row (ties to the lower index) and writes the bool mask.
// Returns false if the row contains NaN (mask contents are then unspecified).
template <typename scalar_t>
bool select_row(const scalar_t* row, int64_t F, int64_t k, bool largest, bool* out, std::vector<uint32_t>& cand,
                std::array<uint32_t, kBins>& hist) {
  using KeyT = typename KeyOf<scalar_t>::KeyT;
  using Traits = KeyTraits<KeyT>;
  const KeyT flip = largest ? ~KeyT(0) : KeyT(0);
  auto key_at = [&](int64_t i) -> KeyT { return Traits::to_key(KeyOf<scalar_t>::bits(row[i])) ^ flip; };

  // Pass 1: NaN check and histogram of the top digit.
  int shift = Traits::kBits - kDigitBits;
  bool has_nan = false;
  std::fill(hist.begin(), hist.end(), 0u);
  for (int64_t i = 0; i < F; ++i) {
    const KeyT raw = KeyOf<scalar_t>::bits(row[i]);
    has_nan |= Traits::is_nan(raw);
    ++hist[static_cast<uint32_t>((Traits::to_key(raw) ^ flip) >> shift)];
  }
  if (has_nan) return false;
  if (k <= 0) {
    std::memset(out, 0, static_cast<size_t>(F));
    return true;
  }
  if (k >= F) {
    std::memset(out, 1, static_cast<size_t>(F));
    return true;
  }

  auto find_bucket = [&](int bins, uint64_t& remaining) -> uint32_t {
    uint64_t below = 0;
    for (int d = 0; d < bins; ++d) {
      if (below + hist[d] >= remaining) {
        remaining -= below;
        return static_cast<uint32_t>(d);
      }
      below += hist[d];
    }
    return static_cast<uint32_t>(bins - 1);  // unreachable when 0 < remaining <= total
  };

  uint64_t remaining = static_cast<uint64_t>(k);
  uint32_t bucket = find_bucket(kBins, remaining);

  // Pass 2: mask the buckets below, compact the k-th bucket's positions (index order).
  uint32_t* c = cand.data();
  size_t n = 0;
  for (int64_t i = 0; i < F; ++i) {
    const uint32_t d = static_cast<uint32_t>(key_at(i) >> shift);
    out[i] = d < bucket;
    c[n] = static_cast<uint32_t>(i);
    n += (d == bucket);
  }

  // Narrow the candidates digit by digit until they are exactly the ones to mask or all equal.
  while (n > remaining && shift > 0) {
    const int bits = std::min(kDigitBits, shift);
    shift -= bits;
    const int bins = 1 << bits;
    const KeyT digit_mask = static_cast<KeyT>(bins - 1);
    std::fill(hist.begin(), hist.begin() + bins, 0u);
    for (size_t j = 0; j < n; ++j) ++hist[static_cast<uint32_t>((key_at(c[j]) >> shift) & digit_mask)];
    bucket = find_bucket(bins, remaining);
    size_t w = 0;
    for (size_t j = 0; j < n; ++j) {
      const uint32_t idx = c[j];
      const uint32_t d = static_cast<uint32_t>((key_at(idx) >> shift) & digit_mask);
      out[idx] = d < bucket;
      c[w] = idx;
      w += (d == bucket);
    }
    n = w;
  }
  // The first `remaining` candidates (lowest indices among equal keys) are masked.
  for (size_t j = 0; j < n; ++j) out[c[j]] = j < remaining;
  return true;
}

at::Tensor mask_select_cpu(const at::Tensor& saliency, const at::Tensor& k, bool largest) {
  TORCH_CHECK(saliency.device().is_cpu() && k.device().is_cpu(), "sdecor::mask_select (CPU): tensors must be on the CPU");
  TORCH_CHECK(saliency.dim() == 2, "sdecor::mask_select: saliency must be (B, F), got ", saliency.sizes());
  TORCH_CHECK(k.dim() == 1 && k.size(0) == saliency.size(0), "sdecor::mask_select: k must have shape (",
              saliency.size(0), ",), got ", k.sizes());
  TORCH_CHECK(k.scalar_type() == at::kLong, "sdecor::mask_select: k must be int64, got ", k.scalar_type());
  const int64_t B = saliency.size(0);
  const int64_t F = saliency.size(1);
  TORCH_CHECK(F <= static_cast<int64_t>(UINT32_MAX), "sdecor::mask_select: at most 2^32-1 saliency elements per sample");
  const at::Tensor sal = saliency.contiguous();
  const at::Tensor kc = k.contiguous();
  const int64_t* kp = kc.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(kp[b] >= 0 && kp[b] <= F, "sdecor::mask_select: k must lie in [0, ", F, "], got ", kp[b],
                      " for sample ", b);
  }
  at::Tensor mask = at::empty({B, F}, saliency.options().dtype(at::kBool));
  if (B == 0 || F == 0) return mask;
  bool* mp = mask.data_ptr<bool>();
  std::atomic<bool> nan_found{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, sal.scalar_type(), "sdecor_mask_select_cpu", [&] {
    const scalar_t* sp = sal.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      std::vector<uint32_t> cand(static_cast<size_t>(F));
      std::array<uint32_t, kBins> hist;
      for (int64_t b = begin; b < end; ++b) {
        if (!select_row<scalar_t>(sp + b * F, F, kp[b], largest, mp + b * F, cand, hist)) {
          nan_found.store(true, std::memory_order_relaxed);
        }
      }
    });
  });
  TORCH_CHECK_VALUE(!nan_found.load(), "saliency must not contain NaN");
  return mask;
}

// ------------------------------------------------------------------------------------------
// mask_fill_uniform. x is viewed as (B, C, S); the draws of sample b start after those of all
// previous samples, so samples run in parallel once the masked counts are known. Per sample and
// channel: min/max of the row (op-math precision, NaN-propagating like torch.aminmax), copy the
// row, then write the fills at the row's masked positions (compacted once per sample for pixel
// masks, per channel for element masks), consuming consecutive draws.

// min and max of xr[0 .. S) (S >= 1) in op-math precision; NaN anywhere makes both NaN.
template <typename scalar_t>
void channel_range(const scalar_t* xr, int64_t S, at::opmath_type<scalar_t>& lo, at::opmath_type<scalar_t>& hi) {
  using opmath_t = at::opmath_type<scalar_t>;
  bool nan = false;
  lo = hi = static_cast<opmath_t>(xr[0]);
  for (int64_t i = 0; i < S; ++i) {
    const opmath_t v = static_cast<opmath_t>(xr[i]);
    nan |= v != v;
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
  }
  if (nan) lo = hi = std::numeric_limits<opmath_t>::quiet_NaN();
}

// float and double: 16-byte vectors (GCC/Clang vector extensions), four accumulators.
template <typename T>
void channel_range_vec(const T* xr, int64_t S, T& lo, T& hi) {
  typedef T V __attribute__((vector_size(16)));
  constexpr int64_t kN = 16 / sizeof(T);
  constexpr int kU = 4;
  lo = hi = xr[0];
  bool nan = false;
  int64_t i = 0;
  if (S >= kN * kU) {
    V mn[kU], mx[kU];
    using M = decltype(mn[0] != mn[0]);
    M nn[kU];
    for (int u = 0; u < kU; ++u) {
      std::memcpy(&mn[u], xr, sizeof(V));
      mx[u] = mn[u];
      nn[u] = mn[u] != mn[u];
    }
    for (; i + kN * kU <= S; i += kN * kU) {
      for (int u = 0; u < kU; ++u) {
        V v;
        std::memcpy(&v, xr + i + u * kN, sizeof(V));
        mn[u] = v < mn[u] ? v : mn[u];
        mx[u] = v > mx[u] ? v : mx[u];
        nn[u] |= (v != v);
      }
    }
    for (int u = 0; u < kU; ++u) {
      for (int64_t l = 0; l < kN; ++l) {
        lo = mn[u][l] < lo ? mn[u][l] : lo;
        hi = mx[u][l] > hi ? mx[u][l] : hi;
        nan |= nn[u][l] != 0;
      }
    }
  }
  for (; i < S; ++i) {
    const T v = xr[i];
    nan |= v != v;
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
  }
  if (nan) lo = hi = std::numeric_limits<T>::quiet_NaN();
}

template <>
void channel_range<float>(const float* xr, int64_t S, float& lo, float& hi) {
  channel_range_vec<float>(xr, S, lo, hi);
}

template <>
void channel_range<double>(const double* xr, int64_t S, double& lo, double& hi) {
  channel_range_vec<double>(xr, S, lo, hi);
}

// Positions of the set entries of m[0 .. S) in increasing order; returns their count.
inline int64_t compact(const bool* m, int64_t S, uint32_t* pos) {
  int64_t n = 0;
  for (int64_t i = 0; i < S; ++i) {
    pos[n] = static_cast<uint32_t>(i);
    n += m[i];
  }
  return n;
}

template <typename scalar_t>
void fill_sample(const scalar_t* xs, scalar_t* os, const bool* ms, const at::opmath_type<scalar_t>* u, int64_t base,
                 int64_t C, int64_t S, bool pixel, uint32_t* pos) {
  using opmath_t = at::opmath_type<scalar_t>;
  int64_t n = pixel ? compact(ms, S, pos) : 0;
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* xr = xs + c * S;
    scalar_t* orow = os + c * S;
    if (!pixel) n = compact(ms + c * S, S, pos);
    std::memcpy(orow, xr, sizeof(scalar_t) * static_cast<size_t>(S));
    if (n == 0) continue;
    opmath_t lo, hi;
    channel_range<scalar_t>(xr, S, lo, hi);
    const opmath_t scale = hi - lo;
    const opmath_t* uc = u + base;
    for (int64_t t = 0; t < n; ++t) {
      const opmath_t prod = scale * uc[t];  // two roundings, no FMA: bitwise equal to torch's lo + scale * u
      orow[pos[t]] = static_cast<scalar_t>(lo + prod);
    }
    base += n;
  }
}

at::Tensor mask_fill_uniform_cpu(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& u) {
  TORCH_CHECK(x.device().is_cpu() && mask.device().is_cpu() && u.device().is_cpu(),
              "sdecor::mask_fill_uniform (CPU): tensors must be on the CPU");
  const FillGeometry g = check_fill_args(x, mask, u);
  const int64_t B = g.B, C = g.C, S = g.S, F = g.F;
  const int64_t N = C * S;  // elements per sample
  const bool pixel = g.pixel;
  TORCH_CHECK(S <= static_cast<int64_t>(UINT32_MAX), "sdecor::mask_fill_uniform: rows longer than 2^32-1");

  const at::Tensor xc = x.contiguous();
  const at::Tensor mc = mask.contiguous();
  const at::Tensor uc = u.contiguous();
  at::Tensor out = at::empty_like(xc, at::MemoryFormat::Contiguous);
  if (x.numel() == 0) return out;

  // Masked count per sample (in x elements), then exclusive offsets into u.
  const bool* mp = mc.data_ptr<bool>();
  std::vector<int64_t> base(static_cast<size_t>(B) + 1, 0);
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const bool* m = mp + b * F;
      int64_t cnt = 0;
      for (int64_t i = 0; i < F; ++i) cnt += m[i];
      base[b + 1] = cnt * (pixel ? C : 1);
    }
  });
  for (int64_t b = 0; b < B; ++b) base[b + 1] += base[b];
  TORCH_CHECK(base[B] == u.numel(), "sdecor::mask_fill_uniform: u has ", u.numel(), " draws but x has ", base[B],
              " masked elements");

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sdecor_mask_fill_uniform_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const opmath_t* up = uc.data_ptr<opmath_t>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      std::vector<uint32_t> pos(static_cast<size_t>(std::max<int64_t>(S, 1)));
      for (int64_t b = begin; b < end; ++b) {
        fill_sample<scalar_t>(xp + b * N, op + b * N, mp + b * F, up, base[b], C, S, pixel, pos.data());
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sdecor, CPU, m) {
  m.impl("mask_select", &mask_select_cpu);
  m.impl("mask_fill_uniform", &mask_fill_uniform_cpu);
}

}  // namespace sdecor
