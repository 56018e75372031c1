"""The auto-encoders of Generative Latent Flow (dissertation §3.2): InfoGAN's network and a small MLP.

Both map images in [0, 1] to latents and back. A deterministic one is GLF's
``E_phi`` / ``G_theta`` (eq. 3.2, 3.3); ``variational=True`` doubles the
encoder's last layer to return the posterior's mean and log-variance, the
VAE of eq. (3.1) (appendix 3.2.6: "the final FC layer of the encoder will
have doubled output size").
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from dgm_fast import _checks

INFOGAN_IMAGE_SIZES = (28, 32, 64)  # MNIST / Fashion (M = 7), CIFAR-10 (M = 8), CelebA (M = 16)


class _AutoEncoder(nn.Module):
    """What both auto-encoders share: ``encode`` splits the variational head, ``decode`` reshapes."""

    latent_dim: int
    variational: bool
    image_shape: tuple[int, ...]
    encoder: nn.Module
    decoder: nn.Module

    def _check_images(self, x) -> Tensor:
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """``z`` of shape (batch, latent_dim); ``(mu, logvar)`` when variational."""
        h = self.encoder(self._check_images(x))
        return tuple(h.chunk(2, dim=1)) if self.variational else h

    def decode(self, z: Tensor) -> Tensor:
        """Images in [0, 1] of shape (batch, *image_shape)."""
        _checks.dense_tensor("z", z)
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape (batch, {self.latent_dim}), got {tuple(z.shape)}")
        return self.decoder(z).reshape(z.shape[0], *self.image_shape)


class InfoGANAutoEncoder(_AutoEncoder):
    """Table 3.6: InfoGAN's generator as the decoder and its mirror image as the encoder.

    Every (de)convolution is 4x4 with stride 2 and padding 1, so the spatial
    size halves (doubles) per layer and ``M = image_size / 4``.
    """

    def __init__(self, image_size: int, channels: int = 1, latent_dim: int = 20, variational: bool = False):
        super().__init__()
        image_size = _checks.integer("image_size", image_size)
        if image_size not in INFOGAN_IMAGE_SIZES:
            raise ValueError(f"image_size must be one of {INFOGAN_IMAGE_SIZES}, got {image_size}")
        channels = _checks.integer("channels", channels, low=1)
        self.latent_dim = _checks.integer("latent_dim", latent_dim, low=1)
        self.variational = _checks.boolean("variational", variational)
        self.image_shape = (channels, image_size, image_size)
        m = image_size // 4
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, 64, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(64, 128, 4, 2, 1), nn.BatchNorm2d(128), nn.ReLU(),
            nn.Flatten(), nn.Linear(128 * m * m, 1024), nn.BatchNorm1d(1024), nn.ReLU(),
            nn.Linear(1024, 2 * latent_dim if variational else latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 1024), nn.BatchNorm1d(1024), nn.ReLU(),
            nn.Linear(1024, 128 * m * m), nn.BatchNorm1d(128 * m * m), nn.ReLU(),
            nn.Unflatten(1, (128, m, m)),
            nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.BatchNorm2d(64), nn.ReLU(),
            # Table 3.6's last row reads "Deconv128"; the layer must output the image's channels.
            nn.ConvTranspose2d(64, channels, 4, 2, 1), nn.Sigmoid(),
        )

    def _check_images(self, x) -> Tensor:
        _checks.dense_tensor("x", x)
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"x must have shape (batch, {', '.join(map(str, self.image_shape))}), "
                             f"got {tuple(x.shape)}")
        return x


class MLPAutoEncoder(_AutoEncoder):
    """Fully connected ReLU auto-encoder for small images (e.g. 8x8 digits), sigmoid output.

    The encoder flattens any (batch, ...) input of ``input_dim`` values;
    ``decode`` returns (batch, *image_shape), ``image_shape`` defaulting to
    ``(input_dim,)``. The decoder's hidden widths mirror the encoder's.
    """

    def __init__(self, input_dim: int, latent_dim: int, hidden: tuple[int, ...] = (256, 256),
                 variational: bool = False, *, image_shape: tuple[int, ...] | None = None):
        super().__init__()
        self.input_dim = _checks.integer("input_dim", input_dim, low=1)
        self.latent_dim = _checks.integer("latent_dim", latent_dim, low=1)
        self.variational = _checks.boolean("variational", variational)
        if not isinstance(hidden, (tuple, list)):
            raise TypeError(f"hidden must be a tuple of ints, got {type(hidden).__name__}")
        hidden = tuple(_checks.integer("hidden", h, low=1) for h in hidden)
        self.image_shape = self._shape(image_shape, input_dim)
        out = 2 * latent_dim if variational else latent_dim
        self.encoder = nn.Sequential(nn.Flatten(), *self._mlp((input_dim, *hidden, out)))
        self.decoder = nn.Sequential(*self._mlp((latent_dim, *hidden[::-1], input_dim)), nn.Sigmoid())

    @staticmethod
    def _shape(image_shape, input_dim: int) -> tuple[int, ...]:
        if image_shape is None:
            return (input_dim,)
        if not isinstance(image_shape, (tuple, list)):
            raise TypeError(f"image_shape must be a tuple of ints, got {type(image_shape).__name__}")
        shape = tuple(_checks.integer("image_shape", s, low=1) for s in image_shape)
        if math.prod(shape) != input_dim:
            raise ValueError(f"image_shape {shape} must hold input_dim = {input_dim} values")
        return shape

    @staticmethod
    def _mlp(widths: tuple[int, ...]) -> list[nn.Module]:
        """Linear layers with ReLU between them (none after the last)."""
        layers: list[nn.Module] = []
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return layers[:-1]

    def _check_images(self, x) -> Tensor:
        _checks.dense_tensor("x", x)
        if x.dim() < 2 or math.prod(x.shape[1:]) != self.input_dim:
            raise ValueError(f"x must have shape (batch, ...) with {self.input_dim} values per sample, "
                             f"got {tuple(x.shape)}")
        return x
