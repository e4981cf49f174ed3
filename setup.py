"""Build of record. Metadata lives in pyproject.toml; this file adds the compiled extension ``xlmrxl_kernels._C``
built from csrc/ (``pip install -e . --no-build-isolation``, or ``python setup.py build_ext --inplace``).

- The CPU op (csrc/cache_update.cpp) is always built, with OpenMP so that ``at::parallel_for`` runs in parallel.
- The CUDA kernel (csrc/*.cu) is added only when torch is a CUDA build *and* nvcc is usable (CUDA_HOME found by
  torch). A CPU build of torch therefore gives a CPU-only extension even where nvcc is installed.
- ``XLMRXL_BUILD_EXT=0`` skips the extension (the package then falls back to the PyTorch reference, with one
  logged reason); ``XLMRXL_CUDA=0`` forces a CPU-only build on a CUDA machine.
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str, default: str = "1") -> bool:
    return os.environ.get(name, default).strip().lower() not in ("0", "false", "no", "off", "")


def _cuda_usable() -> bool:
    import torch
    from torch.utils import cpp_extension

    if torch.version.cuda is None or not _flag("XLMRXL_CUDA"):
        return False
    home = cpp_extension.CUDA_HOME
    return home is not None and os.path.exists(os.path.join(home, "bin", "nvcc"))


def _extensions():
    if not _flag("XLMRXL_BUILD_EXT"):
        return [], {}
    from torch.utils import cpp_extension

    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    headers = sorted(glob.glob(os.path.join("csrc", "*.h")))  # rebuild when a shared header changes
    cxx = ["-O3"]  # torch adds the C++ standard its headers need
    link = []
    if sys.platform != "win32":
        cxx.append("-fopenmp")  # torch's headers parallelise at::parallel_for only when compiled with OpenMP
        link.append("-fopenmp")
    if _cuda_usable():
        sources += sorted(glob.glob(os.path.join("csrc", "*.cu")))
        ext = cpp_extension.CUDAExtension(
            "xlmrxl_kernels._C",
            sources,
            define_macros=[("XLMRXL_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
            extra_link_args=link,
            depends=headers,
        )
    else:
        ext = cpp_extension.CppExtension(
            "xlmrxl_kernels._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link, depends=headers
        )
    return [ext], {"build_ext": cpp_extension.BuildExtension}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
