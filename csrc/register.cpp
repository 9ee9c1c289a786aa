// Schemas of the sdecor ops (batched saliency masking) and the Python module stub of sdecor._C.
//
// Implementations register per dispatch key next to their code: csrc/cpu/mask_features_cpu.cpp
// and csrc/cpu/ranked_fill_cpu.cpp (CPU) and csrc/cuda/mask_features_cuda.cpp (CUDA, when the
// extension is built with its CUDA part: see setup.py).
// Fake (meta) and autograd formulas are registered from Python (sdecor/ops/mask_features.py).
// Other sdecor ops (e.g. the Python custom op sdecor::decorrelation_fused) live in FRAGMENTs of
// the same namespace.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(sdecor, m) {
  // Per row b of the (B, F) saliency: True at the k[b] positions whose (value, flat index) pairs
  // rank lowest (largest=True: highest value, ties still to the lower index). -0.0 == +0.0.
  m.def("mask_select(Tensor saliency, Tensor k, bool largest) -> Tensor");
  // x with its masked elements replaced by lo + scale * u[j], where lo and scale = hi - lo are the
  // min and max of x over channel c of sample b (C = x.shape[1] for x.dim() >= 3, else the whole
  // sample is one channel), in the op-math dtype (float32; float64 for float64 x), rounded once
  // to x's dtype. The masked elements, in row-major order of x, consume u in order. mask is
  // (B, F): F = x[0].numel() (elements) or F = prod(x.shape[2:]) (whole pixels, all channels).
  m.def("mask_fill_uniform(Tensor x, Tensor mask, Tensor u) -> Tensor");
  // The same fill with the draws made inside the kernel: u for element e (row-major index in x)
  // is Philox4x32-10 of (the generator's seed, its offset, e), the generator's offset advanced by
  // one increment per call (csrc/cuda/mask_kernels.h). Masks and ranges are those of
  // mask_fill_uniform; the fill values differ from it. CUDA only (csrc/cuda/mask_features_cuda.cpp).
  m.def("mask_fill_random(Tensor x, Tensor mask, Generator? generator=None) -> Tensor");
  // Per row b of the (B, F) saliency: int32 place of each position in the order of mask_select
  // (ascending (value, flat index); largest: descending value, ascending index), so that
  // ranks < k is mask_select(saliency, k) for every k. CPU only (csrc/cpu/ranked_fill_cpu.cpp).
  m.def("mask_ranks(Tensor saliency, bool largest) -> Tensor");
  // out[b, r, s] = ranks[b, s] < k[b] ? fill[b, r, s] : x[b, r, s] for x and fill of shape
  // (B, R, S) (any strides, same dtype), ranks (B, S) int32, k (B,) int64; out contiguous. CPU only.
  m.def("mask_fill_ranked(Tensor x, Tensor ranks, Tensor k, Tensor fill) -> Tensor");
}

// `import sdecor._C` loads this library, which runs the registrations above.
static struct PyModuleDef sdecor_c_module = {
    PyModuleDef_HEAD_INIT, "_C", "sdecor compiled ops, registered as torch.ops.sdecor.*", -1, nullptr,
};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&sdecor_c_module); }
