"""``MLPEnergy``: a small fully connected energy whose gradient, Laplacian and whole Langevin
chain are fused ops (the energies of §2.4 and of the latent EBM of §3.3)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from dgm_fast import _checks
from dgm_fast.ebm.functional import mlp_energy_grad, mlp_energy_laplacian, mlp_energy_sample
from dgm_fast.ebm.reference import ACTIVATIONS, mlp_energy_reference
from dgm_fast.langevin.sampler import sample_langevin


class MLPEnergy(nn.Module):
    """``E: R^dims[0] -> R``: Linear layers of widths ``dims`` with ``activation`` between them.

    ``MLPEnergy((2, 256, 256, 256, 256, 1))`` is the swish energy of the 2-D
    toys (appendix 2.4.7); ``MLPEnergy((64, 200, 200, 1), "leaky_relu")`` the
    latent energy of §3.3. ``forward`` / ``energy`` is plain autograd;
    ``grad``, ``energy_and_grad`` and ``laplacian`` are fused ops,
    differentiable in the input and the parameters; ``sample`` runs a whole
    chain in one fused call.
    """

    def __init__(self, dims: Sequence[int], activation: str = "swish", negative_slope: float = 0.2):
        super().__init__()
        if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence):
            raise TypeError(f"dims must be a sequence of ints, got {type(dims).__name__}")
        dims = [_checks.integer(f"dims[{k}]", d, low=1) for k, d in enumerate(dims)]
        if len(dims) < 2 or dims[-1] != 1:
            raise ValueError(f"dims must list the input width, the hidden widths and a final 1, got {dims}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.dims, self.activation = tuple(dims), activation
        self.negative_slope = _checks.real("negative_slope", negative_slope, finite=True)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    @property
    def dim(self) -> int:
        return self.dims[0]

    def _params(self) -> tuple[list[Tensor], list[Tensor]]:
        return [m.weight for m in self.layers], [m.bias for m in self.layers]

    def forward(self, x: Tensor) -> Tensor:
        return self.energy(x)

    def energy(self, x: Tensor) -> Tensor:
        """``E(x)`` per row, shape (batch,)."""
        return mlp_energy_reference(x, *self._params(), self.activation, self.negative_slope)

    def energy_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(E(x), dE/dx)`` in one fused forward and backward."""
        return mlp_energy_grad(x, *self._params(), self.activation, self.negative_slope)

    def grad(self, x: Tensor) -> Tensor:
        """``dE/dx`` per row."""
        return self.energy_and_grad(x)[1]

    def laplacian(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(dE/dx, tr d^2E/dx^2)`` per row, exactly, in one fused pass."""
        return mlp_energy_laplacian(x, *self._params(), self.activation, self.negative_slope)

    def sample(
        self,
        x0: Tensor,
        n_steps: int,
        step_size: float,
        noise_scale: float | None = None,
        *,
        prior_weight: float = 0.0,
        grad_clip: float | None = None,
        clamp: tuple[float, float] | None = None,
        seed: int | None = None,
        create_graph: bool = False,
    ) -> Tensor:
        """``sample_langevin(self, x0, ...)`` (same arguments, same noise for the same seed), as one
        fused call; ``create_graph=True`` (to train through the chain, (2.25)) runs ``sample_langevin``."""
        if create_graph:
            return sample_langevin(self, x0, n_steps, step_size, noise_scale, prior_weight=prior_weight,
                                   grad_clip=grad_clip, clamp=clamp, seed=seed, create_graph=True)
        return mlp_energy_sample(x0, *self._params(), n_steps, step_size, noise_scale,
                                 activation=self.activation, negative_slope=self.negative_slope,
                                 prior_weight=prior_weight, grad_clip=grad_clip, clamp=clamp, seed=seed)

    def extra_repr(self) -> str:
        return f"dims={self.dims}, activation={self.activation!r}"
