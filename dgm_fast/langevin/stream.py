"""A noise stream for a user's own Langevin loop: every step gets fresh noise."""

from __future__ import annotations

from torch import Tensor

from dgm_fast import _checks
from dgm_fast.langevin.functional import langevin_step, langevin_step_
from dgm_fast.philox import draw_seed


def stream_stride(numel: int) -> int:
    """Stream indices one step of ``numel`` elements consumes: rounded up to a multiple of 4,
    so each step starts on a Philox group (the kernels' aligned fast path)."""
    return -(-numel // 4) * 4


class NoiseStream:
    """The counter-based noise of one ``seed``, consumed step by step.

    ``stream.step(x, grad, step_size, noise_scale)`` is ``langevin_step`` with
    this stream's seed at its current offset, then moves the offset past the
    noise it used: a loop of ``step`` calls never reuses noise, and replays
    exactly from the same seed. ``seed=None`` draws one from torch's generator.
    """

    def __init__(self, seed: int | None = None, offset: int = 0):
        self.seed = draw_seed() if seed is None else _checks.integer("seed", seed, low=0, high=1 << 64)
        self.offset = _checks.integer("offset", offset, low=0, high=1 << 62)

    def step(self, x: Tensor, grad: Tensor, step_size: float, noise_scale: float | None = None, **kw) -> Tensor:
        """``langevin_step(x, grad, step_size, noise_scale, **kw)`` on this stream's next noise."""
        out = langevin_step(x, grad, step_size, noise_scale, seed=self.seed, offset=self.offset, **kw)
        self.offset += stream_stride(x.numel())
        return out

    def step_(self, x: Tensor, grad: Tensor, step_size: float, noise_scale: float | None = None, **kw) -> Tensor:
        """In-place ``step``."""
        langevin_step_(x, grad, step_size, noise_scale, seed=self.seed, offset=self.offset, **kw)
        self.offset += stream_stride(x.numel())
        return x

    def __repr__(self) -> str:
        return f"NoiseStream(seed={self.seed}, offset={self.offset})"
