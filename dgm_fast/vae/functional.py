"""Public VAE likelihood functions: argument checks, then the op (dgm_fast/vae/op.py) or the formula.

Only the categorical pixel likelihood is a fused op: its 256-way logits are
the largest tensor of the DCGAN VAE (Table 4.6) and the eager chain copies them
twice. The KL term, the reparameterisation and the importance weights are a
few elementwise ops on (B, nz) tensors, where a kernel would not win.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dgm_fast import _checks
from dgm_fast.vae.op import NLL
from dgm_fast.vae.reference import (
    N_LEVELS,
    ROW_BITS,
    bernoulli_nll_reference,
    gaussian_kl_reference,
    gaussian_nll_reference,
    iwae_log_likelihood_reference,
    reparameterize_reference,
)

DTYPES = frozenset((torch.float32, torch.float64))
INDEX_DTYPES = frozenset((torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64))


def categorical_pixel_nll(logits: Tensor, target: Tensor) -> Tensor:
    """``-log p(target | logits)`` per sample (B,) of the 256-way categorical decoder (Table 4.6).

    ``logits``: (B, nc * 256, *spatial), channel ``c * 256 + v`` the logit of
    value ``v`` in image channel ``c``; ``target``: integers in [0, 255], (B, nc,
    *spatial). Equals ``F.cross_entropy`` on the logits viewed as (B, nc, 256,
    *spatial) with classes moved to dim 1, summed per sample, without writing
    the permuted or log-softmax copies; differentiable in ``logits`` (twice).
    Non-finite logits give NaN or inf, as the formula does.
    """
    _checks.dense_tensor("logits", logits, DTYPES)
    if logits.dim() < 2 or logits.shape[1] == 0 or logits.shape[1] % N_LEVELS:
        raise ValueError(f"logits must be (batch, nc * {N_LEVELS}, *spatial) with nc >= 1, got shape "
                         f"{tuple(logits.shape)}")
    expected = (logits.shape[0], logits.shape[1] // N_LEVELS, *logits.shape[2:])
    check_target(target, expected, logits.device, f"batch, nc, *spatial for logits of shape {tuple(logits.shape)}")
    return NLL(logits, target.long())[0]


def check_target(target, shape: tuple[int, ...], device: torch.device, layout: str) -> None:
    """TypeError / ValueError unless ``target`` is an integer tensor of ``shape`` (``layout`` says what
    its dims are) on ``device``, holding pixel values in [0, 255]."""
    _checks.dense_tensor("target", target, INDEX_DTYPES)
    if tuple(target.shape) != shape:
        raise ValueError(f"target must have shape {shape} ({layout}), got {tuple(target.shape)}")
    if target.device != device:
        raise ValueError(f"target must be on the device of the logits ({device}), got {target.device}")
    if target.numel() and not torch.compiler.is_compiling():
        low, high = (int(v) for v in torch.aminmax(target))  # ints: uint8 would wrap 256 to 0
        if low < 0 or high >= N_LEVELS:
            raise ValueError(f"target must hold integers in [0, {N_LEVELS - 1}], got values in [{low}, {high}]")


def _posterior(mu, logvar) -> None:
    _checks.dense_tensor("mu", mu, DTYPES)
    _checks.dense_tensor("logvar", logvar, DTYPES)
    _checks.like("logvar", logvar, "mu", mu)
    if mu.dim() < 1:
        raise ValueError(f"mu must have a batch dimension, got shape {tuple(mu.shape)}")


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mu, diag(exp(logvar))) || N(0, I))`` per sample (B,): the ELBO's KL term (2.1)."""
    _posterior(mu, logvar)
    return gaussian_kl_reference(mu, logvar)


def reparameterize(mu: Tensor, logvar: Tensor, seed: int, index: Tensor | None = None,
                   draw: int | Tensor = 0) -> Tensor:
    """``z = mu + exp(logvar / 2) * eps``, ``eps`` from the counter-based Philox stream of ``seed``
    (``dgm_fast.philox``, the same numbers on every device).

    ``index`` (B,) names each row's image (default ``arange(B)``) and ``draw``
    (an int, or an int64 tensor (B,)) which of its draws this is: row ``b`` takes stream elements ``(index[b] <<
    36) + draw * n + j``, ``n`` elements per row. So an image's noise is the
    same whether it is scored alone, in a batch, or in a shard of a
    ``torchrun`` job, and per-image loops reproduce batched runs exactly.
    """
    _posterior(mu, logvar)
    seed = _checks.seed(seed)
    n = math.prod(mu.shape[1:])
    if index is None:
        index = torch.arange(mu.shape[0], device=mu.device)
    _checks.dense_tensor("index", index, frozenset((torch.int64,)))
    if tuple(index.shape) != tuple(mu.shape[:1]):
        raise ValueError(f"index must have shape ({mu.shape[0]},) (one image index per row), got "
                         f"{tuple(index.shape)}")
    draws = (1 << ROW_BITS) // max(n, 1)  # draws per image before its stretch of the stream ends
    if isinstance(draw, Tensor):
        _checks.dense_tensor("draw", draw, frozenset((torch.int64,)))
        if tuple(draw.shape) != tuple(mu.shape[:1]):
            raise ValueError(f"draw must be an int or have shape ({mu.shape[0]},), got {tuple(draw.shape)}")
        if draw.numel() and not torch.compiler.is_compiling():
            low, high = torch.aminmax(draw)
            if low < 0 or high >= draws:
                raise ValueError(f"draw must be in [0, {draws}) for rows of {n} elements, got values in "
                                 f"[{int(low)}, {int(high)}]")
    else:
        draw = _checks.integer("draw", draw, low=0, high=draws)
    if index.numel() and not torch.compiler.is_compiling():
        low, high = torch.aminmax(index)
        if low < 0 or high >= 1 << (63 - ROW_BITS):
            raise ValueError(f"index must be in [0, 2**{63 - ROW_BITS}), got values in [{int(low)}, {int(high)}]")
    return reparameterize_reference(mu, logvar, seed, index, draw)


def _decoded(name: str, out: Tensor, target: Tensor) -> None:
    _checks.dense_tensor(name, out, DTYPES)
    _checks.dense_tensor("target", target, DTYPES)
    _checks.like("target", target, name, out)
    if out.dim() < 1:
        raise ValueError(f"{name} must have a batch dimension, got shape {tuple(out.shape)}")


def bernoulli_nll(logits: Tensor, target: Tensor) -> Tensor:
    """``-log p(target | logits)`` per sample of a Bernoulli decoder (binary cross-entropy with
    logits summed over all but the batch dim), ``target`` in [0, 1]."""
    _decoded("logits", logits, target)
    return bernoulli_nll_reference(logits, target)


def gaussian_nll(mean: Tensor, target: Tensor, log_scale: float = 0.0) -> Tensor:
    """``-log N(target; mean, exp(log_scale)^2 I)`` per sample: the Gaussian decoder of §2.1.3."""
    _decoded("mean", mean, target)
    return gaussian_nll_reference(mean, target, _checks.real("log_scale", log_scale, finite=True))


def iwae_log_likelihood(log_px_z: Tensor, log_pz: Tensor, log_qz_x: Tensor) -> Tensor:
    """The importance-weighted bound ``L_K`` (2.2) per sample from (K, B) terms: ``logsumexp_k
    (log p(x|z_k) + log p(z_k) - log q(z_k|x)) - log K``. For any K in bounded memory use
    ``dgm_fast.vae.IWAEAccumulator``."""
    for name, t in (("log_px_z", log_px_z), ("log_pz", log_pz), ("log_qz_x", log_qz_x)):
        _checks.dense_tensor(name, t, DTYPES)
        if t.dim() != 2 or t.shape[0] == 0:
            raise ValueError(f"{name} must be (K, batch) with K >= 1, got shape {tuple(t.shape)}")
        _checks.like(name, t, "log_px_z", log_px_z)
    return iwae_log_likelihood_reference(log_px_z, log_pz, log_qz_x)
