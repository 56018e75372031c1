"""``CouplingFlow``: the latent flow of Generative Latent Flow (dissertation §3.2, Figure 3.1(b)).

A block splits ``z = (z1, z2)`` at ``dim // 2`` and applies two affine
coupling layers (§2.2.3): the first maps ``z2`` with a scale and shift
computed from ``z1``, the second maps ``z1`` from the new ``z2``, so both
halves change; then a fixed random permutation mixes the coordinates. Each
coupling's subnet is an MLP ``Linear -> act -> ... -> Linear`` whose output
holds ``s`` and ``t``. ``forward`` maps data to the N(0, I) side with the
log-determinant of its Jacobian, the change of variables of eq. (2.7).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dgm_fast import _checks
from dgm_fast.coupling.functional import affine_coupling
from dgm_fast.coupling.op import FLOW, saved_size
from dgm_fast.coupling.reference import ACTIVATIONS, SCALES

_LOG_2PI = math.log(2 * math.pi)
FUSED_MAX_DIM = 128  # the whole flow as one op up to here (weights stay in cache); per-coupling ops above
# recompute=None keeps the subnets' activations up to this size, measured at hidden 64 (46 multiply-adds
# to recompute a kept value); a subnet costlier to rerun per kept value gets a proportionally larger budget
KEEP_ACTIVATIONS_BYTES = 4 << 20
KEEP_MACS_PER_VALUE = 46


def _subnet(d_in: int, d_out: int, hidden: int, n_hidden_layers: int) -> nn.ModuleList:
    """The Linear layers of ``Linear -> act -> ... -> Linear`` (``n_hidden_layers`` activations),
    the last one to ``(s, t)`` zero-initialised so that the flow starts as the identity (as Glow)."""
    widths = [d_in] + [hidden] * n_hidden_layers + [2 * d_out]
    layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
    nn.init.zeros_(layers[-1].weight)
    nn.init.zeros_(layers[-1].bias)
    return layers


def _parameter(module: nn.Module, name: str) -> Tensor | None:
    """``getattr(module, name)`` for a registered parameter, without ``nn.Module.__getattr__`` (about
    1 us each: 48 of them were 8% of a flow's forward at GLF's size). A computed attribute (e.g. a
    ``torch.nn.utils.parametrize``d weight) is not in ``_parameters`` and takes ``getattr``."""
    value = module._parameters.get(name)
    return value if value is not None else getattr(module, name)


class CouplingFlow(nn.Module):
    """A normalizing flow of ``n_blocks`` blocks of two affine couplings and a permutation.

    ``forward(z) -> (u, logdet)`` maps data to the Gaussian side, ``inverse(u)
    -> (z, logdet)`` back (``logdet`` of that direction), ``log_prob(z)`` is
    ``log N(u; 0, I) + logdet``, ``sample(n)`` draws ``inverse(randn)``.
    ``scale`` / ``clamp`` bound each coupling's log-scale (see
    ``dgm_fast.affine_coupling``); GLF uses ``"atan"`` with clamp 2 (FrEIA's
    soft clamp). Permutation ``b`` is drawn from ``seed + b``; the weights
    from torch's generator, as any ``nn.Module``'s.

    Up to ``dim`` 128 each direction runs as one op (on CUDA tensors one
    Triton kernel), and the forward's backward as one op too. On CPU that
    backward needs the subnets' activations: ``recompute=False`` keeps them
    from the forward, ``recompute=True`` keeps only each block's input and
    recomputes the rest during the backward, and the default ``None`` keeps
    them when they take at most ``KEEP_ACTIVATIONS_BYTES``, scaled up for
    subnets that cost more than ``KEEP_MACS_PER_VALUE`` multiply-adds per
    kept value to rerun (measured here, training step of latent 64 and 4
    blocks: at hidden 64 keeping is faster at batch 256 and recomputing
    from batch 1024, where a fresh buffer of several MB costs more in page
    faults than the subnets cost to rerun; at hidden 256, 148 per value,
    keeping is 12% faster at batch 256 and even at batch 512). The GPU
    backward always recomputes. Calls that need no gradient keep nothing.
    """

    def __init__(self, dim: int, n_blocks: int = 4, hidden: int = 64, n_hidden_layers: int = 2,
                 scale: str = "atan", clamp: float = 2.0, activation: str = "relu", seed: int = 0,
                 recompute: bool | None = None):
        super().__init__()
        self.dim = _checks.integer("dim", dim, low=2)
        self.n_blocks = _checks.integer("n_blocks", n_blocks, low=1)
        hidden = _checks.integer("hidden", hidden, low=1)
        n_hidden_layers = _checks.integer("n_hidden_layers", n_hidden_layers, low=0)
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.scale, self.clamp = scale, _checks.real("clamp", clamp, low=0.0, low_open=True, finite=True)
        self.activation = activation
        if recompute is not None and not isinstance(recompute, bool):
            raise TypeError(f"recompute must be a bool or None, got {type(recompute).__name__}")
        self.recompute = recompute
        seed = _checks.integer("seed", seed, low=0, high=2**63 - n_blocks)
        self.split = dim // 2
        d1, d2 = self.split, dim - self.split
        # per block: the subnet of the coupling that maps z2 (from z1), then the one that maps z1 (from z2)
        self.subnets = nn.ModuleList(
            _subnet(d_in, d_out, hidden, n_hidden_layers)
            for _ in range(n_blocks) for d_in, d_out in ((d1, d2), (d2, d1))
        )
        for b in range(n_blocks):
            perm = torch.randperm(dim, generator=torch.Generator().manual_seed(seed + b))
            self.register_buffer(f"perm{b}", perm)
            self.register_buffer(f"inv_perm{b}", torch.argsort(perm))
        # what keeping the subnets' activations costs a row, and what rerunning them saves per kept value
        weights = [layer.weight for layer in self._linears()]
        row, perms = torch.empty(1, dim), [self.perm0] * n_blocks
        self._kept_per_row = saved_size(row, weights, perms, False, True) - saved_size(row, weights, perms, False, False)
        self._macs_per_value = sum(w.numel() for w in weights) / self._kept_per_row

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_blocks={self.n_blocks}, scale={self.scale!r}, clamp={self.clamp}"

    def _coupling(self, index: int, cond: Tensor, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        h, layers = cond, self.subnets[index]
        for k, layer in enumerate(layers):
            h = layer(h)
            h = ACTIVATIONS[self.activation](h) if k + 1 < len(layers) else h
        s, t = h.chunk(2, dim=1)
        return affine_coupling(x, s.contiguous(), t.contiguous(), scale=self.scale, clamp=self.clamp,
                               inverse=inverse)

    def fused(self, z: Tensor) -> bool:
        """Whether calls on ``z`` run the whole flow as one op (``dgm_fast::coupling_flow``)."""
        return self.dim <= FUSED_MAX_DIM and z.dtype in (torch.float32, torch.float64)

    def _linears(self) -> list[nn.Linear]:
        """Every coupling's Linear layers, in the order the flow ops take their weights."""
        return [layer for subnet in self.subnets for layer in subnet]

    def _flow_op(self, z: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        layers = self._linears()
        weights, biases = [_parameter(x, "weight") for x in layers], [_parameter(x, "bias") for x in layers]
        perms = [self._buffers[f"perm{b}"] for b in range(self.n_blocks)]
        if (z.dtype, z.device) != (weights[0].dtype, weights[0].device):
            raise TypeError(f"the input must have the dtype and device of the flow's parameters "
                            f"({weights[0].dtype}, {weights[0].device}), got {z.dtype}, {z.device}")
        keep = not inverse and self._keeps_activations(z, weights, biases)
        u, logdet, _ = FLOW(z.contiguous(), weights, biases, perms, self.scale, self.clamp, self.activation,
                            inverse, keep)
        return u, logdet

    def _keeps_activations(self, z: Tensor, weights: list[Tensor], biases: list[Tensor]) -> bool:
        if not torch.is_grad_enabled() or not torch._C._any_requires_grad(z, *weights, *biases):
            return False  # no backward will read them
        if z.device.type != "cpu":
            return False  # the Triton backward recomputes them from the block inputs (kernels/coupling.py)
        if self.recompute is not None:
            return not self.recompute
        budget = KEEP_ACTIVATIONS_BYTES * max(1.0, self._macs_per_value / KEEP_MACS_PER_VALUE)
        return z.shape[0] * self._kept_per_row * z.element_size() <= budget

    def _check_input(self, name: str, z) -> Tensor:
        _checks.dense_tensor(name, z)
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"{name} must have shape (batch, {self.dim}), got {tuple(z.shape)}")
        return z

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(u, logdet)``: ``z`` mapped to the Gaussian side and log|det du/dz| per row."""
        z = self._check_input("z", z)
        if self.fused(z):
            return self._flow_op(z, inverse=False)
        logdet = z.new_zeros(z.shape[0])
        for b in range(self.n_blocks):
            z1, z2 = z[:, : self.split], z[:, self.split:]
            z2, ld2 = self._coupling(2 * b, z1, z2, inverse=False)
            z1, ld1 = self._coupling(2 * b + 1, z2, z1, inverse=False)
            z = torch.cat([z1, z2], dim=1)[:, getattr(self, f"perm{b}")]
            logdet = logdet + ld2 + ld1
        return z, logdet

    def inverse(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, logdet)``: ``u`` mapped back to the data side and log|det dz/du| per row. Raises if
        the result overflowed (an unbounded ``"exp"`` scale can), rather than return infinities."""
        z = self._check_input("u", u)
        if self.fused(z):
            z, logdet = self._flow_op(z, inverse=True)
        else:
            logdet = z.new_zeros(z.shape[0])
            for b in reversed(range(self.n_blocks)):
                z = z[:, getattr(self, f"inv_perm{b}")]
                z1, z2 = z[:, : self.split], z[:, self.split:]
                z1, ld1 = self._coupling(2 * b + 1, z2, z1, inverse=True)
                z2, ld2 = self._coupling(2 * b, z1, z2, inverse=True)
                z = torch.cat([z1, z2], dim=1)
                logdet = logdet + ld1 + ld2
        if not torch.compiler.is_compiling() and torch.isinf(z).any() and not torch.isinf(u).any():
            raise FloatingPointError(
                f"CouplingFlow.inverse overflowed: {int(torch.isinf(z).sum())} values are infinite "
                f"(scale={self.scale!r}; a bounded scale such as 'atan' keeps the inverse finite)"
            )
        return z, logdet

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) = log N(u; 0, I) + log|det du/dz|, per row."""
        u, logdet = self(z)
        return -0.5 * (u.square().sum(dim=1) + self.dim * _LOG_2PI) + logdet

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws: Gaussian noise mapped through ``inverse``."""
        n = _checks.integer("n", n, low=0)
        weight = next(self.parameters())
        u = torch.randn(n, self.dim, generator=generator, device=weight.device, dtype=weight.dtype)
        return self.inverse(u)[0]
