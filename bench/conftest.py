"""Options, sizes and the timing helper shared by the dgm_fast benchmarks.

Run with ``pytest bench/`` or ``dgm_fast.benchmark.run_bench()``; see README.md.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import pytest
import torch

import dgm_fast
from dgm_fast._op import registered_ops
from dgm_fast.backend import resolve
from dgm_fast.benchmark import resolve_device


def pytest_addoption(parser):
    group = parser.getgroup("dgm_fast benchmarks")
    group.addoption("--bench-quick", action="store_true", default=os.environ.get("DGM_BENCH_QUICK") == "1",
                    help="smoke-test mode: fewer sizes, shorter timing (also DGM_BENCH_QUICK=1)")
    group.addoption("--bench-device", default="auto", choices=("auto", "cpu", "cuda"),
                    help="device of the benchmarked tensors; auto = cuda if available")
    group.addoption("--bench-backend", default="auto",
                    help="comma-separated dgm_fast backends to time, e.g. 'triton,cuda' (default: auto)")
    group.addoption("--bench-threads", type=int, default=int(os.environ.get("DGM_BENCH_THREADS", "0")),
                    help="torch.set_num_threads for the run; 0 (default) keeps torch's (also DGM_BENCH_THREADS)")


def pytest_configure(config):
    threads = config.getoption("--bench-threads", default=0)
    if threads:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class BenchConfig:
    device: torch.device
    quick: bool
    budget_s: float  # timed seconds per benchmark, excluding warm-up
    min_rounds: int

    @property
    def sizes(self) -> tuple[int, ...]:
        if self.quick:
            return (10**5, 10**6)
        # 1e8 float32 is 1.2 GB of traffic per step: only worth it on a GPU
        return (10**5, 10**7, 10**8) if self.device.type == "cuda" else (10**5, 10**7)

    @property
    def batches(self) -> tuple[int, ...]:
        return (64,) if self.quick else (64, 256)

    @property
    def warp_batches(self) -> tuple[int, ...]:
        """Feature volumes per call of the warp benchmarks: 1 (a video frame) and 8."""
        return (1,) if self.quick else (1, 8)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _config(config) -> BenchConfig:
    device = torch.device(resolve_device(config.getoption("--bench-device")))
    quick = config.getoption("--bench-quick")
    return BenchConfig(device, quick, budget_s=0.1 if quick else 1.0, min_rounds=3 if quick else 7)


def pytest_generate_tests(metafunc):
    cfg = _config(metafunc.config)
    if "numel" in metafunc.fixturenames:
        metafunc.parametrize("numel", cfg.sizes, ids=lambda n: f"n=1e{round(math.log10(n))}")
    if "batch" in metafunc.fixturenames:
        metafunc.parametrize("batch", cfg.batches, ids=lambda b: f"batch={b}")
    if "warp_batch" in metafunc.fixturenames:
        metafunc.parametrize("warp_batch", cfg.warp_batches, ids=lambda b: f"N={b}")
    if "contender" in metafunc.fixturenames:
        # (contender, dgm_fast backend); plain-PyTorch contenders have no backend
        backends = metafunc.config.getoption("--bench-backend").split(",")
        params = [("dgm_fast", b) for b in backends] + [("eager", None), ("compiled", None)]
        ids = [c if b in (None, "auto") else f"{c}[{b}]" for c, b in params]
        metafunc.parametrize("contender,backend", params, ids=ids)


@pytest.fixture(scope="session")
def bench_config(request) -> BenchConfig:
    return _config(request.config)


@pytest.fixture
def measure(benchmark, bench_config):
    """``measure(fn, op=, contender=, size=, dtype=, backend=)`` times ``fn()``.

    ``backend`` (dgm_fast contenders only) is forced around the whole run.
    Warms ``fn`` up (compilation, allocator), sizes rounds from one timed call
    so each benchmark takes about ``budget_s``, and tags the result for
    dgm_fast.benchmark. On CUDA the timed function synchronises, so a round
    measures finished kernels rather than queued launches.
    """
    cfg = bench_config

    def run(fn, *, op: str, contender: str, size: int, dtype: torch.dtype, backend: str | None = None,
            backend_op: str | None = None, **extra):
        def timed():
            fn()
            cfg.sync()

        with dgm_fast.use_backend(backend or "auto"):
            for _ in range(3):
                timed()
            start = time.perf_counter()
            timed()
            once = max(time.perf_counter() - start, 1e-7)
            # rounds of >= 1 ms keep timer and loop overhead out of sub-ms medians
            iterations = max(1, math.ceil(1e-3 / once))
            rounds = max(cfg.min_rounds, round(cfg.budget_s / (once * iterations)))
            # rows of a registered op record its backend; whole chains (sample_langevin) run the step op,
            # which resolve picks when given no op
            step_op = backend_op or (op if op in {o.name for o in registered_ops()} else None)
            benchmark.group = f"{op} size={size}"
            benchmark.extra_info.update(
                op=op, contender=contender, size=size, dtype=str(dtype).removeprefix("torch."),
                device=str(cfg.device), backend=resolve(cfg.device, step_op) if backend else None,
                quick=cfg.quick, threads=torch.get_num_threads(), **extra,
            )
            benchmark.pedantic(timed, rounds=rounds, iterations=iterations)

    return run
