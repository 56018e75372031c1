"""Backend selection: per-op dispatch, forcing (thread- and task-local), errors, a missing extension."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import warnings

import pytest
import torch

import dgm_fast
from dgm_fast import backend


def test_auto_uses_the_compiled_cpu_kernel():
    assert backend.resolve(torch.device("cpu")) == "cpu"
    assert backend.has_kernel("langevin", "langevin_step", "cpu")
    assert not backend.has_kernel("langevin", "no_such_op", "cpu")


def test_use_backend_nests_and_restores():
    with dgm_fast.use_backend("reference"):
        assert backend.resolve(torch.device("cpu")) == "reference"
        with dgm_fast.use_backend("cpu"):
            assert backend.resolve(torch.device("cpu")) == "cpu"
        assert backend.resolve(torch.device("cpu")) == "reference"
    assert backend.forced_backend() == "auto"


def test_use_backend_is_thread_local():
    inside, release = threading.Event(), threading.Event()
    seen = []

    def other():
        with dgm_fast.use_backend("reference"):
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=other)
    thread.start()
    inside.wait(5)
    seen.append(backend.resolve(torch.device("cpu")))  # while the other thread forces reference
    release.set()
    thread.join()
    assert seen == ["cpu"] and backend.forced_backend() == "auto"


def test_use_backend_is_task_local_when_blocks_interleave():
    async def task(name, first, second):
        with dgm_fast.use_backend(name):
            first.set()
            await second.wait()
            return backend.forced_backend()

    async def main():
        a, b = asyncio.Event(), asyncio.Event()
        return await asyncio.gather(task("reference", a, b), task("cpu", b, a))

    assert asyncio.run(main()) == ["reference", "cpu"]
    assert backend.forced_backend() == "auto"


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        with dgm_fast.use_backend("fast"):
            pass


@pytest.mark.skipif(torch.cuda.is_available(), reason="cuda backend exists here")
def test_forcing_an_unavailable_backend_raises():
    with dgm_fast.use_backend("cuda"), pytest.raises(RuntimeError, match="'cuda' is unavailable"):
        dgm_fast.langevin_step(torch.zeros(3), torch.zeros(3), 0.1)


def test_availability_is_per_op_and_says_why():
    from dgm_fast._op import get_op

    why = get_op("langevin_step_").availability(torch.device("cpu"))
    assert why["reference"] is None and why["cpu"] is None
    assert "CUDA tensors" in why["cuda"]
    with pytest.raises(ValueError, match="unknown dgm_fast op"):
        get_op("nope")


def test_cuda_auto_order_and_one_warning(monkeypatch):
    """On CUDA tensors auto takes Triton, else the CUDA kernel, else the reference, saying why once."""
    reasons = {"triton": "triton is missing", "cuda": None}
    monkeypatch.setattr(backend, "unavailable_reason", lambda b, *a: reasons.get(b))
    backend._auto.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="uses the 'cuda' backend.*triton is missing"):
            assert backend._auto("cuda", "langevin", "langevin_step") == "cuda"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert backend._auto("cuda", "langevin", "langevin_step") == "cuda"  # no second warning
        reasons["cuda"] = "no CUDA kernels"
        with pytest.warns(RuntimeWarning, match="'reference'"):
            assert backend._auto("cuda", "langevin", "langevin_step_") == "reference"
        reasons["triton"] = None
        assert backend._auto("cuda", "langevin", "langevin") == "triton"
    finally:
        backend._auto.cache_clear()


def _run(code: str, **env) -> str:
    """stdout, then stderr, of ``code`` in a fresh interpreter with ``env`` added."""
    full = {k: v for k, v in os.environ.items() if k != "DGM_FAST_BACKEND"} | env
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full)
    return done.stdout + done.stderr


def test_environment_variable():
    code = "import torch, dgm_fast; from dgm_fast import backend; print(backend.resolve(torch.device('cpu')))"
    assert _run(code, DGM_FAST_BACKEND="reference").strip() == "reference"
    assert "DGM_FAST_BACKEND: unknown backend 'nope'" in _run(code, DGM_FAST_BACKEND="nope")


def test_import_without_extension_warns_once_and_falls_back():
    code = (
        "import sys, warnings; sys.modules['dgm_fast._C'] = None\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import dgm_fast, torch\n"
        "    x = torch.zeros(3, requires_grad=True)\n"
        "    y = dgm_fast.langevin_step(x, torch.zeros(3), 0.1, seed=1)\n"
        "    y.sum().backward()\n"
        "    dgm_fast.langevin_step_(torch.zeros(3), torch.zeros(3), 0.1)\n"
        "    f = torch.compile(lambda a: dgm_fast.langevin_step(a, a, 0.1, seed=1), fullgraph=True)\n"
        "    f(torch.zeros(3))\n"
        "    with dgm_fast.use_backend('triton'):\n"  # a kernel entered below autograd from Python
        "        y = torch.zeros(64)\n"
        "        dgm_fast.langevin_step_(y, torch.ones(64), 0.1, 0.0)\n"
        "        assert y._version == 1 and torch.equal(y, torch.full((64,), -0.05)), y\n"
        "    with torch.inference_mode():\n"
        "        t = torch.zeros(3)\n"
        "    try:\n"
        "        torch.ops.dgm_fast.langevin_step_(t, t, 0.1, 0.0, 0.0, 1.0, -1.0, 1.0, 0, 0, None)\n"
        "        raise SystemExit('an inference tensor was written outside inference mode')\n"
        "    except RuntimeError as e:\n"
        "        assert 'inference tensor' in str(e)\n"
        "print(sum('extension unavailable' in str(m.message) for m in w), dgm_fast.available_backends())\n"
    )
    count, backends = _run(code).splitlines()[-1].split(" ", 1)
    assert count == "1" and "'cpu'" not in backends, backends


def test_select_is_marked_constant_as_torch_compiler_would():
    """backend._constant_for_compile sets the flag torch.compiler.assume_constant_result sets."""
    marked = torch.compiler.assume_constant_result(lambda: 0)
    assert marked._dynamo_marked_constant and backend.select._dynamo_marked_constant
