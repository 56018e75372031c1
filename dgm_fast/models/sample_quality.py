"""Sample-quality metrics for the Generative Latent Flow demo (dissertation §3.2.4).

* ``frechet_distance``: the FID of Table 3.1 [Heusel et al., 2017]. No Inception
  weights are available offline, so the features come from ``FeatureNet``, a small
  classifier trained on the same data (the usual practice for MNIST-like data).
* ``prd`` / ``prd_f_beta``: precision and recall for distributions of Table 3.3
  [Sajjadi et al., 2018], summarised as ``(F_8, F_1/8)`` = (recall, precision).
* ``nearest_neighbours``: the L2 nearest training images of Figure 3.3.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from sklearn.cluster import MiniBatchKMeans
from sklearn.neighbors import NearestNeighbors
from torch import Tensor, nn


class FeatureNet(nn.Module):
    """3x3 conv + 2x2 max-pool stages down to <= 7 px, a 3x3 conv, a 4x4 adaptive average
    pool and a linear feature layer, then a linear head.

    Works for any (C, H, W) with H, W >= 2; the feature space is the penultimate
    layer's pre-activation output (dimension ``feature_dim``).
    """

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int = 10, feature_dim: int = 64):
        super().__init__()
        self.image_shape = tuple(image_shape)
        channels, size = self.image_shape[0], min(self.image_shape[1:])
        stages: list[nn.Module] = []
        while not stages or size > 7:  # 8 -> 4, 16 -> 4, 28 -> 7, 32 -> 4 px
            stages += [nn.Conv2d(channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2)]
            channels, size = 32, size // 2
        self.body = nn.Sequential(
            *stages,
            *(nn.Conv2d(channels, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU()),
            *(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * 16, feature_dim)),
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(feature_dim, num_classes))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.body(images))

    @torch.no_grad()
    def features(self, images: Tensor, batch_size: int = 512) -> np.ndarray:
        """(N, feature_dim) float64 penultimate-layer features, in eval mode."""
        return self._batched(self.body, images, batch_size).double().numpy()

    @torch.no_grad()
    def accuracy(self, images: Tensor, labels: Tensor, batch_size: int = 512) -> float:
        logits = self._batched(self, images, batch_size)
        return (logits.argmax(1) == _check_labels(labels, len(logits))).double().mean().item()

    def _batched(self, fn: nn.Module, images: Tensor, batch_size: int) -> Tensor:
        images = _check_images(images, "images", self.image_shape)
        self.eval()
        device = next(self.parameters()).device
        return torch.cat([fn(chunk.to(device)).cpu() for chunk in images.split(batch_size)])


def train_feature_classifier(
    images: Tensor,
    labels: Tensor,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    feature_dim: int = 64,
    seed: int = 0,
) -> FeatureNet:
    """Fit a ``FeatureNet`` with Adam and cross-entropy; deterministic under ``seed``.

    The global torch RNG is left untouched. Returns the network in eval mode.
    """
    images = _check_images(images, "images")
    labels = _check_labels(labels, len(images))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FeatureNet(images.shape[1:], int(labels.max()) + 1, feature_dim)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        for _ in range(epochs):
            for idx in torch.randperm(len(images)).split(batch_size):
                loss = F.cross_entropy(net(images[idx]), labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    return net.eval()


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray, *, eps: float = 1e-6) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2}) of Gaussians fitted to two feature sets."""
    a, b = _check_feature_pair(feats_a, feats_b)
    cov_a, cov_b = (np.atleast_2d(np.cov(x, rowvar=False)) for x in (a, b))
    diff = a.mean(0) - b.mean(0)
    trace_sqrt = np.trace(_sqrtm_product(cov_a, cov_b, eps))
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt)


def _sqrtm_product(cov_a: np.ndarray, cov_b: np.ndarray, eps: float) -> np.ndarray:
    """(S_a S_b)^{1/2}, retrying with eps*I on both factors when sqrtm is not finite
    (near-singular covariances); negligible imaginary parts from round-off are dropped."""
    root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():
        offset = eps * np.eye(len(cov_a))
        root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    if np.iscomplexobj(root):
        imag = np.abs(root.imag).max()
        if imag > 1e-3 * max(1.0, np.abs(root.real).max()):
            raise ValueError(f"sqrtm(S_a S_b) has a non-negligible imaginary part ({imag:.3g})")
        root = root.real
    return root


def prd_curve(ref_hist: np.ndarray, eval_hist: np.ndarray, *, num_angles: int = 1001) -> tuple[np.ndarray, np.ndarray]:
    """PRD curve of a reference P and evaluated Q histogram (Sajjadi et al., 2018, Thm. 2).

    alpha(lambda) = sum min(lambda P, Q) (precision), beta(lambda) = sum min(P, Q / lambda)
    (recall), for lambda = tan(theta) over ``num_angles`` angles in (0, pi/2).
    """
    p, q = np.asarray(ref_hist, np.float64), np.asarray(eval_hist, np.float64)
    if p.ndim != 1 or p.shape != q.shape:
        raise ValueError(f"ref_hist and eval_hist must be 1-D of one length, got {p.shape} and {q.shape}")
    slopes = np.tan(np.linspace(1e-10, np.pi / 2 - 1e-10, num_angles))[:, None]
    return np.minimum(slopes * p, q).sum(1), np.minimum(p, q / slopes).sum(1)


def prd(
    feats_ref: np.ndarray,
    feats_eval: np.ndarray,
    *,
    num_clusters: int = 20,
    num_angles: int = 1001,
    num_runs: int = 10,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) PRD curves of ``feats_eval`` against ``feats_ref``, averaged over runs.

    Each run clusters the union of both sets with k-means and compares the two
    histograms of cluster assignments (Sajjadi et al., 2018, §4). Use equally
    many points in both sets, as the paper recommends.
    """
    ref, ev = _check_feature_pair(feats_ref, feats_eval, names=("feats_ref", "feats_eval"))
    curves = [prd_curve(*_cluster_histograms(ref, ev, num_clusters, seed + run), num_angles=num_angles)
              for run in range(num_runs)]
    precision, recall = np.mean(curves, axis=0)
    return precision, recall


def _cluster_histograms(
    ref: np.ndarray, ev: np.ndarray, num_clusters: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Histograms of ref's and ev's assignments to k-means clusters of their union."""
    kmeans = MiniBatchKMeans(n_clusters=num_clusters, n_init=10, random_state=seed)
    assigned = kmeans.fit_predict(np.concatenate([ref, ev]))
    ref_labels, eval_labels = assigned[: len(ref)], assigned[len(ref):]
    return (np.bincount(x, minlength=num_clusters) / len(x) for x in (ref_labels, eval_labels))


def f_beta_scores(precision: np.ndarray, recall: np.ndarray, *, beta: float = 8.0) -> tuple[float, float]:
    """(F_beta, F_1/beta), each maximised over the PRD curve (Sajjadi et al., 2018, §3).

    F_beta with beta = 8 weighs recall 8x more than precision, so ``F_8`` is the
    recall-like and ``F_1/8`` the precision-like number of Table 3.3.
    """
    p, r = np.asarray(precision, np.float64), np.asarray(recall, np.float64)

    def best(b: float) -> float:
        denom = b**2 * p + r
        f = np.divide((1 + b**2) * p * r, denom, out=np.zeros_like(denom), where=denom > 0)
        return float(f.max())

    return best(beta), best(1.0 / beta)


def prd_f_beta(
    feats_ref: np.ndarray, feats_eval: np.ndarray, *, beta: float = 8.0, **prd_kwargs
) -> tuple[float, float]:
    """Table 3.3's entry ``(F_8, F_1/8)`` = (recall, precision) of ``feats_eval`` w.r.t. ``feats_ref``."""
    return f_beta_scores(*prd(feats_ref, feats_eval, **prd_kwargs), beta=beta)


def nearest_neighbours(samples: Tensor, train: Tensor, k: int = 5) -> np.ndarray:
    """(n, k) indices into ``train`` of each sample's k nearest images in L2 pixel distance,
    nearest first (Figure 3.3)."""
    samples = _check_images(samples, "samples")
    train = _check_images(train, "train", samples.shape[1:])
    if not 1 <= k <= len(train):
        raise ValueError(f"k must be in [1, len(train)={len(train)}], got {k}")
    index = NearestNeighbors(n_neighbors=k).fit(train.flatten(1).double().numpy())
    return index.kneighbors(samples.flatten(1).double().numpy(), return_distance=False)


def _check_images(images: Tensor, name: str, shape: tuple[int, ...] | None = None) -> Tensor:
    images = torch.as_tensor(images).detach().cpu()
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"{name} must be a floating (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
    if shape is not None and tuple(images.shape[1:]) != tuple(shape):
        raise ValueError(f"{name} must have (C, H, W) = {tuple(shape)}, got {tuple(images.shape[1:])}")
    return images.float()


def _check_labels(labels: Tensor, n: int) -> Tensor:
    labels = torch.as_tensor(labels).cpu()
    if labels.shape != (n,) or labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor of shape ({n},), got {labels.dtype} {tuple(labels.shape)}")
    return labels.long()


def _check_feature_pair(
    a: np.ndarray, b: np.ndarray, names: tuple[str, str] = ("feats_a", "feats_b")
) -> tuple[np.ndarray, np.ndarray]:
    """Both as finite float64 (n, d) arrays with n >= 2 and one d; ValueError names the culprit."""
    arrays = []
    for x, name in zip((a, b), names):
        x = x.detach().cpu().numpy() if isinstance(x, Tensor) else x
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or len(x) < 2 or not np.isfinite(x).all():
            raise ValueError(f"{name} must be a finite 2-D (n >= 2, features) array, got shape {x.shape}")
        arrays.append(x)
    if arrays[0].shape[1] != arrays[1].shape[1]:
        raise ValueError(f"{names[1]} has {arrays[1].shape[1]} features, {names[0]} has {arrays[0].shape[1]}")
    return arrays[0], arrays[1]
