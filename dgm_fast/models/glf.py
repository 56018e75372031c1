"""Generative Latent Flow (dissertation §3.2): an auto-encoder with a normalizing flow on its latents.

One module, three objectives (the "3 losses" of §3.2.3):

- ``"glf"``: eq. (3.3), reconstruction + the flow's NLL of the stop-gradient
  latents ``sg[E(x)]``; the two terms train disjoint parameters.
- ``"regularized"``: eq. (3.2), ``beta * recon + NLL`` with gradients of the
  NLL flowing into the encoder (unstable: the latents can shrink, §3.2.3).
- ``"vae"``: the negative of eq. (3.1), a VAE with the flow as its prior.

Samples are ``G(f^{-1}(u))``, ``u ~ N(0, I)`` (Figure 3.1(a)).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from dgm_fast import _checks
from dgm_fast.nn import CouplingFlow

OBJECTIVES = ("glf", "regularized", "vae")
RECONS = ("mse", "bce")
_LOG_2PI_E = math.log(2 * math.pi) + 1.0


def default_flow(latent_dim: int, hidden: int = 64) -> CouplingFlow:
    """§3.2.4: four affine coupling blocks (Figure 3.1(b)), each subnet three FC layers of ``hidden``
    units (k = 64 for MNIST and Fashion, 256 for CIFAR-10 and CelebA)."""
    return CouplingFlow(latent_dim, n_blocks=4, hidden=hidden, n_hidden_layers=2)


def reconstruction_loss(x: Tensor, x_hat: Tensor, kind: str) -> Tensor:
    """Per-sample SUM over pixels, then the batch mean: ``||x - x_hat||^2`` ("mse"), or the Bernoulli
    NLL ("bce"). With "mse", -log N(x; x_hat, sigma^2 I) = mse / (2 sigma^2) + const."""
    x_hat = x_hat.reshape(x.shape)
    if kind == "mse":
        per_pixel = (x - x_hat).square()
    else:
        per_pixel = F.binary_cross_entropy(x_hat, x, reduction="none")
    return per_pixel.flatten(1).sum(dim=1).mean()


@dataclass(frozen=True)
class GLFLoss:
    """The objective and its terms, each a batch mean. ``nll`` is -log p_flow(z). ``entropy`` (VAE
    only) is Figure 3.7(b)'s "entropy loss", -sum_j log(sigma_j) / 2: higher means smaller posterior
    variances. (The objective itself uses the Gaussian entropy sum_j log(sigma_j) + const.)"""

    total: Tensor
    recon: Tensor
    nll: Tensor
    entropy: Tensor | None = None


def _module_with(name: str, value, attrs: tuple[str, ...]) -> nn.Module:
    if not isinstance(value, nn.Module) or not all(hasattr(value, a) for a in attrs):
        raise TypeError(f"{name} must be an nn.Module with {', '.join(attrs)}, got {type(value).__name__}")
    return value


class GLF(nn.Module):
    """An auto-encoder and a flow on its latents, trained by eq. (3.3), (3.2) or (3.1).

    ``model(x) -> GLFLoss``. ``objective="vae"`` needs a ``variational``
    auto-encoder and the others a deterministic one. ``beta`` weighs the
    reconstruction (it plays 1/sigma^2 of the decoder's noise, §3.2.3); GLF
    (3.3) has no weight, as its two terms train disjoint parameters.
    ``flow`` defaults to ``default_flow(autoencoder.latent_dim)``.
    """

    def __init__(self, autoencoder: nn.Module, flow: nn.Module | None = None, *, objective: str = "glf",
                 recon: str = "mse", beta: float = 1.0):
        super().__init__()
        self.autoencoder = _module_with("autoencoder", autoencoder,
                                        ("encode", "decode", "latent_dim", "variational", "image_shape"))
        self.latent_dim = autoencoder.latent_dim
        self.flow = _module_with("flow", default_flow(self.latent_dim) if flow is None else flow,
                                 ("dim", "log_prob", "inverse"))
        if self.flow.dim != self.latent_dim:
            raise ValueError(f"flow must act on the autoencoder's latent_dim = {self.latent_dim}, "
                             f"got a flow of dim {self.flow.dim}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if autoencoder.variational != (objective == "vae"):
            need = "a variational" if objective == "vae" else "a deterministic"
            raise ValueError(f"autoencoder must be {need} one for objective={objective!r}")
        if recon not in RECONS:
            raise ValueError(f"recon must be one of {RECONS}, got {recon!r}")
        self.beta = _checks.real("beta", beta, low=0.0, low_open=True, finite=True)
        if objective == "glf" and self.beta != 1.0:
            raise ValueError("beta must be 1 for objective='glf': eq. (3.3) has no weight")
        self.objective, self.recon = objective, recon

    def extra_repr(self) -> str:
        return f"objective={self.objective!r}, recon={self.recon!r}, beta={self.beta}"

    def forward(self, x: Tensor, *, eps: Tensor | None = None,
                generator: torch.Generator | None = None) -> GLFLoss:
        """The loss on a batch ``x``. For "vae", ``eps`` (batch, latent_dim) fixes the reparameterization
        noise, else it is drawn with ``generator``."""
        if self.objective == "vae":
            return self._vae_loss(x, eps, generator)
        if eps is not None:
            raise ValueError(f"eps is only used by objective='vae', not {self.objective!r}")
        z = self.autoencoder.encode(x)
        recon = reconstruction_loss(x, self.autoencoder.decode(z), self.recon)
        if self.objective == "glf":
            nll = -self.flow.log_prob(z.detach()).mean()  # (3.3): sg[E(x)]
            return GLFLoss(recon + nll, recon, nll)
        nll = -self.flow.log_prob(z).mean()  # (3.2): the NLL also trains the encoder
        return GLFLoss(self.beta * recon + nll, recon, nll)

    def _vae_loss(self, x: Tensor, eps: Tensor | None, generator: torch.Generator | None) -> GLFLoss:
        """-ELBO_Flow (3.1), one reparameterized sample z = mu + sigma * eps per image."""
        mu, logvar = self.autoencoder.encode(x)
        if eps is None:
            eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        else:
            _checks.dense_tensor("eps", eps)
            _checks.like("eps", eps, "the latents", mu)
        z = mu + torch.exp(0.5 * logvar) * eps
        recon = reconstruction_loss(x, self.autoencoder.decode(z), self.recon)
        nll = -self.flow.log_prob(z).mean()  # -(log p0(f(z)) + log|det df/dz|)
        # -log q(z|x) enters as the Gaussian entropy, sum_j log sigma_j + d/2 log(2 pi e): the same
        # gradients as the single-sample -log q (eps is a constant), with less variance.
        entropy_q = 0.5 * logvar.sum(dim=1) + 0.5 * self.latent_dim * _LOG_2PI_E
        total = self.beta * recon + nll - entropy_q.mean()
        return GLFLoss(total, recon, nll, entropy=(-0.25 * logvar.sum(dim=1)).mean())

    @contextmanager
    def _evaluating(self) -> Iterator[None]:
        """Eval mode (BatchNorm's running statistics) without autograd, restoring the mode after."""
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            for m, training in modes:
                m.training = training

    def _latents(self, x: Tensor) -> Tensor:
        """The encoder's latents; the posterior mean for a VAE."""
        z = self.autoencoder.encode(x)
        return z[0] if self.objective == "vae" else z

    def flow_nll(self, x: Tensor) -> Tensor:
        """-log p_flow(E(x)) per sample, in nats (eval mode, no grad)."""
        with self._evaluating():
            return -self.flow.log_prob(self._latents(x))

    def generate(self, u: Tensor) -> Tensor:
        """Images ``G(f^{-1}(u))`` for Gaussian-side noise ``u`` (batch, latent_dim) (eval mode, no grad)."""
        with self._evaluating():
            return self.autoencoder.decode(self.flow.inverse(u)[0])

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` images from u ~ N(0, I) (Figure 3.1(a)), shape (n, *image_shape), values in [0, 1]."""
        n = _checks.integer("n", n, low=0)
        p = next(self.flow.parameters())
        return self.generate(torch.randn(n, self.latent_dim, generator=generator, dtype=p.dtype, device=p.device))

    def interpolate(self, u_a: Tensor, u_b: Tensor, steps: int) -> Tensor:
        """Images along the segment from noise ``u_a`` to ``u_b`` (each (latent_dim,)), linear in the
        Gaussian space as Figure 3.2(f) / 3.6: shape (steps, *image_shape), the ends decode ``u_a``, ``u_b``."""
        steps = _checks.integer("steps", steps, low=2)
        for name, u in (("u_a", u_a), ("u_b", u_b)):
            _checks.dense_tensor(name, u)
            if u.shape != (self.latent_dim,):
                raise ValueError(f"{name} must have shape ({self.latent_dim},), got {tuple(u.shape)}")
        t = torch.linspace(0.0, 1.0, steps, dtype=u_a.dtype, device=u_a.device)[:, None]
        return self.generate((1 - t) * u_a + t * u_b)


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """A shuffled epoch of index batches; a trailing batch of one sample is dropped, as BatchNorm
    cannot train on it."""
    batches = list(torch.randperm(n, generator=generator).split(batch_size))
    return batches[:-1] if len(batches) > 1 and len(batches[-1]) == 1 else batches


def _check_training_args(data, epochs, batch_size, lr, flow_weight_decay, lr_decay_every, seed, desc, progress):
    _checks.dense_tensor("data", data)
    if data.dim() < 2 or data.shape[0] < 2:
        raise ValueError(f"data must hold at least 2 samples along dim 0, got shape {tuple(data.shape)}")
    _checks.integer("epochs", epochs, low=1)
    _checks.integer("batch_size", batch_size, low=2)
    _checks.real("lr", lr, low=0.0, low_open=True, finite=True)
    _checks.real("flow_weight_decay", flow_weight_decay, low=0.0, finite=True)
    if lr_decay_every is not None:
        _checks.integer("lr_decay_every", lr_decay_every, low=1)
    _checks.integer("seed", seed, low=0, high=2**64)
    if desc is not None and not isinstance(desc, str):
        raise TypeError(f"desc must be a str or None, got {type(desc).__name__}")
    _checks.boolean("progress", progress)


def train_glf(model: GLF, data: Tensor, *, epochs: int, batch_size: int = 256, lr: float = 1e-3,
              flow_weight_decay: float = 2e-5, lr_decay_every: int | None = None, seed: int = 0,
              desc: str | None = None, progress: bool = True) -> dict[str, list[float]]:
    """Train ``model`` in place on the images ``data`` (N, ...) with the settings of appendix 3.2.6.

    Adam at ``lr`` for the auto-encoder and the flow, weight decay on the
    flow's parameters only, the learning rate halved every ``lr_decay_every``
    epochs. ``seed`` fixes the shuffling and the VAE's noise, so a run from
    the same initial weights repeats exactly. Returns the per-epoch means
    (over samples) of each ``GLFLoss`` term.
    """
    if not isinstance(model, GLF):
        raise TypeError(f"model must be a GLF, got {type(model).__name__}")
    _check_training_args(data, epochs, batch_size, lr, flow_weight_decay, lr_decay_every, seed, desc, progress)
    p = next(model.flow.parameters())
    opt = torch.optim.Adam([
        {"params": model.autoencoder.parameters()},
        {"params": model.flow.parameters(), "weight_decay": flow_weight_decay},
    ], lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, lr_decay_every, gamma=0.5) if lr_decay_every else None
    shuffle = torch.Generator().manual_seed(seed)
    noise = torch.Generator(device=p.device).manual_seed(seed)
    history: dict[str, list[float]] = {}
    model.train()
    bar = tqdm(range(epochs), desc=desc or f"GLF ({model.objective})", leave=False, disable=not progress)
    for _ in bar:
        sums: dict[str, float] = {}
        seen = 0
        for idx in _batches(data.shape[0], batch_size, shuffle):
            x = data[idx.to(data.device)].to(device=p.device, dtype=p.dtype)
            loss = model(x, generator=noise)
            opt.zero_grad(set_to_none=True)
            loss.total.backward()
            opt.step()
            for key, value in vars(loss).items():
                if value is not None:
                    sums[key] = sums.get(key, 0.0) + value.item() * len(idx)
            seen += len(idx)
        for key, value in sums.items():
            history.setdefault(key, []).append(value / seen)
        if sched is not None:
            sched.step()
        bar.set_postfix(loss=f"{history['total'][-1]:.3f}")
    return history
