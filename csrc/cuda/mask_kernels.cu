// CUDA kernels of batched saliency masking behind the plain C++ interface of mask_kernels.h.
//
// No torch headers here, so CI can compile-check this file with bare nvcc:
//   nvcc -std=c++17 -O2 -arch=sm_90 -c csrc/cuda/mask_kernels.cu
//
// Both ops run as persistent cooperative grids: a group of blocks works on one sample at a time
// (several blocks per sample, so a small batch still fills the GPU), the groups loop over the
// samples, and the blocks of a group meet at a barrier in global memory. Cooperative launch
// guarantees that every block is resident, so the barriers cannot deadlock; a grid that would
// not fit (very long rows) takes the fallback path, which needs no barrier and reads its input
// more than once (see mask_kernels.h for the bytes of each path).
//
// mask_select: each block stages its slice of the saliency row as order-preserving unsigned keys
// in shared memory (float16/bfloat16 -> 16-bit, float32 -> 32-bit, float64 -> 64-bit; -0.0 ->
// +0.0; negative values complemented; largest=True complements every key). An 8-bit-digit radix
// select from the most significant digit narrows, pass by pass, the key prefix of the k-th
// smallest key: per pass each block histograms its staged keys (warp-aggregated shared atomics),
// adds the histogram to the group's in global memory, and after the barrier every block reads the
// same total and takes the same decision; it stops early when the k-th digit bucket holds exactly
// the remaining count. A last pass masks every key below the prefix and, among keys equal to it,
// the lowest `remaining` indices: each block publishes its count of equal keys, and after a
// barrier offsets its block-wide prefix count by the counts of the blocks before it (the tie rule
// of the stable-sort reference).
//
// mask_fill_random: each block holds a tile of one channel of x in registers, reduces its min and
// max into the (sample, channel) range in global memory (atomics on order-preserving keys; NaN
// wins both), meets the other blocks of its sample at the barrier, and writes its tile: fill
// values lo + scale * u with u drawn by Philox4x32-10 for the element's index, x elsewhere.
#include "mask_kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kSelectBlock = 256;         // staged select
constexpr int kSelectFallbackBlock = 512;  // one block per sample, reads global memory per pass
constexpr int kSelectSmemBytes = 40 * 1024;  // staged keys per block (under the 48 KiB needing no opt-in)
constexpr int kSelectMinTile = 4 * kSelectBlock;  // keys per block at least, when splitting rows
constexpr int kFillBlock = 256;
// elements of x per thread, kept in registers between the range and the write
template <typename T>
constexpr int fill_items() {
  return sizeof(T) >= 8 ? 8 : 16;
}

#define SDECOR_RETURN_IF_ERROR(expr)        \
  do {                                      \
    const cudaError_t sdecor_err_ = (expr); \
    if (sdecor_err_ != cudaSuccess) return sdecor_err_; \
  } while (0)

// A device-side assertion that survives NDEBUG: prints `message` with the block and thread, then
// the kernel fails with cudaErrorAssert (torch: "device-side assert triggered").
#define SDECOR_DEVICE_CHECK(cond, message)                                      \
  do {                                                                          \
    if (!(cond)) __assert_fail(message, __FILE__, __LINE__, __func__);         \
  } while (0)

// ------------------------------------------------------------------------------------ keys

__device__ __forceinline__ uint16_t order_key(uint16_t u) {
  if ((u & 0x7fffu) == 0u) u = 0u;  // -0.0 ties +0.0
  return (u & 0x8000u) ? static_cast<uint16_t>(~u) : static_cast<uint16_t>(u | 0x8000u);
}

__device__ __forceinline__ uint32_t order_key(uint32_t u) {
  if ((u & 0x7fffffffu) == 0u) u = 0u;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ uint64_t order_key(uint64_t u) {
  if ((u & 0x7fffffffffffffffull) == 0ull) u = 0ull;
  return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}

// Raw bits of a saliency value, and whether they encode NaN.
template <typename T>
struct KeyLoad;

template <>
struct KeyLoad<float> {
  using KeyT = uint32_t;
  __device__ __forceinline__ static uint32_t bits(const float* p, int64_t i) { return __float_as_uint(p[i]); }
  __device__ __forceinline__ static bool is_nan(uint32_t b) { return (b & 0x7fffffffu) > 0x7f800000u; }
};

template <>
struct KeyLoad<__half> {
  using KeyT = uint16_t;
  __device__ __forceinline__ static uint16_t bits(const __half* p, int64_t i) { return __half_as_ushort(p[i]); }
  __device__ __forceinline__ static bool is_nan(uint16_t b) { return (b & 0x7fffu) > 0x7c00u; }
};

template <>
struct KeyLoad<__nv_bfloat16> {
  using KeyT = uint16_t;
  __device__ __forceinline__ static uint16_t bits(const __nv_bfloat16* p, int64_t i) {
    return __bfloat16_as_ushort(p[i]);
  }
  __device__ __forceinline__ static bool is_nan(uint16_t b) { return (b & 0x7fffu) > 0x7f80u; }
};

template <>
struct KeyLoad<double> {
  using KeyT = uint64_t;
  __device__ __forceinline__ static uint64_t bits(const double* p, int64_t i) {
    return static_cast<uint64_t>(__double_as_longlong(p[i]));
  }
  __device__ __forceinline__ static bool is_nan(uint64_t b) {
    return (b & 0x7fffffffffffffffull) > 0x7ff0000000000000ull;
  }
};

// ------------------------------------------------------------------------------------ block helpers

// Exclusive prefix sum of v over the block (in thread order); `total` gets the block sum.
// shared must hold 33 values of V. Contains __syncthreads: every thread of the block must call it.
template <int BLOCK, typename V>
__device__ __forceinline__ V block_exclusive_scan(V v, V& total, V* shared) {
  static_assert(BLOCK % 32 == 0 && BLOCK <= 1024, "block size");
  constexpr int kWarps = BLOCK / 32;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  V incl = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const V n = __shfl_up_sync(kFullMask, incl, o);
    if (lane >= o) incl += n;
  }
  if (lane == 31) shared[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    const V w = lane < kWarps ? shared[lane] : V(0);
    V wi = w;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const V n = __shfl_up_sync(kFullMask, wi, o);
      if (lane >= o) wi += n;
    }
    if (lane < kWarps) shared[lane] = wi - w;
    if (lane == 31) shared[32] = wi;
  }
  __syncthreads();
  const V excl = shared[warp] + (incl - v);
  total = shared[32];
  __syncthreads();  // shared is reused by the next call
  return excl;
}

// Barrier of the `count` blocks of one group. *counter starts at 0 and only grows: the n-th
// barrier of the group (n = 1, 2, ...) waits until it reaches n * count. The fences make every
// global write of the block before the barrier visible to every block after it (the pattern of
// cooperative_groups' grid sync); data written by other blocks must then be read with __ldcg
// (L2, not a possibly stale L1 line).
__device__ __forceinline__ void group_barrier(unsigned long long* counter, unsigned long long target) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    atomicAdd(counter, 1ull);
    while (*static_cast<volatile unsigned long long*>(counter) < target) __nanosleep(64);
    __threadfence();
  }
  __syncthreads();
}

// 8-bit digit selection on a complete histogram (hist[256] in shared memory, read by warp 0):
// the digit whose bucket holds the `remaining`-th key; writes the narrowed prefix, mask,
// remaining count and whether the bucket holds exactly the remaining keys to the shared outputs.
// Called by every thread; contains no barrier.
template <typename KeyT>
__device__ __forceinline__ void pick_digit(const uint32_t* hist, int shift, KeyT prefix, KeyT pmask,
                                           uint32_t remaining, KeyT* s_prefix, KeyT* s_pmask,
                                           uint32_t* s_remaining, int* s_done) {
  if (threadIdx.x >= 32) return;
  const int lane = threadIdx.x;
  uint32_t c[8];
  uint32_t sum = 0u;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    c[j] = hist[lane * 8 + j];
    sum += c[j];
  }
  uint32_t incl = sum;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint32_t n = __shfl_up_sync(kFullMask, incl, o);
    if (lane >= o) incl += n;
  }
  const uint32_t excl = incl - sum;
  if (excl < remaining && remaining <= incl) {  // exactly one lane
    uint32_t below = excl;
    int j = 0;
    while (j < 7 && below + c[j] < remaining) {
      below += c[j];
      ++j;
    }
    const uint32_t rem = remaining - below;
    *s_prefix = static_cast<KeyT>(prefix | (static_cast<KeyT>(lane * 8 + j) << shift));
    *s_pmask = static_cast<KeyT>(pmask | (static_cast<KeyT>(0xffu) << shift));
    *s_remaining = rem;
    *s_done = c[j] == rem;
  }
}

// Adds the digit (key >> shift) & 0xff of every valid key to hist, one shared atomic per distinct
// digit per warp (heavily tied saliency does not serialise). Every lane of the warp must call it.
__device__ __forceinline__ void warp_histogram_add(uint32_t* hist, bool valid, uint32_t d) {
  const unsigned active = __ballot_sync(kFullMask, valid);
  if (valid) {
    const unsigned peers = __match_any_sync(active, d);
    if ((threadIdx.x & 31) == static_cast<unsigned>(__ffs(peers) - 1)) atomicAdd(&hist[d], __popc(peers));
  }
}

// ------------------------------------------------------------------------------------ device limits

// Blocks of `kernel` (BLOCK threads, `smem` dynamic shared bytes) resident at once on the current
// device, when it supports cooperative launch; 0 otherwise (or on error).
template <typename Kernel>
int co_resident_blocks(Kernel kernel, int block, size_t smem) {
  int device = 0;
  int sms = 0;
  int coop = 0;
  int per_sm = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device) != cudaSuccess || !coop ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, block, smem) != cudaSuccess) {
    cudaGetLastError();  // a failed query is not the caller's error
    return 0;
  }
  return per_sm * sms;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ------------------------------------------------------------------------------------ select

// Per slot (group of blocks working on one sample at a time) of the staged select, in 32-bit
// words: [0, 2) the 64-bit barrier counter, [2, 770) three 256-bin histograms used round-robin (the one of
// barrier n is zeroed before barrier n - 1 ends, by block 0 of the group), then one count of equal
// keys per block.
int64_t select_slot_words(int64_t tiles) { return ceil_div(2 + 3 * 256 + tiles, 32) * 32; }

template <typename T, int BLOCK>
__global__ void __launch_bounds__(BLOCK)
    mask_select_staged_kernel(const T* __restrict__ saliency, int64_t B, int64_t F, const int64_t* __restrict__ k,
                              bool largest, bool* __restrict__ mask, int tiles, int64_t tile, int slots,
                              int64_t slot_words, uint32_t* __restrict__ workspace) {
  using KeyT = typename KeyLoad<T>::KeyT;
  constexpr int kKeyBits = static_cast<int>(sizeof(KeyT) * 8);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  KeyT* keys = reinterpret_cast<KeyT*>(smem_raw);
  __shared__ uint32_t hist[256];
  __shared__ uint32_t scan_tmp[33];
  __shared__ KeyT s_prefix;
  __shared__ KeyT s_pmask;
  __shared__ uint32_t s_remaining;
  __shared__ int s_done;

  const int slot = static_cast<int>(blockIdx.x) / tiles;
  const int t = static_cast<int>(blockIdx.x) - slot * tiles;
  uint32_t* ws = workspace + slot * slot_words;
  unsigned long long* counter = reinterpret_cast<unsigned long long*>(ws);
  uint32_t* group_hist = ws + 2;
  uint32_t* group_eq = ws + 2 + 3 * 256;
  unsigned long long epoch = 0;  // barriers this group has passed

  // the group's barrier; block 0 first zeroes the histogram of the barrier after next
  auto arrive = [&]() {
    if (t == 0) {
      uint32_t* next = group_hist + ((epoch + 1) % 3) * 256;
      for (int j = threadIdx.x; j < 256; j += BLOCK) next[j] = 0u;
    }
    ++epoch;
    group_barrier(counter, epoch * static_cast<unsigned long long>(tiles));
  };

  const int64_t start = static_cast<int64_t>(t) * tile;
  const int64_t n = F - start < tile ? (F - start > 0 ? F - start : 0) : tile;
  const KeyT flip = largest ? static_cast<KeyT>(~KeyT(0)) : KeyT(0);

  for (int64_t b = slot; b < B; b += slots) {
    const T* row = saliency + b * F + start;
    bool* out = mask + b * F + start;
    const int64_t kb = k[b];
    SDECOR_DEVICE_CHECK(kb >= 0 && kb <= F, "sdecor::mask_select: every k must lie in [0, F]");
    for (int64_t i = threadIdx.x; i < n; i += BLOCK) {
      const KeyT raw = KeyLoad<T>::bits(row, i);
      SDECOR_DEVICE_CHECK(!KeyLoad<T>::is_nan(raw), "sdecor::mask_select: saliency must not contain NaN");
      keys[i] = static_cast<KeyT>(order_key(raw) ^ flip);
    }
    if (kb == 0 || kb == F) {  // nothing or everything (uniform over the group: no barrier)
      for (int64_t i = threadIdx.x; i < n; i += BLOCK) out[i] = kb > 0;
      __syncthreads();  // keys is rewritten by the next sample
      continue;
    }
    __syncthreads();

    KeyT prefix = 0;
    KeyT pmask = 0;
    uint32_t remaining = static_cast<uint32_t>(kb);  // rank (1-based) of the k-th key among candidates
    bool done = false;
    for (int shift = kKeyBits - 8; shift >= 0; shift -= 8) {
      for (int j = threadIdx.x; j < 256; j += BLOCK) hist[j] = 0u;
      __syncthreads();
      for (int64_t base = 0; base < n; base += BLOCK) {
        const int64_t i = base + threadIdx.x;
        bool valid = false;
        uint32_t d = 0u;
        if (i < n) {
          const KeyT key = keys[i];
          valid = static_cast<KeyT>(key & pmask) == prefix;
          d = static_cast<uint32_t>(key >> shift) & 0xffu;
        }
        warp_histogram_add(hist, valid, d);
      }
      __syncthreads();
      uint32_t* total = group_hist + (epoch % 3) * 256;
      for (int j = threadIdx.x; j < 256; j += BLOCK) {
        if (hist[j]) atomicAdd(&total[j], hist[j]);
      }
      arrive();
      for (int j = threadIdx.x; j < 256; j += BLOCK) hist[j] = __ldcg(&total[j]);
      __syncthreads();
      pick_digit<KeyT>(hist, shift, prefix, pmask, remaining, &s_prefix, &s_pmask, &s_remaining, &s_done);
      __syncthreads();
      prefix = s_prefix;
      pmask = s_pmask;
      remaining = s_remaining;
      done = s_done != 0;
      __syncthreads();
      if (done) break;
    }

    // Keys below the prefix are masked; among keys equal to it (under pmask) the lowest
    // `remaining` indices of the row: offset by the equal keys of the blocks before this one.
    uint32_t running = 0u;
    if (done) {
      remaining = 0xffffffffu;  // the bucket holds exactly the remaining keys: all of them
    } else {
      uint32_t mine = 0u;
      for (int64_t i = threadIdx.x; i < n; i += BLOCK) mine += static_cast<KeyT>(keys[i] & pmask) == prefix;
      uint32_t count;
      block_exclusive_scan<BLOCK, uint32_t>(mine, count, scan_tmp);
      if (threadIdx.x == 0) group_eq[t] = count;
      arrive();
      uint32_t before_part = 0u;
      for (int j = threadIdx.x; j < t; j += BLOCK) before_part += __ldcg(&group_eq[j]);
      block_exclusive_scan<BLOCK, uint32_t>(before_part, running, scan_tmp);
    }
    for (int64_t base = 0; base < n; base += BLOCK) {
      const int64_t i = base + threadIdx.x;
      bool less = false;
      bool eq = false;
      if (i < n) {
        const KeyT key = static_cast<KeyT>(keys[i] & pmask);
        less = key < prefix;
        eq = key == prefix;
      }
      uint32_t count;
      const uint32_t excl = block_exclusive_scan<BLOCK, uint32_t>(eq ? 1u : 0u, count, scan_tmp);
      if (i < n) out[i] = less || (eq && running + excl < remaining);
      running += count;
    }
    // block_exclusive_scan ends with __syncthreads: keys may be rewritten by the next sample
  }
}

// One block per sample, keys re-read from global memory on every pass: for rows too long to
// stage in the co-resident blocks' shared memory.
template <typename T, int BLOCK>
__global__ void __launch_bounds__(BLOCK)
    mask_select_fallback_kernel(const T* __restrict__ saliency, int64_t F, const int64_t* __restrict__ k,
                                bool largest, bool* __restrict__ mask) {
  using KeyT = typename KeyLoad<T>::KeyT;
  constexpr int kKeyBits = static_cast<int>(sizeof(KeyT) * 8);
  __shared__ uint32_t hist[256];
  __shared__ uint32_t scan_tmp[33];
  __shared__ KeyT s_prefix;
  __shared__ KeyT s_pmask;
  __shared__ uint32_t s_remaining;
  __shared__ int s_done;

  const int64_t b = blockIdx.x;
  const T* row = saliency + b * F;
  bool* out = mask + b * F;
  const int64_t kb = k[b];
  SDECOR_DEVICE_CHECK(kb >= 0 && kb <= F, "sdecor::mask_select: every k must lie in [0, F]");
  if (kb == 0 || kb == F) {
    for (int64_t i = threadIdx.x; i < F; i += BLOCK) {
      SDECOR_DEVICE_CHECK(!KeyLoad<T>::is_nan(KeyLoad<T>::bits(row, i)),
                          "sdecor::mask_select: saliency must not contain NaN");
      out[i] = kb > 0;
    }
    return;
  }
  const KeyT flip = largest ? static_cast<KeyT>(~KeyT(0)) : KeyT(0);
  KeyT prefix = 0;
  KeyT pmask = 0;
  uint32_t remaining = static_cast<uint32_t>(kb);
  bool done = false;
  for (int shift = kKeyBits - 8; shift >= 0; shift -= 8) {
    for (int j = threadIdx.x; j < 256; j += BLOCK) hist[j] = 0u;
    __syncthreads();
    for (int64_t base = 0; base < F; base += BLOCK) {
      const int64_t i = base + threadIdx.x;
      bool valid = false;
      uint32_t d = 0u;
      if (i < F) {
        const KeyT raw = KeyLoad<T>::bits(row, i);
        if (shift == kKeyBits - 8) {
          SDECOR_DEVICE_CHECK(!KeyLoad<T>::is_nan(raw), "sdecor::mask_select: saliency must not contain NaN");
        }
        const KeyT key = static_cast<KeyT>(order_key(raw) ^ flip);
        valid = static_cast<KeyT>(key & pmask) == prefix;
        d = static_cast<uint32_t>(key >> shift) & 0xffu;
      }
      warp_histogram_add(hist, valid, d);
    }
    __syncthreads();
    pick_digit<KeyT>(hist, shift, prefix, pmask, remaining, &s_prefix, &s_pmask, &s_remaining, &s_done);
    __syncthreads();
    prefix = s_prefix;
    pmask = s_pmask;
    remaining = s_remaining;
    done = s_done != 0;
    __syncthreads();
    if (done) break;
  }
  if (done) remaining = 0xffffffffu;
  uint32_t running = 0u;
  for (int64_t base = 0; base < F; base += BLOCK) {
    const int64_t i = base + threadIdx.x;
    bool less = false;
    bool eq = false;
    if (i < F) {
      const KeyT key = static_cast<KeyT>((order_key(KeyLoad<T>::bits(row, i)) ^ flip) & pmask);
      less = key < prefix;
      eq = key == prefix;
    }
    uint32_t count;
    const uint32_t excl = block_exclusive_scan<BLOCK, uint32_t>(eq ? 1u : 0u, count, scan_tmp);
    if (i < F) out[i] = less || (eq && running + excl < remaining);
    running += count;
  }
}

struct SelectPlan {
  bool staged = false;
  int tiles = 1;       // blocks per sample
  int64_t tile = 0;    // keys per block
  int slots = 0;       // samples in flight
  size_t smem = 0;     // dynamic shared memory per block
  int64_t slot_words = 0;
};

template <typename T>
SelectPlan plan_select(int64_t B, int64_t F) {
  using KeyT = typename KeyLoad<T>::KeyT;
  SelectPlan plan;
  const int64_t max_keys = kSelectSmemBytes / static_cast<int64_t>(sizeof(KeyT));
  const int64_t capacity =
      co_resident_blocks(mask_select_staged_kernel<T, kSelectBlock>, kSelectBlock, kSelectSmemBytes);
  const int64_t min_tiles = ceil_div(F, max_keys);
  if (B <= 0 || F <= 0 || capacity <= 0 || min_tiles > capacity) return plan;  // fallback
  // spread a small batch over the whole GPU, keeping at least kSelectMinTile keys per block
  const int64_t spread = capacity / B;
  const int64_t most = ceil_div(F, kSelectMinTile) > min_tiles ? ceil_div(F, kSelectMinTile) : min_tiles;
  int64_t tiles = spread < most ? spread : most;
  if (tiles < min_tiles) tiles = min_tiles;
  plan.tile = ceil_div(F, tiles);
  plan.tiles = static_cast<int>(ceil_div(F, plan.tile));
  const int64_t slots = capacity / plan.tiles;
  plan.slots = static_cast<int>(slots < B ? slots : B);
  plan.smem = static_cast<size_t>(plan.tile) * sizeof(KeyT);
  plan.slot_words = select_slot_words(plan.tiles);
  plan.staged = true;
  return plan;
}

template <typename T>
size_t select_workspace(int64_t B, int64_t F) {
  const SelectPlan plan = plan_select<T>(B, F);
  return plan.staged ? static_cast<size_t>(plan.slots * plan.slot_words) * sizeof(uint32_t) : 0;
}

template <typename T>
cudaError_t launch_select(const void* saliency_v, int64_t B, int64_t F, const int64_t* k, bool largest, bool* mask,
                          void* workspace, cudaStream_t stream) {
  const T* saliency = static_cast<const T*>(saliency_v);
  const SelectPlan plan = plan_select<T>(B, F);
  if (plan.staged) {
    uint32_t* ws = static_cast<uint32_t*>(workspace);
    SDECOR_RETURN_IF_ERROR(
        cudaMemsetAsync(ws, 0, static_cast<size_t>(plan.slots * plan.slot_words) * sizeof(uint32_t), stream));
    int tiles = plan.tiles;
    int64_t tile = plan.tile;
    int slots = plan.slots;
    int64_t slot_words = plan.slot_words;
    void* args[] = {&saliency, &B, &F, &k, &largest, &mask, &tiles, &tile, &slots, &slot_words, &ws};
    const cudaError_t err = cudaLaunchCooperativeKernel(
        reinterpret_cast<const void*>(&mask_select_staged_kernel<T, kSelectBlock>),
        dim3(static_cast<unsigned>(plan.slots * plan.tiles)), dim3(kSelectBlock), args, plan.smem, stream);
    if (err != cudaErrorCooperativeLaunchTooLarge) return err == cudaSuccess ? cudaGetLastError() : err;
    cudaGetLastError();  // the device is shared (fewer resident blocks than planned): fall back
  }
  if (B > static_cast<int64_t>(INT32_MAX)) return cudaErrorInvalidValue;
  mask_select_fallback_kernel<T, kSelectFallbackBlock>
      <<<static_cast<unsigned>(B), kSelectFallbackBlock, 0, stream>>>(saliency, F, k, largest, mask);
  return cudaGetLastError();
}

// ------------------------------------------------------------------------------------ fill

template <typename T>
struct Opmath {
  using type = float;
  using Key = unsigned int;
};
template <>
struct Opmath<double> {
  using type = double;
  using Key = unsigned long long;
};

__device__ __forceinline__ float to_opmath(float v) { return v; }
__device__ __forceinline__ double to_opmath(double v) { return v; }
__device__ __forceinline__ float to_opmath(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_opmath(__nv_bfloat16 v) { return __bfloat162float(v); }

__device__ __forceinline__ float to_out(float v, float*) { return v; }
__device__ __forceinline__ double to_out(double v, double*) { return v; }
__device__ __forceinline__ __half to_out(float v, __half*) { return __float2half_rn(v); }
__device__ __forceinline__ __nv_bfloat16 to_out(float v, __nv_bfloat16*) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ float fill_value(float lo, float scale, float u) { return __fadd_rn(lo, __fmul_rn(scale, u)); }
__device__ __forceinline__ double fill_value(double lo, double scale, double u) {
  return __dadd_rn(lo, __dmul_rn(scale, u));
}

// Range keys: order-preserving, NaN above everything (max) or below everything (min).
__device__ __forceinline__ unsigned int range_key(float v) {
  return v != v ? 0xffffffffu : order_key(__float_as_uint(v));
}
__device__ __forceinline__ unsigned long long range_key(double v) {
  return v != v ? 0xffffffffffffffffull : static_cast<unsigned long long>(order_key(static_cast<uint64_t>(__double_as_longlong(v))));
}
// The inverse of order_key (the all-ones key decodes to a NaN, the zero key to a negative NaN).
__device__ __forceinline__ float from_range_key(unsigned int key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}
__device__ __forceinline__ double from_range_key(unsigned long long key) {
  return __longlong_as_double(static_cast<long long>((key & 0x8000000000000000ull) ? (key & 0x7fffffffffffffffull) : ~key));
}

template <typename K>
__device__ __forceinline__ K warp_max(K v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const K n = __shfl_xor_sync(kFullMask, v, o);
    v = n > v ? n : v;
  }
  return v;
}

// Philox4x32-10 (Salmon et al., 2011; the generator of curand and of torch's CUDA random ops).
__device__ __forceinline__ uint4 philox4x32_10(uint4 c, uint2 key) {
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    if (r > 0) {
      key.x += 0x9E3779B9u;
      key.y += 0xBB67AE85u;
    }
    const uint32_t hi0 = __umulhi(0xD2511F53u, c.x);
    const uint32_t lo0 = 0xD2511F53u * c.x;
    const uint32_t hi1 = __umulhi(0xCD9E8D57u, c.z);
    const uint32_t lo1 = 0xCD9E8D57u * c.z;
    c = make_uint4(hi1 ^ c.y ^ key.x, lo1, hi0 ^ c.w ^ key.y, lo0);
  }
  return c;
}

__device__ __forceinline__ uint4 philox_for(uint64_t seed, uint64_t offset, uint64_t e) {
  const uint64_t ctr = offset / 4;
  return philox4x32_10(make_uint4(static_cast<uint32_t>(ctr), static_cast<uint32_t>(ctr >> 32),
                                  static_cast<uint32_t>(e), static_cast<uint32_t>(e >> 32)),
                       make_uint2(static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)));
}

// Uniform draw in [0, 1) of element e (see mask_kernels.h).
__device__ __forceinline__ float uniform_draw(uint64_t seed, uint64_t offset, uint64_t e, float*) {
  return static_cast<float>(philox_for(seed, offset, e).x >> 8) * 5.9604644775390625e-08f;  // 2^-24
}
__device__ __forceinline__ double uniform_draw(uint64_t seed, uint64_t offset, uint64_t e, double*) {
  const uint4 r = philox_for(seed, offset, e);
  const uint64_t bits = (static_cast<uint64_t>(r.x) << 32) | r.y;
  return static_cast<double>(bits >> 11) * 1.1102230246251565e-16;  // 2^-53
}

enum FillPhase : int {
  kFillFused = 0,  // range, group barrier, fill (cooperative launch)
  kFillRange = 1,  // fallback, first kernel: range only
  kFillWrite = 2,  // fallback, second kernel: fill from the range in the workspace
};

// Block u of a sample covers channel c = u % C, elements [t * tile, (t + 1) * tile) of it
// with t = u / C (the C channel blocks of a tile are neighbours: pixel mode reads a mask tile from
// DRAM once). Fused: groups = slots, a sample per group at a time; otherwise one sample per
// blockIdx.x / G. range: (B, C, 2) keys, [hi, ~lo], zero-initialised.
template <typename T, int BLOCK, int ITEMS, int PHASE>
__global__ void __launch_bounds__(BLOCK)
    mask_fill_random_kernel(const T* __restrict__ x, int64_t B, int64_t C, int64_t S, bool pixel,
                            const bool* __restrict__ mask, SdecorPhilox rng, T* __restrict__ out, int64_t G,
                            int64_t slots, typename Opmath<T>::Key* __restrict__ range,
                            unsigned long long* __restrict__ counters) {
  using O = typename Opmath<T>::type;
  using K = typename Opmath<T>::Key;
  constexpr int64_t kTile = static_cast<int64_t>(BLOCK) * ITEMS;  // elements of one channel per block
  const int64_t block = blockIdx.x;
  const int64_t slot = block / G;  // fused: the group; otherwise: the sample
  const int64_t u = block - slot * G;
  const int64_t t = u / C;
  const int64_t c = u - t * C;
  const int64_t s0 = t * kTile + threadIdx.x;
  uint64_t seed = rng.seed;
  uint64_t offset = rng.offset;
  if (rng.captured) {
    seed = static_cast<uint64_t>(*rng.seed_ptr);
    offset = static_cast<uint64_t>(*rng.offset_ptr) + rng.offset_intragraph;
  }
  unsigned long long epoch = 0;
  const int64_t first = slot;
  const int64_t stride = PHASE == kFillFused ? slots : B;

  for (int64_t b = first; b < B; b += stride) {
    const int64_t row = b * C + c;  // (b, c): x's row of S elements
    K* rk = range + 2 * row;
    T v[ITEMS];  // x is read once: these registers also give the unmasked outputs
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int64_t s = s0 + static_cast<int64_t>(i) * BLOCK;
      if (s < S) v[i] = x[row * S + s];
    }
    if (PHASE != kFillWrite) {
      K hi = 0;
      K lo_c = 0;  // ~min key
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        if (s0 + static_cast<int64_t>(i) * BLOCK < S) {
          const O value = to_opmath(v[i]);
          const K key = range_key(value);
          hi = key > hi ? key : hi;
          const K inv = value != value ? ~K(0) : static_cast<K>(~key);
          lo_c = inv > lo_c ? inv : lo_c;
        }
      }
      hi = warp_max(hi);
      lo_c = warp_max(lo_c);
      if ((threadIdx.x & 31) == 0) {
        if (hi) atomicMax(&rk[0], hi);
        if (lo_c) atomicMax(&rk[1], lo_c);
      }
      if (PHASE == kFillRange) continue;
      ++epoch;
      group_barrier(&counters[slot], epoch * static_cast<unsigned long long>(G));
    }
    const O lo = from_range_key(static_cast<K>(~__ldcg(&rk[1])));
    const O scale = from_range_key(__ldcg(&rk[0])) - lo;
    const bool* m = pixel ? mask + b * S : mask + row * S;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int64_t s = s0 + static_cast<int64_t>(i) * BLOCK;
      if (s < S) {
        const int64_t e = row * S + s;
        T value = v[i];
        if (m[s]) {
          const O draw = uniform_draw(seed, offset, static_cast<uint64_t>(e), static_cast<O*>(nullptr));
          value = to_out(fill_value(lo, scale, draw), static_cast<T*>(nullptr));
        }
        out[e] = value;
      }
    }
  }
}

struct FillPlan {
  bool fused = false;
  int64_t G = 0;      // blocks per sample
  int64_t slots = 0;  // samples in flight (fused)
};

template <typename T>
FillPlan plan_fill(int64_t B, int64_t C, int64_t S) {
  FillPlan plan;
  plan.G = C * ceil_div(S, static_cast<int64_t>(kFillBlock) * fill_items<T>());
  const int64_t capacity =
      co_resident_blocks(mask_fill_random_kernel<T, kFillBlock, fill_items<T>(), kFillFused>, kFillBlock, 0);
  if (B <= 0 || plan.G <= 0 || capacity <= 0 || plan.G > capacity) return plan;
  const int64_t slots = capacity / plan.G;
  plan.slots = slots < B ? slots : B;
  plan.fused = true;
  return plan;
}

template <typename T>
size_t fill_workspace(int64_t B, int64_t C, int64_t S) {
  const FillPlan plan = plan_fill<T>(B, C, S);
  return static_cast<size_t>(2 * B * C) * sizeof(typename Opmath<T>::Key) +
         static_cast<size_t>(plan.fused ? plan.slots : 0) * sizeof(unsigned long long);
}

template <typename T>
cudaError_t launch_fill(const void* x_v, int64_t B, int64_t C, int64_t S, bool pixel, const bool* mask,
                        SdecorPhilox rng, void* out_v, void* workspace, cudaStream_t stream) {
  using K = typename Opmath<T>::Key;
  const T* x = static_cast<const T*>(x_v);
  T* out = static_cast<T*>(out_v);
  const FillPlan plan = plan_fill<T>(B, C, S);
  K* range = static_cast<K*>(workspace);
  unsigned long long* counters = reinterpret_cast<unsigned long long*>(range + 2 * B * C);
  SDECOR_RETURN_IF_ERROR(cudaMemsetAsync(workspace, 0, fill_workspace<T>(B, C, S), stream));
  int64_t G = plan.G;
  if (plan.fused) {
    int64_t slots = plan.slots;
    void* args[] = {&x, &B, &C, &S, &pixel, &mask, &rng, &out, &G, &slots, &range, &counters};
    const cudaError_t err = cudaLaunchCooperativeKernel(
        reinterpret_cast<const void*>(&mask_fill_random_kernel<T, kFillBlock, fill_items<T>(), kFillFused>),
        dim3(static_cast<unsigned>(plan.slots * plan.G)), dim3(kFillBlock), args, 0, stream);
    if (err != cudaErrorCooperativeLaunchTooLarge) return err == cudaSuccess ? cudaGetLastError() : err;
    cudaGetLastError();  // fewer resident blocks than planned: fall back
  }
  const int64_t blocks = B * G;
  if (blocks > static_cast<int64_t>(INT32_MAX)) return cudaErrorInvalidValue;
  mask_fill_random_kernel<T, kFillBlock, fill_items<T>(), kFillRange><<<static_cast<unsigned>(blocks), kFillBlock, 0, stream>>>(
      x, B, C, S, pixel, mask, rng, out, G, B, range, counters);
  SDECOR_RETURN_IF_ERROR(cudaGetLastError());
  mask_fill_random_kernel<T, kFillBlock, fill_items<T>(), kFillWrite><<<static_cast<unsigned>(blocks), kFillBlock, 0, stream>>>(
      x, B, C, S, pixel, mask, rng, out, G, B, range, counters);
  return cudaGetLastError();
}

}  // namespace

// ------------------------------------------------------------------------------------ interface

cudaError_t sdecor_mask_select_cuda(const void* saliency, int dtype, int64_t B, int64_t F, const int64_t* k,
                                    bool largest, bool* mask, void* workspace, cudaStream_t stream) {
  if (B <= 0 || F <= 0) return cudaSuccess;
  if (F > static_cast<int64_t>(UINT32_MAX)) return cudaErrorInvalidValue;
  switch (dtype) {
    case kSdecorFloat32:
      return launch_select<float>(saliency, B, F, k, largest, mask, workspace, stream);
    case kSdecorFloat64:
      return launch_select<double>(saliency, B, F, k, largest, mask, workspace, stream);
    case kSdecorFloat16:
      return launch_select<__half>(saliency, B, F, k, largest, mask, workspace, stream);
    case kSdecorBFloat16:
      return launch_select<__nv_bfloat16>(saliency, B, F, k, largest, mask, workspace, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

size_t sdecor_mask_select_workspace_bytes(int dtype, int64_t B, int64_t F) {
  switch (dtype) {
    case kSdecorFloat32:
      return select_workspace<float>(B, F);
    case kSdecorFloat64:
      return select_workspace<double>(B, F);
    case kSdecorFloat16:
      return select_workspace<__half>(B, F);
    case kSdecorBFloat16:
      return select_workspace<__nv_bfloat16>(B, F);
    default:
      return 0;
  }
}

cudaError_t sdecor_mask_fill_random_cuda(const void* x, int dtype, int64_t B, int64_t C, int64_t S, bool pixel,
                                         const bool* mask, SdecorPhilox rng, void* out, void* workspace,
                                         cudaStream_t stream) {
  if (B <= 0 || C <= 0 || S <= 0) return cudaSuccess;
  switch (dtype) {
    case kSdecorFloat32:
      return launch_fill<float>(x, B, C, S, pixel, mask, rng, out, workspace, stream);
    case kSdecorFloat64:
      return launch_fill<double>(x, B, C, S, pixel, mask, rng, out, workspace, stream);
    case kSdecorFloat16:
      return launch_fill<__half>(x, B, C, S, pixel, mask, rng, out, workspace, stream);
    case kSdecorBFloat16:
      return launch_fill<__nv_bfloat16>(x, B, C, S, pixel, mask, rng, out, workspace, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

size_t sdecor_mask_fill_random_workspace_bytes(int dtype, int64_t B, int64_t C, int64_t S) {
  if (B <= 0 || C <= 0 || S <= 0) return 0;
  switch (dtype) {
    case kSdecorFloat32:
      return fill_workspace<float>(B, C, S);
    case kSdecorFloat64:
      return fill_workspace<double>(B, C, S);
    case kSdecorFloat16:
      return fill_workspace<__half>(B, C, S);
    case kSdecorBFloat16:
      return fill_workspace<__nv_bfloat16>(B, C, S);
    default:
      return 0;
  }
}
