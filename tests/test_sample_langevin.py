"""Whole chains: sample_langevin and LangevinSampler against a loop of reference steps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dgm_fast


def mlp_energy(seed=0, dim=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))


def reference_chain(energy, x0, n_steps, step, noise=None, seed=0, **kw):
    """The chain written out with reference steps: the spec of sample_langevin."""
    x, stride, traj = x0, -(-x0.numel() // 4) * 4, [x0]
    with dgm_fast.use_backend("reference"):
        for k in range(n_steps):
            x = x.detach().requires_grad_()
            (g,) = torch.autograd.grad(energy(x).sum(), x)
            x = dgm_fast.langevin_step(x.detach(), g, step, noise, seed=seed, offset=k * stride, **kw)
            traj.append(x)
    return x, torch.stack(traj)


@pytest.mark.parametrize("kw", [dict(), dict(noise_scale=0.0), dict(prior_weight=1.0, grad_clip=0.5, clamp=(-2, 2))],
                         ids=["langevin", "flow", "latent"])
def test_chain_matches_reference_loop(native, kw):
    device, _ = native
    energy = mlp_energy().to(device)
    x0 = torch.randn(13, 3, device=device)
    noise = kw.pop("noise_scale", None)
    traj = dgm_fast.sample_langevin(energy, x0, 6, 0.05, noise, seed=77, return_trajectory=True, **kw)
    _, expect = reference_chain(energy, x0, 6, 0.05, noise, seed=77, **kw)
    assert traj.shape == (7, 13, 3) and not traj.requires_grad
    torch.testing.assert_close(traj, expect, atol=1e-5, rtol=1e-5)


def test_noise_free_flow_lowers_energy(native):
    device, _ = native
    energy = lambda x: 0.5 * (x**2).sum(-1)  # noqa: E731
    x0 = torch.randn(64, 2, device=device) * 3
    x = dgm_fast.sample_langevin(energy, x0, 20, 0.2, 0.0)
    torch.testing.assert_close(x, x0 * 0.9**20)  # (2.20) on E = |x|^2/2 is x <- (1 - eta/2) x


def test_langevin_reaches_gaussian_target(native):
    """(2.15) on E = |x|^2 / (2 s^2) samples N(0, s^2) up to O(eta) bias."""
    device, _ = native
    s2, eta = 0.25, 0.01
    x = dgm_fast.sample_langevin(lambda x: (x**2).sum(-1) / (2 * s2), torch.zeros(20000, 2, device=device),
                                 300, eta, seed=3)
    var = x.var().item()
    exact = s2 / (1 - eta / (4 * s2))  # stationary variance of the discretised chain
    assert abs(var - exact) < 0.02 * exact


def test_create_graph_trains_through_the_chain(native):
    """The generator loss (2.25): its gradient reaches the energy's parameters."""
    device, backend = native
    x0 = torch.randn(9, 3, device=device)
    grads = {}
    for name in ("reference", backend):
        energy = mlp_energy(seed=4).to(device)
        with dgm_fast.use_backend(name):
            x = dgm_fast.sample_langevin(energy, x0, 4, 0.1, 0.0, create_graph=True)
        assert x.requires_grad
        grads[name] = torch.autograd.grad(energy(x).sum(), list(energy.parameters()))
    assert any(g.abs().sum() > 0 for g in grads[backend])
    for ours, ref in zip(grads[backend], grads["reference"]):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


def test_sampler_module(native):
    device, _ = native
    energy = mlp_energy().to(device)
    sampler = dgm_fast.LangevinSampler(energy, n_steps=5, step_size=0.05)
    assert list(sampler.parameters()) == list(energy.parameters())
    x0 = torch.randn(6, 3, device=device)
    torch.testing.assert_close(sampler(x0, seed=2), dgm_fast.sample_langevin(energy, x0, 5, 0.05, seed=2))
    assert "n_steps=5" in repr(sampler)


def test_x0_untouched_and_zero_steps():
    x0 = torch.randn(5, 2)
    before = x0.clone()
    out = dgm_fast.sample_langevin(lambda x: (x**2).sum(-1), x0, 0, 0.1, create_graph=True)
    assert torch.equal(out, before) and not x0.requires_grad
    dgm_fast.sample_langevin(lambda x: (x**2).sum(-1), x0, 3, 0.1)
    assert torch.equal(x0, before)
