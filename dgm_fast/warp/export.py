"""Export of the 3-D warping ops to ONNX, as standard operators.

``torch.export`` needs nothing from here: a model calling ``grid_sample_3d``, ``keypoint_warp_3d`` or
``sparse_motion_features`` exports with the ops as ``torch.ops.dgm_fast.*.default`` nodes (their fake
functions give the shapes), and ``ep.module()`` runs them. ONNX has no such ops, so torch.onnx's
exporter (``dynamo=True``) is given a translation for each (``custom_translation_table``), written
with ONNX Script ops:

* ``grid_sample_3d`` -> ``GridSample`` (opset 20: N-D input, ``mode="linear"``, the same padding
  modes and ``align_corners`` as torch), behind a guard on the grid (``_grid_sample``);
* ``keypoint_warp_3d`` -> the identity grid (``Range``), the K + 1 motions (``MatMul`` by the
  transposed Jacobians), ``Softmax`` of logits, the weighted sum (``ReduceSum``) and ``GridSample``;
* ``sparse_motion_features`` -> the motions, the Gaussian heatmaps and one ``GridSample`` of the
  feature repeated K + 1 times.

Why a translation table rather than ``ExportedProgram.run_decompositions`` before export: it is
torch.onnx's own hook for custom ops, so a model exports in one ``torch.onnx.export`` call with all of
its options, and the graph is ours to shape. Decomposing into the plain-PyTorch references gives ~200
nodes for one grid_sample_3d (the 8 corner gathers written out); into the F.grid_sample chains of
eager.py it is as compact (25 and 43 nodes against 25 and 37 here for the keypoint warp and the motion
features) but lacks the guard of ``_grid_sample``, which makes onnxruntime sample what torch does at
non-finite and huge coordinates. The price is the motion model written a second time, in ONNX Script,
which tests/test_warp_export.py holds to eager under onnxruntime. Shapes come from ``Shape`` /
``Range``, so dynamic shapes export too; with static ones the optimizer folds them into constants.

Needs the optional ``onnx`` and ``onnxscript`` (and ``onnxruntime`` to run the result): the
``export`` extra, ``pip install dgm_fast[export]``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

OPSET = 20  # the first opset whose GridSample takes 5-D input
_EXTRA_HINT = "install the optional dependencies with `pip install dgm_fast[export]` (onnx, onnxscript, onnxruntime)"


def _require(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"exporting dgm_fast's warping ops to ONNX needs {module}: {_EXTRA_HINT}") from e


def _opset():
    """ONNX Script's opset 20, whose ops the translations record when torch.onnx traces them."""
    _require("onnx")
    return _require("onnxscript").opset20


def onnx_translation_table() -> dict[torch._ops.OpOverload, Callable]:
    """``{dgm_fast op: ONNX Script translation}``, for ``torch.onnx.export(..., dynamo=True,
    custom_translation_table=...)`` with ``opset_version >= 20``. The ``.backend`` overloads (a backend
    forced with ``dgm_fast.use_backend``) have none: export with the default backend."""
    _opset()  # fail here, naming the extra, rather than inside the exporter
    ops = torch.ops.dgm_fast
    return {
        ops.grid_sample_3d.default: _grid_sample_3d,
        ops.keypoint_warp_3d.default: _keypoint_warp_3d,
        ops.sparse_motion_features.default: _sparse_motion_features,
    }


def export_onnx(model: torch.nn.Module, args: tuple, path=None, **kwargs):
    """``torch.onnx.export(model, args, path, dynamo=True, ...)`` with the warping ops' translations
    (merged under any ``custom_translation_table`` given) and ``opset_version`` 20 unless given (at least
    20). Returns the ``torch.onnx.ONNXProgram``; ``path``, when given, is where the model is saved."""
    opset = kwargs.pop("opset_version", None) or OPSET
    if opset < OPSET:
        raise ValueError(f"opset_version must be at least {OPSET} (GridSample on 5-D input), got {opset}")
    table = {**onnx_translation_table(), **(kwargs.pop("custom_translation_table", None) or {})}
    kwargs.setdefault("verbose", False)
    return torch.onnx.export(model, args, path, dynamo=True, opset_version=opset,
                             custom_translation_table=table, **kwargs)


# --- translations: called by torch.onnx with ONNX values for the tensors, Python values for the rest ---
def _scalar(op, value: float, like):
    """``value`` in the dtype of ``like``: the exporter records a bare Python float beside a computed
    value (whose dtype it does not infer) as float32, wrong for float64 models."""
    return op.CastLike(value, like)


def _grid_sample(op, input, grid, padding_mode: str, align_corners: bool):
    """``GridSample`` fed a grid on which onnxruntime samples what torch does.

    onnxruntime's kernel casts each unnormalized coordinate u to int64 unchecked (undefined for NaN,
    inf and |u| >= 2**63) and weights the corners by ``(x0 + 1) - u`` and ``u - x0``, which both round
    to 0 once |u| >= 2**24 in float32 (it pads the corners' indices, not u). So the grid it gets is
    finite and within +-4 (normalized), where torch samples the same: past +-4 ``zeros`` reads nothing
    and ``border`` the border; reflection repeats every 4 for either ``align_corners`` and ``c - 4
    round(c / 4)`` is exact. Non-finite values: ``zeros`` reads nothing, the others voxel n - 1 (as at
    c = 1) or, for -inf with ``border``, voxel 0 (as at -4). One difference remains, reflection far
    outside: torch reflects u rounded to float32, up to |u| 2**-24 voxels off (1e-5 of a unit-scale
    feature from ~100 voxels out; voxel n - 1 once u overflows), this reflects c exactly, nearer the
    float64 result."""
    if padding_mode == "reflection":
        safe = op.Where(op.IsNaN(op.Sub(grid, grid)), _scalar(op, 1.0, grid), grid)  # NaN or +-inf
        four = _scalar(op, 4.0, grid)
        safe = op.Sub(safe, op.Mul(op.Round(op.Div(safe, four)), four))
    else:
        safe = op.Where(op.IsNaN(grid), _scalar(op, 1.0, grid), grid)
        safe = op.Clip(safe, _scalar(op, -4.0, grid), _scalar(op, 4.0, grid))
    out = op.GridSample(input, safe, mode="linear", padding_mode=padding_mode, align_corners=align_corners)
    if padding_mode != "zeros":
        return out
    # torch reads nothing at a non-finite coordinate even along an axis of size 1 with align_corners,
    # where every finite one samples the voxel: mask the output rather than move the grid
    unreadable = op.IsNaN(op.ReduceSum(op.Sub(grid, grid), [-1], keepdims=0))  # (N, D, H, W)
    return op.Where(op.Unsqueeze(unreadable, [1]), _scalar(op, 0.0, input), out)


def _grid_sample_3d(input, grid, padding_mode: str, align_corners: bool):
    return _grid_sample(_opset(), input, grid, padding_mode, align_corners)


def _axis(op, sizes, axis: int, like):
    """``2 * (i / (n - 1)) - 1`` for i < n = ``sizes[axis]``: one axis of the identity grid, computed
    as reference.identity_grid does (so bitwise the same)."""
    n = op.Squeeze(op.Slice(sizes, [axis], [axis + 1]), [0])
    i = op.Div(op.CastLike(op.Range(0, n, 1), like), op.CastLike(op.Sub(n, 1), like))
    return op.Sub(op.Mul(i, _scalar(op, 2.0, like)), _scalar(op, 1.0, like))


def _identity_grid(op, sizes, like):
    """(D, H, W, 3): the (x, y, z) position in [-1, 1] of every voxel of a volume of ``sizes`` (D, H, W)."""
    z = op.Unsqueeze(_axis(op, sizes, 0, like), [1, 2])
    y = op.Unsqueeze(_axis(op, sizes, 1, like), [1])
    x = _axis(op, sizes, 2, like)
    return op.Concat(*[op.Unsqueeze(op.Expand(c, sizes), [-1]) for c in (x, y, z)], axis=-1)


def _motions(op, p, kp_source, kp_driving, jacobian):
    """(N, K, D, H, W, 3): ``T_k(p) = J_k (p - kp_driving_k) + kp_source_k`` on the identity grid p."""
    def at_voxels(kp):  # (N, K, 3) -> (N, K, 1, 1, 1, 3)
        return op.Unsqueeze(kp, [2, 3, 4])

    jac_t = op.Unsqueeze(op.Transpose(jacobian, perm=[0, 1, 3, 2]), [2, 3])  # (N, K, 1, 1, 3, 3)
    return op.Add(op.MatMul(op.Sub(p, at_voxels(kp_driving)), jac_t), at_voxels(kp_source))


def _keypoint_warp_3d(feature, kp_source, kp_driving, mask, jacobian, mask_is_logits: bool, padding_mode: str,
                      align_corners: bool, return_deformation: bool):
    op = _opset()
    p = _identity_grid(op, op.Shape(mask, start=2), feature)
    weights = op.Softmax(mask, axis=1) if mask_is_logits else mask
    identity_weight = op.Unsqueeze(op.Slice(weights, [0], [1], [1]), [-1])  # (N, 1, D, H, W, 1)
    motion_weights = op.Unsqueeze(op.Slice(weights, [1], [2**62], [1]), [-1])  # (N, K, D, H, W, 1)
    moved = op.ReduceSum(op.Mul(motion_weights, _motions(op, p, kp_source, kp_driving, jacobian)), [1], keepdims=1)
    phi = op.Squeeze(op.Add(op.Mul(identity_weight, p), moved), [1])  # (N, D, H, W, 3)
    out = _grid_sample(op, feature, phi, padding_mode, align_corners)
    # the op returns an empty deformation unless asked: (0,) in the feature's dtype
    return out, phi if return_deformation else op.CastLike(op.Constant(value_floats=[]), feature)


def _heatmaps(op, p, kp_source, kp_driving, variance: float):
    """(N, K, D, H, W): ``exp(-0.5 |p - kp_driving_k|^2 / variance) - exp(-0.5 |p - kp_source_k|^2 / variance)``."""
    def gaussian(kp):
        diff = op.Sub(p, op.Unsqueeze(kp, [2, 3, 4]))
        sq = op.ReduceSum(op.Mul(diff, diff), [-1], keepdims=0)
        return op.Exp(op.Div(op.Mul(sq, _scalar(op, -0.5, kp)), _scalar(op, variance, kp)))

    return op.Sub(gaussian(kp_driving), gaussian(kp_source))


def _ints(op, *values: int):
    return op.Constant(value_ints=list(values))  # Concat takes no Python lists: its inputs are variadic


def _sparse_motion_features(feature, kp_source, kp_driving, jacobian, variance: float, align_corners: bool):
    op = _opset()
    shape = op.Shape(feature)  # N, C, D, H, W
    n, sizes = op.Slice(shape, [0], [1]), op.Slice(shape, [2], [5])
    p = _identity_grid(op, sizes, feature)
    p_batch = op.Expand(op.Unsqueeze(p, [0, 1]), op.Concat(n, _ints(op, 1), sizes, _ints(op, 3), axis=0))
    motions = op.Concat(p_batch, _motions(op, p, kp_source, kp_driving, jacobian), axis=1)  # (N, K + 1, D, H, W, 3)
    # the feature once per motion, batched: (N (K + 1), C, D, H, W) sampled at (N (K + 1), D, H, W, 3)
    views = op.Shape(motions, start=1, end=2)
    copies = op.Expand(op.Unsqueeze(feature, [1]), op.Concat(n, views, _ints(op, 1, 1, 1, 1), axis=0))
    sampled = _grid_sample(op, op.Reshape(copies, op.Concat(_ints(op, -1), op.Slice(shape, [1], [5]), axis=0)),
                           op.Reshape(motions, op.Concat(_ints(op, -1), sizes, _ints(op, 3), axis=0)), "zeros",
                           align_corners)
    sampled = op.Reshape(sampled, op.Concat(n, views, op.Slice(shape, [1], [5]), axis=0))
    zeros = op.Expand(_scalar(op, 0.0, feature), op.Concat(n, _ints(op, 1), sizes, axis=0))  # the identity's heatmap
    heat = op.Concat(zeros, _heatmaps(op, p, kp_source, kp_driving, variance), axis=1)
    return op.Concat(op.Unsqueeze(heat, [2]), sampled, axis=2)
