"""Public affine coupling op: argument checks, then the op (dgm_fast/coupling/op.py)."""

from __future__ import annotations

from torch import Tensor

from dgm_fast import _checks
from dgm_fast.coupling.op import COUPLING, CouplingArgs
from dgm_fast.coupling.reference import SCALES


def coupling_args(x2, s, t, scale, clamp, inverse) -> CouplingArgs:
    """Checked arguments in the ops' form; bad ones raise naming the argument."""
    _checks.dense_tensor("x2", x2)
    if x2.dim() == 0:
        raise ValueError("x2 must have a batch dimension first, got a 0-d tensor")
    for name, v in (("s", s), ("t", t)):
        _checks.dense_tensor(name, v)
        _checks.like(name, v, "x2", x2)
    if not isinstance(scale, str):
        raise TypeError(f"scale must be a str, one of {SCALES}, got {type(scale).__name__}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    clamp = _checks.real("clamp", clamp, low=0.0, low_open=True, finite=True)
    return CouplingArgs(scale, clamp, _checks.boolean("inverse", inverse))


def affine_coupling(
    x2: Tensor, s: Tensor, t: Tensor, *, scale: str = "exp", clamp: float = 2.0, inverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """One affine coupling layer (dissertation §2.2.3) in one fused pass: ``(y2, logdet)``.

    With ``l = g(s)``: forward ``y2 = x2 * exp(l) + t``, ``logdet = sum(l)``;
    ``inverse=True``: ``y2 = (x2 - t) * exp(-l)``, ``logdet = -sum(l)``. The
    sum runs over every non-batch dimension, so ``logdet`` has shape
    ``(batch,)``. ``scale`` picks ``g``: ``"exp"`` (``g(s) = s``), ``"atan"``
    (``clamp * 2/pi * atan(s / clamp)``, FrEIA's soft clamp, used by GLF),
    ``"tanh"`` (``clamp * tanh(s / clamp)``) or ``"sigmoid"`` (``log
    sigmoid(s + 2)``, Glow). ``s`` and ``t`` are what the coupling network
    computes from the other half, with the shape, dtype and device of ``x2``.
    Differentiable in ``x2``, ``s`` and ``t`` (the backward is one fused op;
    double backward uses the PyTorch formula). Where ``exp`` overflows (an
    unbounded ``"exp"`` scale) the result is ``inf``, as in PyTorch.
    """
    return COUPLING(x2, s, t, *coupling_args(x2, s, t, scale, clamp, inverse))
