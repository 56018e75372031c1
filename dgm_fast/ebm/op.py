"""The MLP energy ops, declared once on the shared scaffolding (dgm_fast/_op.py).

* ``dgm_fast::mlp_energy_grad`` -> ``(energy, grad)``: one forward and one backward to ``x``;
* ``dgm_fast::mlp_energy_laplacian`` -> ``(grad, laplacian)``: ``dE/dx`` and ``tr d^2E/dx^2``,
  the velocity and divergence the ODE flow (2.16)-(2.19) integrates;
* ``dgm_fast::mlp_energy_sample`` -> the end of a whole Langevin chain (2.15) / (2.20) / (3.8).

Kernels ``<name>_{cpu,triton}(x, weights, biases, *outputs, activation_code,
negative_slope[, n_steps, *StepArgs-without-seed_tensor])``, ``activation_code``
the index in ``ACTIVATIONS``. The first two are differentiable by recomputing
the reference under autograd (their gradients are Hessian-vector products of
the MLP, which a training step through a chain asks for rarely enough); the
chain itself is not: training through it (2.25) takes the unfused path.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from dgm_fast._op import FusedOp, empty_output
from dgm_fast.ebm.reference import (
    ACTIVATIONS,
    mlp_energy_grad_reference,
    mlp_energy_laplacian_reference,
    mlp_energy_sample_reference,
)
from dgm_fast.langevin.op import SCHEMA_ARGS, StepArgs, step_kernel_scalars

MLP_ARGS = "Tensor[] weights, Tensor[] biases, str activation, float negative_slope"
_INF = float("inf")


class MLPArgs(NamedTuple):
    """The energy's scalars in the ops' order."""

    activation: str
    negative_slope: float


def _per_row(x: Tensor) -> Tensor:
    return empty_output(x.new_empty(x.shape[:1]))


def _matrix(x: Tensor) -> Tensor:
    """Row-major whatever x's layout: the kernels and the reference's products write rows."""
    return empty_output(x, torch.contiguous_format)


def _mlp_kernel_scalars(activation: str, negative_slope: float, *rest) -> tuple:
    return (ACTIVATIONS.index(activation), negative_slope, *rest)


def _recomputed_autograd(reference):
    """setup_context / backward that differentiate ``reference`` again: under ``create_graph`` through
    the saved inputs themselves, so double backward reaches them."""

    def setup_context(ctx, inputs, output):
        x, weights, biases, *scalars = inputs
        ctx.mlp = MLPArgs(*scalars[: len(MLPArgs._fields)])  # the .backend overload adds one
        ctx.n_layers = len(weights)
        ctx.save_for_backward(x, *weights, *biases)

    def backward(ctx, *grads):
        saved = ctx.saved_tensors
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            leaves = [t if create_graph and t.requires_grad else t.detach().requires_grad_() for t in saved]
            n = ctx.n_layers
            outs = reference(leaves[0], leaves[1:1 + n], leaves[1 + n:], *ctx.mlp)
            pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
            found = torch.autograd.grad([o for o, _ in pairs], leaves, [g for _, g in pairs],
                                        create_graph=create_graph, allow_unused=True)
        found = [torch.zeros_like(t) if f is None else f for t, f in zip(saved, found)]
        return found[0], found[1:1 + n], found[1 + n:], None, None

    return setup_context, backward


def _differentiable_op(name: str, reference, outputs) -> FusedOp:
    """An op of (x, the MLP) -> two tensors, differentiated by recomputing ``reference``."""
    setup_context, backward = _recomputed_autograd(reference)
    return FusedOp("ebm", name, f"(Tensor x, {MLP_ARGS}) -> (Tensor, Tensor)", reference=reference,
                   outputs=outputs, kernel_scalars=_mlp_kernel_scalars, setup_context=setup_context,
                   backward=backward)


GRAD = _differentiable_op("mlp_energy_grad", mlp_energy_grad_reference, lambda x, *_: [_per_row(x), _matrix(x)])
LAPLACIAN = _differentiable_op("mlp_energy_laplacian", mlp_energy_laplacian_reference,
                               lambda x, *_: [_matrix(x), _per_row(x)])


def _sample_reference(x0, weights, biases, activation, negative_slope, n_steps, *scalars):
    a = StepArgs(*scalars)
    clamp = None if (a.clamp_lo, a.clamp_hi) == (-_INF, _INF) else (a.clamp_lo, a.clamp_hi)
    clip = None if a.grad_clip == _INF else a.grad_clip
    return mlp_energy_sample_reference(x0, weights, biases, activation, negative_slope, n_steps, a.step_size,
                                       a.noise_scale, a.prior_weight, clip, clamp, a.seed, a.offset,
                                       a.seed_tensor)


def _sample_kernel_scalars(activation, negative_slope, n_steps, *step_scalars) -> tuple:
    return (ACTIVATIONS.index(activation), negative_slope, n_steps, *step_kernel_scalars(*step_scalars))


SAMPLE = FusedOp(
    "ebm", "mlp_energy_sample",
    f"(Tensor x0, {MLP_ARGS}, int n_steps, {SCHEMA_ARGS.removeprefix('Tensor grad, ')}) -> Tensor",
    reference=_sample_reference, outputs=lambda x0, *_: [_matrix(x0)], kernel_scalars=_sample_kernel_scalars,
)
