"""Every compiled backend of langevin_step equals the plain-PyTorch reference."""

from __future__ import annotations

import math

import pytest
import torch

import dgm_fast
from dgm_fast.philox import normal_noise

# float32 differs from the reference only by the rounding of log/sin/cos in the
# noise (~1e-6 absolute for unit noise); 16-bit types by one ulp of the store.
TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float64: dict(atol=1e-12, rtol=1e-12),
    torch.bfloat16: dict(atol=1e-2, rtol=8e-3),
    torch.float16: dict(atol=1e-3, rtol=1e-3),
}
SHAPES = [(), (0,), (1,), (7,), (3, 5, 7), (1001,), (2, 0, 3)]
OPTIONS = [
    dict(),
    dict(noise_scale=0.0),
    dict(prior_weight=1.0, grad_clip=0.5),
    dict(noise_scale=0.3, clamp=(-1.0, 1.5), offset=3),
    dict(grad_clip=2.0, clamp=(-0.5, 0.5), seed=2**64 - 12345, offset=2**33 + 1),
]


def reference(x, grad, *args, **kw):
    with dgm_fast.use_backend("reference"):
        return dgm_fast.langevin_step(x, grad, *args, **kw)


def inputs(shape, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(device, dtype)
    g = (3 * torch.randn(shape, generator=gen, dtype=torch.float64)).to(device, dtype)
    return x, g


def dtypes_for(device):
    if device == "cpu":
        return [torch.float32, torch.float64, torch.bfloat16, torch.float16]
    return list(TOL)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(o) or "default")
def test_matches_reference(native, shape, opts):
    device, _ = native
    kw = dict(seed=1234) | opts
    for dtype in dtypes_for(device):
        x, g = inputs(shape, dtype, device)
        out = dgm_fast.langevin_step(x, g, 0.1, **kw)
        assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
        torch.testing.assert_close(out, reference(x, g, 0.1, **kw), **TOL[dtype])


def test_outputs_are_poisoned_before_kernels_write():
    from dgm_fast.langevin import op

    assert op.POISON  # set by conftest: an element a kernel skips stays NaN and fails


def test_noise_free_flow_to_rounding(native):
    device, _ = native
    x, g = inputs((4099,), torch.float32, device)
    out = dgm_fast.langevin_step(x, g, 0.05, 0.0, prior_weight=0.5)
    expect = x * (1 - 0.025 * 0.5) - 0.025 * g
    # two float32 roundings of terms of size ~1 (or one, where the kernel fuses an FMA)
    torch.testing.assert_close(out, expect, atol=2.4e-7, rtol=2.4e-7)


@pytest.mark.parametrize("layout", ["transposed", "strided", "expanded_grad"])
def test_non_contiguous(native, layout):
    device, _ = native
    x, g = inputs((33, 65), torch.float32, device)
    if layout == "transposed":
        x, g = x.t(), g.t()
    elif layout == "strided":
        x, g = x[:, ::2], g[:, ::2]
    else:
        g = g[:1].expand_as(x)
    out = dgm_fast.langevin_step(x, g, 0.2, seed=7, offset=5)
    torch.testing.assert_close(out, reference(x.contiguous(), g.contiguous(), 0.2, seed=7, offset=5), **TOL[torch.float32])


@pytest.mark.parametrize("contiguous", [True, False])
def test_inplace_matches_out_of_place(native, contiguous):
    device, _ = native
    x, g = inputs((40, 31), torch.float32, device)
    if not contiguous:
        x, g = x.t(), g.t()
    expect = dgm_fast.langevin_step(x, g, 0.1, seed=3, clamp=(-1, 1))
    y = x.clone()
    assert dgm_fast.langevin_step_(y, g, 0.1, seed=3, clamp=(-1, 1)) is y
    torch.testing.assert_close(y, expect, atol=0, rtol=0)


def test_nan_and_inf_propagate(native):
    device, _ = native
    x, g = inputs((64,), torch.float32, device)
    x[3], g[10], x[20] = float("nan"), float("nan"), float("inf")
    for kw in (dict(), dict(grad_clip=1.0, clamp=(-2.0, 2.0))):
        out = dgm_fast.langevin_step(x, g, 0.1, seed=1, **kw)
        ref = reference(x, g, 0.1, seed=1, **kw)
        assert torch.equal(out.isnan(), ref.isnan())
        assert out[3].isnan() and out[10].isnan()
        torch.testing.assert_close(out, ref, equal_nan=True, **TOL[torch.float32])


# --- the noise -------------------------------------------------------------

def noise(n, device, dtype=torch.float32, seed=99, offset=0):
    """The stream as the backend produces it: x = 0, grad = 0, step 1, noise 1."""
    zero = torch.zeros(n, device=device, dtype=dtype)
    return dgm_fast.langevin_step(zero, zero, 1.0, 1.0, seed=seed, offset=offset)


@pytest.mark.parametrize("offset", [0, 1, 6, 2**40 + 3])
def test_noise_is_the_reference_stream(native, offset):
    device, _ = native
    for dtype, tol in ((torch.float32, 2e-6), (torch.float64, 1e-13)):
        z = noise(20_003, device, dtype, seed=2**63 + 11, offset=offset)
        expect = normal_noise(20_003, 2**63 + 11, offset, dtype=dtype, device=device)
        torch.testing.assert_close(z, expect, atol=tol, rtol=0)


def test_noise_statistics(native):
    device, _ = native
    n = 1 << 20
    z = noise(n, device).double()
    se = 1 / math.sqrt(n)  # standard error of the mean and of a correlation
    assert abs(z.mean().item()) < 5 * se
    assert abs(z.var().item() - 1) < 5 * math.sqrt(2) * se
    assert abs((z**4).mean().item() - 3) < 5 * math.sqrt(96) * se  # Gaussian kurtosis
    for lag in (1, 2, 3, 4):  # neighbours share a Philox call when lag < 4
        assert abs((z[:-lag] * z[lag:]).mean().item()) < 5 * se
    nxt = noise(n, device, offset=n).double()  # the next chain step
    assert abs((z * nxt).mean().item()) < 5 * se


def test_seeds(native):
    device, _ = native
    a, b = noise(4096, device, seed=5), noise(4096, device, seed=6)
    assert torch.equal(a, noise(4096, device, seed=5))
    assert (a - b).abs().mean() > 0.5
    # a shifted offset is the same stream, shifted
    torch.testing.assert_close(noise(4000, device, seed=5, offset=96), a[96:], atol=0, rtol=0)


def test_seed_none_follows_torch_manual_seed(native):
    device, _ = native
    x, g = inputs((257,), torch.float32, device)
    torch.manual_seed(0)
    a = dgm_fast.langevin_step(x, g, 0.1)
    b = dgm_fast.langevin_step(x, g, 0.1)
    torch.manual_seed(0)
    assert torch.equal(a, dgm_fast.langevin_step(x, g, 0.1))
    assert not torch.equal(a, b)


def test_backends_agree_on_one_seed():
    """All backends that run here, reference included, give one stream."""
    x, g = inputs((5000,), torch.float32, "cpu")
    outs = {}
    for backend in dgm_fast.available_backends("cpu"):
        with dgm_fast.use_backend(backend):
            outs[backend] = dgm_fast.langevin_step(x, g, 0.1, seed=42, offset=2)
    for backend, out in outs.items():
        torch.testing.assert_close(out, outs["reference"], **TOL[torch.float32], msg=backend)
