"""Backend selection: device dispatch, forcing, errors, and a missing extension."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import dgm_fast
from dgm_fast import backend


def test_auto_uses_the_compiled_cpu_kernel():
    assert backend.resolve(torch.device("cpu")) == "cpu"


def test_use_backend_nests_and_restores():
    with dgm_fast.use_backend("reference"):
        assert backend.resolve(torch.device("cpu")) == "reference"
        with dgm_fast.use_backend("cpu"):
            assert backend.resolve(torch.device("cpu")) == "cpu"
        assert backend.resolve(torch.device("cpu")) == "reference"
    assert backend.forced_backend() == "auto"


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        with dgm_fast.use_backend("fast"):
            pass


@pytest.mark.skipif(torch.cuda.is_available(), reason="cuda backend exists here")
def test_forcing_an_unavailable_backend_raises():
    with dgm_fast.use_backend("cuda"), pytest.raises(RuntimeError, match="'cuda' is unavailable"):
        dgm_fast.langevin_step(torch.zeros(3), torch.zeros(3), 0.1)


def test_environment_variable(monkeypatch):
    monkeypatch.setenv("DGM_FAST_BACKEND", "reference")
    assert backend.resolve(torch.device("cpu")) == "reference"
    monkeypatch.setenv("DGM_FAST_BACKEND", "nope")
    with pytest.raises(ValueError, match="DGM_FAST_BACKEND"):
        backend.resolve(torch.device("cpu"))


def test_import_without_extension_warns_once_and_falls_back():
    code = (
        "import sys, warnings; sys.modules['dgm_fast._C'] = None\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import dgm_fast, torch\n"
        "    dgm_fast.langevin_step(torch.zeros(3), torch.zeros(3), 0.1)\n"
        "print(sum('extension unavailable' in str(m.message) for m in w), dgm_fast.available_backends())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DGM_FAST_BACKEND"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    count, backends = out.stdout.split(" ", 1)
    assert count == "1" and "'cpu'" not in backends, out.stdout
