"""The categorical likelihood of a decoder's last layer, a 4x4 stride-2 transposed convolution
(Table 4.6), computed a few samples at a time so the full logits never exist.

A transposed convolution with kernel 4, stride 2, padding 1 splits by output parity: output
pixel ``(2a + py, 2b + px)`` sums 2 x 2 taps of the input, ``(a + d, b + e)`` for the parity's
offsets, with the matching kernel taps. So each of the four parities is one GEMM, (c_out, 4 c_in)
x (4 c_in, pixels of all the chunk's samples), whose output is what the likelihood kernel reads
best: each level's row of pixels contiguous. The likelihood is a sum over pixels, so the pixels
stay in parity order (the target is reordered instead, a 256th of the logits' size) and no
interleaving copy is made. On this CPU the GEMMs run at about 110 GFLOP/s (``gemm_k1000`` in
``bench/test_vae_bench.py``), where oneDNN's transposed convolution of the same shape reaches
about 40 (``decoder_k1000``); the K = 1000 likelihood runs its decoder's flops at 70% of that GEMM rate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from dgm_fast import _checks
from dgm_fast.vae.functional import DTYPES, categorical_pixel_nll, check_target
from dgm_fast.vae.op import NLL, NLL_BACKWARD
from dgm_fast.vae.reference import N_LEVELS

# per output parity (py, px): the two (start of the input rows in the 1-padded input, kernel
# tap) of each axis
_TAPS = {0: ((1, 1), (0, 3)), 1: ((2, 0), (1, 2))}
_PARITIES = [(py, px) for py in (0, 1) for px in (0, 1)]
# the 2 x 2 taps of each parity in one list, parity-major: (sy, ky, sx, kx)
_PARITY_TAPS = [(sy, ky, sx, kx) for py, px in _PARITIES for sy, ky in _TAPS[py] for sx, kx in _TAPS[px]]
_KY, _KX = ([tap[i] for tap in _PARITY_TAPS] for i in (1, 3))
# samples per chunk: a parity's GEMM output for 8 samples (6 MB for nc = 3) stays in L3; 16 drop
# the GEMMs from about 90 to 55 GFLOP/s here
CHUNK = 8


def parity_weights(weight: Tensor) -> Tensor:
    """The GEMM operands of a 4x4 ``weight`` (c_in, c_out, 4, 4): (4, c_out, 4 c_in), parity
    ``2 py + px``, its taps in ``_PARITY_TAPS`` order. One gather; the transpose stays a view
    (the GEMM reads it as is)."""
    c_in, c_out = weight.shape[:2]
    taps = weight.permute(2, 3, 0, 1)[_KY, _KX]  # (16, c_in, c_out)
    return taps.view(4, 4 * c_in, c_out).transpose(1, 2)


def conv_transpose_by_parity(h: Tensor, weights: Tensor, bias: Tensor | None) -> Tensor:
    """``F.conv_transpose2d(h, weight, bias, stride=2, padding=1)`` for ``weights =
    parity_weights(weight)``, as (4, c_out, n, H, W): output pixel (2a + py, 2b + px) of sample s
    at [2 py + px, :, s, a, b]."""
    n, c_in, height, width = h.shape
    padded = F.pad(h, (1, 1, 1, 1)).transpose(0, 1)  # (c_in, n, H + 2, W + 2)
    # every parity's 4 shifted copies in one stack: a single copy of the patches
    rows = torch.stack([padded[:, :, sy:sy + height, sx:sx + width] for sy, _, sx, _ in _PARITY_TAPS])
    rows = rows.view(4, 4 * c_in, n * height * width)
    out = torch.bmm(weights, rows) if bias is None else torch.baddbmm(bias[:, None], weights, rows)
    return out.view(4, -1, n, height, width)


def _by_level(logits: Tensor, levels: Tensor) -> tuple[Tensor, Tensor]:
    """``logits`` (G, nc * 256, *pixels) as (G, nc, 256, P) and ``levels`` (G, nc, *pixels) as the
    (G, nc, 1, P) index of each pixel's target level in it."""
    groups = levels.shape[:2]
    return logits.view(*groups, N_LEVELS, -1), levels.view(*groups, 1, -1)


class _PixelNLL(torch.autograd.Function):
    """Each pixel's ``logsumexp_v logits - logits[target]`` for logits (G, nc * 256, *pixels), the
    likelihood kernel's ``lse`` less the gathered target logit. Its backward is the kernel's
    (``softmax * g``, one pass) with ``-g`` added at the targets in place: autograd of the gather
    would add a zero-filled copy of the logits' gradient, 13% of an LR step's likelihood."""

    @staticmethod
    def forward(ctx, logits: Tensor, levels: Tensor) -> Tensor:
        _, lse = NLL(logits, levels)
        picked = logits.view(*levels.shape[:2], N_LEVELS, -1).gather(2, levels.view(*levels.shape[:2], 1, -1))
        ctx.save_for_backward(logits, levels, lse)
        return lse - picked.view_as(lse)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        logits, levels, lse = ctx.saved_tensors
        grad = grad.contiguous()
        out = NLL_BACKWARD(grad.new_zeros(grad.shape[:1]), grad, logits, levels, lse)
        by_level, index = _by_level(out, levels)
        by_level.scatter_add_(2, index, -grad.view(index.shape))
        return out, None


def _nll_by_parity(h: Tensor, weights: Tensor, bias: Tensor | None, target: Tensor) -> Tensor:
    """Per-sample NLL of one chunk: the kernel sees the four parities as four images whose rows
    are the samples' rows, and each pixel's NLL is summed per sample."""
    n, _, height, width = h.shape
    nc = target.shape[1]
    logits = conv_transpose_by_parity(h, weights, bias).view(4, nc * N_LEVELS, n * height, width)
    levels = torch.stack([target[:, :, py::2, px::2].transpose(0, 1) for py, px in _PARITIES])
    levels = levels.reshape(4, nc, n * height, width)
    return _PixelNLL.apply(logits, levels).view(4, nc, n, -1).sum((0, 1, 3))


def categorical_pixel_nll_deconv(h: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, *,
                                 chunk: int = CHUNK) -> Tensor:
    """``categorical_pixel_nll(F.conv_transpose2d(h, weight, bias, stride=2, padding=1), target)``
    ``chunk`` samples at a time: the logits of at most ``chunk`` samples exist at once (3 MB a
    sample for nc = 3 at 32 x 32). ``weight`` (c_in, nc * 256, 4, 4), ``h`` (n, c_in, H, W),
    ``target`` (n, nc, 2H, 2W). Differentiable (first order) in ``h``, ``weight`` and ``bias``."""
    _checks.dense_tensor("h", h, DTYPES)
    _checks.dense_tensor("weight", weight, DTYPES)
    _checks.same_kind("weight", weight, "h", h)
    if h.dim() != 4:
        raise ValueError(f"h must be (batch, c_in, H, W), got shape {tuple(h.shape)}")
    if weight.dim() != 4 or weight.shape[0] != h.shape[1] or weight.shape[2:] != (4, 4) or \
            weight.shape[1] % N_LEVELS or not weight.shape[1]:
        raise ValueError(f"weight must be ({h.shape[1]}, nc * {N_LEVELS}, 4, 4) (a 4x4 transposed convolution "
                         f"from h's {h.shape[1]} channels), got {tuple(weight.shape)}")
    if bias is not None:
        _checks.dense_tensor("bias", bias, DTYPES)
        _checks.same_kind("bias", bias, "h", h)
        if tuple(bias.shape) != (weight.shape[1],):
            raise ValueError(f"bias must have shape ({weight.shape[1]},), got {tuple(bias.shape)}")
    chunk = _checks.integer("chunk", chunk, low=1)
    expected = (h.shape[0], weight.shape[1] // N_LEVELS, 2 * h.shape[2], 2 * h.shape[3])
    check_target(target, expected, h.device, "h's batch, nc, 2H, 2W")
    if h.shape[0] == 0:
        return categorical_pixel_nll(h.new_empty(0, weight.shape[1], 2 * h.shape[2], 2 * h.shape[3]), target)
    target, weights = target.long(), parity_weights(weight)
    return torch.cat([_nll_by_parity(h[i:i + chunk], weights, bias, target[i:i + chunk])
                      for i in range(0, h.shape[0], chunk)])
