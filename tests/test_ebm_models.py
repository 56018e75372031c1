"""The EBM models (dgm_fast.models): training by (2.13) and (2.25), the replay buffer, the latent EBM
booster (3.6)-(3.8) and the toy VAE, on tiny configurations."""

import math

import pytest
import torch
from torch import nn

from dgm_fast.demo.metrics import mmd2
from dgm_fast.langevin.stream import stream_stride
from dgm_fast.models import (Dynamics, LatentEBM, ReplayBuffer, ToyVAE, TrainConfig, ebm_loss, frozen_energy,
                             train_ebm, train_latent_ebm, train_toy_vae)
from dgm_fast.nn import MLPEnergy
from dgm_fast.philox import normal_noise

TARGET = torch.tensor([1.5, 0.0])
CHAIN = Dynamics(n_steps=10, step_size=0.05, noise_scale=0.0)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: on 2 shared cores a second OpenMP thread made these chains 10x slower (as the demo)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def shifted_gaussian(n: int) -> torch.Tensor:
    """N((1.5, 0), 0.3^2 I): far from the chains' N(0, I) start, so training must move the samples."""
    return TARGET + 0.3 * torch.randn(n, 2)


def _tiny_energy(dtype=torch.float32) -> MLPEnergy:
    return MLPEnergy((2, 16, 16, 1)).to(dtype)


@pytest.mark.parametrize("noise_scale", [0.0, 0.05])
def test_training_moves_the_chain_to_the_data(noise_scale):
    torch.manual_seed(0)
    energy, dynamics = _tiny_energy(), Dynamics(10, 0.05, noise_scale)
    truth = shifted_gaussian(500)
    before = mmd2(dynamics.sample(energy, 500), truth)
    losses = train_ebm(energy, shifted_gaussian, dynamics, TrainConfig(n_iters=150, batch_size=64, lr=3e-3),
                       progress=False)
    after = mmd2(dynamics.sample(energy, 500), truth)
    assert len(losses) == 150 and all(math.isfinite(v) for v in losses)
    assert after < 0.2 * before, (before, after)


def test_dynamics_horizon_is_the_euler_time():
    # K Euler steps x -= (eta / 2) grad E of the flow x' = -grad E (2.16) reach T = K eta / 2 (2.20)
    assert Dynamics(20, 0.02, 0.0).horizon == pytest.approx(0.2)


def test_replay_buffer_starts_from_its_samples_or_fresh_noise():
    torch.manual_seed(0)
    buffer = ReplayBuffer(50, 2, reinit=0.0)
    buffer.samples += 100.0  # far from any N(0, I) draw
    x0, index = buffer.starts(8)
    assert torch.equal(x0, buffer.samples[index])
    buffer.push(index, torch.zeros(8, 2))
    assert torch.equal(buffer.samples[index], torch.zeros(8, 2))
    fresh = ReplayBuffer(50, 2, reinit=0.25)
    fresh.samples += 100.0
    x0, _ = fresh.starts(4000)
    share = (x0.abs().max(dim=1).values < 50).float().mean().item()
    assert abs(share - 0.25) < 0.03, share  # IGEBM: a set share of chains restart at the prior


def test_replay_buffer_persists_chains_across_training_steps():
    torch.manual_seed(0)
    energy, buffer = _tiny_energy(), ReplayBuffer(256, 2)
    train_ebm(energy, shifted_gaussian, CHAIN, TrainConfig(n_iters=100, batch_size=64, lr=3e-3), replay=buffer,
              progress=False)
    # the stored chain ends moved from the N(0, I) fill to the data's mean (1.5, 0), and persist
    assert buffer.samples[:, 0].mean() > 1.0 and buffer.samples[:, 1].mean().abs() < 0.3, buffer.samples.mean(0)


def test_bad_replay_buffers_are_refused():
    with pytest.raises(ValueError, match="reinit"):
        ReplayBuffer(10, 2, reinit=1.5)
    with pytest.raises(ValueError, match="size"):
        ReplayBuffer(0, 2)


def _params(energy: nn.Module) -> list[torch.Tensor]:
    return list(energy.parameters())


def test_frozen_energy_has_no_gradient_through_its_own_parameters():
    torch.manual_seed(0)
    energy = _tiny_energy(torch.float64)
    x = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    e = frozen_energy(energy, x)
    assert torch.allclose(e, energy(x))
    assert all(g is None for g in torch.autograd.grad(e.sum(), _params(energy), allow_unused=True))
    (gx,) = torch.autograd.grad(e.sum(), x)
    assert torch.allclose(gx, energy.grad(x.detach()))  # the input gradient is kept


def test_generator_loss_reaches_theta_exactly_through_the_chain():
    """(2.25) minus (2.13) is E_sg(theta)(G_theta(x0)): its theta-gradient must be the chain's Jacobian
    applied to grad_x E at the chain's ends (the critic held fixed), to rounding."""
    torch.manual_seed(0)
    energy = _tiny_energy(torch.float64)
    x_pos, x0 = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    x_neg = Dynamics(5, 1.0, 0.0).run(energy, x0, create_graph=True)  # long steps: the flat start moves
    with_gen = torch.autograd.grad(ebm_loss(energy, x_pos, x_neg, 1e-3, True), _params(energy), retain_graph=True)
    without = torch.autograd.grad(ebm_loss(energy, x_pos, x_neg, 1e-3, False), _params(energy), retain_graph=True)
    critic_grad_at_ends = energy.grad(x_neg.detach()) / len(x0)  # d mean E(x) / dx, theta fixed
    by_hand = torch.autograd.grad(x_neg, _params(energy), critic_grad_at_ends, allow_unused=True)
    assert by_hand[-1] is None  # the last bias shifts E, not its gradient: no chain depends on it
    by_hand = [torch.zeros_like(p) if h is None else h for p, h in zip(_params(energy), by_hand)]
    assert all(h.abs().max() > 1e-4 for h in by_hand[:-1])  # every other parameter moves the chain
    for w, wo, h in zip(with_gen, without, by_hand):
        torch.testing.assert_close(w - wo, h, rtol=1e-10, atol=1e-12)


def test_generator_loss_without_a_chain_changes_nothing():
    # zero steps: G_theta(x0) = x0 depends on no parameter, so the frozen term adds no gradient at all
    torch.manual_seed(0)
    energy = _tiny_energy(torch.float64)
    x_pos, x0 = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    x_neg = Dynamics(0, 0.05, 0.0).run(energy, x0, create_graph=True)
    with_gen = torch.autograd.grad(ebm_loss(energy, x_pos, x_neg, 1e-3, True), _params(energy))
    without = torch.autograd.grad(ebm_loss(energy, x_pos, x_neg, 1e-3, False), _params(energy))
    for w, wo in zip(with_gen, without):
        assert torch.equal(w, wo)


def test_training_with_the_generator_loss_changes_theta():
    def trained(generator_loss: bool) -> torch.Tensor:
        torch.manual_seed(0)  # same weights, data and chain starts
        energy = _tiny_energy()
        config = TrainConfig(n_iters=20, batch_size=32, lr=3e-3, generator_loss=generator_loss)
        train_ebm(energy, shifted_gaussian, CHAIN, config, progress=False)
        return torch.cat([p.detach().flatten() for p in energy.parameters()])

    plain, with_gen = trained(False), trained(True)
    assert torch.equal(plain, trained(False))  # a run repeats exactly, so the difference is the loss's
    assert (plain - with_gen).abs().max() > 1e-3


def _decoder() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2)).double()


def _hand_written_latent_chain(energy_of_z, z0: torch.Tensor, chain: Dynamics, seed: int) -> torch.Tensor:
    """(3.8): z <- z - eps/2 grad_z (E(G(z)) - log N(z; 0, I)) + sqrt(eps) omega, omega from Philox at the
    offset NoiseStream gives step k."""
    z = z0
    for k in range(chain.n_steps):
        z = z.detach().requires_grad_()
        (g,) = torch.autograd.grad(energy_of_z(z).sum(), z)
        omega = normal_noise(z.numel(), seed, k * stream_stride(z.numel()), dtype=z.dtype).view(z.shape)
        z = z - chain.step_size / 2 * (g + z) + math.sqrt(chain.step_size) * omega
    return z.detach()


@pytest.mark.parametrize("on", ["data", "latents"])
def test_latent_chain_is_equation_3_8(on):
    decoder, energy = _decoder(), MLPEnergy((2, 8, 8, 1), "leaky_relu").double()
    encoder = (lambda x: x) if on == "latents" else None
    model = LatentEBM(decoder, energy, 2, encoder=encoder)
    z0 = torch.randn(7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    chain = Dynamics(5, 0.01, None)  # balanced noise sqrt(eps)
    expected = _hand_written_latent_chain(lambda z: energy(decoder(z)) if on == "data" else energy(z), z0, chain, 3)
    torch.testing.assert_close(model.sample_latents(z0, chain, seed=3), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("on", ["data", "latents"])
def test_latent_ebm_tilts_the_prior_towards_the_data(on):
    """With G the identity, p(z) exp(-E) must move N(0, I)'s mass towards the data's mean (1.5, 0)."""
    torch.manual_seed(0)
    model = LatentEBM(lambda z: z, MLPEnergy((2, 16, 16, 1), "leaky_relu"), 2,
                      encoder=(lambda x: x) if on == "latents" else None)
    chain = Dynamics(30, 0.05, None)
    train_latent_ebm(model, shifted_gaussian, TrainConfig(n_iters=150, batch_size=64, lr=3e-3, energy_reg=0.01),
                     chain, progress=False)
    samples = model.sample(1000, chain)
    assert samples[:, 0].mean() > 1.0 and samples[:, 1].mean().abs() < 0.3, samples.mean(0)


def test_latent_ebm_trains_only_the_energy():
    decoder = _decoder()
    before = [p.clone() for p in decoder.parameters()]
    model = LatentEBM(decoder, MLPEnergy((2, 8, 1)).double(), 2)
    torch.manual_seed(0)
    train_latent_ebm(model, lambda n: shifted_gaussian(n).double(), TrainConfig(n_iters=3, batch_size=8),
                     Dynamics(3, 0.01, None), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, decoder.parameters()))


def test_latent_ebm_refuses_bad_arguments():
    with pytest.raises(ValueError, match="latent_dim = 3"):
        LatentEBM(lambda z: z, MLPEnergy((2, 4, 1)), 3, encoder=lambda x: x)
    with pytest.raises(TypeError, match="MLPEnergy"):
        LatentEBM(lambda z: z, nn.Linear(2, 1), 2)
    model = LatentEBM(lambda z: z, MLPEnergy((2, 4, 1)), 2)
    with pytest.raises(ValueError, match="generator_loss"):
        train_latent_ebm(model, shifted_gaussian, TrainConfig(n_iters=1, generator_loss=True), progress=False)


def test_toy_vae_learns_the_data():
    torch.manual_seed(0)
    vae = ToyVAE(hidden=32, depth=2, sigma=0.2)
    truth = shifted_gaussian(500)
    before = mmd2(vae.sample(500), truth)
    losses = train_toy_vae(vae, shifted_gaussian, n_iters=300, batch_size=128, lr=3e-3, progress=False)
    assert sum(losses[-20:]) < sum(losses[:20])
    assert mmd2(vae.sample(500), truth) < 0.1 * before
    mu, logvar = vae.encode(truth)
    assert mu.shape == logvar.shape == (500, 2) and vae.decode(mu).shape == (500, 2)
