"""Bad arguments raise ValueError/TypeError naming the argument; never a crash."""

from __future__ import annotations

import math

import pytest
import torch

import dgm_fast

X = torch.randn(8)
G = torch.randn(8)


@pytest.mark.parametrize(
    "args, kw, exc, name",
    [
        ((X, torch.randn(9), 0.1), {}, ValueError, "grad"),
        ((X, G.double(), 0.1), {}, TypeError, "grad"),
        ((X.int(), G.int(), 0.1), {}, TypeError, "x"),
        ((X.bool(), G, 0.1), {}, TypeError, "x"),
        ((X, G.long(), 0.1), {}, TypeError, "grad"),
        ((X.numpy(), G, 0.1), {}, TypeError, "x"),
        ((X, G, 0.0), {}, ValueError, "step_size"),
        ((X, G, -1.0), {}, ValueError, "step_size"),
        ((X, G, math.inf), {}, ValueError, "step_size"),
        ((X, G, math.nan), {}, ValueError, "step_size"),
        ((X, G, "0.1"), {}, TypeError, "step_size"),
        ((X, G, True), {}, TypeError, "step_size"),
        ((X, G, 0.1, -0.5), {}, ValueError, "noise_scale"),
        ((X, G, 0.1, math.inf), {}, ValueError, "noise_scale"),
        ((X, G, 0.1), dict(grad_clip=-1.0), ValueError, "grad_clip"),
        ((X, G, 0.1), dict(grad_clip=math.nan), ValueError, "grad_clip"),
        ((X, G, 0.1), dict(clamp=(1.0, -1.0)), ValueError, "clamp"),
        ((X, G, 0.1), dict(clamp=(1.0,)), TypeError, "clamp"),
        ((X, G, 0.1), dict(clamp=(0.0, math.nan)), ValueError, "clamp"),
        ((X, G, 0.1), dict(prior_weight=math.inf), ValueError, "prior_weight"),
        ((X, G, 0.1), dict(seed=1.5), TypeError, "seed"),
        ((X, G, 0.1), dict(seed=2**64), ValueError, "seed"),
        ((X, G, 0.1), dict(seed=-1), ValueError, "seed"),
        ((X.to_sparse(), G, 0.1), {}, TypeError, "x must be a dense"),
        ((X, G.to_sparse(), 0.1), {}, TypeError, "grad must be a dense"),
        ((torch.nested.nested_tensor([X, X[:3]]), G, 0.1), {}, TypeError, "x must be a dense tensor, got a nested"),
        ((X, G, 0.1), dict(offset=-1), ValueError, "offset"),
    ],
)
@pytest.mark.parametrize("fn", [dgm_fast.langevin_step, dgm_fast.langevin_step_], ids=["out", "inplace"])
def test_langevin_step_rejects(fn, args, kw, exc, name):
    args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
    with pytest.raises(exc, match=name):
        fn(*args, **kw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs two devices")
def test_device_mismatch():
    with pytest.raises(ValueError, match="grad"):
        dgm_fast.langevin_step(X, G.cuda(), 0.1)


def test_inplace_rejects_partial_overlap():
    buf = torch.arange(21.0)
    with pytest.raises(ValueError, match="x and grad partially overlap"):
        dgm_fast.langevin_step_(buf[1:], buf[:-1], 1.0, 0.0)
    assert torch.equal(buf, torch.arange(21.0))
    with pytest.raises(ValueError, match="x has elements that share memory"):
        dgm_fast.langevin_step_(torch.zeros(1).expand(4), torch.zeros(4), 1.0, 0.0)
    # disjoint halves of one buffer are fine
    dgm_fast.langevin_step_(buf[:10], buf[10:20], 1.0, 0.0)


def test_sample_langevin_in_inference_mode_says_why():
    with torch.inference_mode():
        sampler = dgm_fast.LangevinSampler(torch.nn.Linear(2, 1), n_steps=2, step_size=0.1)  # building is fine
        with pytest.raises(RuntimeError, match="inference_mode"):
            sampler(torch.randn(4, 2))


@pytest.mark.parametrize("kw, exc, name", [
    (dict(n_steps=-5, step_size=0.1), ValueError, "n_steps"),
    (dict(n_steps=5, step_size=-1.0), ValueError, "step_size"),
    (dict(n_steps=5, step_size=0.1, noise_scale=-1.0), ValueError, "noise_scale"),
    (dict(n_steps=5, step_size=0.1, clamp=(2, 1)), ValueError, "clamp"),
    (dict(n_steps=2.5, step_size=0.1), TypeError, "n_steps"),
])
def test_sampler_validates_at_construction(kw, exc, name):
    with pytest.raises(exc, match=name):
        dgm_fast.LangevinSampler(torch.nn.Linear(2, 1), **kw)


def test_sample_langevin_rejects():
    energy = lambda x: (x**2).sum(-1)  # noqa: E731
    x0 = torch.randn(4, 2)
    with pytest.raises(ValueError, match="n_steps"):
        dgm_fast.sample_langevin(energy, x0, -1, 0.1)
    with pytest.raises(TypeError, match="n_steps"):
        dgm_fast.sample_langevin(energy, x0, 2.5, 0.1)
    with pytest.raises(TypeError, match="energy"):
        dgm_fast.sample_langevin(None, x0, 2, 0.1)
    with pytest.raises(TypeError, match="x0"):
        dgm_fast.sample_langevin(energy, [1.0, 2.0], 2, 0.1)
    with pytest.raises(TypeError, match="energy"):
        dgm_fast.sample_langevin(lambda x: 3.0, x0, 2, 0.1)
    with pytest.raises(ValueError, match="step_size"):
        dgm_fast.sample_langevin(energy, x0, 2, -0.1)
