"""Generative Latent Flow (dissertation §3.2): the auto-encoders of Table 3.6, the losses (3.1)-(3.3),
sampling and interpolation, the digits data and the training loop of appendix 3.2.6."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torch import nn

from dgm_fast.models.autoencoder import InfoGANAutoEncoder, MLPAutoEncoder
from dgm_fast.models.digits import load_digits
from dgm_fast.models.glf import GLF, default_flow, train_glf
from dgm_fast.nn import CouplingFlow

D = 4  # latent dimension of the small models


def randomize(flow: CouplingFlow, std: float = 0.3, seed: int = 0) -> CouplingFlow:
    """A fresh flow is the identity (zero last layers); random weights make it non-linear."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
    return flow


def small_model(objective: str = "glf", recon: str = "mse", beta: float = 1.0,
                dtype: torch.dtype = torch.float64, seed: int = 0) -> GLF:
    torch.manual_seed(seed)
    ae = MLPAutoEncoder(64, D, hidden=(32,), variational=objective == "vae", image_shape=(1, 8, 8))
    flow = randomize(CouplingFlow(D, n_blocks=2, hidden=16), seed=seed)
    return GLF(ae, flow, objective=objective, recon=recon, beta=beta).to(dtype)


def images(n: int = 6, dtype: torch.dtype = torch.float64, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def grads(loss: torch.Tensor, params) -> list[torch.Tensor]:
    params = list(params)
    got = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, got)]


def all_zero(gs) -> bool:
    return all(bool((g == 0).all()) for g in gs)


# --- auto-encoders (Table 3.6) ---------------------------------------------------------------

@pytest.mark.parametrize("size", [28, 32, 64])
def test_infogan_layers_and_shapes_follow_table_3_6(size):
    m = size // 4
    ae = InfoGANAutoEncoder(size, channels=3, latent_dim=5, variational=True)
    kinds = [type(layer).__name__ for layer in ae.encoder]
    assert kinds == ["Conv2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU", "Flatten", "Linear", "BatchNorm1d",
                     "ReLU", "Linear"]
    kinds = [type(layer).__name__ for layer in ae.decoder]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Unflatten",
                     "ConvTranspose2d", "BatchNorm2d", "ReLU", "ConvTranspose2d", "Sigmoid"]
    convs = [layer for layer in [*ae.encoder, *ae.decoder] if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 64), (64, 128), (128, 64), (64, 3)]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) and c.padding == (1, 1) for c in convs)
    assert (ae.encoder[6].in_features, ae.encoder[9].out_features) == (128 * m * m, 10)  # 2 nz: mu, logvar
    assert ae.decoder[3].out_features == 128 * m * m

    x = torch.rand(2, 3, size, size)
    mu, logvar = ae.encode(x)
    assert mu.shape == logvar.shape == (2, 5)
    out = ae.decode(mu)
    assert out.shape == (2, 3, size, size) and out.min() >= 0 and out.max() <= 1
    z = InfoGANAutoEncoder(size, latent_dim=7).encode(torch.rand(2, 1, size, size))
    assert z.shape == (2, 7)


def test_infogan_rejects_bad_arguments():
    for size in (8, 30, 128):
        with pytest.raises(ValueError, match=r"^image_size must be one of \(28, 32, 64\)"):
            InfoGANAutoEncoder(size)
    with pytest.raises(TypeError, match="^image_size"):
        InfoGANAutoEncoder(28.0)
    with pytest.raises(ValueError, match="^channels"):
        InfoGANAutoEncoder(28, channels=0)
    with pytest.raises(TypeError, match="^variational"):
        InfoGANAutoEncoder(28, variational=1)
    ae = InfoGANAutoEncoder(28)
    with pytest.raises(ValueError, match="^x must have shape"):
        ae.encode(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="^z must have shape"):
        ae.decode(torch.rand(2, 21))


def test_mlp_autoencoder_shapes_and_arguments():
    ae = MLPAutoEncoder(64, 3, hidden=(16, 8), image_shape=(1, 8, 8))
    assert [layer.out_features for layer in ae.encoder if isinstance(layer, nn.Linear)] == [16, 8, 3]
    assert [layer.out_features for layer in ae.decoder if isinstance(layer, nn.Linear)] == [8, 16, 64]
    z = ae.encode(torch.rand(5, 1, 8, 8))
    out = ae.decode(z)
    assert z.shape == (5, 3) and out.shape == (5, 1, 8, 8) and out.min() >= 0 and out.max() <= 1
    assert MLPAutoEncoder(64, 3).decode(z).shape == (5, 64)
    mu, logvar = MLPAutoEncoder(64, 3, variational=True).encode(torch.rand(5, 64))
    assert mu.shape == logvar.shape == (5, 3)
    with pytest.raises(ValueError, match="^image_shape"):
        MLPAutoEncoder(64, 3, image_shape=(1, 8, 9))
    with pytest.raises(ValueError, match="^hidden"):
        MLPAutoEncoder(64, 3, hidden=(0,))
    with pytest.raises(TypeError, match="^hidden"):
        MLPAutoEncoder(64, 3, hidden=16)
    with pytest.raises(ValueError, match="^latent_dim"):
        MLPAutoEncoder(64, 0)
    with pytest.raises(ValueError, match="^x must have shape"):
        ae.encode(torch.rand(5, 65))


# --- losses (3.1), (3.2), (3.3) --------------------------------------------------------------

def test_glf_loss_terms_are_eq_3_3_and_regularized_is_eq_3_2():
    x = images()
    for objective, beta in (("glf", 1.0), ("regularized", 7.0)):
        model = small_model(objective, beta=beta)
        loss = model(x)
        z = model.autoencoder.encode(x)
        recon = (x - model.autoencoder.decode(z)).square().sum(dim=(1, 2, 3)).mean()
        u, logdet = model.flow(z)
        nll = (0.5 * u.square().sum(1) + 0.5 * D * math.log(2 * math.pi) - logdet).mean()
        torch.testing.assert_close((loss.recon, loss.nll), (recon, nll))
        torch.testing.assert_close(loss.total, beta * recon + nll)
        assert loss.entropy is None


def test_glf_stop_gradient_separates_the_parameters_and_regularized_does_not():
    x = images()
    model = small_model("glf")
    enc, dec, flow = (list(m.parameters()) for m in (model.autoencoder.encoder, model.autoencoder.decoder,
                                                      model.flow))
    loss = model(x)
    assert all_zero(grads(loss.nll, enc + dec))  # sg[E(x)]: the NLL trains only the flow
    assert not all_zero(grads(loss.nll, flow))
    assert all_zero(grads(loss.recon, flow))
    assert not all_zero(grads(loss.recon, enc)) and not all_zero(grads(loss.recon, dec))

    model = small_model("regularized", beta=3.0)
    enc = list(model.autoencoder.encoder.parameters())
    nll = model(x).nll
    assert all(not all_zero([g]) for g in grads(nll, enc))  # (3.2): every encoder layer feels the NLL
    assert all_zero(grads(nll, model.autoencoder.decoder.parameters()))


@pytest.mark.parametrize("recon", ["mse", "bce"])
def test_vae_loss_is_minus_elbo_flow_of_eq_3_1(recon):
    x, beta = images(), 5.0
    model = small_model("vae", recon=recon, beta=beta)
    eps = torch.randn(len(x), D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    loss = model(x, eps=eps)

    mu, logvar = model.autoencoder.encode(x)
    sigma = torch.exp(logvar / 2)
    z = mu + sigma * eps
    x_hat = model.autoencoder.decode(z)
    if recon == "mse":
        rec = (x - x_hat).square().sum(dim=(1, 2, 3))
    else:
        rec = -(x * torch.log(x_hat) + (1 - x) * torch.log(1 - x_hat)).sum(dim=(1, 2, 3))
    u, logdet = model.flow(z)
    log_prior = -0.5 * u.square().sum(1) - 0.5 * D * math.log(2 * math.pi) + logdet  # log p0(f(z)) + log|det|
    q = torch.distributions.Normal(mu, sigma)
    expected = (beta * rec - log_prior - q.entropy().sum(1)).mean()
    torch.testing.assert_close(loss.total, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close((loss.recon, loss.nll), (rec.mean(), -log_prior.mean()), rtol=1e-12, atol=1e-12)

    # the analytic entropy has the gradients of the single-sample estimate +log q(z|x) of (3.1)
    single_sample = (beta * rec - log_prior + q.log_prob(z).sum(1)).mean()
    params = list(model.parameters())
    torch.testing.assert_close(grads(loss.total, params), grads(single_sample, params), rtol=1e-10, atol=1e-12)


def test_vae_entropy_term_is_figure_3_7b():
    model = small_model("vae")
    head = model.autoencoder.encoder[-1]  # outputs (mu, logvar)
    with torch.no_grad():
        head.weight[D:] = 0.0
        head.bias[D:] = torch.tensor([-2.0, -1.0, 0.5, 3.0], dtype=torch.float64)  # logvar_j = 2 log sigma_j
    loss = model(images())
    expected = -(0.5 * head.bias[D:]).sum() / 2  # -sum_j log(sigma_j) / 2
    torch.testing.assert_close(loss.entropy, expected.detach())
    # while the objective subtracts the Gaussian entropy sum_j log(sigma_j) + d/2 log(2 pi e)
    entropy_q = 0.5 * head.bias[D:].sum() + 0.5 * D * (1 + math.log(2 * math.pi))
    torch.testing.assert_close(loss.total, model.beta * loss.recon + loss.nll - entropy_q.detach())


def test_vae_noise_comes_from_the_generator():
    model, x = small_model("vae"), images()
    a = model(x, generator=torch.Generator().manual_seed(5)).total
    b = model(x, generator=torch.Generator().manual_seed(5)).total
    c = model(x, generator=torch.Generator().manual_seed(6)).total
    assert a == b and a != c


# --- sampling, interpolation, NLL -------------------------------------------------------------

def test_sample_is_decoded_inverse_flow_of_noise_in_eval_mode():
    torch.manual_seed(0)
    ae = InfoGANAutoEncoder(28, latent_dim=D)
    model = GLF(ae, randomize(default_flow(D, hidden=8)))
    bn = ae.decoder[1]
    stats = bn.running_mean.clone()
    s = model.sample(5, generator=torch.Generator().manual_seed(2))
    assert s.shape == (5, 1, 28, 28) and s.min() >= 0 and s.max() <= 1 and not s.requires_grad
    assert torch.equal(bn.running_mean, stats) and model.training and bn.training  # eval inside, restored after
    u = torch.randn(5, D, generator=torch.Generator().manual_seed(2))
    model.eval()
    torch.testing.assert_close(s, ae.decode(model.flow.inverse(u)[0]).detach())
    assert model.sample(0).shape == (0, 1, 28, 28)


def test_interpolation_is_linear_in_the_gaussian_space():
    model = small_model("glf")
    u_a, u_b = torch.randn(2, D, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    path = model.interpolate(u_a, u_b, 5)
    assert path.shape == (5, 1, 8, 8) and path.min() >= 0 and path.max() <= 1
    ends = model.generate(torch.stack([u_a, u_b]))
    torch.testing.assert_close(path[[0, -1]], ends)
    torch.testing.assert_close(path[2], model.generate(((u_a + u_b) / 2)[None])[0])
    z_mid = (model.flow.inverse(u_a[None])[0] + model.flow.inverse(u_b[None])[0]) / 2
    assert not torch.allclose(path[2], model.generate(model.flow(z_mid)[0])[0])  # not linear in z


def test_flow_nll_is_per_sample_nll_of_the_latents():
    x = images(7)
    model = small_model("glf")
    nll = model.flow_nll(x)
    assert nll.shape == (7,) and not nll.requires_grad
    torch.testing.assert_close(nll, -model.flow.log_prob(model.autoencoder.encode(x)).detach())
    torch.testing.assert_close(nll.mean(), model(x).nll.detach())
    vae = small_model("vae")
    mu = vae.autoencoder.encode(x)[0]
    torch.testing.assert_close(vae.flow_nll(x), -vae.flow.log_prob(mu).detach())  # the posterior mean


def test_glf_rejects_bad_arguments():
    det, var = MLPAutoEncoder(64, D), MLPAutoEncoder(64, D, variational=True)
    cases = [
        (TypeError, "^autoencoder", lambda: GLF(nn.Linear(2, 2))),
        (TypeError, "^flow", lambda: GLF(det, flow=nn.Linear(2, 2))),
        (ValueError, "^flow must act on", lambda: GLF(det, CouplingFlow(D + 1))),
        (ValueError, "^objective", lambda: GLF(det, objective="wae")),
        (ValueError, "^autoencoder must be a variational", lambda: GLF(det, objective="vae")),
        (ValueError, "^autoencoder must be a deterministic", lambda: GLF(var, objective="regularized")),
        (ValueError, "^recon", lambda: GLF(det, recon="l1")),
        (ValueError, "^beta must be 1", lambda: GLF(det, beta=2.0)),
        (ValueError, "^beta", lambda: GLF(det, objective="regularized", beta=0.0)),
        (TypeError, "^beta", lambda: GLF(det, objective="regularized", beta="2")),
    ]
    for error, match, make in cases:
        with pytest.raises(error, match=match):
            make()
    model, vae, x = small_model("glf"), small_model("vae"), images()
    u = torch.zeros(D, dtype=torch.float64)
    cases = [
        (ValueError, "^eps is only used", lambda: model(x, eps=torch.zeros(6, D))),
        (ValueError, "^eps must have the shape", lambda: vae(x, eps=torch.zeros(6, D + 1, dtype=torch.float64))),
        (TypeError, "^eps must be a torch.Tensor", lambda: vae(x, eps=[0.0])),
        (ValueError, "^n must be", lambda: model.sample(-1)),
        (ValueError, "^steps", lambda: model.interpolate(u, u, 1)),
        (ValueError, r"^u_b must have shape \(4,\)", lambda: model.interpolate(u, torch.zeros(1, D), 3)),
        (TypeError, "^u_a", lambda: model.interpolate(None, u, 3)),
    ]
    for error, match, call in cases:
        with pytest.raises(error, match=match):
            call()


# --- digits -----------------------------------------------------------------------------------

def rows(t: torch.Tensor) -> Counter:
    return Counter(tuple(r) for r in t.flatten(1).tolist())


def test_load_digits_splits_the_whole_set_deterministically():
    train, y_train = load_digits()
    test, y_test = load_digits(split="test")
    assert train.shape == (1438, 1, 8, 8) and test.shape == (359, 1, 8, 8)  # 1797 images, round(20 %) test
    assert train.dtype == torch.float32 and y_train.dtype == torch.int64 and y_test.shape == (359,)
    assert train.min() == 0 and train.max() == 1
    levels = torch.unique(torch.cat([train, test]) * 16)
    assert torch.equal(levels, torch.arange(17.0))  # the 17 grey levels 0..16, scaled by /16
    assert set(y_train.tolist()) == set(range(10))
    from sklearn.datasets import load_digits as sklearn_digits
    whole = torch.from_numpy(sklearn_digits().images).float() / 16
    assert rows(train) + rows(test) == rows(whole)  # a partition of the set: disjoint and covering
    again, y_again = load_digits()
    assert torch.equal(train, again) and torch.equal(y_train, y_again)
    assert not torch.equal(load_digits(seed=1)[1], y_train)
    assert len(load_digits(split="test", test_fraction=0.5)[0]) == 898


def test_load_digits_upsamples_bilinearly():
    small, labels = load_digits(split="test")
    big, big_labels = load_digits(28, split="test")
    assert big.shape == (359, 1, 28, 28) and torch.equal(big_labels, labels)
    assert big.min() >= 0 and big.max() <= 1
    # align_corners=False: a corner output pixel is the corner input pixel (the source is clamped)
    torch.testing.assert_close(big[:, :, [0, -1]][..., [0, -1]], small[:, :, [0, -1]][..., [0, -1]])
    # x2 with align_corners=False: out[2i] = 3/4 a[i] + 1/4 a[i-1], out[2i+1] = 3/4 a[i] + 1/4 a[i+1],
    # indices clamped at the border, along each axis
    w = torch.zeros(16, 8)
    for i in range(8):
        w[2 * i, i] += 0.75
        w[2 * i, max(i - 1, 0)] += 0.25
        w[2 * i + 1, i] += 0.75
        w[2 * i + 1, min(i + 1, 7)] += 0.25
    torch.testing.assert_close(load_digits(16, split="test")[0], w @ small @ w.T)


def test_load_digits_rejects_bad_arguments():
    cases = [
        (ValueError, "^image_size", dict(image_size=4)),
        (TypeError, "^image_size", dict(image_size="28")),
        (ValueError, "^split", dict(split="val")),
        (ValueError, "^test_fraction", dict(test_fraction=0.0)),
        (ValueError, "^test_fraction", dict(test_fraction=1.0)),
        (TypeError, "^test_fraction", dict(test_fraction="0.2")),
        (ValueError, "^seed", dict(seed=-1)),
    ]
    for error, match, kwargs in cases:
        with pytest.raises(error, match=match):
            load_digits(**kwargs)


# --- training (appendix 3.2.6) ------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits200() -> torch.Tensor:
    return load_digits()[0][:200]


def fit(data, seed=0, objective="glf", **kwargs):
    torch.manual_seed(0)
    ae = MLPAutoEncoder(64, D, hidden=(32,), variational=objective == "vae", image_shape=(1, 8, 8))
    model = GLF(ae, CouplingFlow(D, n_blocks=2, hidden=16), objective=objective)
    history = train_glf(model, data, epochs=2, batch_size=50, seed=seed, progress=False, **kwargs)
    return model, history


@pytest.fixture(scope="module")
def baseline(digits200) -> tuple[GLF, dict[str, list[float]]]:
    return fit(digits200)


def test_train_glf_decreases_the_loss_and_repeats_under_its_seed(digits200, baseline):
    model, history = baseline
    assert set(history) == {"total", "recon", "nll"} and all(len(v) == 2 for v in history.values())
    assert history["total"][1] < history["total"][0]
    assert history["total"] == pytest.approx([r + n for r, n in zip(history["recon"], history["nll"])])
    again_model, again = fit(digits200)
    assert again == history
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again_model.state_dict().values()))
    assert fit(digits200, seed=1)[1]["total"][0] != history["total"][0]  # the shuffling follows the seed


def test_train_glf_schedule_and_flow_only_weight_decay(digits200, baseline):
    model, history = baseline
    decayed = fit(digits200, lr_decay_every=1)[1]
    assert decayed["total"][0] == history["total"][0] and decayed["total"][1] != history["total"][1]
    heavy, _ = fit(digits200, flow_weight_decay=0.5)
    # (3.3): the auto-encoder never sees the flow, so only the flow's weights change with its decay
    assert all(torch.equal(a, b) for a, b in zip(model.autoencoder.parameters(), heavy.autoencoder.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(model.flow.parameters(), heavy.flow.parameters()))


def test_train_glf_vae_records_the_entropy(digits200):
    _, history = fit(digits200[:100], objective="vae")
    assert set(history) == {"total", "recon", "nll", "entropy"}
    assert all(math.isfinite(v) for values in history.values() for v in values)


def test_train_glf_rejects_bad_arguments(digits200):
    model = small_model("glf", dtype=torch.float32)
    cases = [
        (TypeError, "^model", dict(model=nn.Linear(2, 2))),
        (TypeError, "^data", dict(data=[[0.0]])),
        (ValueError, "^data", dict(data=digits200[:1])),
        (ValueError, "^epochs", dict(epochs=0)),
        (TypeError, "^epochs", dict(epochs=1.5)),
        (ValueError, "^batch_size", dict(batch_size=1)),
        (ValueError, "^lr", dict(lr=0.0)),
        (ValueError, "^flow_weight_decay", dict(flow_weight_decay=-1e-5)),
        (ValueError, "^lr_decay_every", dict(lr_decay_every=0)),
        (ValueError, "^seed", dict(seed=-1)),
        (TypeError, "^desc", dict(desc=3)),
        (TypeError, "^progress", dict(progress="no")),
    ]
    for error, match, kwargs in cases:
        args = dict(model=model, data=digits200, epochs=1) | kwargs
        with pytest.raises(error, match=match):
            train_glf(args.pop("model"), args.pop("data"), **args)
