"""The ODE flow of an energy (§2.4.4, dgm_fast/models/ode_flow.py), the divergences behind its
log-density (2.19), and the figure of its densities (Figures 2.1 / 2.3)."""

from __future__ import annotations

import io
import math
from functools import partial

import pytest
import torch
from helpers import TOL
from scipy.linalg import expm

import dgm_fast
from dgm_fast.demo.density_plots import cell_area, plot_flow_densities
from dgm_fast.models.ode_flow import ODEFlow, baseline_log_prob
from dgm_fast.nn import MLPEnergy

F64 = torch.float64
T = 0.5
# dopri5 at tolerance 1e-10 has a global error far under these on the linear flows below
SOLVE = dict(rtol=1e-10, atol=1e-10)
ODE_TOL = dict(rtol=1e-8, atol=1e-9)


def randn(*shape, seed=0, dtype=F64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def quadratic(eigenvalues, rotate: bool):
    """``E(x) = x^T A x / 2`` (a plain callable) and ``A``: diag(eigenvalues), randomly rotated if ``rotate``."""
    a = torch.diag(torch.tensor(eigenvalues, dtype=F64))
    if rotate:
        q, _ = torch.linalg.qr(randn(len(eigenvalues), len(eigenvalues), seed=1))
        a = q @ a @ q.T
    return (lambda x: 0.5 * ((x @ a) * x).sum(-1)), a


def mlp_energy(dims=(2, 16, 16, 1), activation="swish", dtype=F64, scale=2.0, seed=0):
    """A small MLPEnergy with its weights scaled up, so its flow bends and its Laplacian is far from 0."""
    torch.manual_seed(seed)
    energy = MLPEnergy(dims, activation).to(dtype)
    with torch.no_grad():
        for layer in energy.layers:
            layer.weight.mul_(scale)
    return energy


# a Rademacher probe's v^T A v is tr A exactly when A is diagonal: Hutchinson's estimate is then exact too
@pytest.mark.parametrize("trace, rotate", [("exact", True), ("hutchinson", False)])
def test_linear_flow_is_analytic(trace, rotate):
    """E = x^T A x / 2 makes (2.16) x' = -Ax, so x(T) = exp(-AT) x0 ~ N(0, exp(-2AT)) (2.17), and
    (2.19) must give that Gaussian's log-density."""
    energy, a = quadratic([0.5, 1.0, 1.5], rotate)
    flow = ODEFlow(energy, T, trace=trace, seed=3, **SOLVE)
    z = randn(64, 3)
    x = z @ torch.from_numpy(expm(-T * a.numpy())).T
    gaussian = torch.distributions.MultivariateNormal(torch.zeros(3, dtype=F64),
                                                      torch.from_numpy(expm(-2 * T * a.numpy())))
    torch.testing.assert_close(flow.sample(z), x, **ODE_TOL)
    torch.testing.assert_close(flow.log_prob(x), gaussian.log_prob(x), **ODE_TOL)


def test_euler_solve_is_the_noise_free_chain():
    """(2.20) is forward Euler on (2.16) with step eta / 2: K noise-free Langevin steps reach T = K eta / 2."""
    energy = mlp_energy()
    eta, k = 1 / 32, 16  # binary fractions, so torchdiffeq's grid ends exactly at T
    flow = ODEFlow(energy, k * eta / 2, method="euler", options={"step_size": eta / 2})
    x0 = randn(32, 2)
    torch.testing.assert_close(flow.sample(x0), dgm_fast.sample_langevin(energy, x0, k, eta, 0.0), **TOL[F64])


# float32 takes fixed rk4 steps: an adaptive solver could accept a step in one path that rounding rejects
# in the other, a difference of the solver's tolerance rather than of the integrand
@pytest.mark.parametrize("activation", ["swish", "softplus"])
@pytest.mark.parametrize("dtype, solver", [(F64, dict(rtol=1e-6, atol=1e-6)),
                                           (torch.float32, dict(method="rk4", options={"step_size": 0.05}))],
                         ids=["float64-dopri5", "float32-rk4"])
def test_fused_laplacian_matches_autograd_baseline(activation, dtype, solver):
    energy = mlp_energy(activation=activation, dtype=dtype)
    flow = ODEFlow(energy, 0.2, **solver)
    assert flow.trace == "fused"
    x = randn(32, 2, dtype=dtype)
    torch.testing.assert_close(flow.log_prob(x), baseline_log_prob(energy, x, 0.2, **solver), **TOL[dtype])
    exact = ODEFlow(energy, 0.2, trace="exact", **solver)
    torch.testing.assert_close(flow.sample(x), exact.sample(x), **TOL[dtype])


def test_flow_density_integrates_to_one():
    """exp(log p) (2.19) of a nonlinear flow is a density: its Riemann sum on a wide grid is 1 (the sum
    of a smooth, fast-decaying density converges fast; dopri5 at 1e-8 errs far less than 1e-7 here)."""
    flow = ODEFlow(mlp_energy((2, 32, 1)), T, rtol=1e-8, atol=1e-8)
    axis = torch.linspace(-6, 6, 61, dtype=F64)
    grid = torch.cartesian_prod(axis, axis)
    mass = flow.log_prob(grid).exp().sum() * (axis[1] - axis[0]) ** 2
    assert abs(mass.item() - 1) < 1e-7


def test_no_graph_and_empty_batch():
    energy = mlp_energy(dtype=torch.float32)
    x = torch.randn(5, 2, requires_grad=True)
    flow = ODEFlow(energy)
    assert not flow.sample(x).requires_grad and not flow.log_prob(x).requires_grad
    assert flow.sample(x[:0]).shape == (0, 2) and flow.log_prob(x[:0]).shape == (0,)


W = randn(3, 3, seed=5)


def field(x):
    """A nonlinear field acting on each row alone."""
    return torch.tanh(x @ W) * x.roll(1, -1) + x.sin()


def jacobians(x):
    return torch.func.vmap(torch.func.jacrev(lambda row: field(row[None])[0]))(x)


def test_exact_divergence_is_jacobian_trace():
    x = randn(16, 3)
    trace = jacobians(x).diagonal(dim1=-2, dim2=-1).sum(-1)
    torch.testing.assert_close(dgm_fast.exact_divergence(field, x), trace, **TOL[F64])


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_hutchinson_is_reproducible_and_unbiased(distribution):
    x = randn(16, 3)
    estimate = partial(dgm_fast.hutchinson_divergence, field, n_probes=2, distribution=distribution)
    assert torch.equal(estimate(x, seed=7), estimate(x, seed=7))
    assert not torch.equal(estimate(x, seed=7), estimate(x, seed=8))
    # one probe's variance: 2 |S|_F^2 (Gaussian), less the diagonal's share (Rademacher), S = (J + J^T) / 2
    jac = jacobians(x)
    sym = (jac + jac.mT) / 2
    diagonal = sym.diagonal(dim1=-2, dim2=-1).square().sum(-1)
    var = 2 * (sym.square().sum((-2, -1)) - (distribution == "rademacher") * diagonal)
    # rows are independent and each copy draws its own probes: 512 copies of 4 probes are 2048 probes a row
    copies, n = 512, 2048
    spread = estimate(x.repeat(copies, 1), n_probes=n // copies, seed=11).view(copies, -1).mean(0)
    error = spread - jac.diagonal(dim1=-2, dim2=-1).sum(-1)
    assert (error.abs() < 5 * (var / n).sqrt()).all()


ENERGY = lambda x: x.square().sum(-1)  # noqa: E731


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(energy=3), TypeError, "energy"),
    (dict(t1=0.0), ValueError, "t1"), (dict(t1=-1.0), ValueError, "t1"), (dict(t1=math.inf), ValueError, "t1"),
    (dict(t1=math.nan), ValueError, "t1"), (dict(t1="1"), TypeError, "t1"),
    (dict(rtol=0.0), ValueError, "rtol"), (dict(atol=-1e-5), ValueError, "atol"),
    (dict(method="rk45"), ValueError, "method"), (dict(method=5), TypeError, "method"),
    (dict(options=[("step_size", 0.1)]), TypeError, "options"),
    (dict(trace="fast"), ValueError, "trace"), (dict(trace="fused"), ValueError, "trace"),
    (dict(n_probes=0), ValueError, "n_probes"), (dict(seed=-1), ValueError, "seed"),
])
def test_flow_bad_arguments(kwargs, error, name):
    with pytest.raises(error, match=rf"^{name}\b"):
        ODEFlow(**{"energy": ENERGY, **kwargs})


@pytest.mark.parametrize("method", ["sample", "log_prob"])
@pytest.mark.parametrize("value, error", [
    (torch.zeros(4), ValueError), (torch.zeros(2, 2, 2), ValueError), (torch.zeros(4, 3), ValueError),
    (torch.zeros(4, 2, dtype=torch.int64), TypeError), (torch.zeros(4, 2, dtype=torch.float16), TypeError),
    ([[0.0, 0.0]], TypeError),
])
def test_flow_bad_inputs(method, value, error):
    name = "x0" if method == "sample" else "x"
    with pytest.raises(error, match=rf"^{name}\b"):
        getattr(ODEFlow(mlp_energy(dtype=torch.float32)), method)(value)


def test_energy_must_return_a_tensor():
    with pytest.raises(TypeError, match=r"^energy\b"):
        ODEFlow(lambda x: 0.0).log_prob(torch.zeros(3, 2))


@pytest.mark.parametrize("call, error, name", [
    (lambda: dgm_fast.exact_divergence(3, torch.zeros(2, 2)), TypeError, "f"),
    (lambda: dgm_fast.exact_divergence(field, torch.zeros(3)), ValueError, "x"),
    (lambda: dgm_fast.exact_divergence(lambda x: x[:, :1], torch.zeros(2, 2)), ValueError, "f"),
    (lambda: dgm_fast.hutchinson_divergence(field, torch.zeros(2, 3), 0), ValueError, "n_probes"),
    (lambda: dgm_fast.hutchinson_divergence(field, torch.zeros(2, 3), distribution="uniform"), ValueError,
     "distribution"),
    (lambda: dgm_fast.hutchinson_divergence(field, torch.zeros(2, 3), seed=-1), ValueError, "seed"),
])
def test_divergence_bad_inputs(call, error, name):
    with pytest.raises(error, match=rf"^{name}\b"):
        call()


def test_density_figure():
    flow = ODEFlow(mlp_energy((2, 8, 1), dtype=torch.float32), 0.2)
    resolution = 12
    fig = plot_flow_densities({"toy": flow}, {"toy": torch.randn(50, 2)}, n_samples=50, resolution=resolution)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    bars = [ax.images[0].colorbar for ax in panels if ax.images]
    assert len(panels) == 6 and [b.ax.get_ylabel() for b in bars] == ["−E(x)", "p_EBM(x)", "log p_flow(x)",
                                                                       "p_flow(x)"]
    ebm = panels[3].images[0].get_array()
    assert abs(ebm.sum() * cell_area(resolution) - 1) < 1e-5  # normalised on the grid it is drawn on
    assert any("ODE flow" in text.get_text() for text in fig.texts)
    fig.savefig(io.BytesIO(), format="png", dpi=30)
