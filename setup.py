"""Builds dgm_fast._C against the torch that is already installed.

Install with ``pip install --no-build-isolation -e .`` so pip never fetches
another torch. CUDA sources are compiled only when that torch has CUDA.
"""

import glob
import os

from setuptools import setup

try:
    import torch
except ImportError as exc:
    raise SystemExit(
        "dgm_fast builds against an installed torch. Install it first "
        "(pip install torch==2.13.0), then: pip install --no-build-isolation -e ."
    ) from exc
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
# -fopenmp at compile time only: at::parallel_for's OpenMP pragmas then call
# into the libgomp that torch already loads (linking a second one is wrong).
CXX_FLAGS = ["-O3", "-fopenmp", "-fno-math-errno", "-Wall"]


def extension():
    sources = ["csrc/bindings.cpp", *sorted(glob.glob("csrc/cpu/*.cpp"))]
    kwargs = dict(name="dgm_fast._C", include_dirs=[os.path.join(ROOT, "csrc")])
    if torch.version.cuda and os.environ.get("DGM_FAST_NO_CUDA") != "1":
        sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
        return CUDAExtension(
            sources=sources,
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={"cxx": CXX_FLAGS, "nvcc": ["-O3"]},
            **kwargs,
        )
    return CppExtension(sources=sources, extra_compile_args={"cxx": CXX_FLAGS}, **kwargs)


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
