"""Per-image posterior optimisation, batched: the optimization trick (2.5) and Likelihood Regret's
two ways to re-fit a posterior (4.3), LR_Z and LR_E (Algorithm 2).

The published procedure optimises one image at a time; its steps are
launch-bound at batch 1. Here every image of a batch is optimised at once yet
independently: the loss is a *sum* of per-image losses (so an image's gradient
does not depend on the others), Adam is elementwise, the decoder runs in eval
mode (BatchNorm uses running statistics, not the batch's), and each image draws
its own noise (``reparameterize``'s ``index``). So each image's result equals
running the same procedure on it alone, to floating-point rounding. The
decoder's parameters are detached for the duration: no decoder-weight gradient
is ever computed (the official code computes them and throws them away).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from dgm_fast import _checks
from dgm_fast.vae.functional import (
    bernoulli_nll,
    categorical_pixel_nll,
    gaussian_kl,
    gaussian_nll,
    reparameterize,
)
from dgm_fast.vae.reference import N_LEVELS

DecodedNLL = Callable[[Tensor, Tensor], Tensor]
"""``decoded_nll(z, rows)``: ``-log p(x_rows | z)`` per row of ``z`` (n, nz), ``rows`` (n,) the
positions of the images in the batch."""


def categorical_target(x: Tensor) -> Tensor:
    """Images in [0, 1] as the 256-way decoder's targets, ``round(255 x)``."""
    return torch.round(x.detach() * (N_LEVELS - 1)).clamp_(0, N_LEVELS - 1).to(torch.uint8)


LIKELIHOODS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]] = {
    # name: (x -> target, (decoder output, target) -> -log p(x | z) per row)
    "categorical": (categorical_target, categorical_pixel_nll),
    "bernoulli": (lambda x: x.detach(), bernoulli_nll),
    "gaussian": (lambda x: x.detach(), gaussian_nll),
}


def decoded_nll(decoder: Callable[[Tensor], Tensor], x: Tensor, likelihood: str | Callable = "categorical") -> DecodedNLL:
    """``decoded_nll(z, rows)`` for ``decoder`` (z -> its output) and images ``x`` in [0, 1]:
    ``likelihood`` names a decoder distribution of ``LIKELIHOODS`` or is a function (decoder output,
    x rows) -> -log p(x | z) per row."""
    if callable(likelihood):
        to_target, nll = (lambda t: t.detach()), likelihood
    elif likelihood in LIKELIHOODS:
        to_target, nll = LIKELIHOODS[likelihood]
    else:
        raise ValueError(f"likelihood must be one of {sorted(LIKELIHOODS)} or a function, got {likelihood!r}")
    target = to_target(x)
    return lambda z, rows: nll(decoder(z), target[rows])


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """``modules`` in eval mode with parameters that need no gradient, restored afterwards."""
    saved = [(m, m.training, [(p, p.requires_grad) for p in m.parameters()]) for m in modules]
    try:
        for m in modules:
            m.eval().requires_grad_(False)
        yield
    finally:
        for m, training, params in saved:
            m.train(training)
            for p, needed in params:
                p.requires_grad_(needed)


def _frozen(decoder) -> contextlib.AbstractContextManager:
    return frozen(decoder) if isinstance(decoder, nn.Module) else contextlib.nullcontext()


def _check_steps(steps, lr) -> tuple[int, float]:
    return _checks.integer("steps", steps, low=0), _checks.real("lr", lr, low=0.0, low_open=True, finite=True)


def _index(index: Tensor | None, batch: int, device) -> Tensor:
    return torch.arange(batch, device=device) if index is None else index


def optimize_posterior(
    decoder: Callable[[Tensor], Tensor],
    x: Tensor,
    mu: Tensor,
    logvar: Tensor,
    steps: int = 300,
    lr: float = 1e-4,
    *,
    likelihood: str | Callable = "categorical",
    beta: float = 1.0,
    seed: int = 0,
    index: Tensor | None = None,
    draw: int = 0,
) -> tuple[Tensor, Tensor]:
    """The optimization trick (2.5) / LR_Z: Adam on every image's posterior ``(mu, logvar)`` (B, nz)
    for ``steps`` steps of its negative ELBO ``-log p(x | z) + beta * KL`` with one reparameterised
    sample per step (step ``s`` is draw ``draw + s``), ``decoder`` (an ``nn.Module`` or any z ->
    output function) frozen. Defaults: the dissertation's LR_Z (300 steps of Adam at 1e-4,
    §4.2.6). Returns the optimised (mu, logvar)."""
    steps, lr = _check_steps(steps, lr)
    nll_of = decoded_nll(decoder, x, likelihood)
    beta = _checks.real("beta", beta, low=0.0, finite=True)
    index = _index(index, mu.shape[0], mu.device)
    mu, logvar = (t.detach().clone().requires_grad_() for t in (mu, logvar))
    rows = torch.arange(mu.shape[0], device=mu.device)
    opt = torch.optim.Adam([mu, logvar], lr=lr, fused=True)
    with _frozen(decoder):
        for s in range(steps):
            z = reparameterize(mu, logvar, seed, index, draw + s)
            loss = (nll_of(z, rows) + beta * gaussian_kl(mu, logvar)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return mu.detach(), logvar.detach()


def per_image_encoder(encoder: nn.Module, batch: int) -> tuple[dict[str, Tensor], Callable]:
    """``(params, encode)``: ``batch`` copies of ``encoder``'s parameters stacked (leaves needing
    gradients) and ``encode(params, x)`` -> (mu, logvar) running copy ``b`` on image ``b`` (vmap of
    ``functional_call``; buffers, e.g. BatchNorm's running statistics, shared)."""
    params = {k: v.detach().unsqueeze(0).repeat(batch, *[1] * v.dim()).requires_grad_()
              for k, v in encoder.named_parameters()}
    buffers = {k: v.detach() for k, v in encoder.named_buffers()}

    def one(p: dict[str, Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = functional_call(encoder, (p, buffers), (x.unsqueeze(0),))
        return mu.squeeze(0), logvar.squeeze(0)

    return params, vmap(one)


def optimize_encoder(
    encoder: nn.Module,
    decoder: Callable[[Tensor], Tensor],
    x: Tensor,
    steps: int = 100,
    lr: float = 2e-4,
    *,
    likelihood: str | Callable = "categorical",
    weight_decay: float = 5e-5,
    beta: float = 1.0,
    seed: int = 0,
    index: Tensor | None = None,
    draw: int = 0,
) -> tuple[Tensor, Tensor]:
    """LR_E: every image gets its own copy of ``encoder`` (``encoder(x) -> (mu, logvar)``, run in
    eval mode), trained by Adam (the official defaults: lr 2e-4, weight decay 5e-5, 100 steps) on
    that image's negative ELBO; returns the posteriors (mu, logvar) the optimised copies give."""
    steps, lr = _check_steps(steps, lr)
    weight_decay = _checks.real("weight_decay", weight_decay, low=0.0, finite=True)
    beta = _checks.real("beta", beta, low=0.0, finite=True)
    index = _index(index, x.shape[0], x.device)
    rows = torch.arange(x.shape[0], device=x.device)
    nll_of = decoded_nll(decoder, x, likelihood)
    with frozen(encoder), _frozen(decoder):
        params, encode = per_image_encoder(encoder, x.shape[0])
        opt = torch.optim.Adam(list(params.values()), lr=lr, weight_decay=weight_decay, fused=True)
        for s in range(steps):
            mu, logvar = encode(params, x)
            z = reparameterize(mu, logvar, seed, index, draw + s)
            loss = (nll_of(z, rows) + beta * gaussian_kl(mu, logvar)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            mu, logvar = encode(params, x)
    return mu, logvar
