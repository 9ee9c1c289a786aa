// CUDA implementations of sdecor::mask_select and sdecor::mask_fill_random: argument checks and
// launches of the kernels in mask_kernels.cu (through the plain interface of mask_kernels.h).
// Compiled when the extension is built with its CUDA part (setup.py).
//
// Neither op synchronises with the host. Shapes, dtypes and devices are checked here; the values
// the host cannot see without a synchronisation (k in [0, F], no NaN in the saliency) are checked
// by the select kernel, as a device-side assertion: the error surfaces at the next synchronising
// call (e.g. .item(), .cpu(), torch.cuda.synchronize()) or checked kernel launch (possibly the
// fill's, in the same mask_features call), and leaves the CUDA context unusable.
// Every kernel launch is checked (C10_CUDA_CHECK on the status the launcher returns, which is
// cudaGetLastError after each launch).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/PhiloxCudaState.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <mutex>
#include <optional>

#include "mask_kernels.h"

namespace sdecor {
namespace {

int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return kSdecorFloat32;
    case at::kDouble:
      return kSdecorFloat64;
    case at::kHalf:
      return kSdecorFloat16;
    case at::kBFloat16:
      return kSdecorBFloat16;
    default:
      TORCH_CHECK(false, "sdecor: unsupported dtype ", t, " (float32, float64, float16, bfloat16)");
  }
  return -1;
}

at::Tensor workspace_for(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes > 0 ? bytes : 1)}, like.options().dtype(at::kByte));
}

at::Tensor mask_select_cuda(const at::Tensor& saliency, const at::Tensor& k, bool largest) {
  TORCH_CHECK(saliency.is_cuda(), "sdecor::mask_select (CUDA): saliency must be a CUDA tensor");
  TORCH_CHECK(saliency.dim() == 2, "sdecor::mask_select: saliency must be (B, F), got ", saliency.sizes());
  TORCH_CHECK(k.dim() == 1 && k.size(0) == saliency.size(0), "sdecor::mask_select: k must have shape (",
              saliency.size(0), ",), got ", k.sizes());
  TORCH_CHECK(k.scalar_type() == at::kLong, "sdecor::mask_select: k must be int64, got ", k.scalar_type());
  TORCH_CHECK(k.device() == saliency.device(), "sdecor::mask_select: k must be on ", saliency.device(), ", got ",
              k.device());
  const int64_t B = saliency.size(0);
  const int64_t F = saliency.size(1);
  TORCH_CHECK(F <= static_cast<int64_t>(UINT32_MAX), "sdecor::mask_select: at most 2^32-1 saliency elements per sample");
  const int code = dtype_code(saliency.scalar_type());
  c10::cuda::CUDAGuard guard(saliency.device());
  const at::Tensor sal = saliency.contiguous();
  const at::Tensor kc = k.contiguous();
  at::Tensor mask = at::empty({B, F}, saliency.options().dtype(at::kBool));
  if (B == 0 || F == 0) return mask;
  at::Tensor workspace = workspace_for(sdecor_mask_select_workspace_bytes(code, B, F), sal);
  C10_CUDA_CHECK(sdecor_mask_select_cuda(sal.data_ptr(), code, B, F, kc.data_ptr<int64_t>(), largest,
                                         mask.data_ptr<bool>(), workspace.data_ptr(),
                                         c10::cuda::getCurrentCUDAStream().stream()));
  return mask;
}

at::Tensor mask_fill_random_cuda(const at::Tensor& x, const at::Tensor& mask, std::optional<at::Generator> generator) {
  TORCH_CHECK(x.is_cuda(), "sdecor::mask_fill_random (CUDA): x must be a CUDA tensor");
  TORCH_CHECK(mask.device() == x.device(), "sdecor::mask_fill_random: mask must be on ", x.device(), ", got ",
              mask.device());
  TORCH_CHECK(x.dim() >= 1, "sdecor::mask_fill_random: x must be (B, ...)");
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.dim() == 2 && mask.size(0) == x.size(0),
              "sdecor::mask_fill_random: mask must be a bool (B, F) tensor, got ", mask.scalar_type(), " ",
              mask.sizes());
  const int64_t B = x.size(0);
  const int64_t C = x.dim() >= 3 ? x.size(1) : 1;
  const int64_t N = B > 0 ? x.numel() / B : 0;  // elements per sample
  const int64_t S = C > 0 ? N / C : 0;
  const int64_t F = mask.size(1);
  const bool pixel = F != N;
  TORCH_CHECK(!pixel || (x.dim() >= 3 && F == S), "sdecor::mask_fill_random: mask must have ", N,
              (x.dim() >= 3 ? " or " + std::to_string(S) : std::string()), " entries per sample, got ", F);
  const int code = dtype_code(x.scalar_type());
  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty_like(xc, at::MemoryFormat::Contiguous);
  if (xc.numel() == 0) return out;
  const at::Tensor mc = mask.contiguous();
  SdecorPhilox rng{};
  {
    auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(generator,
                                                                    at::cuda::detail::getDefaultCUDAGenerator());
    std::lock_guard<std::mutex> lock(gen->mutex_);
    const at::PhiloxCudaState state = gen->philox_cuda_state(kSdecorPhiloxIncrement);
    rng.captured = state.captured_;
    if (state.captured_) {
      rng.seed_ptr = state.seed_.ptr;
      rng.offset_ptr = state.offset_.ptr;
      rng.offset_intragraph = state.offset_intragraph_;
    } else {
      rng.seed = state.seed_.val;
      rng.offset = state.offset_.val;
    }
  }
  at::Tensor workspace = workspace_for(sdecor_mask_fill_random_workspace_bytes(code, B, C, S), xc);
  C10_CUDA_CHECK(sdecor_mask_fill_random_cuda(xc.data_ptr(), code, B, C, S, pixel, mc.data_ptr<bool>(), rng,
                                              out.data_ptr(), workspace.data_ptr(),
                                              c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sdecor, CUDA, m) {
  m.impl("mask_select", &mask_select_cuda);
  m.impl("mask_fill_random", &mask_fill_random_cuda);
}

}  // namespace sdecor
