"""setup.py builds CUDA kernels only with a matching CUDA toolkit, else the CPU extension.

Each case runs in a subprocess whose torch claims CUDA (``torch.version.cuda``
is overwritten before setup.py is read), with a PATH and CUDA_HOME that hold
no toolkit, a fake one, or a fake one of another major version.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What a build needs from the repository (no build outputs), less the C++ sources (stand-in below).
SOURCES = ["setup.py", "pyproject.toml", "README.md", "dgm_fast", "kernels"]
# The extension's one source in the pip build: the real kernels compiled in the install that ran
# before the tests (3 minutes again here); this test is about what setup.py decides and pip makes.
STAND_IN = """#include <Python.h>
static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C() { return PyModule_Create(&module); }
"""

# Runs setup.py's decision (setup() itself only runs as __main__) as seen by a
# torch with CUDA argv[2] ("" for a CPU torch); prints it as JSON.
DECIDE = """
import json, runpy, sys
import torch
torch.version.cuda = sys.argv[2] or None
setup = runpy.run_path(sys.argv[1], run_name="dgm_fast_setup")
build, reason = setup["cuda_build_decision"]()
print(json.dumps({"build": build, "reason": reason, "arch": setup["default_cuda_arch_list"]()}))
"""


def clean_env(path: Path | str, **extra: str) -> dict:
    """The environment without any CUDA toolkit or build settings, PATH = ``path``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("CUDA_HOME", "CUDA_PATH", "TORCH_CUDA_ARCH_LIST", "DGM_FAST_NO_CUDA")}
    return {**env, "PATH": str(path), **extra}


def fake_toolkit(root: Path, release: str) -> Path:
    """A CUDA_HOME whose nvcc reports ``release`` (and has the header setup.py looks for)."""
    (root / "bin").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "include" / "cuda_runtime_api.h").touch()
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.99'\n")
    nvcc.chmod(0o755)
    return root


def decide(torch_cuda: str, env: dict) -> dict:
    result = subprocess.run([sys.executable, "-c", DECIDE, str(ROOT / "setup.py"), torch_cuda],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_cuda_torch_without_toolkit_builds_cpu(tmp_path):
    got = decide("13.0", clean_env(tmp_path))
    assert not got["build"] and "no CUDA toolkit" in got["reason"]


def test_toolkit_of_another_major_version_builds_cpu(tmp_path):
    home = fake_toolkit(tmp_path / "cuda", "12.4")
    got = decide("13.0", clean_env(tmp_path, CUDA_HOME=str(home)))
    assert not got["build"] and "12.4" in got["reason"] and "13.0" in got["reason"]


def test_matching_toolkit_without_gpu_builds_cuda_for_default_archs(tmp_path):
    home = fake_toolkit(tmp_path / "cuda", "13.1")
    got = decide("13.0", clean_env(tmp_path, CUDA_HOME=str(home)))
    assert got == {"build": True, "reason": f"nvcc 13.1 at {home}", "arch": "8.0;9.0+PTX"}


def test_nvcc_on_path_and_user_arch_list(tmp_path):
    home = fake_toolkit(tmp_path / "cuda", "13.0")
    got = decide("13.0", clean_env(home / "bin", TORCH_CUDA_ARCH_LIST="9.0"))
    assert got["build"] and got["arch"] is None  # the user's list stays


@pytest.mark.parametrize("torch_cuda, extra", [("13.0", {"DGM_FAST_NO_CUDA": "1"}), ("", {})],
                         ids=["DGM_FAST_NO_CUDA", "cpu-torch"])
def test_no_cuda_wanted_or_possible(tmp_path, torch_cuda, extra):
    home = fake_toolkit(tmp_path / "cuda", "13.0")
    assert not decide(torch_cuda, clean_env(tmp_path, CUDA_HOME=str(home), **extra))["build"]


def copy_sources(dst: Path) -> None:
    dst.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, dst / name, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
        else:
            shutil.copy2(ROOT / name, dst / name)
    (dst / "csrc" / "cpu").mkdir(parents=True)
    (dst / "csrc" / "bindings.cpp").write_text(STAND_IN)


def path_without_nvcc() -> str:
    """PATH less every folder that holds nvcc (the compiler and ninja must stay)."""
    dirs = [d for d in os.environ["PATH"].split(os.pathsep) if d and not (Path(d) / "nvcc").exists()]
    path = os.pathsep.join([str(Path(sys.executable).parent), *dirs])
    if shutil.which("c++", path=path) is None:
        pytest.skip("the C++ compiler shares its folder with nvcc")
    return path


def test_pip_builds_cpu_extension_for_cuda_torch_without_toolkit(tmp_path):
    """End to end: pip builds the wheel instead of failing, and says why."""
    src = tmp_path / "src"
    copy_sources(src)
    # Every python pip starts (itself, the build backend) sees a CUDA torch.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import torch\ntorch.version.cuda = '13.0'\n")
    # CFLAGS replaces Python's default -g ... -DNDEBUG: no debug info, a faster build
    env = clean_env(path_without_nvcc(), PYTHONPATH=str(site), CFLAGS="-g0 -DNDEBUG")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "wheels"), str(src)],
        env=env, capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    reason = [line.strip() for line in output.splitlines() if line.strip().startswith("dgm_fast: ")]
    assert len(reason) == 1, output[-5000:]
    assert "CPU extension only" in reason[0] and "no CUDA toolkit" in reason[0]
    (wheel,) = (tmp_path / "wheels").glob("dgm_fast-*.whl")
    assert any(n.startswith("dgm_fast/_C") for n in zipfile.ZipFile(wheel).namelist())
