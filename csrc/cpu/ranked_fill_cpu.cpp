// CPU kernels of rank-once masking, used by the perturbation curves (deletion, insertion, pixel
// flipping, region perturbation), where one saliency ranking serves every step:
//
// sdecor::mask_ranks(saliency (B, F), largest) -> (B, F) int32: the place of each position in
//   the removal order of its row: ascending (value, flat index) pairs (largest: descending value,
//   still ascending index), -0.0 == +0.0. So ranks < k is exactly mask_select(saliency, k) for
//   every k. Per row: a stable LSD radix sort (11-bit digits) of the order-preserving keys, digits
//   on which every key agrees skipped; parallel over rows. NaN is rejected.
// sdecor::mask_fill_ranked(x (B, R, S), ranks (B, S), k (B,), fill (B, R, S)) -> (B, R, S):
//   out[b, r, s] = ranks[b, s] < k[b] ? fill[b, r, s] : x[b, r, s], in one pass, any strides of x
//   and fill (stride 0 is how a broadcast fill arrives), output contiguous. R = channels for
//   per-pixel ranks, 1 for per-element ranks.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "sortable_keys.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <limits>
#include <vector>

namespace sdecor {
namespace {

constexpr int kRankDigitBits = 11;
constexpr int kRankBins = 1 << kRankDigitBits;

// Ranks of one row; returns false when the row holds NaN (out is then unspecified).
template <typename scalar_t>
bool rank_row(const scalar_t* row, int64_t F, bool largest, int32_t* out, std::vector<typename KeyOf<scalar_t>::KeyT>& keys,
              std::vector<typename KeyOf<scalar_t>::KeyT>& keys_tmp, std::vector<int32_t>& idx, std::vector<int32_t>& idx_tmp,
              std::vector<uint32_t>& hist) {
  using KeyT = typename KeyOf<scalar_t>::KeyT;
  using Traits = KeyTraits<KeyT>;
  constexpr int kPasses = (Traits::kBits + kRankDigitBits - 1) / kRankDigitBits;
  const KeyT flip = largest ? ~KeyT(0) : KeyT(0);
  std::fill(hist.begin(), hist.end(), 0u);
  bool has_nan = false;
  for (int64_t i = 0; i < F; ++i) {
    const KeyT raw = KeyOf<scalar_t>::bits(row[i]);
    has_nan |= Traits::is_nan(raw);
    const KeyT key = Traits::to_key(raw) ^ flip;
    keys[i] = key;
    idx[i] = static_cast<int32_t>(i);
    for (int p = 0; p < kPasses; ++p) ++hist[p * kRankBins + static_cast<uint32_t>((key >> (p * kRankDigitBits)) & (kRankBins - 1))];
  }
  if (has_nan) return false;
  KeyT* src_k = keys.data();
  KeyT* dst_k = keys_tmp.data();
  int32_t* src_i = idx.data();
  int32_t* dst_i = idx_tmp.data();
  for (int p = 0; p < kPasses; ++p) {
    uint32_t* h = hist.data() + p * kRankBins;
    const int shift = p * kRankDigitBits;
    const uint32_t first = static_cast<uint32_t>((src_k[0] >> shift) & (kRankBins - 1));
    if (h[first] == static_cast<uint32_t>(F)) continue;  // every key has this digit: order unchanged
    uint32_t sum = 0;
    for (int d = 0; d < kRankBins; ++d) {
      const uint32_t c = h[d];
      h[d] = sum;
      sum += c;
    }
    for (int64_t i = 0; i < F; ++i) {  // stable scatter: equal digits keep their order
      const uint32_t d = static_cast<uint32_t>((src_k[i] >> shift) & (kRankBins - 1));
      const uint32_t to = h[d]++;
      dst_k[to] = src_k[i];
      dst_i[to] = src_i[i];
    }
    std::swap(src_k, dst_k);
    std::swap(src_i, dst_i);
  }
  for (int64_t j = 0; j < F; ++j) out[src_i[j]] = static_cast<int32_t>(j);
  return true;
}

at::Tensor mask_ranks_cpu(const at::Tensor& saliency, bool largest) {
  TORCH_CHECK(saliency.device().is_cpu(), "sdecor::mask_ranks (CPU): saliency must be on the CPU");
  TORCH_CHECK(saliency.dim() == 2, "sdecor::mask_ranks: saliency must be (B, F), got ", saliency.sizes());
  TORCH_CHECK(at::isFloatingType(saliency.scalar_type()), "sdecor::mask_ranks: saliency must be floating, got ",
              saliency.scalar_type());
  const int64_t B = saliency.size(0);
  const int64_t F = saliency.size(1);
  TORCH_CHECK(F <= static_cast<int64_t>(INT32_MAX), "sdecor::mask_ranks: at most 2^31-1 positions per sample");
  const at::Tensor sal = saliency.contiguous();
  at::Tensor ranks = at::empty({B, F}, saliency.options().dtype(at::kInt));
  if (B == 0 || F == 0) return ranks;
  int32_t* rp = ranks.data_ptr<int32_t>();
  std::atomic<bool> nan_found{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, sal.scalar_type(), "sdecor_mask_ranks_cpu", [&] {
    using KeyT = typename KeyOf<scalar_t>::KeyT;
    constexpr int kPasses = (KeyTraits<KeyT>::kBits + kRankDigitBits - 1) / kRankDigitBits;
    const scalar_t* sp = sal.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      std::vector<KeyT> keys(F), keys_tmp(F);
      std::vector<int32_t> idx(F), idx_tmp(F);
      std::vector<uint32_t> hist(static_cast<size_t>(kPasses) * kRankBins);
      for (int64_t b = begin; b < end; ++b) {
        if (!rank_row<scalar_t>(sp + b * F, F, largest, rp + b * F, keys, keys_tmp, idx, idx_tmp, hist)) {
          nan_found.store(true, std::memory_order_relaxed);
        }
      }
    });
  });
  TORCH_CHECK_VALUE(!nan_found.load(), "saliency must not contain NaN");
  return ranks;
}

// One row of the fill: contiguous x and a constant (stride-0) or contiguous fill get their own
// loops so the compiler vectorises the select.
template <typename scalar_t>
void fill_ranked_row(const scalar_t* __restrict__ xr, int64_t xs, const scalar_t* __restrict__ fr, int64_t fs,
                     const int32_t* __restrict__ rk, int64_t k64, scalar_t* __restrict__ orow, int64_t S) {
  // ranks are < 2^31, so clamping k to int32 keeps every comparison and lets it vectorise
  const int32_t k = static_cast<int32_t>(std::min<int64_t>(std::max<int64_t>(k64, 0), std::numeric_limits<int32_t>::max()));
  // both operands are loaded unconditionally so that the select vectorises (blend)
  if (xs == 1 && fs == 0) {
    const scalar_t f = fr[0];
    for (int64_t s = 0; s < S; ++s) {
      const scalar_t xv = xr[s];
      orow[s] = rk[s] < k ? f : xv;
    }
  } else if (xs == 1 && fs == 1) {
    for (int64_t s = 0; s < S; ++s) {
      const scalar_t xv = xr[s];
      const scalar_t fv = fr[s];
      orow[s] = rk[s] < k ? fv : xv;
    }
  } else {
    for (int64_t s = 0; s < S; ++s) orow[s] = rk[s] < k ? fr[s * fs] : xr[s * xs];
  }
}

at::Tensor mask_fill_ranked_cpu(const at::Tensor& x, const at::Tensor& ranks, const at::Tensor& k, const at::Tensor& fill) {
  TORCH_CHECK(x.device().is_cpu() && ranks.device().is_cpu() && k.device().is_cpu() && fill.device().is_cpu(),
              "sdecor::mask_fill_ranked (CPU): tensors must be on the CPU");
  TORCH_CHECK(x.dim() == 3, "sdecor::mask_fill_ranked: x must be (B, R, S), got ", x.sizes());
  const int64_t B = x.size(0), R = x.size(1), S = x.size(2);
  TORCH_CHECK(ranks.dim() == 2 && ranks.size(0) == B && ranks.size(1) == S, "sdecor::mask_fill_ranked: ranks must be (",
              B, ", ", S, "), got ", ranks.sizes());
  TORCH_CHECK(ranks.scalar_type() == at::kInt, "sdecor::mask_fill_ranked: ranks must be int32, got ", ranks.scalar_type());
  TORCH_CHECK(k.dim() == 1 && k.size(0) == B, "sdecor::mask_fill_ranked: k must have shape (", B, ",), got ", k.sizes());
  TORCH_CHECK(k.scalar_type() == at::kLong, "sdecor::mask_fill_ranked: k must be int64, got ", k.scalar_type());
  TORCH_CHECK(fill.sizes() == x.sizes(), "sdecor::mask_fill_ranked: fill must have x's shape ", x.sizes(),
              " (expand a broadcast fill), got ", fill.sizes());
  TORCH_CHECK(fill.scalar_type() == x.scalar_type(), "sdecor::mask_fill_ranked: fill must have x's dtype ",
              x.scalar_type(), ", got ", fill.scalar_type());
  at::Tensor out = at::empty({B, R, S}, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const at::Tensor rc = ranks.contiguous();
  const at::Tensor kc = k.contiguous();
  const int32_t* rp = rc.data_ptr<int32_t>();
  const int64_t* kp = kc.data_ptr<int64_t>();
  const int64_t xs0 = x.stride(0), xs1 = x.stride(1), xs2 = x.stride(2);
  const int64_t fs0 = fill.stride(0), fs1 = fill.stride(1), fs2 = fill.stride(2);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sdecor_mask_fill_ranked_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* fp = fill.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(S, 1));
    at::parallel_for(0, B * R, grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / R, r = row % R;
        fill_ranked_row<scalar_t>(xp + b * xs0 + r * xs1, xs2, fp + b * fs0 + r * fs1, fs2, rp + b * S, kp[b],
                                  op + row * S, S);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sdecor, CPU, m) {
  m.impl("mask_ranks", &mask_ranks_cpu);
  m.impl("mask_fill_ranked", &mask_fill_ranked_cpu);
}

}  // namespace sdecor
