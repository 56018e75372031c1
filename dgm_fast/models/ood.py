"""Out-of-distribution scores of a trained VAE (§4.2): Likelihood Regret (4.4) by LR_Z and LR_E
(Algorithm 2), and the baselines of Table 4.1 that need no downloaded network: likelihood, input
complexity IC(png) and latent Mahalanobis distance (LMD); AUROC / AUPRC / FPR80 by scikit-learn.

Every score is "higher = more OOD". The model is a ``DCGANVAE``-like module:
``encoder(x) -> (mu, logvar)``, ``decoded_nll(z, target)`` (target: the 8-bit
images ``categorical_target(x)``) and ``loss(x, beta=, seed=, index=, draw=)``. Noise is keyed by
(seed, image index, draw) (``dgm_fast.vae.reparameterize``): pass each
image's global index as ``index`` and an image's scores do not depend on its
batch or shard. Draws ``[0, K)`` estimate the likelihood before, ``[K, K +
steps)`` drive the optimisation, ``[K + steps, 2K + steps)`` the likelihood
after.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from torch import Tensor, nn
from tqdm.auto import tqdm

from dgm_fast import _checks
from dgm_fast.vae import (
    categorical_target,
    frozen,
    importance_weighted_nll,
    optimize_encoder,
    optimize_posterior,
)

METHODS = ("LR_Z", "LR_E")
# Algorithm 2's optimisers: LR_Z 300 Adam steps at 1e-4 (appendix 4.2.6); LR_E the official code's Adam
# (lr 2e-4, weight decay 5e-5) for 100 steps (the appendix says lr 1e-4)
DEFAULTS = {"LR_Z": {"steps": 300, "lr": 1e-4, "weight_decay": 0.0},
            "LR_E": {"steps": 100, "lr": 2e-4, "weight_decay": 5e-5}}
TPR_LEVEL = 0.8  # FPR80: the false positive rate at 80% true positive rate


def train_vae(model: nn.Module, images: Tensor, epochs: int, batch_size: int = 64, lr: float = 5e-4, *,
              beta: float = 1.0, seed: int = 0, progress: bool = False) -> list[float]:
    """Train ``model`` by Adam on the ``beta``-weighted negative ELBO (2.1) (appendix 4.2.6: constant lr
    5e-4, batch 64); returns the mean loss (nats per image) of each epoch. Minibatches are a seeded
    permutation each epoch; image ``i`` of epoch ``e`` draws noise (seed, i, e)."""
    model.check_images(images, "images")
    epochs = _checks.integer("epochs", epochs, low=0)
    batch_size = _checks.integer("batch_size", batch_size, low=1)
    lr = _checks.real("lr", lr, low=0.0, low_open=True, finite=True)
    gen = torch.Generator().manual_seed(_checks.integer("seed", seed, low=0, high=2**63))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    bar = tqdm(total=epochs * math.ceil(len(images) / batch_size), desc="train VAE", disable=not progress)
    for epoch in range(epochs):
        order, total = torch.randperm(len(images), generator=gen).to(images.device), 0.0
        for start in range(0, len(images), batch_size):
            idx = order[start:start + batch_size]
            loss = model.loss(images[idx], beta=beta, seed=seed, index=idx, draw=epoch).sum()
            opt.zero_grad(set_to_none=True)
            (loss / len(idx)).backward()
            opt.step()
            total += loss.item()
            bar.update()
        losses.append(total / len(images))
        bar.set_postfix(loss=f"{losses[-1]:.1f}")
    bar.close()
    return losses


def _index(index: Tensor | None, x: Tensor) -> Tensor:
    if index is None:
        return torch.arange(len(x), device=x.device)
    _checks.dense_tensor("index", index, frozenset((torch.int64,)))
    if tuple(index.shape) != (len(x),):
        raise ValueError(f"index must have shape ({len(x)},) (one global image index per image), got "
                         f"{tuple(index.shape)}")
    return index


def iwae_nll(model: nn.Module, x: Tensor, mu: Tensor, logvar: Tensor, n_samples: int = 1000, *, chunk: int = 200,
             seed: int = 0, index: Tensor | None = None, draw: int = 0) -> Tensor:
    """``-L_K(x; theta*, tau)`` (2.2) per image for the posterior ``tau = (mu, logvar)``, K = ``n_samples``
    in chunks through ``model.decoded_nll`` (the logits never exist for all K at once)."""
    target = categorical_target(x)
    with frozen(model):
        return importance_weighted_nll(lambda z, rows: model.decoded_nll(z, target[rows]), mu, logvar, n_samples,
                                       chunk=chunk, seed=seed, index=_index(index, x), draw=draw)


def _latent(z: Tensor) -> Tensor:
    """The optimisers' "decoder" when the likelihood decodes (``model.decoded_nll``)."""
    return z


def encode(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``tau(x, phi*) = (mu, logvar)`` of the trained encoder, BatchNorm in eval mode."""
    with frozen(model), torch.no_grad():
        return model.encoder(x)


def _options(method: str, steps: int | None, lr: float | None, weight_decay: float | None) -> tuple[int, float, float]:
    """``(steps, lr, weight_decay)`` of ``method``, ``DEFAULTS[method]`` where None, checked."""
    if method not in DEFAULTS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    defaults = DEFAULTS[method]
    steps = _checks.integer("steps", defaults["steps"] if steps is None else steps, low=0)
    lr = _checks.real("lr", defaults["lr"] if lr is None else lr, low=0.0, low_open=True, finite=True)
    weight_decay = _checks.real("weight_decay", defaults["weight_decay"] if weight_decay is None else weight_decay,
                                low=0.0, finite=True)
    if method == "LR_Z" and weight_decay:
        raise ValueError(f"weight_decay must be 0 for LR_Z (Adam on the posterior only), got {weight_decay}")
    return steps, lr, weight_decay


def fit_posterior(model: nn.Module, x: Tensor, *, method: str = "LR_Z", steps: int | None = None,
                  lr: float | None = None, weight_decay: float | None = None, beta: float = 1.0, seed: int = 0,
                  index: Tensor | None = None, draw: int = 0) -> tuple[Tensor, Tensor]:
    """``tau_hat(x)`` (4.3) per image: "LR_Z" optimises the posterior (mu, logvar) from the encoder's
    (``optimize_posterior``), "LR_E" a per-image copy of the encoder (``optimize_encoder``), ``steps``
    Adam steps of the negative ELBO with the decoder frozen (draws [draw, draw + steps); defaults
    ``DEFAULTS[method]``). Returns the optimised (mu, logvar)."""
    model.check_images(x)
    steps, lr, weight_decay = _options(method, steps, lr, weight_decay)
    posterior = encode(model, x) if method == "LR_Z" else None  # LR_E starts from the encoder itself
    return _fit(model, x, posterior, method, steps, lr, weight_decay, beta, seed, _index(index, x), draw)


def _fit(model, x, posterior, method, steps, lr, weight_decay, beta, seed, index, draw) -> tuple[Tensor, Tensor]:
    """``fit_posterior`` on checked arguments; LR_Z starts from the encoder's ``posterior`` (mu, logvar)."""
    # the likelihood through decoded_nll: the DCGAN VAE's last layer fused with it runs a step 1.6x
    # faster than the decoder then the likelihood (its logits never exist at once)
    fit = {"beta": beta, "seed": seed, "index": index, "draw": draw,
           "likelihood": lambda z, images: model.decoded_nll(z, categorical_target(images))}
    with frozen(model):
        if method == "LR_Z":
            return optimize_posterior(_latent, x, *posterior, steps, lr, **fit)
        return optimize_encoder(model.encoder, _latent, x, steps, lr, weight_decay=weight_decay, **fit)


def likelihood_regret(model: nn.Module, x: Tensor, *, method: str = "LR_Z", n_samples: int = 1000,
                      steps: int | None = None, lr: float | None = None, weight_decay: float | None = None,
                      beta: float = 1.0, chunk: int = 200, seed: int = 0, index: Tensor | None = None,
                      nll_before: Tensor | None = None) -> dict[str, Tensor]:
    """Likelihood Regret (4.4) per image of ``x`` (B, nc, 32, 32) in [0, 1] (Algorithm 2).

    ``nll_before = -L_K(x; theta*, phi*)`` (K = ``n_samples``, draws [0, K); pass it to reuse one
    estimate for both methods); ``tau_hat(x)`` by ``fit_posterior`` (``method``, ``steps``, ``lr``,
    ``weight_decay``, ``beta``; draws [K, K + steps)); ``nll_after = -L_K(x; theta*, tau_hat(x))``
    (draws [K + steps, 2K + steps)). Returns ``{"nll_before", "nll_after", "regret"}``,
    ``regret = nll_before - nll_after``.
    """
    model.check_images(x)
    n_samples = _checks.integer("n_samples", n_samples, low=1)
    steps, lr, weight_decay = _options(method, steps, lr, weight_decay)  # checked before the long work
    index = _index(index, x)
    posterior = encode(model, x)
    if nll_before is None:
        nll_before = iwae_nll(model, x, *posterior, n_samples, chunk=chunk, seed=seed, index=index)
    mu, logvar = _fit(model, x, posterior, method, steps, lr, weight_decay, beta, seed, index, n_samples)
    nll_after = iwae_nll(model, x, mu, logvar, n_samples, chunk=chunk, seed=seed, index=index,
                         draw=n_samples + steps)
    return {"nll_before": nll_before, "nll_after": nll_after, "regret": nll_before - nll_after}


def png_bits(x: Tensor) -> Tensor:
    """The length in bits of each image (B, nc, H, W) in [0, 1] as an 8-bit PNG at maximum compression:
    the complexity L(x) of input complexity (Serrà et al., 2019)."""
    from PIL import Image  # a dependency of matplotlib

    pixels = categorical_target(x).permute(0, 2, 3, 1).cpu().numpy()
    lengths = []
    for img in pixels:
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="PNG", compress_level=9)
        lengths.append(8 * buf.getbuffer().nbytes)
    return torch.tensor(lengths, dtype=torch.float64)


def input_complexity(nll: Tensor, x: Tensor) -> Tensor:
    """IC(png) (Serrà et al.): ``S(x) = -log2 p(x) - L(x)``, the NLL in bits minus the PNG length in bits."""
    return nll.double().cpu() / math.log(2) - png_bits(x)


class LatentMahalanobis:
    """LMD (Bulusu et al., appendix 4.2.6): ``alpha * D_M(E(x)) + beta * l(x, D(E(x)))`` with E(x) the
    posterior mean, D_M the Mahalanobis distance to the training codes' mean and covariance, l the
    decoder's NLL of x at z = E(x) (its reconstruction loss), alpha and beta the reciprocal standard
    deviations of the two terms on validation images."""

    def __init__(self, model: nn.Module, train: Tensor, validation: Tensor, batch_size: int = 256):
        self.model, self.batch_size = model, batch_size
        if len(model.check_images(train, "train")) < 2:
            raise ValueError("train must hold at least 2 images (their codes' covariance is the metric)")
        codes = self._codes(train).double()
        self.mean = codes.mean(0)
        cov = torch.cov(codes.T).reshape(codes.shape[1], codes.shape[1])
        ridge = 1e-6 * cov.diagonal().mean().clamp_min(1e-12)  # keeps the covariance invertible
        self.chol = torch.linalg.cholesky(cov + ridge * torch.eye(len(cov), dtype=cov.dtype, device=cov.device))
        if len(model.check_images(validation, "validation")) < 2:
            raise ValueError("validation must hold at least 2 images (their spread scales the two terms)")
        dist, rec = self.terms(validation)
        self.alpha, self.beta = 1.0 / dist.std().clamp_min(1e-12), 1.0 / rec.std().clamp_min(1e-12)

    def _codes(self, x: Tensor) -> Tensor:
        return torch.cat([encode(self.model, x[i:i + self.batch_size])[0] for i in range(0, len(x), self.batch_size)])

    def terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(D_M(E(x)), l(x, D(E(x))))`` per image, float64."""
        mu = self._codes(x)
        white = torch.linalg.solve_triangular(self.chol, (mu.double() - self.mean).T, upper=False)
        with frozen(self.model), torch.no_grad():
            rec = self.model.decoded_nll(mu, categorical_target(x))
        return white.norm(dim=0).cpu(), rec.double().cpu()

    def score(self, x: Tensor) -> Tensor:
        dist, rec = self.terms(x)
        return self.alpha * dist + self.beta * rec


def _labelled(in_scores, ood_scores) -> tuple[np.ndarray, np.ndarray]:
    """Labels (OOD = 1) and scores, checked: both sets non-empty, scores finite."""
    scores = [np.asarray(s, dtype=np.float64).reshape(-1) for s in (in_scores, ood_scores)]
    for name, s in zip(("in_scores", "ood_scores"), scores):
        if s.size == 0:
            raise ValueError(f"{name} must not be empty")
        if not np.isfinite(s).all():
            raise ValueError(f"{name} must be finite, got {int((~np.isfinite(s)).sum())} non-finite scores")
    labels = np.concatenate([np.zeros(scores[0].size), np.ones(scores[1].size)])
    return labels, np.concatenate(scores)


def roc(in_scores, ood_scores) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` of thresholding the score, OOD the positive class (higher = more OOD)."""
    fpr, tpr, _ = roc_curve(*_labelled(in_scores, ood_scores), drop_intermediate=False)
    return fpr, tpr


def ood_metrics(in_scores, ood_scores) -> dict[str, float]:
    """AUROC (higher better), AUPRC (higher better, OOD positive) and FPR80 (lower better) of a score
    where higher means more OOD (Tables 4.1, 4.7, 4.8)."""
    labels, scores = _labelled(in_scores, ood_scores)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return {"AUROC": float(roc_auc_score(labels, scores)), "AUPRC": float(average_precision_score(labels, scores)),
            "FPR80": float(fpr[np.searchsorted(tpr, TPR_LEVEL, side="left")])}
