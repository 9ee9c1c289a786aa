// Plain C++ launch interface of the CUDA kernels of batched saliency masking.
//
// No torch/ATen types: csrc/cuda/*.cu compile with bare nvcc (CI compile check), and the torch
// wrappers in csrc/cuda/mask_features_cuda.cpp call these functions. All pointers are device
// pointers to contiguous data; every function only enqueues work on `stream` (no host
// synchronisation) and returns the status of its launches, checked after each one.
//
// Bytes each kernel moves, by construction (B samples, F saliency entries per sample, x of
// B x C x S elements, e = element size of x / saliency in bytes). The minimum is x and saliency
// read once, the output and the mask written once.
//
//   mask_select, staged (rows of up to co-resident blocks x 10240 32-bit keys):  B*F*e read + B*F written
//       = the minimum; plus workspace traffic in L2: per sample and radix pass at most
//       T x 256 histogram atomics and T x 1 KiB histogram reads (T = blocks per sample).
//   mask_select, fallback (rows too long to stage): (passes + 1) * B*F*e read + B*F written
//       (passes: at most 4 for 32-bit keys, 2 for 16-bit, 8 for 64-bit; fewer when a digit
//       bucket resolves the count early).
//   mask_fill_random, fused (every sample's C x ceil(S / tile) blocks fit on the GPU at once;
//       tile = 4096 elements, 2048 for float64): B*C*S*e read (x) + B*C*S*e written (out), plus
//       the mask read back once (B*C*S bytes in element mode; B*S from DRAM in pixel mode, where
//       the C channel blocks of a tile run next to each other and C - 1 of them read it from L2)
//       and a memset of B*C*2 range keys; no uniform draws in memory.
//   mask_fill_random, fallback (larger samples): x is read twice (range pass, then fill pass).
//   At B = 256, 3 x 224 x 224 float32, pixel saliency: 385.4 MB against the minimum 372.5 MB.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

// Element types of saliency / x.
enum SdecorDtype : int {
  kSdecorFloat32 = 0,
  kSdecorFloat64 = 1,
  kSdecorFloat16 = 2,
  kSdecorBFloat16 = 3,
};

// torch's at::PhiloxCudaState, unpacked as at::cuda::philox::unpack does on the device: outside
// CUDA graph capture seed and offset are values; under capture they are read through the pointers
// (offset = *offset_ptr + offset_intragraph).
struct SdecorPhilox {
  uint64_t seed;
  uint64_t offset;
  const int64_t* seed_ptr;
  const int64_t* offset_ptr;
  uint64_t offset_intragraph;
  bool captured;
};

// Counter increment (per subsequence) one mask_fill_random call takes from the generator.
constexpr uint64_t kSdecorPhiloxIncrement = 4;

// mask[b, i] = 1 for the k[b] positions i of row b of the (B, F) saliency whose (value, i) pairs
// rank lowest (largest: highest value, ties still to the lower index); -0.0 ties +0.0.
// Requires 0 <= k[b] <= F < 2^32 and no NaN in saliency: both are checked on the device, and a
// violation is a device-side assertion (the error surfaces at the next synchronising call or
// checked launch, and the CUDA context is unusable after it). Radix select (8-bit digits) over order-preserving keys
// (16-bit for float16/bfloat16, 32-bit for float32, 64-bit for float64), then one pass that
// breaks ties among keys equal to the k-th by a prefix count in index order.
// workspace: sdecor_mask_select_workspace_bytes(...) bytes (zeroed here).
cudaError_t sdecor_mask_select_cuda(const void* saliency, int dtype, int64_t B, int64_t F, const int64_t* k,
                                    bool largest, bool* mask, void* workspace, cudaStream_t stream);

// Bytes of device workspace sdecor_mask_select_cuda needs on the current device.
size_t sdecor_mask_select_workspace_bytes(int dtype, int64_t B, int64_t F);

// out = x with masked elements replaced by lo[b, c] + scale[b, c] * u (op-math precision: double
// for float64 x, float otherwise, no FMA, rounded once to x's type), where lo and scale = hi - lo
// are the min and max of x over channel c of sample b (NaN when the channel holds a NaN), and
// u in [0, 1) is drawn in the kernel for element index e = (b * C + c) * S + s:
// Philox4x32-10 with key = seed and counter = (offset / 4, e) (64-bit halves, low word first);
// float: the first 32-bit output's top 24 bits * 2^-24; double: the first two outputs' top 53 of
// 64 bits * 2^-53. The draws depend only on (seed, offset, e), not on the mask.
// pixel = false: mask is (B, C * S) (one entry per element); pixel = true: mask is (B, S) and each
// entry masks all C channels. workspace: sdecor_mask_fill_random_workspace_bytes(...) bytes.
cudaError_t sdecor_mask_fill_random_cuda(const void* x, int dtype, int64_t B, int64_t C, int64_t S, bool pixel,
                                         const bool* mask, SdecorPhilox rng, void* out, void* workspace,
                                         cudaStream_t stream);

// Bytes of device workspace sdecor_mask_fill_random_cuda needs on the current device.
size_t sdecor_mask_fill_random_workspace_bytes(int dtype, int64_t B, int64_t C, int64_t S);
