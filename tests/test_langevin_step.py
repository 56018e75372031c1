"""What is particular to the Langevin step (reference equivalence, opcheck, compile,
transforms: tests/test_op_contract.py): its noise stream, rounding, layouts and the
traps users met when porting their samplers."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

import dgm_fast
from dgm_fast.philox import normal_noise
from helpers import TOL, make_tensor


def reference(x, grad, *args, **kw):
    with dgm_fast.use_backend("reference"):
        return dgm_fast.langevin_step(x, grad, *args, **kw)


def inputs(shape, dtype=torch.float32, device="cpu", seed=0):
    return make_tensor(shape, dtype, device, seed=seed), make_tensor(shape, dtype, device, scale=3.0, seed=seed + 1)


def test_noise_free_flow_to_rounding(native):
    device, _ = native
    x, g = inputs((4099,), device=device)
    out = dgm_fast.langevin_step(x, g, 0.05, 0.0, prior_weight=0.5)
    expect = x * (1 - 0.025 * 0.5) - 0.025 * g
    torch.testing.assert_close(out, expect, atol=2.4e-7, rtol=2.4e-7)  # two float32 roundings


def test_overflow_gives_nan_like_the_reference(native):
    """No FMA contraction: keep * x and drift * grad overflow to +inf and -inf, whose sum is NaN."""
    device, _ = native
    x = torch.full((64,), 3e38, device=device)
    out = dgm_fast.langevin_step(x, x.clone(), 4.0, 0.0, prior_weight=-1.0)
    assert reference(x, x.clone(), 4.0, 0.0, prior_weight=-1.0).isnan().all()
    assert out.isnan().all()


@pytest.mark.parametrize("contiguous", [True, False])
def test_inplace_matches_out_of_place(native, contiguous):
    device, _ = native
    x, g = inputs((40, 31), device=device)
    if not contiguous:
        x, g = x.t(), g.t()
    expect = dgm_fast.langevin_step(x, g, 0.1, seed=3, clamp=(-1, 1))
    y = x.clone()
    assert dgm_fast.langevin_step_(y, g, 0.1, seed=3, clamp=(-1, 1)) is y
    torch.testing.assert_close(y, expect, atol=0, rtol=0)


def test_inplace_with_grad_aliasing_x(native):
    device, _ = native
    x, _ = inputs((257,), device=device)
    expect = dgm_fast.langevin_step(x, x.clone(), 0.1, seed=4)
    y = x.clone()
    dgm_fast.langevin_step_(y, y, 0.1, seed=4)  # the same elements: read before written
    torch.testing.assert_close(y, expect, atol=0, rtol=0)


@pytest.mark.parametrize("fn", [dgm_fast.langevin_step, dgm_fast.langevin_step_], ids=["out", "inplace"])
def test_channels_last_is_kept(native, fn):
    device, _ = native
    x, g = (t.contiguous(memory_format=torch.channels_last) for t in inputs((2, 3, 5, 7), device=device))
    out = fn(x.clone(memory_format=torch.preserve_format), g, 0.1, seed=2)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, reference(x, g, 0.1, seed=2), **TOL[torch.float32])


def test_nan_and_inf_propagate(native):
    device, _ = native
    x, g = inputs((64,), device=device)
    x[3], g[10], x[20] = float("nan"), float("nan"), float("inf")
    for kw in (dict(), dict(grad_clip=1.0, clamp=(-2.0, 2.0))):
        out = dgm_fast.langevin_step(x, g, 0.1, seed=1, **kw)
        ref = reference(x, g, 0.1, seed=1, **kw)
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
    # a few ulp: every backend evaluates the reference's expression (angle fl32(2pi) * u included)
    for dtype, tol in ((torch.float32, dict(atol=2e-7, rtol=1e-6)), (torch.float64, dict(atol=1e-13, rtol=0))):
        z = noise(20_003, device, dtype, seed=2**63 + 11, offset=offset)
        expect = normal_noise(20_003, 2**63 + 11, offset, dtype=dtype, device=device)
        torch.testing.assert_close(z, expect, **tol)


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
    x, g = inputs((257,), device=device)
    torch.manual_seed(0)
    a = dgm_fast.langevin_step(x, g, 0.1)
    b = dgm_fast.langevin_step(x, g, 0.1)
    torch.manual_seed(0)
    assert torch.equal(a, dgm_fast.langevin_step(x, g, 0.1))
    assert not torch.equal(a, b)


def test_no_seed_is_drawn_without_noise():
    x, g = inputs((9,))
    state = torch.get_rng_state()
    dgm_fast.langevin_step(x, g, 0.1, 0.0)
    dgm_fast.langevin_step_(x, g, 0.1, 0.0)
    dgm_fast.sample_langevin(lambda v: (v**2).sum(-1), x, 3, 0.1, 0.0)
    assert torch.equal(state, torch.get_rng_state())


def test_seed_none_compiles_fullgraph_and_exports(native):
    device, _ = native
    x, g = inputs((33,), device=device)
    step = torch.compile(lambda a, b: dgm_fast.langevin_step(a, b, 0.1), fullgraph=True)
    torch.manual_seed(3)
    first, second = step(x, g), step(x, g)
    torch.manual_seed(3)
    # inductor draws the seed with its own generator, seeded from torch's: reproducible, fresh per call
    assert torch.equal(first, step(x, g))
    assert not torch.equal(first, second)

    class Step(torch.nn.Module):
        def forward(self, a, b):
            return dgm_fast.langevin_step(a, b, 0.1)

    exported = torch.export.export(Step(), (x, g)).module()
    assert not torch.equal(exported(x, g), exported(x, g))  # a fresh seed per call


def test_backends_agree_on_one_seed():
    """All backends that run here, reference included, give one stream."""
    x, g = inputs((5000,))
    outs = {}
    for backend in dgm_fast.available_backends("cpu"):
        with dgm_fast.use_backend(backend):
            outs[backend] = dgm_fast.langevin_step(x, g, 0.1, seed=42, offset=2)
    for backend, out in outs.items():
        torch.testing.assert_close(out, outs["reference"], **TOL[torch.float32], msg=backend)


def test_reference_backend_compiles_quickly():
    """torch.compile of the reference (the auto choice without the extension) finishes:
    the Philox stream is one opaque op, not hundreds of integer ops for inductor."""
    code = (
        "import torch, dgm_fast, time\n"
        "x = torch.randn(1000); t = time.perf_counter()\n"
        "with dgm_fast.use_backend('reference'):\n"
        "    f = torch.compile(lambda a: dgm_fast.langevin_step(a, a, 0.1, seed=1), fullgraph=True)\n"
        "    y = f(x)\n"
        "    assert torch.allclose(y, dgm_fast.langevin_step(x, x, 0.1, seed=1), atol=1e-6)\n"
        "print(time.perf_counter() - t)\n"
    )
    seconds = float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                                   timeout=300).stdout)
    assert seconds < 120  # it hung (300 s+, 8 GB) when inductor saw the whole Philox


# --- porting a sampler, and a user's own loop ---------------------------------

def test_porting_the_common_update_form(native):
    """``x - lr * grad + std * xi`` (JEM, ebm-anatomy) is step_size = 2 lr, noise_scale = std."""
    device, _ = native
    x, g = inputs((1000,), device=device)
    lr, std = 1.0, 0.01
    xi = normal_noise(1000, 7, 0, device=device)
    torch.testing.assert_close(dgm_fast.langevin_step(x, g, 2 * lr, std, seed=7), x - lr * g + std * xi,
                               atol=1e-5, rtol=1e-5)


def test_noise_stream_advances_and_replays(native):
    device, _ = native
    x, g = inputs((10,), device=device)
    stream = dgm_fast.NoiseStream(seed=11)
    a, b = stream.step(x, g, 0.1), stream.step(x, g, 0.1)
    assert not torch.equal(a, b) and stream.offset == 24  # 10 rounded up to 12, twice
    torch.testing.assert_close(b, dgm_fast.langevin_step(x, g, 0.1, seed=11, offset=12), atol=0, rtol=0)
    replay = dgm_fast.NoiseStream(seed=11)
    y = x.clone()
    replay.step_(y, g, 0.1)
    torch.testing.assert_close(y, a, atol=0, rtol=0)
    assert "seed=11" in repr(replay)
    with pytest.raises(ValueError, match="seed"):
        dgm_fast.NoiseStream(seed=-1)
