"""Gradients of langevin_step through its clip and clamp masks, and compiled chains
(opcheck and the generic compile check: tests/test_op_contract.py)."""

from __future__ import annotations

import pytest
import torch

import dgm_fast

CASES = [
    dict(),
    dict(noise_scale=0.0, prior_weight=1.0),
    dict(grad_clip=0.7),
    dict(clamp=(-0.8, 0.9), grad_clip=1.5, prior_weight=0.3),
]


def leaf_inputs(shape=(6, 5), dtype=torch.float64, device="cpu"):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen, dtype=dtype).to(device).requires_grad_()
    g = (2 * torch.randn(shape, generator=gen, dtype=dtype)).to(device).requires_grad_()
    return x, g


@pytest.mark.parametrize("kw", CASES, ids=lambda k: ",".join(k) or "default")
def test_gradcheck(native, kw):
    device, _ = native
    x, g = leaf_inputs(device=device)
    fn = lambda a, b: dgm_fast.langevin_step(a, b, 0.3, seed=9, **kw)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, g))
    assert torch.autograd.gradgradcheck(fn, (x, g))


@pytest.mark.parametrize("kw", CASES, ids=lambda k: ",".join(k) or "default")
def test_gradients_match_reference(native, kw):
    device, _ = native
    x, g = leaf_inputs(dtype=torch.float32, device=device)
    w = torch.randn(x.shape, device=device)
    grads = {}
    for backend in ("reference", native[1]):
        with dgm_fast.use_backend(backend):
            out = dgm_fast.langevin_step(x, g, 0.3, seed=9, **kw)
            grads[backend] = torch.autograd.grad((out * w).sum(), (x, g))
    for ours, ref in zip(grads[native[1]], grads["reference"]):
        torch.testing.assert_close(ours, ref)


def test_torch_compile_fullgraph(native):
    device, _ = native

    def chain_step(x, g):
        y = dgm_fast.langevin_step(x, g, 0.1, seed=123, offset=4, grad_clip=1.0)
        return (y * y).sum(dim=-1)

    x, g = leaf_inputs((17, 9), dtype=torch.float32, device=device)
    compiled = torch.compile(chain_step, fullgraph=True)
    torch.testing.assert_close(compiled(x, g), chain_step(x, g))
    gx_c, = torch.autograd.grad(compiled(x, g).sum(), x)
    gx_e, = torch.autograd.grad(chain_step(x, g).sum(), x)
    torch.testing.assert_close(gx_c, gx_e)


def test_inplace_under_autograd_is_recorded(native):
    device, _ = native
    x, g = leaf_inputs(dtype=torch.float32, device=device)
    y = x * 1.0
    dgm_fast.langevin_step_(y, g, 0.2, seed=1)
    gx, gg = torch.autograd.grad(y.sum(), (x, g))
    torch.testing.assert_close(gx, torch.ones_like(x))
    torch.testing.assert_close(gg, torch.full_like(g, -0.1))


def test_torch_compile_fullgraph_inplace(native):
    device, _ = native

    def chain(x, g):
        y = x.clone()
        for k in range(3):
            dgm_fast.langevin_step_(y, g, 0.1, seed=5, offset=k * y.numel(), clamp=(-2, 2))
        return y

    x, g = leaf_inputs((31, 7), dtype=torch.float32, device=device)
    x, g = x.detach(), g.detach()
    torch.testing.assert_close(torch.compile(chain, fullgraph=True)(x, g), chain(x, g))
