"""Every CUDA source compiles for Ampere and Hopper, even on a machine without a GPU,
and the CUDA noise computes the reference's expression (run on the host).

The .cu files include no torch headers (their launchers take raw pointers and
a stream), so nvcc alone can check them.
"""

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from dgm_fast.philox import normal_noise

ROOT = Path(__file__).resolve().parent.parent
CU_FILES = sorted((ROOT / "csrc").rglob("*.cu"))
# setup.py's default TORCH_CUDA_ARCH_LIST, 8.0;9.0+PTX
GENCODE = ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=[sm_90,compute_90]"]
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")


def test_there_are_cuda_sources():
    assert CU_FILES


@needs_nvcc
@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_nvcc_compiles(source, tmp_path):
    cmd = ["nvcc", "-c", *GENCODE, "-I", str(ROOT / "csrc"), "-Werror", "all-warnings",
           str(source), "-o", str(tmp_path / "out.o")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# Prints the float and the double normals of groups q0 .. q0 + groups - 1, as the
# kernel's gaussian4 computes them; on the host, so with the host's libm.
HOST_NOISE = r"""
#include <cstdio>
#include <cstdlib>

#include "cuda/langevin.cu"

int main(int argc, char** argv) {
  const uint64_t seed = std::strtoull(argv[1], nullptr, 0), q0 = std::strtoull(argv[2], nullptr, 0);
  const auto k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (uint64_t q = q0; q < q0 + std::strtoull(argv[3], nullptr, 0); ++q) {
    float zf[4];
    double zd[4];
    dgm_fast::gaussian4(q, k0, k1, zf);
    dgm_fast::gaussian4(q, k0, k1, zd);
    for (int j = 0; j < 4; ++j) std::printf("%.9e %.17e\n", zf[j], zd[j]);
  }
}
"""


@pytest.fixture(scope="module")
def host_noise(tmp_path_factory):
    """Runs langevin.cu's gaussian4 on the host: (seed, first group, groups) -> (float32, float64) normals."""
    tmp = tmp_path_factory.mktemp("host_noise")
    (tmp / "host_noise.cu").write_text(HOST_NOISE)
    exe = tmp / "host_noise"
    cmd = ["nvcc", "-arch=sm_90", "-I", str(ROOT / "csrc"), str(tmp / "host_noise.cu"), "-o", str(exe)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

    def run(seed: int, q0: int, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = subprocess.run([str(exe), str(seed), str(q0), str(groups)], capture_output=True,
                             text=True, check=True).stdout
        z = torch.tensor([[float(v) for v in line.split()] for line in out.splitlines()], dtype=torch.float64)
        return z[:, 0].float(), z[:, 1]

    return run


@needs_nvcc
@pytest.mark.parametrize("seed, q0", [(7, 0), (2**64 - 12345, 2**32 - 3), (2**63 + 1, 2**60 + 11)])
def test_cuda_noise_matches_reference_on_host(host_noise, seed, q0):
    groups = 1 << 14
    z32, z64 = host_noise(seed, q0, groups)
    # Half the device tolerance: with the host's accurate libm only a different
    # expression can differ by more (the exact angle of sincospif(2u) does, ~1.5e-6).
    torch.testing.assert_close(z32, normal_noise(4 * groups, seed, 4 * q0), rtol=0, atol=1e-6)
    expected64 = normal_noise(4 * groups, seed, 4 * q0, dtype=torch.float64)
    torch.testing.assert_close(z64, expected64, rtol=1e-13, atol=1e-13)
