"""dgm_fast's VAE likelihood and per-image posterior optimisation against the published procedure,
eager and compiled, in one run (§2.1, §4.2; the DCGAN VAE of Table 4.6 for 32 x 32 x 3).

Measures only; correctness is asserted in tests/. ``measure`` and the ``contender``/``backend``
parameters come from conftest.py.

* ``categorical_pixel_nll``: forward + backward of the 256-way likelihood on logits (64, 256, 32,
  32) (16 with --bench-quick): ``dgm_fast.categorical_pixel_nll`` against ``eager`` =
  ``F.cross_entropy`` on the logits viewed (B, 1, 256, 32, 32) with classes moved to dim 1 (what
  the official code does) and its ``torch.compile``. The floor: ``copy_nll_logits``, a copy of
  the logits into a preallocated tensor (their bytes once read, once written), in the same run.
* ``iwae_k1000``: the K = 1000 importance-weighted NLL (2.2) of one image. ``official``: 5 chunks
  of 200 samples as the published code (decoder, permuted copy, cross-entropy, log-densities,
  logsumexp); ``compiled``: the same chunk under ``torch.compile``; ``dgm_fast``:
  ``importance_weighted_nll`` with the model's ``decoded_nll`` (the last layer and the fused
  likelihood 8 samples at a time). Rows record ``peak_extra_bytes``, the most memory the
  call held at once beyond what it held before (``dgm_fast.benchmark.peak_extra_bytes``), and
  ``flops``, the decoder's convolutions; ``decoder_k1000`` times those convolutions alone (the decoder's
  forward on 5 x 200 latents) as oneDNN runs them, and ``gemm_k1000`` the last layer's four parity
  GEMMs alone (``torch.bmm`` into a preallocated output, 8 samples a call, as ``decoded_nll``
  runs them): the floor of this likelihood, whose ``of GEMM`` column is its decoder flops' rate over
  that GEMM rate.
* ``lr_z_steps`` / ``lr_e_steps``: the optimisation part of Likelihood Regret (4.3), ``STEPS``
  Adam steps for ``IMAGES`` images. ``per_image``: the published loop, one image at a time (for
  LR_E a copy of the encoder per image; the decoder's parameters require gradients as in the
  official code); ``dgm_fast``: ``fit_posterior`` (``optimize_posterior`` / ``optimize_encoder``
  with the fused last layer and likelihood) on all images at once. The throughput at 100 steps (the official setting) is images / (median * 100 / STEPS).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import dgm_fast
from dgm_fast.benchmark import peak_extra_bytes
from dgm_fast.models.dcgan_vae import IMAGE_SIZE, DCGANVAE
from dgm_fast.models.ood import fit_posterior
from dgm_fast.vae import categorical_target, importance_weighted_nll
from dgm_fast.vae.deconv import CHUNK, parity_weights

DTYPE = torch.float32
K, OFFICIAL_CHUNK = 1000, 200
STEPS = 10


def _cross_entropy_nll(logits, target):
    b, nc = target.shape[:2]
    levels = logits.view(b, nc, 256, *target.shape[2:]).movedim(2, 1)
    return F.cross_entropy(levels, target.long(), reduction="none").flatten(1).sum(1)


def _nll_inputs(bench_config):
    b = 16 if bench_config.quick else 64
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(b, 256, 32, 32, generator=g).to(bench_config.device)
    return logits, torch.randint(0, 256, (b, 1, 32, 32), generator=g).to(bench_config.device)


def test_categorical_pixel_nll(measure, bench_config, contender, backend):
    logits, target = _nll_inputs(bench_config)
    nll = {"dgm_fast": dgm_fast.categorical_pixel_nll, "eager": _cross_entropy_nll,
           "compiled": torch.compile(_cross_entropy_nll, fullgraph=True)}[contender]

    def run():
        leaf = logits.detach().requires_grad_()
        return torch.autograd.grad(nll(leaf, target).sum(), leaf)

    measure(run, op="categorical_pixel_nll", contender=contender, size=logits.shape[0], dtype=DTYPE,
            backend=backend, bytes=logits.numel() * logits.element_size() * 3)  # read twice, gradient written


def test_copy_nll_logits(measure, bench_config):
    logits, _ = _nll_inputs(bench_config)
    out = torch.empty_like(logits)
    measure(lambda: out.copy_(logits), op="copy_nll_logits", contender="torch", size=logits.shape[0], dtype=DTYPE,
            bytes=2 * logits.numel() * logits.element_size())


# ---------------------------------------------------------------------------------------------------
# the K = 1000 likelihood of one image


@pytest.fixture(scope="module")
def cifar_vae():
    """The nf = 64, nc = 3 model of Table 4.6 (random weights: the cost does not depend on them),
    one image in [0, 1] and its encoder posterior."""
    torch.manual_seed(0)
    model = DCGANVAE(nc=3, nf=64, nz=100).eval()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        mu, logvar = model.encoder(x)
    return model, x, mu, logvar


def decoder_flops(model: DCGANVAE) -> int:
    """Flops of one latent through the decoder's transposed convolutions: each input pixel of a layer
    scatters c_in x c_out x k^2 multiply-adds (BatchNorm and ReLU left out)."""
    flops, size = 0, 1
    for conv in [m for m in model.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]:
        k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        flops += 2 * conv.in_channels * conv.out_channels * k * k * size * size
        size = (size - 1) * s - 2 * p + k
    return flops


def official_chunk(model, target, mu, logvar, n):
    """``n`` importance weights of one image as the published code computes them."""
    std = torch.exp(0.5 * logvar)
    z = mu + std * torch.randn(n, mu.shape[1])
    logits = model.decoder(z)
    levels = logits.view(n, 3, 256, 32, 32).permute(0, 1, 3, 4, 2).contiguous().view(-1, 256)
    nll = F.cross_entropy(levels, target.expand(n, -1, -1, -1).reshape(-1).long(), reduction="none")
    normal = torch.distributions.Normal
    log_pz = normal(0.0, 1.0).log_prob(z).sum(1)
    log_qz = normal(mu, std).log_prob(z).sum(1)
    return -nll.view(n, -1).sum(1) + log_pz - log_qz


def _iwae_fn(contender, model, x, mu, logvar):
    target = categorical_target(x)
    if contender == "dgm_fast":
        return lambda: importance_weighted_nll(lambda z, rows: model.decoded_nll(z, target[rows]), mu, logvar, K,
                                               chunk=OFFICIAL_CHUNK)
    chunk = official_chunk if contender == "official" else torch.compile(official_chunk)

    def official():
        with torch.no_grad():
            w = torch.cat([chunk(model, target, mu, logvar, OFFICIAL_CHUNK) for _ in range(K // OFFICIAL_CHUNK)])
        return -(torch.logsumexp(w, 0) - math.log(K))

    return official


@pytest.mark.parametrize("variant", ["dgm_fast", "official", "compiled"])
def test_iwae_k1000(measure, bench_config, cifar_vae, variant):
    if bench_config.device.type != "cpu":
        pytest.skip("the CPU's K = 1000 likelihood (the lent GPU's is in lr_*_steps at scale)")
    model, x, mu, logvar = cifar_vae
    fn = _iwae_fn(variant, model, x, mu, logvar)
    fn()  # compile outside the memory measurement
    peak = peak_extra_bytes(fn, bench_config.device)
    measure(fn, op="iwae_k1000", contender=variant, size=K, dtype=DTYPE, peak_extra_bytes=peak,
            flops=K * decoder_flops(model), backend="auto" if variant == "dgm_fast" else None,
            backend_op="categorical_pixel_nll", gemm_yardstick="gemm_k1000")


def test_decoder_k1000(measure, bench_config, cifar_vae):
    model, _, mu, _ = cifar_vae
    z = mu.expand(OFFICIAL_CHUNK, -1).contiguous()

    def run():
        with torch.no_grad():
            for _ in range(K // OFFICIAL_CHUNK):
                model.decoder(z)

    measure(run, op="decoder_k1000", contender="torch", size=K, dtype=DTYPE, flops=K * decoder_flops(model))


def test_gemm_k1000(measure, bench_config, cifar_vae):
    if bench_config.device.type != "cpu":
        pytest.skip("the floor of the CPU's K = 1000 likelihood")
    last = cifar_vae[0].decoder.last
    side = IMAGE_SIZE // 2  # the layer's input: it doubles height and width
    c_in, c_out, pixels = last.in_channels, last.out_channels, CHUNK * side * side
    weights = parity_weights(last.weight.detach())
    rows = torch.randn(4, 4 * c_in, pixels, generator=torch.Generator().manual_seed(3))
    out = torch.empty(4, c_out, pixels)

    def run():
        for _ in range(K // CHUNK):
            torch.bmm(weights, rows, out=out)

    measure(run, op="gemm_k1000", contender="torch", size=K, dtype=DTYPE,
            flops=K * 2 * c_out * 4 * c_in * 4 * side * side)  # per sample: 4 taps of c_in, 4 parities of side^2


# ---------------------------------------------------------------------------------------------------
# the optimisation part of Likelihood Regret


def _images(bench_config) -> torch.Tensor:
    n = 4 if bench_config.quick else 16
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(2)).to(bench_config.device)


def per_image_lr(model, x, method: str, steps: int) -> None:
    """The published loop: one image at a time, the decoder's parameters requiring gradients."""
    target = categorical_target(x)
    for i in range(x.shape[0]):
        encoder = copy.deepcopy(model.encoder)
        with torch.no_grad():
            mu0, logvar0 = encoder(x[i:i + 1])
        params = [mu0.requires_grad_(), logvar0.requires_grad_()] if method == "lr_z" else list(encoder.parameters())
        opt = torch.optim.Adam(params, lr=1e-4 if method == "lr_z" else 2e-4,
                               weight_decay=0.0 if method == "lr_z" else 5e-5)
        for _ in range(steps):
            mu, logvar = (mu0, logvar0) if method == "lr_z" else encoder(x[i:i + 1])
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            loss = _cross_entropy_nll(model.decoder(z), target[i:i + 1]).sum() + \
                0.5 * (mu * mu + logvar.exp() - 1 - logvar).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()


@pytest.mark.parametrize("method", ["lr_z", "lr_e"])
@pytest.mark.parametrize("variant", ["dgm_fast", "per_image"])
def test_lr_steps(measure, bench_config, cifar_vae, method, variant):
    model = cifar_vae[0].to(bench_config.device)
    x = _images(bench_config)
    if variant == "per_image":
        fn = lambda: per_image_lr(model, x, method, STEPS)
    else:
        fn = lambda: fit_posterior(model, x, method=method.upper(), steps=STEPS)
    model.requires_grad_(True)
    measure(fn, op=f"{method}_steps", contender=variant, size=x.shape[0], dtype=DTYPE, steps=STEPS,
            backend="auto" if variant == "dgm_fast" else None, backend_op="categorical_pixel_nll")
