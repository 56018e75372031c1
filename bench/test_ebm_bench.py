"""dgm_fast's fused MLP energy chains and ODE log-density against eager and compiled PyTorch, in one run.

Measures only; correctness is asserted in tests/. The timing helper ``measure`` and the
``contender``/``backend`` parameters (dgm_fast per backend, eager, compiled) come from conftest.py.

* ``mlp_energy_sample_latent``: the latent EBM of §3.3, ``MLPEnergy((64, 200, 200, 1), "leaky_relu")``
  (slope 0.2), 60 steps of (3.8) (step 0.01, noise sqrt(0.01), prior weight 1: the N(0, I) prior),
  batch 64 and 256 (``batch`` of conftest.py: 64 only with --bench-quick).
* ``mlp_energy_sample_toy``: the 2-D toy energy of appendix 2.4.7, ``MLPEnergy((2, 256, 256, 256, 256, 1))``
  (swish), 40 Langevin steps (2.15) (step 0.02, noise 0.05, the demo's), batch 800.

  Contenders: ``dgm_fast`` is ``MLPEnergy.sample`` (the whole chain in one fused op); ``eager`` is
  ``dgm_fast.sample_langevin`` on the same module (autograd's gradient, then the fused step, per step);
  ``compiled`` is the best torch.compile variant the issue found: the whole chain, unrolled, in one
  ``torch.compile(fullgraph=True)`` graph, its gradient by ``torch.func.grad`` (no autograd graph);
  ``compiled_step`` compiles one step as a user writes it (energy, ``torch.autograd.grad``, update),
  which graph-breaks at ``autograd.grad``. The compiled rows record ``compile_s``, the first call's
  time (tracing and compiling, or a hit of Inductor's cache in /tmp/torchinductor_*), which the
  timed rounds exclude; they take about a minute each and are left out of --bench-quick.
  The compiled chains draw their noise with ``torch.randn_like``; dgm_fast and sample_langevin use
  the same counter-based stream, so those two compute the same samples.

* ``gemm_ebm_latent`` / ``gemm_ebm_toy``: the floor. ``torch.mm`` into preallocated outputs at one
  step's GEMM shapes of that chain (see ``chain_macs``), so a chain row's GFLOP/s (``flops`` / median)
  over its ``gemm_yardstick`` row's is the fraction of the machine's GEMM throughput at those shapes it
  reaches; ``gemm_square`` (``torch.mm`` of two n x n matrices, n = 2048, 1024 with --bench-quick) is
  the machine's large-GEMM throughput, recorded beside it (``square_gemm`` on chain rows).

* ``ode_log_prob_toy``: ``log p(x)`` (2.19) of the 2-D toy energy by the ODE flow (§2.4.4;
  ``dgm_fast.models.ode_flow``): ``dgm_fast`` is ``ODEFlow(energy).log_prob(x)`` (the trace of (2.18)
  by the fused Laplacian), ``eager`` its baseline ``baseline_log_prob(energy, x)`` (torchdiffeq with
  autograd's gradient and its exact trace by d backward passes). Both use the appendix's solver:
  dopri5, T = 0.2, rtol = atol = 1e-5. Batch 800 (points of a density grid). These rows skip, with
  the reason, where ``dgm_fast.models.ode_flow`` does not import (it needs torchdiffeq).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
import torch

import dgm_fast
from dgm_fast.nn import MLPEnergy

DTYPE = torch.float32


@dataclass(frozen=True)
class Chain:
    """A benchmarked chain: the energy's widths and activation, and the sampler's options."""

    name: str
    dims: tuple[int, ...]
    activation: str
    n_steps: int
    step_size: float
    noise_scale: float
    prior_weight: float = 0.0
    negative_slope: float = 0.2

    def chain_macs(self, batch: int) -> int:
        """Multiply-adds of the whole chain's GEMMs.

        Per row and step, with widths d_0 .. d_L (d_L = 1): the forward's layers
        cost sum_{l=1..L} d_{l-1} d_l; the backward to x, g_{l-1} = (g_l * act'(h_l)) W_l, starts
        from g_{L-1} = w_L (the last layer's weight row, no product) and costs sum_{l=1..L-1}
        d_l d_{l-1}. Activations, their derivatives and the update are O(width) per row: left out.
        Latent (64, 200, 200, 1): 53000 + 52800 = 105800 per row and step; toy (2, 256 x 4, 1):
        197376 + 197120 = 394496."""
        d = self.dims
        forward = sum(a * b for a, b in zip(d[:-1], d[1:]))
        backward = sum(a * b for a, b in zip(d[:-2], d[1:-1]))
        return self.n_steps * batch * (forward + backward)

    def flops(self, batch: int) -> int:
        return 2 * self.chain_macs(batch)  # 2 flops per multiply-add

    def step_gemms(self, batch: int) -> list[tuple[int, int, int]]:
        """(m, k, n) of one step's GEMMs: x @ W^T per layer, then g @ W per layer but the last."""
        d = self.dims
        return [(batch, a, b) for a, b in zip(d[:-1], d[1:])] + [(batch, b, a) for a, b in zip(d[:-2], d[1:-1])]


LATENT = Chain("latent", (64, 200, 200, 1), "leaky_relu", n_steps=60, step_size=0.01, noise_scale=0.1,
               prior_weight=1.0)
TOY = Chain("toy", (2, 256, 256, 256, 256, 1), "swish", n_steps=40, step_size=0.02, noise_scale=0.05)
TOY_BATCH = 800
SQUARE_GEMM = "gemm_square"


def _randn(*shape, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=DTYPE).to(device)


def _energy(chain: Chain, device) -> MLPEnergy:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        energy = MLPEnergy(chain.dims, chain.activation, chain.negative_slope)
    # sampling differentiates with respect to x only
    return energy.to(device, DTYPE).requires_grad_(False)


def _update(chain: Chain, x, grad, noise):
    """The step (2.15) / (3.8) in plain PyTorch: x - eta/2 (grad + prior x) + noise_scale xi."""
    half = chain.step_size / 2
    return x * (1 - half * chain.prior_weight) - half * grad + chain.noise_scale * noise


def compiled_chain(energy: MLPEnergy, chain: Chain):
    """The whole chain in one graph: ``torch.func.grad`` of the energy (no autograd graph), every step unrolled."""
    grad_energy = torch.func.grad(lambda x: energy(x).sum())

    def run(x):
        for _ in range(chain.n_steps):
            x = _update(chain, x, grad_energy(x), torch.randn_like(x))
        return x

    return torch.compile(run, dynamic=False, fullgraph=True)


def compiled_step_chain(energy: MLPEnergy, chain: Chain):
    """One step compiled as a user writes it (energy, ``torch.autograd.grad``, update), called n_steps times."""
    def step(x):
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            (grad,) = torch.autograd.grad(energy(x).sum(), x)
        return _update(chain, x.detach(), grad, torch.randn_like(x))

    step = torch.compile(step, dynamic=False)

    def run(x):
        for _ in range(chain.n_steps):
            x = step(x)
        return x

    return run


def _chain_fn(contender: str, energy: MLPEnergy, chain: Chain, x0):
    kw = dict(prior_weight=chain.prior_weight, seed=1)
    if contender == "dgm_fast":
        return lambda: energy.sample(x0, chain.n_steps, chain.step_size, chain.noise_scale, **kw)
    if contender == "eager":
        return lambda: dgm_fast.sample_langevin(energy, x0, chain.n_steps, chain.step_size, chain.noise_scale, **kw)
    run = {"compiled": compiled_chain, "compiled_step": compiled_step_chain}[contender](energy, chain)
    return lambda: run(x0)


def _time_chain(measure, bench_config, chain: Chain, batch: int, contender: str, backend: str | None):
    if contender.startswith("compiled") and bench_config.quick:
        pytest.skip("torch.compile of a chain takes about a minute: not in --bench-quick")
    device = bench_config.device
    energy = _energy(chain, device)
    x0 = _randn(batch, chain.dims[0], device=device, seed=1)
    fn = _chain_fn(contender, energy, chain, x0)
    extra = {}
    if contender.startswith("compiled"):
        start = time.perf_counter()
        fn()
        bench_config.sync()
        extra["compile_s"] = time.perf_counter() - start
    measure(fn, op=f"mlp_energy_sample_{chain.name}", contender=contender, size=batch, dtype=DTYPE, backend=backend,
            backend_op="mlp_energy_sample", flops=chain.flops(batch), gemm_yardstick=f"gemm_ebm_{chain.name}",
            square_gemm=SQUARE_GEMM, dims=list(chain.dims), activation=chain.activation, n_steps=chain.n_steps,
            step_size=chain.step_size, noise_scale=chain.noise_scale, prior_weight=chain.prior_weight, **extra)


def test_sample_latent(measure, bench_config, batch, contender, backend):
    _time_chain(measure, bench_config, LATENT, batch, contender, backend)


def test_sample_latent_compiled_step(measure, bench_config, batch):
    _time_chain(measure, bench_config, LATENT, batch, "compiled_step", None)


def test_sample_toy(measure, bench_config, contender, backend):
    _time_chain(measure, bench_config, TOY, TOY_BATCH, contender, backend)


def test_sample_toy_compiled_step(measure, bench_config):
    _time_chain(measure, bench_config, TOY, TOY_BATCH, "compiled_step", None)


# ---------------------------------------------------------------------------------------------------
# the GEMM floor


def _gemm_row(measure, bench_config, op: str, shapes: list[tuple[int, int, int]], size: int, **extra):
    """torch.mm of (m, k) @ (k, n) for each of ``shapes`` into preallocated outputs."""
    device = bench_config.device
    mms = [(_randn(m, k, device=device, seed=2 * i), _randn(k, n, device=device, seed=2 * i + 1),
            torch.empty(m, n, dtype=DTYPE, device=device)) for i, (m, k, n) in enumerate(shapes)]

    def run():
        for a, b, out in mms:
            torch.mm(a, b, out=out)

    flops = sum(2 * m * k * n for m, k, n in shapes)
    measure(run, op=op, contender="torch", size=size, dtype=DTYPE, flops=flops, n_mm=len(mms), **extra)


def test_gemm_latent(measure, bench_config, batch):
    """One step's GEMMs of the latent chain: the yardstick of its rows (their ``gemm_yardstick``, same size)."""
    _gemm_row(measure, bench_config, "gemm_ebm_latent", LATENT.step_gemms(batch), batch, dims=list(LATENT.dims))


def test_gemm_toy(measure, bench_config):
    _gemm_row(measure, bench_config, "gemm_ebm_toy", TOY.step_gemms(TOY_BATCH), TOY_BATCH, dims=list(TOY.dims))


def test_gemm_square(measure, bench_config):
    n = 1024 if bench_config.quick else 2048
    _gemm_row(measure, bench_config, SQUARE_GEMM, [(n, n, n)], n)


# ---------------------------------------------------------------------------------------------------
# the ODE flow's log-density (2.19)


def test_ode_log_prob(measure, bench_config, contender, backend):
    if contender == "compiled":
        pytest.skip("no compiled contender: torchdiffeq's adaptive solver steps in Python, data-dependently")
    try:
        from dgm_fast.models.ode_flow import ODEFlow, baseline_log_prob
    except ImportError as exc:
        pytest.skip(f"dgm_fast.models.ode_flow does not import: {type(exc).__name__}: {exc}")
    device = bench_config.device
    energy = _energy(TOY, device)
    x = 2 * _randn(TOY_BATCH, 2, device=device, seed=3)  # the toy data's range
    if contender == "dgm_fast":
        flow = ODEFlow(energy)
        fn = lambda: flow.log_prob(x)  # noqa: E731
    else:
        fn = lambda: baseline_log_prob(energy, x)  # noqa: E731
    measure(fn, op="ode_log_prob_toy", contender=contender, size=TOY_BATCH, dtype=DTYPE, backend=backend,
            backend_op="mlp_energy_laplacian", dims=list(TOY.dims), activation=TOY.activation, method="dopri5",
            t1=0.2, tol=1e-5)
