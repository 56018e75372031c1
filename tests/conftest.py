"""Shared test setup, done before anything imports dgm_fast.

Triton kernels run under the interpreter when no GPU is present;
TRITON_INTERPRET must be set before any @triton.jit runs, so here.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import dgm_fast  # noqa: E402
from dgm_fast import _op  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# (device, backend) for every compiled backend that can run here
NATIVE = [(d, b) for d in DEVICES for b in dgm_fast.available_backends(d) if b != "reference"]


@pytest.fixture(autouse=True, scope="session")
def poisoned_outputs():
    """Every kernel output starts as NaN: an element a kernel skips then fails its test."""
    _op.poison_outputs(True)
    yield
    _op.poison_outputs(False)


def native_id(case):
    return f"{case[0]}-{case[1]}"


@pytest.fixture(params=NATIVE, ids=native_id)
def native(request):
    """(device, backend) of one compiled backend, forced for the test."""
    device, backend = request.param
    with dgm_fast.use_backend(backend):
        yield device, backend
