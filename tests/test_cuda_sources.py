"""Every CUDA source compiles for Hopper, even on a machine without a GPU.

The .cu files include no torch headers (their launchers take raw pointers and
a stream), so nvcc alone can check them.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CU_FILES = sorted((ROOT / "csrc").rglob("*.cu"))


def test_there_are_cuda_sources():
    assert CU_FILES


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_nvcc_compiles(source, tmp_path):
    cmd = ["nvcc", "-c", "-arch=sm_90", "-I", str(ROOT / "csrc"), "-Werror", "all-warnings",
           str(source), "-o", str(tmp_path / "out.o")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
