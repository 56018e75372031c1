"""The affine coupling ops, declared once on the shared scaffolding (dgm_fast/_op.py).

``dgm_fast::affine_coupling`` returns ``(y2, logdet)``; its backward is the
op ``dgm_fast::affine_coupling_backward``, one fused pass for the gradients
of ``x2``, ``s`` and ``t``. Kernels: ``affine_coupling_{cpu,cuda,triton}(x2, s,
t, y2, logdet, scale_code, clamp, inverse)`` and ``affine_coupling_backward_
{cpu,cuda,triton}(grad_y2, grad_logdet, x2, s, t, grad_x2, grad_s, grad_t,
scale_code, clamp, inverse)``, with ``scale_code`` the index in ``SCALES``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from dgm_fast._op import FusedOp, empty_output
from dgm_fast.coupling.reference import (
    ACTIVATIONS,
    SCALES,
    affine_coupling_backward_reference,
    affine_coupling_reference,
    coupling_flow_reference,
)

SCALARS = "str scale, float clamp, bool inverse"


class CouplingArgs(NamedTuple):
    """The coupling's scalars in the ops' order."""

    scale: str
    clamp: float
    inverse: bool


def _kernel_scalars(scale: str, clamp: float, inverse: bool) -> tuple:
    return SCALES.index(scale), clamp, inverse


def _logdet(x2: Tensor) -> Tensor:
    return empty_output(x2.new_empty(x2.shape[:1]))


def _setup_context(ctx, inputs, output):
    x2, s, t, *scalars = inputs
    ctx.args = CouplingArgs(*scalars[: len(CouplingArgs._fields)])  # the .backend overload adds one
    ctx.save_for_backward(x2, s, t)


def _backward(ctx, grad_y2, grad_logdet):
    x2, s, t = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph: the differentiable formula, for double backward
        grads = affine_coupling_backward_reference(grad_y2, grad_logdet, x2, s, t, *ctx.args)
    else:
        grads = COUPLING_BACKWARD(grad_y2.contiguous(), grad_logdet.contiguous(), x2, s, t, *ctx.args)
    return (*grads, None, None, None)


COUPLING = FusedOp(
    "coupling", "affine_coupling", f"(Tensor x2, Tensor s, Tensor t, {SCALARS}) -> (Tensor, Tensor)",
    reference=affine_coupling_reference, outputs=lambda x2, *_: [empty_output(x2), _logdet(x2)],
    kernel_scalars=_kernel_scalars, setup_context=_setup_context, backward=_backward,
)
COUPLING_BACKWARD = FusedOp(
    "coupling", "affine_coupling_backward",
    f"(Tensor grad_y2, Tensor grad_logdet, Tensor x2, Tensor s, Tensor t, {SCALARS}) -> (Tensor, Tensor, Tensor)",
    reference=affine_coupling_backward_reference,
    outputs=lambda gy, *_: [empty_output(gy) for _ in range(3)],  # laid out as the reference's: like grad_y2
    kernel_scalars=_kernel_scalars,
)


# --- the whole flow ------------------------------------------------------------
FLOW_SCALARS = "str scale, float clamp, str activation"


class FlowArgs(NamedTuple):
    """The flow's scalars in the forward op's order."""

    scale: str
    clamp: float
    activation: str
    inverse: bool
    store_activations: bool


def _flow_kernel_scalars(scale: str, clamp: float, activation: str, *flags: bool) -> tuple:
    """The kernels' codes of scale and activation (indices in SCALES, ACTIVATIONS), then the flags."""
    return SCALES.index(scale), clamp, list(ACTIVATIONS).index(activation), *flags


def saved_size(z: Tensor, weights: list[Tensor], perms: list[Tensor], inverse: bool, store_activations: bool) -> int:
    """Elements of the forward op's ``saved`` output (layout: ``coupling_flow_reference``)."""
    if inverse:
        return 0
    rows, dim = z.shape
    size = len(perms) * rows * dim
    if store_activations:
        n_layers = len(weights) // (2 * len(perms))
        for c in range(2 * len(perms)):
            cond_width = dim // 2 if c % 2 == 0 else dim - dim // 2
            size += rows * (cond_width + sum(w.shape[0] for w in weights[c * n_layers:(c + 1) * n_layers]))
    return size


def _flow_setup_context(ctx, inputs, output):
    z, weights, biases, perms, *scalars = inputs
    ctx.args = FlowArgs(*scalars[: len(FlowArgs._fields)])  # the .backend overload adds one
    ctx.sizes = len(weights), len(biases), len(perms)
    ctx.mark_non_differentiable(output[2])
    ctx.set_materialize_grads(False)  # else autograd fills a zero gradient as large as `saved` every step
    ctx.save_for_backward(z, output[2], *weights, *biases, *perms)


def _flow_backward(ctx, grad_u, grad_logdet, _grad_saved):
    z, saved, *rest = ctx.saved_tensors
    grad_u = torch.zeros_like(z) if grad_u is None else grad_u
    grad_logdet = z.new_zeros(z.shape[:1]) if grad_logdet is None else grad_logdet
    n_w, n_b, n_p = ctx.sizes
    weights, biases, perms = rest[:n_w], rest[n_w:n_w + n_b], rest[n_w + n_b:]
    if ctx.args.inverse or torch.is_grad_enabled():
        grads = _flow_grads_by_autograd(z, weights, biases, perms, grad_u, grad_logdet, ctx.args)
    else:
        a = ctx.args
        grads = FLOW_BACKWARD(grad_u.contiguous(), grad_logdet.contiguous(), saved, weights, biases, perms,
                              a.scale, a.clamp, a.activation, a.store_activations)
    grad_z, grad_w, grad_b = grads
    return grad_z, list(grad_w), list(grad_b), [None] * n_p, None, None, None, None, None


def _flow_grads_by_autograd(z, weights, biases, perms, grad_u, grad_logdet, args: FlowArgs):
    """Reverse-mode autograd of the reference: the inverse direction, and double backward (with
    create_graph the saved tensors carry their graph, so the gradients are differentiable again)."""
    create_graph = torch.is_grad_enabled() and any(v.requires_grad for v in (z, *weights, *biases))
    with torch.enable_grad():
        leaves = [v if create_graph else v.detach() for v in (z, *weights, *biases)]
        wanted = [v for v in leaves if not create_graph or v.requires_grad]
        for v in wanted:
            if not v.requires_grad:
                v.requires_grad_()
        n_w = len(weights)
        out = coupling_flow_reference(leaves[0], leaves[1:1 + n_w], leaves[1 + n_w:], perms, *args)[:2]
        found = torch.autograd.grad(out, wanted, (grad_u, grad_logdet), create_graph=create_graph,
                                    allow_unused=True)
    by_id = {id(v): g for v, g in zip(wanted, found)}
    grads = [by_id.get(id(v)) for v in leaves]
    grads = [torch.zeros_like(v) if g is None else g for v, g in zip(leaves, grads)]
    return grads[0], grads[1:1 + n_w], grads[1 + n_w:]


def _flow_backward_reference(grad_u, grad_logdet, saved, weights, biases, perms, scale, clamp, activation,
                             store_activations):
    """The backward op's specification: reverse-mode autograd of the flow's reference from the input
    it finds in ``saved`` (block 0's). Inference mode forbids autograd, so there it runs on clones
    outside it, and clones the results back inside."""
    z = saved[: grad_u.numel()].view(grad_u.shape)
    args = FlowArgs(scale, clamp, activation, False, store_activations)
    if not torch.is_inference_mode_enabled():
        return _flow_grads_by_autograd(z, weights, biases, perms, grad_u, grad_logdet, args)
    with torch.inference_mode(False):
        tensors = [t.clone() for t in (grad_u, grad_logdet, z)]
        lists = [[t.clone() for t in ts] for ts in (weights, biases, perms)]
        grad_z, grad_w, grad_b = _flow_grads_by_autograd(tensors[2], *lists, *tensors[:2], args)
    return grad_z.clone(), [g.clone() for g in grad_w], [g.clone() for g in grad_b]


def _flow_outputs(z, weights, biases, perms, scale, clamp, activation, inverse, store_activations):
    return [empty_output(z), _logdet(z), z.new_empty(saved_size(z, weights, perms, inverse, store_activations))]


def _flow_backward_outputs(grad_u, grad_logdet, saved, weights, biases, *_):
    return [empty_output(grad_u), [empty_output(w) for w in weights], [empty_output(b) for b in biases]]


FLOW = FusedOp(
    "coupling", "coupling_flow",
    f"(Tensor z, Tensor[] weights, Tensor[] biases, Tensor[] perms, {FLOW_SCALARS}, bool inverse, "
    "bool store_activations) -> (Tensor, Tensor, Tensor)",
    reference=coupling_flow_reference, outputs=_flow_outputs, kernel_scalars=_flow_kernel_scalars,
    setup_context=_flow_setup_context, backward=_flow_backward,
)
FLOW_BACKWARD = FusedOp(
    "coupling", "coupling_flow_backward",
    "(Tensor grad_u, Tensor grad_logdet, Tensor saved, Tensor[] weights, Tensor[] biases, Tensor[] perms, "
    f"{FLOW_SCALARS}, bool store_activations) -> (Tensor, Tensor[], Tensor[])",
    reference=_flow_backward_reference, outputs=_flow_backward_outputs,
    kernel_scalars=_flow_kernel_scalars,
)
