"""The vae family's public functions (§2.1, §4.2): what is particular to them.

The fused categorical likelihood's kernels against the reference are in test_vae_kernels.py and
(with opcheck, compile, gradcheck, the transforms) test_op_contract.py; here: its public function
against ``F.cross_entropy`` on the permuted logits and bad input; the KL against
torch.distributions; the per-image Philox reparameterisation; the streaming IWAE bound (2.2)
against the one-shot formula; and batched LR_Z / LR_E (2.5, 4.3) against a plain per-image loop
that follows the published procedure, in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import TOL, make_tensor
from torch.distributions import Normal, kl_divergence

import dgm_fast
from dgm_fast.models.dcgan_vae import DCGANVAE
from dgm_fast.vae import (
    IWAEAccumulator,
    bernoulli_nll,
    categorical_pixel_nll,
    categorical_target,
    gaussian_kl,
    gaussian_nll,
    importance_weighted_nll,
    iwae_log_likelihood,
    optimize_encoder,
    optimize_posterior,
    reparameterize,
)
from dgm_fast.vae.reference import gaussian_log_prob, latent_noise


def cross_entropy_nll(logits, target):
    """The eager formula the op replaces: classes moved to dim 1, then summed per sample."""
    b, nc = target.shape[:2]
    levels = logits.reshape(b, nc, 256, *target.shape[2:]).movedim(2, 1)
    return F.cross_entropy(levels, target.long(), reduction="none").flatten(1).sum(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("target_dtype", [torch.uint8, torch.int32, torch.int64])
def test_nll_equals_cross_entropy_on_permuted_logits(dtype, target_dtype):
    logits = make_tensor((3, 3 * 256, 5, 7), dtype, layout="strided", scale=2.0).requires_grad_()
    target = torch.randint(0, 256, (3, 3, 5, 7), generator=torch.Generator().manual_seed(0)).to(target_dtype)
    got = categorical_pixel_nll(logits, target)
    expect = cross_entropy_nll(logits, target)
    torch.testing.assert_close(got, expect, **TOL[dtype])
    (g,) = torch.autograd.grad(got.sum(), logits)
    (e,) = torch.autograd.grad(expect.sum(), logits)
    torch.testing.assert_close(g, e, **TOL[dtype])


def test_nll_is_a_sum_of_pixels_and_channels():
    """Concatenating images along width adds their NLLs: nothing is averaged."""
    a, b = (make_tensor((2, 512, 4, 3), seed=s) for s in (1, 2))
    ta, tb = (torch.randint(0, 256, (2, 2, 4, 3), generator=torch.Generator().manual_seed(s)) for s in (3, 4))
    whole = categorical_pixel_nll(torch.cat([a, b], 3), torch.cat([ta, tb], 3))
    torch.testing.assert_close(whole, categorical_pixel_nll(a, ta) + categorical_pixel_nll(b, tb))


@pytest.mark.parametrize("logits, target, error, argument", [
    (torch.zeros(2, 255, 3), torch.zeros(2, 1, 3, dtype=torch.long), ValueError, "logits"),
    (torch.zeros(2, 0, 3), torch.zeros(2, 0, 3, dtype=torch.long), ValueError, "logits"),
    (torch.zeros(2), torch.zeros(2, dtype=torch.long), ValueError, "logits"),
    (torch.zeros(2, 256, 3, dtype=torch.int64), torch.zeros(2, 1, 3, dtype=torch.long), TypeError, "logits"),
    (torch.zeros(2, 256, 3), torch.zeros(2, 1, 3), TypeError, "target"),
    (torch.zeros(2, 256, 3), torch.zeros(3, 1, 3, dtype=torch.long), ValueError, "target"),
    (torch.zeros(2, 512, 3), torch.zeros(2, 1, 3, dtype=torch.long), ValueError, "target"),
    (torch.zeros(2, 256, 3), torch.full((2, 1, 3), 256), ValueError, "target"),
    (torch.zeros(2, 256, 3), torch.full((2, 1, 3), -1), ValueError, "target"),
    ([0.0], torch.zeros(1, 1, dtype=torch.long), TypeError, "logits"),
])
def test_nll_bad_input_names_the_argument(logits, target, error, argument):
    with pytest.raises(error, match=f"^{argument}"):
        categorical_pixel_nll(logits, target)


def test_nll_of_non_finite_logits_is_not_finite():
    logits = torch.zeros(3, 256, 2)
    logits[0, 5, 0] = math.nan
    logits[1, 7, 1] = math.inf
    logits[2, :, 0] = -math.inf
    nll = categorical_pixel_nll(logits, torch.full((3, 1, 2), 7))
    assert not nll.isfinite().any()


def test_gaussian_kl_equals_torch_distributions():
    mu, logvar = make_tensor((4, 9), torch.float64, seed=1), make_tensor((4, 9), torch.float64, seed=2)
    q, p = Normal(mu, torch.exp(0.5 * logvar)), Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(gaussian_kl(mu, logvar), kl_divergence(q, p).sum(1))


def test_decoder_likelihoods_equal_torch_distributions():
    mean, x = make_tensor((3, 5), torch.float64, seed=1), torch.rand(3, 5, dtype=torch.float64)
    torch.testing.assert_close(gaussian_nll(mean, x, log_scale=-1.0),
                               -Normal(mean, math.exp(-1.0)).log_prob(x).sum(1))
    torch.testing.assert_close(bernoulli_nll(mean, x),
                               F.binary_cross_entropy_with_logits(mean, x, reduction="none").sum(1))
    z = make_tensor((3, 4), torch.float64, seed=3)
    torch.testing.assert_close(gaussian_log_prob(z, mean[:, :4], x[:, :4]),
                               Normal(mean[:, :4], torch.exp(0.5 * x[:, :4])).log_prob(z).sum(1))


def test_reparameterize_noise_belongs_to_the_image_not_the_batch():
    mu, logvar = torch.zeros(5, 7), torch.zeros(5, 7)
    index = torch.tensor([4, 0, 9, 2**20, 3])
    batch = reparameterize(mu, logvar, 11, index, draw=3)
    for b in range(5):
        alone = reparameterize(mu[b:b + 1], logvar[b:b + 1], 11, index[b:b + 1], draw=3)
        torch.testing.assert_close(batch[b:b + 1], alone, rtol=0, atol=0)
    assert not torch.equal(reparameterize(mu, logvar, 11, index, draw=4), batch)
    assert not torch.equal(reparameterize(mu, logvar, 12, index, draw=3), batch)
    per_row = reparameterize(mu, logvar, 11, index, draw=torch.full((5,), 3))
    torch.testing.assert_close(per_row, batch, rtol=0, atol=0)


def test_reparameterize_is_mu_plus_sigma_eps_and_differentiable():
    mu = make_tensor((64, 50), torch.float64, seed=1).requires_grad_()
    logvar = make_tensor((64, 50), torch.float64, seed=2).requires_grad_()
    z = reparameterize(mu, logvar, 5, draw=2)
    eps = latent_noise((64, 50), 5, torch.arange(64), 2, torch.float64)
    torch.testing.assert_close(z, mu + torch.exp(0.5 * logvar) * eps)
    assert abs(eps.mean()) < 0.05 and abs(eps.std() - 1) < 0.05
    assert torch.autograd.gradcheck(lambda m, v: reparameterize(m, v, 5), (mu[:3, :4], logvar[:3, :4]))


@pytest.mark.parametrize("kwargs, error, argument", [
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(index=torch.arange(3)), ValueError, "index"),
    (dict(index=torch.arange(4.0)), TypeError, "index"),
    (dict(index=torch.tensor([0, 1, 2, -1])), ValueError, "index"),
    (dict(draw=-1), ValueError, "draw"),
    (dict(draw=2**40), ValueError, "draw"),
    (dict(draw=torch.zeros(3, dtype=torch.long)), ValueError, "draw"),
    (dict(logvar=torch.zeros(4, 3)), ValueError, "logvar"),
])
def test_reparameterize_bad_input_names_the_argument(kwargs, error, argument):
    args = dict(mu=torch.zeros(4, 2), logvar=torch.zeros(4, 2), seed=0) | kwargs
    with pytest.raises(error, match=f"^{argument}"):
        reparameterize(**args)


def test_iwae_accumulator_streams_the_one_shot_bound():
    parts = [make_tensor((40, 6), torch.float64, scale=30.0, seed=s) for s in range(3)]
    expect = iwae_log_likelihood(*parts)
    torch.testing.assert_close(expect, torch.logsumexp(parts[0] + parts[1] - parts[2], 0) - math.log(40))
    acc = IWAEAccumulator()
    w = parts[0] + parts[1] - parts[2]
    w[:25, 0] = -math.inf  # an image whose first chunks have zero weight
    for chunk in w.split(7):
        acc.add(chunk)
    torch.testing.assert_close(acc.log_mean_exp(), torch.logsumexp(w, 0) - math.log(40))


def test_iwae_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="^log_pz"):
        iwae_log_likelihood(torch.zeros(3, 2), torch.zeros(3, 1), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="^log_px_z"):
        iwae_log_likelihood(torch.zeros(0, 2), torch.zeros(0, 2), torch.zeros(0, 2))
    with pytest.raises(ValueError, match="^IWAEAccumulator"):
        IWAEAccumulator().log_mean_exp()


@pytest.fixture(scope="module")
def tiny_vae():
    torch.manual_seed(0)
    model = DCGANVAE(nc=1, nf=4, nz=6).double().eval()
    x = torch.rand(3, 1, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return model, x


def test_importance_weighted_nll_equals_the_formula_per_image(tiny_vae):
    """K samples in chunks of 4 equal the one-shot bound (2.2) of the same noise, image by image."""
    model, x = tiny_vae
    target = categorical_target(x)
    with torch.no_grad():
        mu, logvar = model.encoder(x)
        got = importance_weighted_nll(lambda z, rows: model.decoded_nll(z, target[rows]), mu, logvar, 10,
                                      chunk=4, seed=7, index=torch.tensor([5, 6, 7]), draw=2)
        for i in range(3):
            draws = torch.arange(2, 12)
            z = reparameterize(mu[i].expand(10, -1), logvar[i].expand(10, -1), 7, torch.full((10,), 5 + i), draws)
            log_px = -categorical_pixel_nll(model.decoder(z), target[i].expand(10, -1, -1, -1))
            w = (log_px + gaussian_log_prob(z) - gaussian_log_prob(z, mu[i].expand(10, -1),
                                                                   logvar[i].expand(10, -1)))
            torch.testing.assert_close(got[i], -(torch.logsumexp(w, 0) - math.log(10)), **TOL[torch.float64])


def published_lr_z(model, x_i, i, steps, lr, seed):
    """The optimization trick on one image as the official loop runs it: Adam on (mu, logvar)."""
    mu, logvar = (t.detach().clone().requires_grad_() for t in model.encoder(x_i))
    opt = torch.optim.Adam([mu, logvar], lr=lr)
    for s in range(steps):
        z = reparameterize(mu, logvar, seed, torch.tensor([i]), s)
        loss = categorical_pixel_nll(model.decoder(z), categorical_target(x_i)) + gaussian_kl(mu, logvar)
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
    return mu.detach(), logvar.detach()


def published_lr_e(model, x_i, i, steps, lr, weight_decay, seed):
    """LR_E on one image as the official loop runs it: Adam on a deep copy of the encoder."""
    import copy

    encoder = copy.deepcopy(model.encoder)
    opt = torch.optim.Adam(encoder.parameters(), lr=lr, weight_decay=weight_decay)
    for s in range(steps):
        mu, logvar = encoder(x_i)
        z = reparameterize(mu, logvar, seed, torch.tensor([i]), s)
        loss = categorical_pixel_nll(model.decoder(z), categorical_target(x_i)) + gaussian_kl(mu, logvar)
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
    with torch.no_grad():
        return encoder(x_i)


def test_batched_lr_z_equals_the_per_image_loop(tiny_vae):
    model, x = tiny_vae
    mu, logvar = model.encoder(x)
    got = optimize_posterior(model.decoder, x, mu, logvar, steps=6, lr=0.05, seed=3)
    assert all(p.grad is None for p in model.parameters())  # no decoder-weight gradients computed
    for i in range(3):
        expect = published_lr_z(model, x[i:i + 1], i, 6, 0.05, 3)
        for g, e in zip(got, expect):
            torch.testing.assert_close(g[i:i + 1], e, **TOL[torch.float64])
    assert (got[0] - mu).abs().max() > 1e-2  # it moved
    model.zero_grad(set_to_none=True)  # the published loop's decoder-weight gradients


def test_batched_lr_e_equals_the_per_image_loop(tiny_vae):
    model, x = tiny_vae
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    got = optimize_encoder(model.encoder, model.decoder, x, steps=5, lr=1e-2, weight_decay=1e-2, seed=4)
    assert all(p.grad is None for p in model.parameters())
    for i in range(3):
        expect = published_lr_e(model, x[i:i + 1], i, 5, 1e-2, 1e-2, 4)
        for g, e in zip(got, expect):
            torch.testing.assert_close(g[i:i + 1], e, **TOL[torch.float64])
    for k, v in model.encoder.state_dict().items():  # the user's encoder is untouched
        assert torch.equal(v, before[k]), k
    model.zero_grad(set_to_none=True)
    assert model.encoder.training is False and all(p.requires_grad for p in model.parameters())


class _PlainEncoder(torch.nn.Module):
    """The same encoder without ``per_image``: optimize_encoder's generic path (vmap of functional_call)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def test_batched_lr_e_of_any_encoder_equals_the_per_image_loop(tiny_vae):
    model, x = tiny_vae
    assert not hasattr(_PlainEncoder(model.encoder), "per_image")
    got = optimize_encoder(_PlainEncoder(model.encoder), model.decoder, x, steps=3, lr=1e-2, weight_decay=1e-2, seed=4)
    for i in range(3):
        expect = published_lr_e(model, x[i:i + 1], i, 3, 1e-2, 1e-2, 4)
        for g, e in zip(got, expect):
            torch.testing.assert_close(g[i:i + 1], e, **TOL[torch.float64])
    model.zero_grad(set_to_none=True)


def test_frozen_restores_each_submodule_its_own_mode(tiny_vae):
    from dgm_fast.vae import frozen

    wrapper = _PlainEncoder(tiny_vae[0].encoder)  # in training mode around an encoder in eval mode
    with frozen(wrapper):
        assert not any(m.training for m in wrapper.modules())
        assert not any(p.requires_grad for p in wrapper.parameters())
    assert wrapper.training and not wrapper.inner.training
    assert all(p.requires_grad for p in wrapper.parameters())


def test_per_image_encoder_runs_each_image_with_its_own_parameters():
    """The DCGAN encoder's batched-GEMM copies against vmap of the module, forward and every
    parameter's gradient, with non-trivial running statistics and parameters that differ per image
    (its last layer is a 4x4 kernel on a 4x4 input: one output pixel)."""
    from torch.func import functional_call, vmap

    from dgm_fast.vae.optimize import per_image_encoder

    torch.manual_seed(0)
    encoder = DCGANVAE(nc=3, nf=4, nz=5).double().eval().encoder
    for module in encoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    params, encode = per_image_encoder(encoder, 4)
    with torch.no_grad():
        for p in params.values():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    buffers = dict(encoder.named_buffers())
    expect = vmap(lambda p, xi: [t[0] for t in functional_call(encoder, (p, buffers), (xi[None],))])(params, x)
    got = encode(params, x)
    torch.testing.assert_close(got, tuple(expect), **TOL[torch.float64])
    weights = [torch.randn_like(t) for t in got]
    grads = [torch.autograd.grad([(w * t).sum() for w, t in zip(weights, out)], list(params.values()))
             for out in (got, expect)]
    torch.testing.assert_close(grads[0], grads[1], **TOL[torch.float64])


def test_per_image_sequential_refuses_layers_it_cannot_batch():
    from dgm_fast.vae.optimize import per_image_sequential

    with pytest.raises(TypeError, match="layer 1 .*Linear"):
        per_image_sequential(torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(3, 4)))
    with pytest.raises(TypeError, match="layer 0 .*groups=2"):
        per_image_sequential(torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, groups=2)))


def test_zero_steps_return_the_starting_posterior(tiny_vae):
    model, x = tiny_vae
    mu, logvar = model.encoder(x)
    for got in (optimize_posterior(model.decoder, x, mu, logvar, steps=0),
                optimize_encoder(model.encoder, model.decoder, x, steps=0)):
        torch.testing.assert_close(got[0], mu, rtol=0, atol=0)
        torch.testing.assert_close(got[1], logvar, rtol=0, atol=0)


def test_optimizers_take_any_decoder_and_likelihood():
    """A plain function as decoder with a Gaussian likelihood: the trick (2.5) lowers the -ELBO."""
    w = make_tensor((4, 10), torch.float64, seed=1)
    x = torch.rand(8, 10, dtype=torch.float64)
    mu, logvar = torch.zeros(8, 4, dtype=torch.float64), torch.zeros(8, 4, dtype=torch.float64)

    def neg_elbo(m, v):
        z = reparameterize(m, v, 9, draw=1000)
        return (gaussian_nll(z @ w, x) + gaussian_kl(m, v)).mean()

    fitted = optimize_posterior(lambda z: z @ w, x, mu, logvar, steps=200, lr=0.05, likelihood="gaussian", seed=9)
    assert neg_elbo(*fitted) < neg_elbo(mu, logvar) - 1.0


@pytest.mark.parametrize("kwargs, error, argument", [
    (dict(steps=-1), ValueError, "steps"),
    (dict(steps=2.0), TypeError, "steps"),
    (dict(lr=0.0), ValueError, "lr"),
    (dict(lr=math.nan), ValueError, "lr"),
    (dict(likelihood="poisson"), ValueError, "likelihood"),
    (dict(beta=-1.0), ValueError, "beta"),
])
def test_optimizer_bad_input_names_the_argument(tiny_vae, kwargs, error, argument):
    model, x = tiny_vae
    mu, logvar = model.encoder(x)
    with pytest.raises(error, match=f"^{argument}"):
        optimize_posterior(model.decoder, x, mu, logvar, **kwargs)
    with pytest.raises(error, match=f"^{argument}"):
        optimize_encoder(model.encoder, model.decoder, x, **kwargs)


def test_public_names():
    for name in ("categorical_pixel_nll", "gaussian_kl", "reparameterize", "iwae_log_likelihood",
                 "importance_weighted_nll", "optimize_posterior", "optimize_encoder"):
        assert getattr(dgm_fast, name) is getattr(dgm_fast.vae, name)


@pytest.mark.parametrize("bias", [True, False])
def test_deconv_likelihood_equals_the_layer_then_the_likelihood(bias):
    """The last layer as four parity GEMMs, in chunks, equals F.conv_transpose2d then the NLL: values
    and the gradients of h, weight and bias (float64), for odd sizes and a chunk that does not divide."""
    from dgm_fast.vae import categorical_pixel_nll_deconv

    h = make_tensor((5, 3, 3, 5), torch.float64, seed=1).requires_grad_()
    w = make_tensor((3, 512, 4, 4), torch.float64, seed=2).requires_grad_()
    b = make_tensor((512,), torch.float64, seed=3).requires_grad_() if bias else None
    target = torch.randint(0, 256, (5, 2, 6, 10), generator=torch.Generator().manual_seed(4))
    got = categorical_pixel_nll_deconv(h, w, b, target, chunk=2)
    expect = categorical_pixel_nll(F.conv_transpose2d(h, w, b, stride=2, padding=1), target)
    torch.testing.assert_close(got, expect, **TOL[torch.float64])
    leaves = [t for t in (h, w, b) if t is not None]
    for g, e in zip(torch.autograd.grad(got.sum(), leaves), torch.autograd.grad(expect.sum(), leaves)):
        torch.testing.assert_close(g, e, **TOL[torch.float64])
    assert categorical_pixel_nll_deconv(h[:0], w, b, target[:0]).shape == (0,)


@pytest.mark.parametrize("kwargs, error, argument", [
    (dict(h=torch.zeros(2, 3, 4)), ValueError, "h"),
    (dict(weight=torch.zeros(3, 256, 3, 3)), ValueError, "weight"),
    (dict(weight=torch.zeros(4, 256, 4, 4)), ValueError, "weight"),
    (dict(weight=torch.zeros(3, 100, 4, 4)), ValueError, "weight"),
    (dict(bias=torch.zeros(255)), ValueError, "bias"),
    (dict(target=torch.zeros(3, 1, 8, 8, dtype=torch.long)), ValueError, "target"),
    (dict(target=torch.zeros(2, 1, 8, 9, dtype=torch.long)), ValueError, "target"),
    (dict(target=torch.zeros(2, 2, 8, 8, dtype=torch.long)), ValueError, "target"),
    (dict(target=torch.full((2, 1, 8, 8), 256)), ValueError, "target"),
    (dict(target=torch.zeros(2, 1, 8, 8)), TypeError, "target"),
    (dict(chunk=0), ValueError, "chunk"),
])
def test_deconv_likelihood_bad_input_names_the_argument(kwargs, error, argument):
    from dgm_fast.vae import categorical_pixel_nll_deconv

    args = dict(h=torch.zeros(2, 3, 4, 4), weight=torch.zeros(3, 256, 4, 4), bias=torch.zeros(256),
                target=torch.zeros(2, 1, 8, 8, dtype=torch.long)) | kwargs
    chunk = args.pop("chunk", 16)
    with pytest.raises(error, match=f"^{argument}"):
        categorical_pixel_nll_deconv(**args, chunk=chunk)
