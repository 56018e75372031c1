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
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
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
    """``modules`` in eval mode with parameters that need no gradient, restored afterwards: each
    submodule's own mode (``train(mode)`` would give every submodule the outer module's)."""
    modes = [(sub, sub.training) for m in modules for sub in m.modules()]
    needs = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    try:
        for m in modules:
            m.eval().requires_grad_(False)
        yield
    finally:
        for sub, training in modes:
            sub.training = training
        for p, needed in needs:
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


def stacked_parameters(module: nn.Module, batch: int) -> dict[str, Tensor]:
    """``batch`` copies of ``module``'s parameters, stacked along a new first dim: leaves needing gradients."""
    return {k: v.detach().unsqueeze(0).repeat(batch, *[1] * v.dim()).requires_grad_()
            for k, v in module.named_parameters()}


def per_image_encoder(encoder: nn.Module, batch: int) -> tuple[dict[str, Tensor], Callable]:
    """``(params, encode)``: ``batch`` copies of ``encoder``'s parameters (``stacked_parameters``)
    and ``encode(params, x)`` -> (mu, logvar) running copy ``b`` on image ``b``. An encoder may
    provide this itself as ``encoder.per_image(batch)`` (the DCGAN encoder's runs
    ``per_image_sequential``); otherwise it is vmap of ``functional_call`` (buffers, e.g.
    BatchNorm's running statistics, shared)."""
    own = getattr(encoder, "per_image", None)
    if own is not None:
        return own(batch)
    params = stacked_parameters(encoder, batch)
    buffers = {k: v.detach() for k, v in encoder.named_buffers()}

    def one(p: dict[str, Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = functional_call(encoder, (p, buffers), (x.unsqueeze(0),))
        return mu.squeeze(0), logvar.squeeze(0)

    return params, vmap(one)


class _PerImageProduct(torch.autograd.Function):
    """``weight[b] @ cols[b]`` for (B, O, I) and (B, I, L), each product laid out for the GEMM that
    runs it fastest here. Autograd's ``bmm`` makes a layer with one output pixel (L = 1, the DCGAN
    encoder's last) a batch of matrix-vector products and its weight gradient a K = 1 product into a
    zero-filled output; in the transposed layout the weight gradient comes back transposed and is
    copied. Both took about twice as long as this, forward and backward (B = 16, 200 x 4096)."""

    @staticmethod
    def forward(ctx, weight: Tensor, cols: Tensor) -> Tensor:
        ctx.save_for_backward(weight, cols)
        return torch.bmm(cols.transpose(1, 2), weight.transpose(1, 2)).transpose(1, 2)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        weight, cols = ctx.saved_tensors
        grad_weight = grad_cols = None
        if ctx.needs_input_grad[0]:  # in the parameters' layout: an outer product when L = 1
            grad_weight = grad * cols.transpose(1, 2) if cols.shape[2] == 1 else torch.bmm(grad, cols.transpose(1, 2))
        if ctx.needs_input_grad[1]:
            grad_cols = torch.bmm(grad.transpose(1, 2), weight).transpose(1, 2)
        return grad_weight, grad_cols


def _conv2d_per_image(h: Tensor, weight: Tensor, bias: Tensor | None, conv: nn.Conv2d) -> Tensor:
    """``conv`` on image b with its own ``weight[b]`` / ``bias[b]``: im2col and one batched GEMM."""
    cols = F.unfold(h, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride)
    out = _PerImageProduct.apply(weight.flatten(2), cols)
    if bias is not None:
        out = out + bias[:, :, None]
    size = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
            zip(h.shape[2:], conv.padding, conv.dilation, conv.kernel_size, conv.stride)]
    return out.reshape(*out.shape[:2], *size)


def _batch_norm_per_image(h: Tensor, weight: Tensor | None, bias: Tensor | None, norm: nn.BatchNorm2d) -> Tensor:
    """Eval-mode ``norm`` (its running statistics) with image b's own affine ``weight[b]`` / ``bias[b]``."""
    out = F.batch_norm(h, norm.running_mean, norm.running_var, eps=norm.eps)
    if weight is not None:
        out = out * weight[:, :, None, None]
    return out if bias is None else out + bias[:, :, None, None]


def per_image_sequential(body: nn.Sequential, prefix: str = "") -> Callable[[dict[str, Tensor], Tensor], Tensor]:
    """``run(params, x)``: ``body`` on image b with its own parameters ``params[prefix + name][b]``
    (``stacked_parameters``), each convolution as im2col and one batched GEMM. vmap of the same
    convolutions makes them grouped convolutions, which oneDNN runs far below its GEMM rate (under
    1 GFLOP/s for the DCGAN encoder's last layer, a 4x4 kernel on a 4x4 input: most of an LR_E
    step). Layers: ``Conv2d`` (zero padding, no groups), ``BatchNorm2d`` with running statistics
    (used as in eval mode), and layers without parameters (activations)."""
    layers = []  # (layer, its per-image function or None, its parameters' keys in params)
    for name, layer in body.named_children():
        conv_ok = isinstance(layer, nn.Conv2d) and layer.groups == 1 and layer.padding_mode == "zeros" and \
            not isinstance(layer.padding, str)
        norm_ok = isinstance(layer, nn.BatchNorm2d) and layer.running_mean is not None
        if not (conv_ok or norm_ok or next(layer.parameters(), None) is None):
            raise TypeError(f"per_image_sequential: layer {name} ({layer}) is not supported")
        per_image = _conv2d_per_image if conv_ok else _batch_norm_per_image if norm_ok else None
        layers.append((layer, per_image, f"{prefix}{name}.weight", f"{prefix}{name}.bias"))

    def run(params: dict[str, Tensor], x: Tensor) -> Tensor:
        h = x
        for layer, per_image, weight, bias in layers:
            h = layer(h) if per_image is None else per_image(h, params.get(weight), params.get(bias), layer)
        return h

    return run


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
        if steps == 0:  # nothing to fit: the encoder's own posterior, exactly as it computes it
            with torch.no_grad():
                return encoder(x)
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
