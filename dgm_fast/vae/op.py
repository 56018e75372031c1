"""The categorical pixel likelihood ops, declared once on the shared scaffolding (dgm_fast/_op.py).

* ``dgm_fast::categorical_pixel_nll(logits, target) -> (nll, lse)``: the per-sample
  NLL of the 256-way categorical decoder (Table 4.6) and the per-pixel
  logsumexp, one pass over the logits, never writing log-softmax;
* ``dgm_fast::categorical_pixel_nll_backward(grad_nll, grad_lse, logits, target, lse)
  -> grad_logits``: ``softmax * (grad_nll + grad_lse) - grad_nll * onehot(target)``,
  one more pass that reuses ``lse`` (so no softmax is stored between the two).

Kernels ``<name>_{cpu,triton}(inputs..., outputs...)`` on contiguous tensors,
``target`` int64. Under ``create_graph`` the backward differentiates the
reference instead, so gradients of gradients work.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dgm_fast._op import FusedOp, empty_output
from dgm_fast.vae.reference import (
    categorical_pixel_nll_backward_reference,
    categorical_pixel_nll_reference,
)


def _nll_outputs(logits: Tensor, target: Tensor) -> list[Tensor]:
    nll = empty_output(logits.new_empty(target.shape[:1]))
    lse = empty_output(logits.new_empty(target.shape))
    return [nll, lse]


def _setup_context(ctx, inputs, output):
    logits, target = inputs[:2]
    ctx.save_for_backward(logits, target, output[1])


def _backward(ctx, grad_nll, grad_lse):
    logits, target, lse = ctx.saved_tensors
    grad_nll = lse.new_zeros(lse.shape[:1]) if grad_nll is None else grad_nll
    grad_lse = torch.zeros_like(lse) if grad_lse is None else grad_lse
    if torch.is_grad_enabled():  # create_graph: the differentiable formula
        return categorical_pixel_nll_backward_reference(grad_nll, grad_lse, logits, target, lse), None
    return NLL_BACKWARD(grad_nll, grad_lse, logits, target, lse), None


NLL = FusedOp("vae", "categorical_pixel_nll", "(Tensor logits, Tensor target) -> (Tensor, Tensor)",
              reference=categorical_pixel_nll_reference, outputs=_nll_outputs,
              setup_context=_setup_context, backward=_backward)
NLL_BACKWARD = FusedOp(
    "vae", "categorical_pixel_nll_backward",
    "(Tensor grad_nll, Tensor grad_lse, Tensor logits, Tensor target, Tensor lse) -> Tensor",
    reference=categorical_pixel_nll_backward_reference, outputs=lambda g, gl, logits, *_: [empty_output(logits, torch.contiguous_format)],
)
