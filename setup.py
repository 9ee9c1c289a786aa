"""Build script for sdecor.

* ``kernels/`` (Triton device code) is installed as the subpackage ``sdecor.kernels``.
* The C++ CPU extension ``sdecor._C`` (batched saliency masking) is always built when a C++
  compiler is present; a failed build leaves a working pure-Python package (the ops fall back
  to their torch references with a warning).
* The CUDA part is built only when asked for: ``SDECOR_BUILD_CUDA=1`` (``TORCH_CUDA_ARCH_LIST``
  defaults to Hopper, ``9.0``). It is never gated on ``torch.cuda.is_available()``.
* ``SDECOR_NO_EXTENSION=1`` skips the extension entirely.
"""

import glob
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _extensions():
    if _truthy("SDECOR_NO_EXTENSION"):
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except Exception as exc:  # torch missing at build time: pure-Python install
        print(f"sdecor: torch not importable at build time ({exc}); building without the C++ extension")
        return [], {}
    if not os.path.exists(os.path.join(ROOT, "csrc", "register.cpp")):
        return [], {}
    cpu_sources = sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp"))) + ["csrc/register.cpp"]
    cxx_flags = ["-O3", "-std=c++17", "-ffp-contract=off"]  # no FMA: fills match torch bitwise
    if _truthy("SDECOR_BUILD_CUDA"):
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu"))) + sorted(
            glob.glob(os.path.join("csrc", "cuda", "*.cpp"))
        )
        ext = CUDAExtension(
            "sdecor._C",
            cpu_sources + cuda_sources,
            define_macros=[("SDECOR_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17"]},
        )
    else:
        ext = CppExtension("sdecor._C", cpu_sources, extra_compile_args={"cxx": cxx_flags})
    return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)}


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["sdecor", "sdecor.*"]) + ["sdecor.kernels"],
    package_dir={"sdecor.kernels": "kernels"},
    package_data={"sdecor.data": ["*.npz", "*.txt"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
