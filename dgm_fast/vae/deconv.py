"""The categorical likelihood of a decoder's last layer, a 4x4 stride-2 transposed convolution
(Table 4.6), computed a few samples at a time so the full logits never exist.

A transposed convolution with kernel 4, stride 2, padding 1 splits by output parity: output
pixel ``(2a + py, 2b + px)`` sums 2 x 2 taps of the input, ``(a + d, b + e)`` for the parity's
offsets, with the matching kernel taps. So each of the four parities is one GEMM, (pixels, 4 c_in)
x (4 c_in, c_out), written pixel-major: each pixel's 256 logits of a channel contiguous. On this
CPU that runs at GEMM speed, where oneDNN's transposed convolution of the same shape reaches a
small fraction of it (``bench/test_vae_bench.py``: ``decoder_k1000``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dgm_fast import _checks
from dgm_fast.vae.functional import DTYPES, categorical_pixel_nll
from dgm_fast.vae.reference import N_LEVELS

# per output parity: (start of the input rows in the 1-padded input, kernel tap), for both taps
_TAPS = {0: ((1, 1), (0, 3)), 1: ((2, 0), (1, 2))}


def conv_transpose_pixel_major(h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.conv_transpose2d(h, weight, bias, stride=2, padding=1)`` for a 4x4 ``weight`` (c_in,
    c_out, 4, 4), as (n, 2H, 2W, c_out): four GEMMs, one per output parity."""
    n, c_in, height, width = h.shape
    padded = torch.nn.functional.pad(h, (1, 1, 1, 1)).permute(0, 2, 3, 1)  # (n, H + 2, W + 2, c_in)
    if not padded.is_contiguous():
        padded = padded.contiguous()
    out = h.new_empty(n, 2 * height, 2 * width, weight.shape[1])
    for py, rows in _TAPS.items():
        for px, cols in _TAPS.items():
            taps = [(sy, ky, sx, kx) for sy, ky in rows for sx, kx in cols]
            # (n, H, W, 4, c_in): one copy, rows of the GEMM contiguous
            patches = torch.stack([padded[:, sy:sy + height, sx:sx + width] for sy, _, sx, _ in taps], 3)
            w = torch.stack([weight[:, :, ky, kx] for _, ky, _, kx in taps]).reshape(4 * c_in, -1)
            rows_ = patches.view(-1, 4 * c_in)
            products = rows_ @ w if bias is None else torch.addmm(bias, rows_, w)
            out[:, py::2, px::2] = products.view(n, height, width, -1)
    return out


def categorical_pixel_nll_deconv(h: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, *,
                                 chunk: int = 16) -> Tensor:
    """``categorical_pixel_nll(F.conv_transpose2d(h, weight, bias, stride=2, padding=1), target)``
    ``chunk`` samples at a time: the logits of at most ``chunk`` samples exist at once (3 MB a
    sample for nc = 3 at 32 x 32). ``weight`` (c_in, nc * 256, 4, 4), ``h`` (n, c_in, H, W),
    ``target`` (n, nc, 2H, 2W). Differentiable in ``h``, ``weight`` and ``bias``."""
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
    if not isinstance(target, Tensor) or target.shape[:1] != h.shape[:1]:
        raise ValueError(f"target must be a tensor of {h.shape[0]} images (h's batch), got "
                         f"{tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__}")
    if h.shape[0] == 0:
        return categorical_pixel_nll(h.new_empty(0, weight.shape[1], 2 * h.shape[2], 2 * h.shape[3]), target)
    return torch.cat([
        categorical_pixel_nll(conv_transpose_pixel_major(h[i:i + chunk], weight, bias).permute(0, 3, 1, 2),
                              target[i:i + chunk])
        for i in range(0, h.shape[0], chunk)])
