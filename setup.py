"""Builds dgm_fast._C against the torch that is already installed.

Install with ``pip install --no-build-isolation -e .`` so pip never fetches
another torch. CUDA sources are compiled only when that torch has CUDA and a
CUDA toolkit of the same major version is there (``cuda_build_decision``);
otherwise the CPU extension is built, the build says why, and Triton still
serves CUDA tensors.
"""

import glob
import os
import re
import shutil
import subprocess
import sys

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
# -ffp-contract=off: no FMA contraction, so the kernels round every product as
# the reference does (where a product overflows, the reference gets NaN, an FMA inf).
# -Wno-psabi: the portable blocks' vector helpers are internal (anonymous namespace), so gcc's note
# that their ABI differs from an AVX build's concerns no caller.
CXX_FLAGS = ["-O3", "-fopenmp", "-fno-math-errno", "-ffp-contract=off", "-Wall", "-Wno-psabi"]
# -g0: no debug info (Python's flags ask for -g), a third of the build's time; DGM_FAST_DEBUG_INFO=1
# keeps it, for source lines in `perf annotate`.
if os.environ.get("DGM_FAST_DEBUG_INFO") != "1":
    CXX_FLAGS.append("-g0")
# GPU architectures when none is visible at build time (and TORCH_CUDA_ARCH_LIST
# is unset): Ampere and Hopper binaries, plus PTX that newer GPUs JIT-compile.
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"


def find_cuda_home() -> str | None:
    """$CUDA_HOME or $CUDA_PATH, else the toolkit of the nvcc on PATH: torch's first guesses.

    Its last guess, /usr/local/cuda, is not taken: the toolkit must be named.
    """
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        return home
    nvcc = shutil.which("nvcc")
    return os.path.dirname(os.path.dirname(nvcc)) if nvcc else None


def nvcc_version(home: str) -> str | None:
    """'major.minor' of ``home``'s nvcc, or None if it does not run."""
    try:
        text = subprocess.run([os.path.join(home, "bin", "nvcc"), "--version"],
                              capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.search(r"release (\d+\.\d+)", text)
    return match.group(1) if match else None


def cuda_build_decision() -> tuple[bool, str]:
    """Whether to compile the CUDA kernels, and why (not)."""
    if os.environ.get("DGM_FAST_NO_CUDA") == "1":
        return False, "DGM_FAST_NO_CUDA=1"
    if not torch.version.cuda:
        return False, f"torch {torch.__version__} has no CUDA"
    home = find_cuda_home()
    if home is None:
        return False, (f"torch has CUDA {torch.version.cuda} but no CUDA toolkit was found "
                       "(set CUDA_HOME or put nvcc on PATH)")
    if not os.path.isfile(os.path.join(home, "include", "cuda_runtime_api.h")):
        return False, f"no CUDA toolkit at {home} (no include/cuda_runtime_api.h; set CUDA_HOME)"
    version = nvcc_version(home)
    if version is None:
        return False, f"{home}/bin/nvcc does not run or report its version"
    if version.split(".")[0] != torch.version.cuda.split(".")[0]:
        return False, (f"nvcc {version} at {home} is not of the major version of "
                       f"torch's CUDA {torch.version.cuda}")
    return True, f"nvcc {version} at {home}"


def default_cuda_arch_list() -> str | None:
    """TORCH_CUDA_ARCH_LIST to set, or None: torch itself fails with neither it nor a visible GPU."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST") or torch.cuda.device_count() > 0:
        return None
    return DEFAULT_CUDA_ARCH_LIST


def extension(build_cuda: bool):
    sources = ["csrc/bindings.cpp", *sorted(glob.glob("csrc/cpu/*.cpp"))]
    kwargs = dict(name="dgm_fast._C", include_dirs=[os.path.join(ROOT, "csrc")])
    if not build_cuda:
        return CppExtension(sources=sources, extra_compile_args={"cxx": CXX_FLAGS}, **kwargs)
    sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
    return CUDAExtension(
        sources=sources,
        define_macros=[("WITH_CUDA", None)],
        extra_compile_args={"cxx": CXX_FLAGS, "nvcc": ["-O3"]},
        **kwargs,
    )


def build_ext_class(message: str):
    """torch's BuildExtension (with Ninja) that prints ``message`` once, when it compiles."""
    class BuildExt(BuildExtension):
        def run(self):
            print(f"dgm_fast: {message}", file=sys.stderr, flush=True)
            super().run()

    return BuildExt.with_options(use_ninja=True)


def main():
    build_cuda, reason = cuda_build_decision()
    if build_cuda:
        arch_list = default_cuda_arch_list()
        if arch_list:
            os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or "the visible GPUs"
        message = f"building CUDA kernels with {reason} for {archs}"
    else:
        message = f"building the CPU extension only: {reason}"
        if torch.version.cuda:
            message += "; Triton still serves CUDA tensors"
    setup(ext_modules=[extension(build_cuda)], cmdclass={"build_ext": build_ext_class(message)})


# Guarded so tests can import the decision without building (pip runs this as __main__).
if __name__ == "__main__":
    main()
