"""Shared test setup, done before anything imports dgm_fast.

Triton kernels run under the interpreter when no GPU is present;
TRITON_INTERPRET must be set before any @triton.jit runs, so here.
"""

import os
import re

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


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """``-n auto``: a worker per core, at most 4 (each holds its own torch and Triton interpreter)."""
    return max(1, min(os.cpu_count() or 1, 4))


# A test module that defines a module-scoped fixture (a trained model, compiled sources).
_SHARED_FIXTURE = re.compile(r'@pytest\.fixture\([^)]*scope="module"')


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadgroup``: every module with a module-scoped fixture is one work unit, so the
    fixture is built once. The controller does not collect, so it reads the module's source.
    (xdist_group marks added at collection no longer group: xdist renames node ids, which pytest
    9.2 ignores, pytest-dev/pytest-xdist#1386.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    shared = {}

    class SharedFixtureModules(LoadGroupScheduling):
        def _split_scope(self, nodeid):
            module = nodeid.split("::", 1)[0]
            if module not in shared:
                path = config.rootpath / module
                shared[module] = path.is_file() and bool(_SHARED_FIXTURE.search(path.read_text()))
            return module if shared[module] else super()._split_scope(nodeid)

    return SharedFixtureModules(config, log)


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
