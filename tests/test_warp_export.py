"""Export of the warping ops (dgm_fast/warp/export.py): torch.export keeps them as dgm_fast nodes
that run as eager; ONNX gets standard operators only, which onnxruntime runs equal to eager."""

from __future__ import annotations

import sys

import pytest
import torch

import dgm_fast
from dgm_fast.warp import export as warp_export
from dgm_fast.warp.reference import PADDING_MODES
from helpers import TOL, make_tensor

OPTIONS = [(p, a) for p in PADDING_MODES for a in (False, True)]
NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    return pytest.importorskip("onnxruntime")


class GridSample(torch.nn.Module):
    def __init__(self, padding_mode: str, align_corners: bool):
        super().__init__()
        self.padding_mode, self.align_corners = padding_mode, align_corners

    def forward(self, input, grid):
        return dgm_fast.grid_sample_3d(input, grid, padding_mode=self.padding_mode, align_corners=self.align_corners)


class KeypointWarp(torch.nn.Module):
    def __init__(self, **options):
        super().__init__()
        self.options = options

    def forward(self, feature, kp_source, kp_driving, mask, jacobian=None):
        return dgm_fast.keypoint_warp_3d(feature, kp_source, kp_driving, mask, jacobian=jacobian, **self.options)


class MotionFeatures(torch.nn.Module):
    def __init__(self, align_corners: bool):
        super().__init__()
        self.align_corners = align_corners

    def forward(self, feature, kp_source, kp_driving, jacobian):
        return dgm_fast.sparse_motion_features(feature, kp_source, kp_driving, jacobian=jacobian, variance=0.05,
                                               align_corners=self.align_corners)


def _session(ort, model, args, **kwargs):
    """onnxruntime's session on the ONNX export of ``model``, which must hold standard operators only."""
    import onnx

    proto = warp_export.export_onnx(model.eval(), args, **kwargs).model_proto
    onnx.checker.check_model(proto, full_check=True)
    assert {o.domain for o in proto.opset_import} == {""}
    assert {n.domain for n in proto.graph.node} == {""} and not proto.functions
    assert "GridSample" in {n.op_type for n in proto.graph.node}
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _run(session, args) -> list[torch.Tensor]:
    feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)}
    return [torch.from_numpy(o) for o in session.run(None, feeds)]


def _keypoints(n, k, volume=(4, 5, 6), dtype=torch.float32, seed=0):
    """kp_source, kp_driving (N, K, 3), logits (N, K + 1, *volume) and Jacobians near I (N, K, 3, 3)."""
    kp_source = make_tensor((n, k, 3), dtype, scale=0.6, seed=seed)
    kp_driving = kp_source + make_tensor((n, k, 3), dtype, scale=0.2, seed=seed + 1)
    logits = make_tensor((n, k + 1, *volume), dtype, scale=2.0, seed=seed + 2)
    jacobian = torch.eye(3, dtype=dtype) + make_tensor((n, k, 3, 3), dtype, scale=0.2, seed=seed + 3)
    return kp_source, kp_driving, logits, jacobian


# --- ONNX, under onnxruntime ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def grid_sample_session(ort):
    """The session of GridSample(padding_mode, align_corners), exported once with every size dynamic."""
    sessions = {}
    dynamic = ({i: torch.export.Dim.DYNAMIC for i in (0, 2, 3, 4)}, {i: torch.export.Dim.DYNAMIC for i in range(4)})

    def get(padding_mode, align_corners):
        if (padding_mode, align_corners) not in sessions:
            args = (make_tensor((2, 3, 4, 5, 6)), make_tensor((2, 3, 4, 5, 3)))
            sessions[padding_mode, align_corners] = _session(ort, GridSample(padding_mode, align_corners), args,
                                                             dynamic_shapes=dynamic)
        return sessions[padding_mode, align_corners]

    return get


@pytest.mark.parametrize("padding_mode,align_corners", OPTIONS)
def test_grid_sample_matches_eager(grid_sample_session, padding_mode, align_corners):
    """GridSample equals eager on a grid about half outside [-1, 1], some of it past one reflection."""
    input, grid = make_tensor((2, 3, 4, 5, 6), seed=1), make_tensor((2, 3, 4, 5, 3), scale=1.5, seed=2)
    assert (grid.abs() > 1).float().mean() > 0.4 and (grid.abs() > 3).any()
    (got,) = _run(grid_sample_session(padding_mode, align_corners), (input, grid))
    expect = dgm_fast.grid_sample_3d(input, grid, padding_mode=padding_mode, align_corners=align_corners)
    torch.testing.assert_close(got, expect, **TOL[torch.float32])


def _planted(grid: torch.Tensor, values) -> torch.Tensor:
    """``grid`` with each of ``values`` planted on each axis (x, y, z), one voxel apiece."""
    grid = grid.clone()
    for i, value in enumerate(values):
        for axis in range(3):
            grid.view(-1, 3)[3 * i + axis, axis] = value
    return grid


@pytest.mark.parametrize("padding_mode,align_corners", OPTIONS)
def test_grid_sample_special_values_match_eager(grid_sample_session, padding_mode, align_corners):
    """NaN and infinities (and, but with reflection, coordinates whose positions reach 2**24 or
    overflow) sample what eager does, where onnxruntime alone casts them to int64 unchecked; the
    depth axis has one voxel, where with align_corners every finite z samples it and a non-finite
    one reads nothing (zeros). Huge coordinates are left out with reflection: torch's sample there
    is decided by the rounding of the position (dgm_fast/warp/export.py, ``_grid_sample``)."""
    huge = [] if padding_mode == "reflection" else [1e8, -1e8, 1e30, -1e30, 3e38]
    input = make_tensor((2, 3, 1, 5, 6), seed=3)
    grid = _planted(make_tensor((2, 3, 4, 5, 3), scale=0.8, seed=4), [NAN, INF, -INF, *huge])
    (got,) = _run(grid_sample_session(padding_mode, align_corners), (input, grid))
    expect = dgm_fast.grid_sample_3d(input, grid, padding_mode=padding_mode, align_corners=align_corners)
    torch.testing.assert_close(got, expect, **TOL[torch.float32])


@pytest.mark.parametrize("with_jacobian,mask_is_logits,padding_mode,align_corners,return_deformation", [
    (True, True, "zeros", False, True),
    (True, False, "border", True, False),
    (False, True, "reflection", True, True),
    (False, False, "reflection", False, False),
])
def test_keypoint_warp_matches_eager(ort, with_jacobian, mask_is_logits, padding_mode, align_corners,
                                     return_deformation):
    """Output (and deformation) equal eager; the feature's volume differs from the mask's."""
    kp_source, kp_driving, logits, jacobian = _keypoints(2, 3)
    mask = logits if mask_is_logits else torch.softmax(logits, dim=1)
    args = (make_tensor((2, 3, 3, 4, 5), seed=5), kp_source, kp_driving, mask, *([jacobian] if with_jacobian else []))
    model = KeypointWarp(mask_is_logits=mask_is_logits, padding_mode=padding_mode, align_corners=align_corners,
                         return_deformation=return_deformation)
    expect = model(*args)
    got = _run(_session(ort, model, args), args)
    torch.testing.assert_close(got, list(expect) if return_deformation else [expect], **TOL[torch.float32])


def test_keypoint_warp_exports_float64_with_dynamic_shapes(ort):
    """One export serves other batch sizes and mask volumes, in float64 (constants follow the dtype)."""
    dynamic = torch.export.Dim.DYNAMIC
    model = KeypointWarp(mask_is_logits=True, padding_mode="border")
    shapes = ({0: dynamic}, {0: dynamic}, {0: dynamic}, {0: dynamic, 2: dynamic, 3: dynamic, 4: dynamic},
              {0: dynamic})
    session = None
    for n, volume in ((2, (4, 5, 6)), (3, (2, 7, 3))):
        kp_source, kp_driving, logits, jacobian = _keypoints(n, 3, volume, torch.float64, seed=n)
        args = (make_tensor((n, 3, 3, 4, 5), torch.float64, seed=7), kp_source, kp_driving, logits, jacobian)
        session = session or _session(ort, model, args, dynamic_shapes=shapes)
        (got,) = _run(session, args)
        torch.testing.assert_close(got, model(*args), **TOL[torch.float64])


def test_sparse_motion_features_match_eager(ort):
    kp_source, kp_driving, _, jacobian = _keypoints(2, 3)
    args = (make_tensor((2, 2, 4, 5, 6), seed=6), kp_source, kp_driving, jacobian)
    model = MotionFeatures(align_corners=True)
    (got,) = _run(_session(ort, model, args), args)
    torch.testing.assert_close(got, model(*args), **TOL[torch.float32])


# --- torch.export and the optional dependencies -----------------------------------------------------
class Warps(torch.nn.Module):
    def forward(self, input, grid, kp_source, kp_driving, mask, jacobian):
        warped = dgm_fast.keypoint_warp_3d(input, kp_source, kp_driving, mask, jacobian=jacobian, mask_is_logits=True)
        return dgm_fast.grid_sample_3d(warped, grid, padding_mode="reflection", align_corners=True)


def test_torch_export_keeps_the_ops_and_runs_as_eager():
    kp_source, kp_driving, logits, jacobian = _keypoints(2, 3)
    args = (make_tensor((2, 3, 3, 4, 5), seed=9), make_tensor((2, 2, 3, 4, 3), scale=1.5, seed=10), kp_source,
            kp_driving, logits, jacobian)
    ep = torch.export.export(Warps(), args)
    targets = {n.target for n in ep.graph.nodes if n.op == "call_function"}
    assert {torch.ops.dgm_fast.keypoint_warp_3d.default, torch.ops.dgm_fast.grid_sample_3d.default} <= targets
    torch.testing.assert_close(ep.module()(*args), Warps()(*args), atol=0, rtol=0)


@pytest.mark.parametrize("module", ["onnx", "onnxscript"])
def test_a_missing_optional_dependency_names_the_extra(monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    match = rf"needs {module}: install .*`pip install dgm_fast\[export\]`"
    with pytest.raises(ImportError, match=match):
        warp_export.onnx_translation_table()
    with pytest.raises(ImportError, match=match):
        warp_export.export_onnx(GridSample("zeros", False), (torch.zeros(1, 1, 2, 2, 2), torch.zeros(1, 1, 1, 1, 3)))


def test_an_opset_without_5d_grid_sample_is_refused():
    with pytest.raises(ValueError, match="^opset_version must be at least 20"):
        warp_export.export_onnx(GridSample("zeros", False), (torch.zeros(1, 1, 2, 2, 2), torch.zeros(1, 1, 1, 1, 3)),
                                opset_version=18)
