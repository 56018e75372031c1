"""Shared test setup, done before anything imports dgm_fast.

Triton kernels run under the interpreter when no GPU is present;
TRITON_INTERPRET must be set before any @triton.jit runs, so here.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# pytest-xdist workers (pyproject's addopts: -n auto) share the cores instead of each taking all
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    torch.set_num_threads(max(1, torch.get_num_threads() // _WORKERS))

import pytest  # noqa: E402

import dgm_fast  # noqa: E402
from dgm_fast import _op  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# (device, backend) for every compiled backend that can run here
NATIVE = [(d, b) for d in DEVICES for b in dgm_fast.available_backends(d) if b != "reference"]


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: a worker per core, at most 4 (each holds its own torch and Triton interpreter)."""
    return max(1, min(os.cpu_count() or 1, 4))


def pytest_collection_modifyitems(config, items):
    """Tests that share a module-scoped fixture (a trained model, compiled sources) run on one
    xdist worker (``--dist loadgroup``), so that the fixture is built once."""
    for item in items:
        if any(defs[-1].scope == "module" for defs in item._fixtureinfo.name2fixturedefs.values()):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


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
