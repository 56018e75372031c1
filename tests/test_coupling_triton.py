"""The Triton whole coupling flow (kernels/coupling.py: ``coupling_flow_triton`` and its backward)
against its specification, ``coupling_flow_reference`` (dgm_fast/coupling/reference.py).

On CPU it runs under the Triton interpreter (tests/conftest.py). test_op_contract.py and
test_op_properties.py run it through the ops on the shared samples and on fuzzed flows (every scale,
activation and width, non-finite inputs); here the launchers are called directly, with outputs
poisoned with NaN: several programs, the backward's programs each looping over several row blocks
(their weight-gradient partials summed), the GLF size's round trip, bad input, and both kernels
compiled for a GPU.
"""

from __future__ import annotations

import json

import pytest
import torch

from dgm_fast.coupling.op import FLOW, _flow_backward_reference, saved_size
from dgm_fast.coupling.reference import ACTIVATIONS, SCALES, coupling_flow_reference
from helpers import TOL, flow_parameters, make_tensor, ptxas_spill_bytes, run_ptx_script

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if FLOW.availability(torch.device(DEVICE))["triton"] is not None:
    pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1", allow_module_level=True)

from dgm_fast.kernels import coupling as triton_coupling  # noqa: E402  (after the interpreter check)
from dgm_fast.kernels import mlp_tiles  # noqa: E402

DTYPES = [torch.float32, torch.float64]
ACT_CODES = {name: i for i, name in enumerate(ACTIVATIONS)}


def nan_like(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


def forward(z, params, scale, clamp, act, inverse=False, store=True):
    """(out, logdet, saved) of the Triton kernel."""
    out, logdet = nan_like(z.shape, z.dtype), nan_like(z.shape[:1], z.dtype)
    saved = nan_like((saved_size(z, params[0], params[2], inverse, store),), z.dtype)
    triton_coupling.coupling_flow_triton(z, *params, out, logdet, saved, SCALES.index(scale), clamp, ACT_CODES[act],
                                         inverse, store)
    return out, logdet, saved


def backward(grad_u, grad_logdet, saved, params, scale, clamp, act):
    """(grad_z, grad_weights, grad_biases) of the Triton kernel."""
    grad_z = nan_like(grad_u.shape, grad_u.dtype)
    grad_w, grad_b = ([nan_like(p.shape, p.dtype) for p in ps] for ps in params[:2])
    triton_coupling.coupling_flow_backward_triton(grad_u, grad_logdet, saved, *params, grad_z, grad_w, grad_b,
                                                  SCALES.index(scale), clamp, ACT_CODES[act], True)
    return grad_z, grad_w, grad_b


def flow_case(batch, dim, n_blocks, hidden, layers, dtype, seed=0):
    z = make_tensor((batch, dim), dtype, DEVICE, seed=seed)
    return z, flow_parameters(dim, n_blocks, hidden, layers, dtype, DEVICE, seed=seed + 1)


def assert_flow_matches(z, params, scale, clamp, act, dtype):
    """Both directions (with the saved activations) and the backward equal the reference's."""
    for inverse in (False, True):
        got = forward(z, params, scale, clamp, act, inverse)
        for g, e in zip(got, coupling_flow_reference(z, *params, scale, clamp, act, inverse, True)):
            torch.testing.assert_close(g, e, **TOL[dtype])
    saved = coupling_flow_reference(z, *params, scale, clamp, act, False, False)[2]
    grads = make_tensor(tuple(z.shape), dtype, DEVICE, seed=7), make_tensor(tuple(z.shape[:1]), dtype, DEVICE, seed=8)
    got = backward(*grads, saved, params, scale, clamp, act)
    expect = _flow_backward_reference(*grads, saved, *params, scale, clamp, act, False)
    torch.testing.assert_close(got[0], expect[0], **TOL[dtype])
    for g, e in zip([*got[1], *got[2]], [*expect[1], *expect[2]]):
        torch.testing.assert_close(g, e, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_several_programs(monkeypatch, dtype):
    """37 rows in programs of 16 (a GPU too takes 16 rows a program at this batch): row offsets and a
    partial last program in every pass (the interpreter runs programs one after another, so only a
    GPU run would show programs sharing scratch)."""
    monkeypatch.setattr(mlp_tiles, "INTERPRETER_MAX_M", 16)
    z, params = flow_case(37, 7, 2, 5, 2, dtype)
    assert_flow_matches(z, params, "atan", 2.0, "leaky_relu", dtype)


def test_backward_programs_loop_over_row_blocks(monkeypatch):
    """With room for two weight-gradient partials, two programs share three row blocks: each adds
    into its own partial, and the two are summed."""
    monkeypatch.setattr(mlp_tiles, "INTERPRETER_MAX_M", 16)
    z, params = flow_case(37, 6, 1, 4, 1, torch.float64)
    shape = triton_coupling._flow_shape(params[0], params[2])
    per_program = 2 * shape.n_blocks * (shape.w_stride + shape.b_stride) * z.element_size()
    monkeypatch.setattr(triton_coupling, "PARTIAL_BYTES", 2 * per_program)
    kernel, grids = triton_coupling._coupling_flow_backward_kernel, []

    class Recorder:
        def __getitem__(self, grid):
            grids.append(grid)
            return kernel[grid]

    monkeypatch.setattr(triton_coupling, "_coupling_flow_backward_kernel", Recorder())
    assert_flow_matches(z, params, "tanh", 0.7, "elu", torch.float64)
    assert grids == [(2,)]


def test_glf_size_round_trip():
    """GLF's latent flow (latent 64, 4 blocks, hidden 64, atan, float32): inverse(forward(z)) = z to 1e-5."""
    z, params = flow_case(40, 64, 4, 64, 2, torch.float32)
    params = ([0.1 * w for w in params[0]], *params[1:])
    u, logdet, _ = forward(z, params, "atan", 2.0, "relu")
    back, inv_logdet, _ = forward(u, params, "atan", 2.0, "relu", inverse=True)
    torch.testing.assert_close(back, z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(inv_logdet, -logdet, atol=1e-5, rtol=1e-5)
    expect = coupling_flow_reference(z, *params, "atan", 2.0, "relu", False, False)
    torch.testing.assert_close(u, expect[0], **TOL[torch.float32])


def test_bad_input():
    z, (weights, biases, perms) = flow_case(3, 6, 1, 4, 2, torch.float32)
    outputs = z.clone(), z[:, 0].clone(), z.new_empty(0)
    with pytest.raises(ValueError, match="activation code"):
        triton_coupling.coupling_flow_triton(z, weights, biases, perms, *outputs, 1, 2.0, len(ACTIVATIONS), True, False)
    with pytest.raises(ValueError, match="scale code"):
        triton_coupling.coupling_flow_triton(z, weights, biases, perms, *outputs, len(SCALES), 2.0, 0, True, False)
    uneven = [w[:, :3] if i % 3 == 1 else (w[:3] if i % 3 == 0 else w) for i, w in enumerate(weights)]
    with pytest.raises(ValueError, match="one hidden width"):
        forward(z, (uneven, biases, perms), "atan", 2.0, "relu")


# Compiled for sm_90 without a GPU (helpers.PTX_PREAMBLE), with the GPU's block sizes: GLF's flow
# (latent 64, two hidden layers) at hidden 64, batch 4096, and hidden 256, batch 1.
COMPILE_PTX = """
import types
from dgm_fast.kernels import coupling

record(coupling, "_coupling_flow_kernel", "_coupling_flow_backward_kernel")
torch.cuda.get_device_properties = lambda device: types.SimpleNamespace(multi_processor_count=132)
for hidden, batch in ((64, 4096), (256, 1)):  # a batch of 1 is an int Triton makes a constexpr
    z = torch.empty(batch, 64, device="meta")  # meta tensors: shapes, no data
    weights, biases = [], []
    for c in range(8):
        for n_in, n_out in ((32, hidden), (hidden, hidden), (hidden, 64)):
            weights.append(torch.empty(n_out, n_in, device="meta"))
            biases.append(torch.empty(n_out, device="meta"))
    perms = [torch.empty(64, dtype=torch.int64, device="meta") for _ in range(4)]
    saved = torch.empty(4 * batch * 64, device="meta")
    coupling.coupling_flow_triton(z, weights, biases, perms, z, z[:, 0], saved, 1, 2.0, 0, False, False)
    coupling.coupling_flow_backward_triton(z, z[:, 0], saved, weights, biases, perms, z, weights, biases, 1, 2.0, 0,
                                           False)
print(json.dumps([(k.fn.__name__, kw["BLOCK_M"], ptx_for_sm90(k, a, kw))
                  for k, a, kw in launches]))
"""


def test_kernels_compile_for_a_gpu(tmp_path):
    """Both kernels compile for sm_90 at GLF's widths with IEEE division, their staging barriers and
    (where CUDA's ptxas is here to assemble them) no register spills."""
    compiled = json.loads(run_ptx_script(COMPILE_PTX, tmp_path))
    assert [name for name, _, _ in compiled] == ["_coupling_flow_kernel", "_coupling_flow_backward_kernel"] * 2
    for name, block_m, code in compiled:
        assert block_m == mlp_tiles.MIN_DOT, name  # 32-row programs would leave SMs idle (<= 128 < 132)
        assert "div.full.f32" not in code and "div.approx.f32" not in code, name
        assert "bar.sync" in code, name
        assert ptxas_spill_bytes(code, tmp_path) in (None, 0), name
