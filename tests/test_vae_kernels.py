"""The categorical pixel likelihood's kernels (C++ and Triton) against the reference and F.cross_entropy.

On every native backend: random logits over odd sizes (one pixel, seven, a partial pixel tile after
full ones, one and three image channels, empty batches and images), non-contiguous inputs through the
public function, float32 and float64, logits offset by +-1e4, infinities and NaN, an out-of-range
target (the op below the argument checks: NaN, never a read outside the logits), gradients through the
public function and through both outputs of the op, a float64 gradcheck, and (CPU) the portable build
and thread-count independence.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import dgm_fast
from dgm_fast import _extension
from dgm_fast.vae.functional import categorical_pixel_nll
from dgm_fast.vae.op import NLL, NLL_BACKWARD
from dgm_fast.vae.reference import categorical_pixel_nll_backward_reference, categorical_pixel_nll_reference
from helpers import TOL

DTYPES = (torch.float32, torch.float64)
# (batch, nc, spatial): 16 pixels, one pixel (no spatial dims, and 1 x 1), 7, 35, 561 (the C++
# kernels' 512-pixel tile and a partial one), 1200 (two tiles and a partial one; Triton's
# interpreter blocks of 1024 and a partial one), an empty batch, empty images
CASES = [(4, 3, (4, 4)), (3, 3, ()), (2, 1, (1, 1)), (3, 1, (7,)), (5, 3, (5, 7)), (2, 3, (33, 17)),
         (1, 1, (40, 30)), (0, 3, (4, 4)), (2, 2, (0, 3))]
CASE_IDS = [f"{b}x{nc}x{'x'.join(map(str, s)) or 'scalar'}" for b, nc, s in CASES]


def make_inputs(batch, nc, spatial, dtype, device, *, seed=0, scale=2.0, offset=0.0):
    gen = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn((batch, nc * 256, *spatial), generator=gen, dtype=torch.float64)
    if offset:  # a per-pixel offset of +-offset: lse and the picked logit both near it
        sign = torch.randint(0, 2, (batch, nc, 1, *spatial), generator=gen).to(torch.float64) * 2 - 1
        logits = (logits.view(batch, nc, 256, *spatial) + offset * sign).view(logits.shape)
    target = torch.randint(0, 256, (batch, nc, *spatial), generator=gen)
    return logits.to(device, dtype), target.to(device)


def cross_entropy_nll(logits, target):
    """The eager formulation users write: classes moved to dim 1, summed per sample."""
    b, nc = target.shape[:2]
    per_pixel = F.cross_entropy(logits.view(b, nc, 256, *target.shape[2:]).movedim(2, 1), target, reduction="none")
    return per_pixel.sum(dim=tuple(range(1, per_pixel.dim())))


def truth(logits, target):
    """The reference in float64 on the same values."""
    nll, lse = categorical_pixel_nll_reference(logits.double(), target)
    return nll, lse


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_forward_matches_reference_and_cross_entropy(native, case, dtype):
    device, _ = native
    logits, target = make_inputs(*case, dtype, device, seed=len(case[2]))
    nll, lse = NLL(logits, target)
    ref_nll, ref_lse = categorical_pixel_nll_reference(logits, target)
    torch.testing.assert_close(nll, ref_nll, **TOL[dtype])
    torch.testing.assert_close(lse, ref_lse, **TOL[dtype])
    torch.testing.assert_close(nll, cross_entropy_nll(logits, target), **TOL[dtype])
    # against float64: float32's error is that of a few roundings per pixel (|nll| ~ 6 per pixel)
    exact_nll, exact_lse = truth(logits, target)
    tight = dict(atol=1e-6, rtol=1e-6) if dtype == torch.float32 else dict(atol=1e-13, rtol=1e-13)
    torch.testing.assert_close(nll.double(), exact_nll, **tight)
    torch.testing.assert_close(lse.double(), exact_lse, **tight)
    torch.testing.assert_close(categorical_pixel_nll(logits, target), nll, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["channels_last", "strided", "transposed"])
def test_non_contiguous_inputs(native, layout, dtype):
    device, _ = native
    logits, target = make_inputs(3, 3, (6, 5), dtype, device, seed=3)
    if layout == "channels_last":
        view = logits.contiguous(memory_format=torch.channels_last)
        tview = target.to(torch.int32)  # narrower integer targets are accepted too
    elif layout == "strided":
        view = torch.repeat_interleave(logits, 2, dim=-1)[..., ::2]
        tview = torch.repeat_interleave(target, 2, dim=-1)[..., ::2]
    else:
        view = logits.transpose(-1, -2).contiguous().transpose(-1, -2)
        tview = target.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not view.is_contiguous()
    nll = categorical_pixel_nll(view, tview)
    torch.testing.assert_close(nll, categorical_pixel_nll_reference(logits, target)[0], **TOL[dtype])
    # the gradient lands in the input's layout
    view = view.detach().requires_grad_()
    (g,) = torch.autograd.grad(categorical_pixel_nll(view, tview).sum(), view)
    ref = logits.detach().requires_grad_()
    (expect,) = torch.autograd.grad(categorical_pixel_nll_reference(ref, target)[0].sum(), ref)
    torch.testing.assert_close(g, expect, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_large_magnitude_logits(native, dtype):
    """Logits near +-1e4: max-subtraction keeps exp in range; float32 then rounds lse (and so each
    pixel's term) to ulp(1e4) ~ 1e-3, as the float32 reference does."""
    device, _ = native
    logits, target = make_inputs(3, 3, (5, 7), dtype, device, seed=11, offset=1e4)
    nll, lse = NLL(logits, target)
    ref_nll, ref_lse = categorical_pixel_nll_reference(logits, target)
    torch.testing.assert_close(lse, ref_lse, **TOL[dtype])
    exact_nll, exact_lse = truth(logits, target)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(lse.double(), exact_lse, atol=0, rtol=2 * eps)
    # half an ulp of |lse| <= 1e4 + 20 per pixel from rounding lse, the same for lse - picked
    pixels = target[0].numel()
    bound = pixels * (1e4 + 20) * eps + 1e-6 * exact_nll.abs()
    assert ((nll.double() - exact_nll).abs() <= bound).all(), (nll, exact_nll, bound)
    assert ((ref_nll.double() - exact_nll).abs() <= bound).all()  # the bound holds for the reference too
    assert torch.isfinite(nll).all() and (nll > 0).all()


def special_logits(dtype, device):
    """(logits, target) of 7 samples, 2 image channels, 9 pixels, each sample with one kind of
    non-finite pixel (sample 0 none): a whole pixel -inf; -inf at the target only; -inf off the
    target (one level, and 99 levels); +inf off the target; +inf at the target; NaN off the target,
    and a pixel with +inf and NaN."""
    logits, target = make_inputs(7, 2, (3, 3), dtype, device, seed=5)
    levels = logits.view(7, 2, 256, 9)
    inf, nan = float("inf"), float("nan")
    t = lambda b, c, p: int(target[b, c].view(-1)[p])  # noqa: E731
    other = lambda b, c, p: (t(b, c, p) + 17) % 256  # noqa: E731
    levels[1, 0, :, 4] = -inf
    levels[2, 1, t(2, 1, 8), 8] = -inf
    levels[3, 0, other(3, 0, 0), 0] = -inf
    off_target = (torch.arange(256, device=device) != t(3, 1, 3)) & (torch.arange(256, device=device) < 100)
    levels[3, 1, :, 3][off_target] = -inf
    levels[4, 0, other(4, 0, 2), 2] = inf
    levels[5, 1, t(5, 1, 6), 6] = inf
    levels[6, 0, other(6, 0, 1), 1] = nan
    levels[6, 1, other(6, 1, 5), 5] = inf
    levels[6, 1, t(6, 1, 5) ^ 1, 5] = nan
    return logits, target


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_infinities_and_nan(native, dtype):
    device, _ = native
    logits, target = special_logits(dtype, device)
    nll, lse = NLL(logits, target)
    ref_nll, ref_lse = categorical_pixel_nll_reference(logits, target)
    # the reference's pattern: sample 0 finite, then NaN, +inf, finite, +inf, NaN, NaN
    assert torch.isfinite(ref_nll[[0, 3]]).all() and torch.isnan(ref_nll[[1, 5, 6]]).all()
    assert (ref_nll[[2, 4]] == float("inf")).all()
    torch.testing.assert_close(nll, ref_nll, equal_nan=True, **TOL[dtype])
    torch.testing.assert_close(lse, ref_lse, equal_nan=True, **TOL[dtype])
    # F.cross_entropy's log_softmax makes a pixel with +inf NaN (inf - inf) where the reference has
    # +inf or NaN: compared on the samples without +inf
    torch.testing.assert_close(nll[:4], cross_entropy_nll(logits, target)[:4], equal_nan=True, **TOL[dtype])
    # the backward on the same specials, both output gradients nonzero
    gen = torch.Generator().manual_seed(9)
    grad_nll = torch.randn(nll.shape, generator=gen, dtype=torch.float64).to(device, dtype)
    grad_lse = torch.randn(lse.shape, generator=gen, dtype=torch.float64).to(device, dtype)
    grad = NLL_BACKWARD(grad_nll, grad_lse, logits, target, ref_lse)
    expect = categorical_pixel_nll_backward_reference(grad_nll, grad_lse, logits, target, ref_lse)
    torch.testing.assert_close(grad, expect, equal_nan=True, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_target_out_of_range_gives_nan(native, dtype):
    """Below the public checks: a target outside [0, 255] (even far outside) is never read through."""
    device, _ = native
    logits, target = make_inputs(4, 3, (5, 7), dtype, device, seed=2)
    bad = target.clone()
    bad[1, 2, 4, 6] = 256
    bad[2, 0, 0, 0] = -1
    bad[3, 1, 2, 2] = 2**40
    nll, lse = NLL(logits, bad)
    ref_nll, ref_lse = categorical_pixel_nll_reference(logits, target)
    torch.testing.assert_close(nll[0], ref_nll[0], **TOL[dtype])
    assert torch.isnan(nll[1:]).all()
    torch.testing.assert_close(lse, ref_lse, **TOL[dtype])
    grad = NLL_BACKWARD(torch.ones_like(nll), torch.zeros_like(lse), logits, bad, ref_lse)
    levels = grad.view(4, 3, 256, 35)
    assert torch.isnan(levels[1, 2, :, 4 * 7 + 6]).all() and torch.isnan(levels[3, 1, :, 2 * 7 + 2]).all()
    good = torch.ones(4, 3, 35, dtype=torch.bool)
    good[1, 2, 34] = good[2, 0, 0] = good[3, 1, 16] = False
    expect = categorical_pixel_nll_backward_reference(torch.ones_like(nll), torch.zeros_like(lse), logits, target,
                                                      ref_lse).view(4, 3, 256, 35)
    torch.testing.assert_close(levels.movedim(2, 3)[good], expect.movedim(2, 3)[good], **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradient_through_public_function(native, case, dtype):
    device, _ = native
    logits, target = make_inputs(*case, dtype, device, seed=7)
    weight = torch.linspace(-1.0, 2.0, case[0], dtype=dtype, device=device)
    x = logits.clone().requires_grad_()
    (g,) = torch.autograd.grad((categorical_pixel_nll(x, target) * weight).sum(), x)
    r = logits.clone().requires_grad_()
    (expect,) = torch.autograd.grad((categorical_pixel_nll_reference(r, target)[0] * weight).sum(), r)
    torch.testing.assert_close(g, expect, **TOL[dtype])
    (ce,) = torch.autograd.grad((cross_entropy_nll(r, target) * weight).sum(), r)
    torch.testing.assert_close(g, ce, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_of_both_outputs(native, dtype):
    """A nonzero gradient of lse too: the op's backward with grad_lse against the reference's autograd."""
    device, _ = native
    logits, target = make_inputs(3, 3, (5, 7), dtype, device, seed=4)
    gen = torch.Generator().manual_seed(1)
    w_nll = torch.randn(3, generator=gen, dtype=torch.float64).to(device, dtype)
    w_lse = torch.randn(target.shape, generator=gen, dtype=torch.float64).to(device, dtype)
    x = logits.clone().requires_grad_()
    nll, lse = NLL(x, target)
    (g,) = torch.autograd.grad((nll * w_nll).sum() + (lse * w_lse).sum(), x)
    r = logits.clone().requires_grad_()
    ref_nll, ref_lse = categorical_pixel_nll_reference(r, target)
    (expect,) = torch.autograd.grad((ref_nll * w_nll).sum() + (ref_lse * w_lse).sum(), r)
    torch.testing.assert_close(g, expect, **TOL[dtype])
    # lse alone (grad_nll None -> zeros)
    (g_lse,) = torch.autograd.grad((NLL(x, target)[1] * w_lse).sum(), x)
    (e_lse,) = torch.autograd.grad((categorical_pixel_nll_reference(r, target)[1] * w_lse).sum(), r)
    torch.testing.assert_close(g_lse, e_lse, **TOL[dtype])


def test_gradcheck(native):
    device, _ = native
    logits, target = make_inputs(2, 2, (3,), torch.float64, device, seed=8, scale=1.0)
    x = logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: categorical_pixel_nll(t, target), (x,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda t: NLL(t, target), (x,), fast_mode=True)


@pytest.mark.skipif(_extension._C is None, reason="no C++ extension")
def test_cpu_portable_build_and_threads():
    """The portable build equals the AVX2 one bit for bit (the same branchless exp, no FMA
    contraction); the result's bits do not depend on the number of threads (per-tile partials summed
    in a fixed order)."""
    logits, target = make_inputs(5, 3, (30, 40), torch.float32, "cpu", seed=6)
    with dgm_fast.use_backend("cpu"):
        nll, lse = NLL(logits, target)
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            nll1, lse1 = NLL(logits, target)
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(nll, nll1) and torch.equal(lse, lse1)
        _extension._C.set_vae_portable(True)
        try:
            assert _extension._C.vae_isa() == "portable"
            nll_p, lse_p = NLL(logits, target)
            grad_p = NLL_BACKWARD(torch.ones_like(nll), torch.ones_like(lse), logits, target, lse)
        finally:
            _extension._C.set_vae_portable(False)
        grad = NLL_BACKWARD(torch.ones_like(nll), torch.ones_like(lse), logits, target, lse)
    assert torch.equal(nll_p, nll) and torch.equal(lse_p, lse) and torch.equal(grad_p, grad)
    torch.testing.assert_close(nll, categorical_pixel_nll_reference(logits, target)[0], **TOL[torch.float32])


def test_kernel_outputs_are_all_written(native):
    """conftest poisons outputs with NaN; a pixel tile the kernels skipped would stay NaN."""
    device, _ = native
    logits, target = make_inputs(2, 3, (13, 9), torch.float32, device, seed=12)
    nll, lse = NLL(logits, target)
    grad = NLL_BACKWARD(torch.ones_like(nll), torch.ones_like(lse), logits, target, lse)
    assert torch.isfinite(nll).all() and torch.isfinite(lse).all() and torch.isfinite(grad).all()
    assert not math.isnan(float(grad.sum()))
