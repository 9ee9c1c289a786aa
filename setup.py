"""Build script for sdecor.

* ``kernels/`` (Triton device code) is installed as the subpackage ``sdecor.kernels``.
* The C++ extension ``sdecor._C`` (batched saliency masking) is built when torch is importable at
  build time (``pip install --no-build-isolation``) and a C++ compiler is present.
* Its CUDA part is built by default when torch is a CUDA build and the CUDA toolkit (nvcc) is
  found; ``SDECOR_BUILD_CUDA=0`` turns it off (``=1`` insists, and warns when it cannot). The CUDA
  build does not depend on a GPU being visible. ``TORCH_CUDA_ARCH_LIST``, when unset, is the
  visible GPUs' architectures, or Hopper (``9.0``) on a machine without one.
* A failed build never fails the install: a failed CUDA build warns and builds the CPU-only
  extension; a failed CPU build warns and installs the pure-Python package (the ops then run their
  torch references, with a warning at first use).
* The C++ standard is the one torch's own extension builder passes (no ``-std`` flag here).
* ``SDECOR_NO_EXTENSION=1`` skips the extension entirely.
"""

import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
EXT_NAME = "sdecor._C"
CXX_FLAGS = ["-O3", "-ffp-contract=off"]  # no FMA: the CPU fills match torch bitwise
NVCC_FLAGS = ["-O3", "-lineinfo"]


def _warn(message: str) -> None:
    print(f"WARNING: sdecor: {message}", file=sys.stderr, flush=True)


def _env_flag(name: str):
    """True / False for 1/true/yes/on and 0/false/no/off; None when unset or empty."""
    value = os.environ.get(name, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    return None


def _cpu_sources() -> list[str]:
    return sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp"))) + [os.path.join("csrc", "register.cpp")]


def _cuda_sources() -> list[str]:
    return sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu"))) + sorted(
        glob.glob(os.path.join("csrc", "cuda", "*.cpp"))
    )


def _want_cuda(torch, cuda_home) -> bool:
    asked = _env_flag("SDECOR_BUILD_CUDA")
    if asked is False:
        return False
    if torch.version.cuda is None or cuda_home is None:
        if asked:
            why = "torch is a CPU-only build" if torch.version.cuda is None else "nvcc (CUDA_HOME) was not found"
            _warn(f"SDECOR_BUILD_CUDA=1 but {why}; building the CPU part only")
        return False
    if not _cuda_sources():
        _warn("csrc/cuda/ is missing; building the CPU part only")
        return False
    return True


def _extensions():
    if _env_flag("SDECOR_NO_EXTENSION"):
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except Exception as exc:  # torch missing at build time: pure-Python install
        _warn(f"torch not importable at build time ({exc}); installing without the C++ extension")
        return [], {}
    if not os.path.exists(os.path.join(ROOT, "csrc", "register.cpp")):
        _warn("csrc/ is missing; installing without the C++ extension")
        return [], {}

    def cpu_extension():
        return CppExtension(EXT_NAME, _cpu_sources(), extra_compile_args={"cxx": list(CXX_FLAGS)})

    class OptionalBuildExt(BuildExtension):
        """torch's builder, but a failed build warns instead of failing the install: CUDA falls
        back to the CPU-only extension, CPU to no extension."""

        def build_extensions(self):
            try:
                return super().build_extensions()
            except Exception as exc:  # raised before any compilation, e.g. nvcc and torch's CUDA disagree
                if not any(getattr(e, "sdecor_with_cuda", False) for e in self.extensions):
                    _warn(f"{EXT_NAME} cannot be built ({exc}); installing the pure-Python package")
                    return None
                _warn(f"the CUDA part of {EXT_NAME} cannot be built ({exc}); building the CPU part only")
            self.extensions = [cpu_extension()]
            try:
                return super().build_extensions()
            except Exception as exc:
                _warn(f"{EXT_NAME} cannot be built ({exc}); installing the pure-Python package")
                return None

        def build_extension(self, ext):
            try:
                return super().build_extension(ext)
            except Exception as exc:  # compiler or linker error, ninja failure, missing toolkit
                error = exc
            if getattr(ext, "sdecor_with_cuda", False):
                _warn(f"the CUDA part of {EXT_NAME} failed to build ({error}); building the CPU part only")
                cpu = cpu_extension()
                # the flags torch's builder added to the CUDA extension (extension name, ABI, ...)
                cpu.extra_compile_args = {"cxx": list(ext.extra_compile_args["cxx"])}
                try:
                    return super().build_extension(cpu)
                except Exception as exc:
                    error = exc
            _warn(
                f"{EXT_NAME} failed to build ({error}); installing the pure-Python package "
                "(mask_features runs its torch reference; see the error above)"
            )
            return None

    if _want_cuda(torch, CUDA_HOME):
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            try:
                visible = torch.cuda.is_available()
            except Exception:
                visible = False
            if not visible:  # torch would otherwise compile for every architecture it knows
                os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
        ext = CUDAExtension(
            EXT_NAME,
            _cpu_sources() + _cuda_sources(),
            define_macros=[("SDECOR_WITH_CUDA", "1")],
            extra_compile_args={"cxx": list(CXX_FLAGS), "nvcc": list(NVCC_FLAGS)},
        )
        ext.sdecor_with_cuda = True
    else:
        ext = cpu_extension()
    return [ext], {"build_ext": OptionalBuildExt.with_options(no_python_abi_suffix=False)}


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["sdecor", "sdecor.*"]) + ["sdecor.kernels"],
    package_dir={"sdecor.kernels": "kernels"},
    package_data={"sdecor.data": ["*.npz", "*.txt"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
