"""dgm_fast Langevin ops against what a user writes in plain PyTorch, eager and compiled.

Measures only; correctness is asserted in tests/. Sizes, rounds and the
timing helper ``measure`` come from conftest.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import dgm_fast

DTYPE = torch.float32
STEP = 0.01
NOISE = math.sqrt(STEP)  # the Euler-Maruyama noise of a Langevin step of size STEP
N_STEPS = 60


def eager_step(x, grad):
    # the separate randn tensor is written and re-read: the traffic dgm_fast avoids
    return x - STEP / 2 * grad + NOISE * torch.randn_like(x)


def eager_step_(x, grad):
    # the in-place update a sampling loop writes; the randn tensor is still separate
    return x.add_(grad, alpha=-STEP / 2).add_(torch.randn_like(x), alpha=NOISE)


# dynamic=False: one graph specialised per shape, as a fixed-shape user loop gets
compiled_step = torch.compile(eager_step, dynamic=False)
compiled_step_ = torch.compile(eager_step_, dynamic=False)


def test_copy(measure, bench_config, numel):
    """The machine's copy bandwidth at this size: the yardstick for langevin_step."""
    x = torch.randn(numel, dtype=DTYPE, device=bench_config.device)
    out = torch.empty_like(x)
    measure(lambda: out.copy_(x), op="copy", contender="torch", size=numel, dtype=DTYPE,
            bytes=2 * x.element_size() * numel)


STEP_CONTENDERS = {
    # op name: contender -> step function of (x, grad)
    "langevin_step": {
        "dgm_fast": lambda x, g: dgm_fast.langevin_step(x, g, STEP, NOISE),
        "eager": eager_step,
        "compiled": compiled_step,
    },
    # in place: no output allocation, so no first-touch page faults of a fresh buffer
    "langevin_step_": {
        "dgm_fast": lambda x, g: dgm_fast.langevin_step_(x, g, STEP, NOISE),
        "eager": eager_step_,
        "compiled": compiled_step_,
    },
}


@pytest.mark.parametrize("op", STEP_CONTENDERS)
def test_langevin_step(measure, bench_config, numel, contender, backend, op):
    x, grad = (torch.randn(numel, dtype=DTYPE, device=bench_config.device) for _ in range(2))
    step = STEP_CONTENDERS[op][contender]
    # the minimum traffic of a step: read x and grad, write out (noise is not a tensor)
    measure(lambda: step(x, grad), op=op, contender=contender, size=numel, dtype=DTYPE, backend=backend,
            bytes=3 * x.element_size() * numel)


@pytest.mark.parametrize("small_numel", [1, 100], ids=lambda n: f"n={n}")
def test_call_overhead(measure, bench_config, small_numel, contender, backend):
    """Python-side cost of one call (checks, backend choice, dispatch, launch) on a tiny tensor,
    against the eager two-line formula it replaces: there the kernel's work is negligible."""
    x, grad = (torch.randn(small_numel, dtype=DTYPE, device=bench_config.device) for _ in range(2))
    step = STEP_CONTENDERS["langevin_step"][contender]
    measure(lambda: step(x, grad), op="langevin_step", contender=contender, size=small_numel, dtype=DTYPE,
            backend=backend, bytes=3 * x.element_size() * small_numel)


@pytest.fixture(scope="module")
def energy(bench_config):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(64, 200), nn.LeakyReLU(0.2),
        nn.Linear(200, 200), nn.LeakyReLU(0.2),
        nn.Linear(200, 1),
    )
    # sampling differentiates w.r.t. x only
    return net.to(bench_config.device, DTYPE).requires_grad_(False)


def eager_chain(energy, x):
    for _ in range(N_STEPS):
        x = x.detach().requires_grad_()
        (grad,) = torch.autograd.grad(energy(x).sum(), x)
        x = eager_step(x.detach(), grad)
    return x


@pytest.fixture(scope="module")
def compiled_chain(energy):
    # torch.func.grad of the energy and the update compile into one graph with
    # fullgraph=True; torch.autograd.grad inside a compiled function graph-breaks.
    grad_energy = torch.func.grad(lambda x: energy(x).sum())
    step = torch.compile(lambda x: eager_step(x, grad_energy(x)), dynamic=False, fullgraph=True)

    def chain(x):
        for _ in range(N_STEPS):
            x = step(x)
        return x

    return chain


def test_sample_langevin(measure, bench_config, energy, compiled_chain, batch, contender, backend):
    x0 = torch.randn(batch, 64, dtype=DTYPE, device=bench_config.device)
    fn = {
        "dgm_fast": lambda: dgm_fast.sample_langevin(energy, x0, N_STEPS, STEP, NOISE),
        "eager": lambda: eager_chain(energy, x0),
        "compiled": lambda: compiled_chain(x0),
    }[contender]
    measure(fn, op="sample_langevin", contender=contender, size=batch, dtype=DTYPE, backend=backend,
            n_steps=N_STEPS, energy="mlp 64-200-200-1")
