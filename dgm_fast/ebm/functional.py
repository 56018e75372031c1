"""Public MLP energy ops: argument checks, then the op (dgm_fast/ebm/op.py).

An MLP energy is given by its layers' ``weights`` ((out, in), as ``nn.Linear``)
and ``biases``, the last layer having one output; ``dgm_fast.nn.MLPEnergy``
holds them as a module.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dgm_fast import _checks
from dgm_fast.ebm.op import GRAD, LAPLACIAN, SAMPLE, MLPArgs
from dgm_fast.ebm.reference import ACTIVATIONS
from dgm_fast.langevin.functional import step_args

DTYPES = frozenset((torch.float32, torch.float64))


def mlp_args(x: Tensor, weights, biases, activation, negative_slope, x_name: str = "x") -> tuple:
    """``(weights, biases, activation, negative_slope)`` checked against ``x`` (batch, dim); bad ones raise naming the argument."""
    _checks.dense_tensor(x_name, x, DTYPES)
    if x.dim() != 2:
        raise ValueError(f"{x_name} must be a (batch, dim) matrix, got shape {tuple(x.shape)}")
    for name, seq in (("weights", weights), ("biases", biases)):
        if not isinstance(seq, Sequence) or isinstance(seq, (str, Tensor)):
            raise TypeError(f"{name} must be a list of tensors, got {type(seq).__name__}")
    if not weights or len(biases) != len(weights):
        raise ValueError(f"weights and biases must be non-empty lists of one length, got {len(weights)} "
                         f"and {len(biases)}")
    width = x.shape[1]
    for k, (w, b) in enumerate(zip(weights, biases)):
        _checks.dense_tensor(f"weights[{k}]", w, DTYPES)
        _checks.same_kind(f"weights[{k}]", w, x_name, x)
        _checks.dense_tensor(f"biases[{k}]", b, DTYPES)
        _checks.same_kind(f"biases[{k}]", b, x_name, x)
        if w.dim() != 2 or w.shape[1] != width:
            what = f"{x_name} has {width} features" if k == 0 else f"layer {k - 1} has {width} outputs"
            raise ValueError(f"weights[{k}] must have shape (out, {width}) since {what}, got {tuple(w.shape)}")
        if b.shape != w.shape[:1]:
            raise ValueError(f"biases[{k}] must have shape ({w.shape[0]},), got {tuple(b.shape)}")
        width = w.shape[0]
    if width != 1:
        raise ValueError(f"weights[-1] must have one output (a scalar energy per sample), got {width}")
    if not isinstance(activation, str):
        raise TypeError(f"activation must be a str, one of {ACTIVATIONS}, got {type(activation).__name__}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    slope = _checks.real("negative_slope", negative_slope, finite=True)
    return list(weights), list(biases), *MLPArgs(activation, slope)


def mlp_energy_grad(x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], activation: str = "swish",
                    negative_slope: float = 0.2) -> tuple[Tensor, Tensor]:
    """``(E(x), dE/dx)`` of the MLP energy for every row of ``x``, in one fused forward and backward.

    Differentiable in ``x``, the weights and the biases (twice), as the
    generator loss (2.25) needs."""
    return GRAD(x, *mlp_args(x, weights, biases, activation, negative_slope))


def mlp_energy_laplacian(x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], activation: str = "swish",
                         negative_slope: float = 0.2) -> tuple[Tensor, Tensor]:
    """``(dE/dx, tr d^2E/dx^2)`` per row, exactly, in one fused pass (no ``dim`` backward passes).

    ``-dE/dx`` is the velocity of the gradient flow (2.16) and the Laplacian
    its negative divergence, the integrand of the log-density (2.19)."""
    return LAPLACIAN(x, *mlp_args(x, weights, biases, activation, negative_slope))


def mlp_energy_sample(
    x0: Tensor,
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    n_steps: int,
    step_size: float,
    noise_scale: float | None = None,
    *,
    activation: str = "swish",
    negative_slope: float = 0.2,
    prior_weight: float = 0.0,
    grad_clip: float | None = None,
    clamp: tuple[float, float] | None = None,
    seed: int | None = None,
    offset: int = 0,
) -> Tensor:
    """A whole chain of ``n_steps`` Langevin steps (2.15) on the MLP energy in one fused call.

    Equals ``dgm_fast.sample_langevin`` on the same energy with the same
    arguments and seed (step ``k`` uses the stream from ``offset + k *
    stream_stride(x0.numel())``), to floating-point rounding. Not
    differentiable: to train through a chain (2.25) use ``sample_langevin``
    with ``create_graph=True``.
    """
    weights, biases, *mlp = mlp_args(x0, weights, biases, activation, negative_slope, "x0")
    n_steps = _checks.integer("n_steps", n_steps, low=0)
    step = step_args(x0, x0, step_size, noise_scale, prior_weight, grad_clip, clamp, seed, offset)
    detached = [t.detach() for t in weights], [t.detach() for t in biases]
    return SAMPLE(x0.detach(), *detached, *mlp, n_steps, *step)
