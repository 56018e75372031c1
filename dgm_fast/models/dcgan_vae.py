"""The DCGAN VAE of Table 4.6 with the 256-way categorical decoder, the model Likelihood Regret
(§4.2) is measured on.

Encoder: three 4x4 stride-2 convolutions (nf, 2nf, 4nf channels, BatchNorm,
ReLU) and a 4x4 convolution to 2 nz channels (mean and log-variance).
Decoder: 4x4 transposed convolutions from nz x 1 x 1 to 4nf x 4 x 4, 2nf x 8 x
8, nf x 16 x 16 (BatchNorm, ReLU), and a last 4x4 stride-2 transposed
convolution to nc * 256 logits at 32 x 32, channel ``c * 256 + v`` the logit
of value ``v`` of image channel ``c``. nz = 100; nf = 32, nc = 1 for
Fashion-MNIST-like data and nf = 64, nc = 3 for CIFAR-10-like data. Images are
32 x 32 in [0, 1]; the decoder's target is ``round(255 x)``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from dgm_fast import _checks
from dgm_fast.vae import (
    categorical_pixel_nll,
    categorical_pixel_nll_deconv,
    categorical_target,
    gaussian_kl,
    reparameterize,
)
from dgm_fast.vae.optimize import per_image_sequential, stacked_parameters
from dgm_fast.vae.reference import N_LEVELS

IMAGE_SIZE = 32


class DCGANEncoder(nn.Module):
    """x (B, nc, 32, 32) -> (mu, logvar) (B, nz)."""

    def __init__(self, nc: int, nf: int, nz: int):
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in ((nc, nf), (nf, 2 * nf), (2 * nf, 4 * nf)):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]
        self.body = nn.Sequential(*layers, nn.Conv2d(4 * nf, 2 * nz, 4, 1, 0))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.body(x).flatten(1).chunk(2, dim=1)
        return mu, logvar

    def per_image(self, batch: int) -> tuple[dict[str, Tensor], Callable]:
        """LR_E's ``batch`` copies of this encoder (``dgm_fast.vae.optimize.per_image_encoder``), in eval mode,
        each convolution one batched GEMM over the images (``per_image_sequential``)."""
        params, run = stacked_parameters(self, batch), per_image_sequential(self.body, "body.")

        def encode(p: dict[str, Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
            mu, logvar = run(p, x).flatten(1).chunk(2, dim=1)
            return mu, logvar

        return params, encode


class DCGANDecoder(nn.Module):
    """z (B, nz) -> logits (B, nc * 256, 32, 32); ``hidden(z)`` is the last layer's input."""

    def __init__(self, nc: int, nf: int, nz: int):
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out, stride, pad in ((nz, 4 * nf, 1, 0), (4 * nf, 2 * nf, 2, 1), (2 * nf, nf, 2, 1)):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride, pad, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(True)]
        self.body = nn.Sequential(*layers)
        self.last = nn.ConvTranspose2d(nf, nc * N_LEVELS, 4, 2, 1)

    def hidden(self, z: Tensor) -> Tensor:
        return self.body(z.reshape(*z.shape, 1, 1))

    def forward(self, z: Tensor) -> Tensor:
        return self.last(self.hidden(z))


class DCGANVAE(nn.Module):
    """The VAE of Table 4.6: ``encoder(x) -> (mu, logvar)``, ``decoder(z) -> logits``."""

    likelihood = "categorical"

    def __init__(self, nc: int = 3, nf: int = 64, nz: int = 100):
        super().__init__()
        self.nc = _checks.integer("nc", nc, low=1)
        self.nf = _checks.integer("nf", nf, low=1)
        self.nz = _checks.integer("nz", nz, low=1)
        self.encoder = DCGANEncoder(self.nc, self.nf, self.nz)
        self.decoder = DCGANDecoder(self.nc, self.nf, self.nz)

    def check_images(self, x: Tensor, name: str = "x") -> Tensor:
        _checks.dense_tensor(name, x)
        expected = (self.nc, IMAGE_SIZE, IMAGE_SIZE)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"{name} must be images (batch, {self.nc}, {IMAGE_SIZE}, {IMAGE_SIZE}) in [0, 1], "
                             f"got shape {tuple(x.shape)}")
        return x

    def decoded_nll(self, z: Tensor, target: Tensor) -> Tensor:
        """``-log p(target | z)`` per row, the last layer and the likelihood a few rows at a time
        (``categorical_pixel_nll_deconv``): the full logits (3 MB a row for nc = 3) never exist."""
        last = self.decoder.last
        return categorical_pixel_nll_deconv(self.decoder.hidden(z), last.weight, last.bias, target)

    def loss(self, x: Tensor, *, beta: float = 1.0, seed: int = 0, index: Tensor | None = None,
             draw: int = 0) -> Tensor:
        """The negative ELBO (2.1) per image, ``beta``-weighted KL (β-VAE), one Philox sample."""
        mu, logvar = self.encoder(self.check_images(x))
        z = reparameterize(mu, logvar, seed, index, draw)
        return categorical_pixel_nll(self.decoder(z), categorical_target(x)) + beta * gaussian_kl(mu, logvar)
