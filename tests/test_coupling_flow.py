"""CouplingFlow (dissertation §3.2, Figure 3.1(b)): the fused whole-flow op against the same
module run coupling by coupling, the change of variables, inverses and gradients."""

from __future__ import annotations

import math

import pytest
import torch

import dgm_fast
from dgm_fast.coupling.op import FLOW
from dgm_fast.coupling.reference import SCALES
from dgm_fast.nn import CouplingFlow
from helpers import backend_fixture, gradcheck_fast_mode

_C = dgm_fast._extension._C
backend = backend_fixture(FLOW)


def make_flow(dim=6, device="cpu", dtype=torch.float64, seed=0, std=0.4, **kwargs) -> CouplingFlow:
    """A flow with random weights (a fresh one is the identity: its last layers are zero)."""
    torch.manual_seed(seed)
    flow = CouplingFlow(dim, **{"n_blocks": 2, "hidden": 7} | kwargs).to(device, dtype)
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0.0, std)
    return flow


def per_coupling(flow: CouplingFlow, monkeypatch) -> CouplingFlow:
    """The same module made to run coupling by coupling (affine_coupling ops, nn.Linear subnets)."""
    monkeypatch.setattr(flow, "fused", lambda z: False)
    return flow


@pytest.mark.parametrize("scale", SCALES)
def test_fused_equals_the_module_coupling_by_coupling(backend, scale, monkeypatch):
    device, _ = backend
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        for dim, kwargs in ((6, {}), (7, dict(n_hidden_layers=1, activation="tanh")),
                            (64, dict(n_blocks=4, hidden=64, activation="leaky_relu", std=0.1)), (5, dict(activation="elu"))):
            flow = make_flow(dim, device, dtype, scale=scale, **{"std": 0.15 if scale == "exp" else 0.4} | kwargs)
            z = torch.randn(33, dim, device=device, dtype=dtype)
            assert flow.fused(z)
            fused = (flow(z), flow.inverse(z))
            flow = per_coupling(flow, monkeypatch)
            unfused = (flow(z), flow.inverse(z))
            monkeypatch.undo()
            torch.testing.assert_close(fused, unfused, atol=tol, rtol=tol)


@pytest.mark.skipif(_C is None, reason="the C++ extension is not built")
@pytest.mark.parametrize("scale", SCALES)
def test_portable_tiles_equal_the_module_coupling_by_coupling(scale, monkeypatch):
    """The C++ flow's portable build (run only on CPUs without AVX2 + FMA), forced here: forward and
    inverse in both dtypes and every gradient in float64, full and partial tiles of 32 rows, odd widths."""
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        for dim, batch, kwargs in ((64, 64, dict(n_blocks=4, hidden=64, std=0.1)), (7, 37, dict(hidden=9))):
            unbounded = scale in ("exp", "sigmoid")  # their inverses can overflow
            flow = make_flow(dim, "cpu", dtype, scale=scale, **{"std": 0.15 if unbounded else 0.4} | kwargs)
            z = torch.randn(batch, dim, dtype=dtype)

            def run():
                with torch.no_grad():
                    out = [flow(z), flow.inverse(z)]
                if dtype == torch.float64:  # float32 sums of 64 rows differ by more than 1e-5 in their order
                    flow.zero_grad()
                    zg = z.clone().requires_grad_()
                    (-flow.log_prob(zg).sum()).backward()
                    out += [zg.grad] + [q.grad.clone() for q in flow.parameters()]
                return out

            _C.set_coupling_flow_portable(True)
            try:
                assert _C.coupling_flow_isa() == "portable"
                portable = run()
            finally:
                _C.set_coupling_flow_portable(False)
            per_coupling(flow, monkeypatch)
            torch.testing.assert_close(portable, run(), atol=tol, rtol=tol)
            monkeypatch.undo()


@pytest.mark.parametrize("recompute", [False, True], ids=["stored", "recomputed"])
def test_float32_gradients_equal_float64_ones_normwise(backend, recompute):
    """At GLF's size, every float32 gradient within 1e-5 of the float64 one in norm (elementwise, sums
    with cancellation are only good to eps times the sum of their terms' magnitudes)."""
    device, _ = backend
    flow = make_flow(64, device, torch.float64, n_blocks=4, hidden=64, std=0.1, recompute=recompute)
    z = torch.randn(256, 64, device=device, dtype=torch.float64)

    def grads(module, z):
        module.zero_grad()
        z = z.clone().requires_grad_()
        (-module.log_prob(z).mean()).backward()
        return [z.grad] + [p.grad.clone() for p in module.parameters()]

    exact = grads(flow, z)
    for got, want in zip(grads(flow.float(), z.float()), exact):
        assert (got.double() - want).norm() <= 1e-5 * want.norm()


def test_activations_are_kept_only_for_a_backward_and_by_the_size_rule(monkeypatch):
    from dgm_fast.coupling import flow as flow_module

    kept = []
    op = flow_module.FLOW
    monkeypatch.setattr(flow_module, "FLOW", lambda *args: kept.append(args[-1]) or op(*args))
    flow = CouplingFlow(64, hidden=64)  # 1792 activation values per row in float32: the rule's 4 MiB at 585 rows
    for batch in (585, 586):
        flow(torch.randn(batch, 64))
        with torch.no_grad():
            flow(torch.randn(batch, 64))
    flow.recompute = False
    flow(torch.randn(586, 64))
    assert kept == [True, False, False, False, True]


@pytest.mark.parametrize("recompute", [False, True, None], ids=["stored", "recomputed", "auto"])
def test_parameter_gradients_equal_the_module_coupling_by_coupling(backend, recompute, monkeypatch):
    device, name = backend
    # hidden 200 (170k parameters, whose gradients the C++ backward's threads sum in shares) is too
    # slow for the Triton interpreter
    for hidden in (7,) if name == "triton" else (7, 200):
        flow = make_flow(8, device, torch.float64, scale="atan", hidden=hidden, n_hidden_layers=2,
                         recompute=recompute, std=0.4 if hidden < 10 else 0.1)
        _assert_gradients_equal_coupling_by_coupling(flow, monkeypatch)


def _assert_gradients_equal_coupling_by_coupling(flow, monkeypatch):
    device = next(flow.parameters()).device

    def grads(z):
        flow.zero_grad()
        (-flow.log_prob(z).mean()).backward()
        return [z.grad] + [p.grad.clone() for p in flow.parameters()]

    # one row: views of a row are contiguous, so nothing may alias by accident; 70: tiles of 32 rows
    # shared among threads, whose gradient sums are added up
    for batch in (17, 1, 70):
        z = torch.randn(batch, 8, device=device, dtype=torch.float64)
        fused = grads(z.clone().requires_grad_())
        per_coupling(flow, monkeypatch)
        torch.testing.assert_close(fused, grads(z.clone().requires_grad_()), atol=1e-12, rtol=1e-10)
        monkeypatch.undo()


class _Doubled(torch.nn.Module):
    def forward(self, w):
        return 2 * w


def test_a_parametrized_weight_is_what_the_fused_flow_reads(backend):
    """A weight computed by torch.nn.utils.parametrize (not in the Linear's ``_parameters``): the fused
    flow uses the computed weight and its gradient reaches the parametrization's original."""
    device, _ = backend
    flow = make_flow(6, device, torch.float64)
    plain = make_flow(6, device, torch.float64)
    with torch.no_grad():
        plain.subnets[1][0].weight.mul_(2)
    torch.nn.utils.parametrize.register_parametrization(flow.subnets[1][0], "weight", _Doubled())
    z = torch.randn(5, 6, device=device, dtype=torch.float64)
    torch.testing.assert_close(flow(z), plain(z), atol=1e-12, rtol=1e-12)
    flow(z)[1].sum().backward()
    plain(z)[1].sum().backward()
    original = flow.subnets[1][0].parametrizations.weight.original
    torch.testing.assert_close(original.grad, 2 * plain.subnets[1][0].weight.grad, atol=1e-12, rtol=1e-12)


class _Inverse(torch.nn.Module):
    def __init__(self, flow):
        super().__init__()
        self.flow = flow

    def forward(self, u):
        return self.flow.inverse(u)


def test_gradcheck_both_directions_and_double_backward(backend):
    """In z and in a weight (through torch.func.functional_call), both directions, twice."""
    device, name = backend
    fast = gradcheck_fast_mode(device, name)
    flow = make_flow(4, device, torch.float64, n_blocks=1, hidden=3, scale="tanh")
    z = torch.randn(3, 4, device=device, dtype=torch.float64, requires_grad=True)
    w = flow.subnets[1][0].weight.detach().clone().requires_grad_()
    for module, name in ((flow, "subnets.1.0.weight"), (_Inverse(flow), "flow.subnets.1.0.weight")):
        def f(z, w, module=module, name=name):
            return torch.func.functional_call(module, {name: w}, (z,))

        assert torch.autograd.gradcheck(f, (z, w), fast_mode=fast)
        assert torch.autograd.gradgradcheck(f, (z, w), fast_mode=fast)


@pytest.mark.parametrize("scale", SCALES)
def test_logdet_is_log_abs_det_jacobian(backend, scale):
    """The change of variables, eq. (2.7): logdet = log|det du/dz|, and the inverse's is its negative."""
    device, _ = backend
    flow = make_flow(6, device, scale=scale)
    z = torch.randn(4, 6, device=device, dtype=torch.float64)
    u, logdet = flow(z)
    for row in range(4):
        jac = torch.func.jacrev(lambda v: flow(v[None])[0][0])(z[row])
        torch.testing.assert_close(logdet[row], torch.linalg.slogdet(jac).logabsdet, atol=1e-10, rtol=1e-10)
    back, inv_logdet = flow.inverse(u)
    torch.testing.assert_close(back, z, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(inv_logdet, -logdet, atol=1e-12, rtol=1e-12)


def test_inverse_of_forward_in_float32_glf_size(backend):
    device, _ = backend
    flow = make_flow(64, device, torch.float32, n_blocks=4, hidden=64, std=0.1)
    z = torch.randn(256, 64, device=device)
    torch.testing.assert_close(flow.inverse(flow(z)[0])[0], z, atol=1e-5, rtol=1e-5)


def test_a_fresh_flow_is_the_identity_and_log_prob_is_the_gaussian():
    flow = CouplingFlow(10, seed=3)
    z = torch.randn(5, 10)
    u, logdet = flow(z)
    assert torch.equal(logdet, torch.zeros(5))
    assert torch.equal(u.sort(dim=1).values, z.sort(dim=1).values)  # only permuted
    expect = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(dim=1)
    torch.testing.assert_close(flow.log_prob(z), expect)


def test_permutations_follow_the_seed():
    a, b, c = CouplingFlow(8, seed=1), CouplingFlow(8, seed=1), CouplingFlow(8, seed=2)
    assert torch.equal(a.perm1, b.perm1) and not torch.equal(a.perm1, c.perm1)
    assert torch.equal(a.perm0[a.inv_perm0], torch.arange(8))


def test_large_latents_use_per_coupling_ops():
    # weights of std 0.1 as at GLF size: the float32 round trip's error grows with the scales
    # e^{+-l}, and at std 0.4 even the reference misses 1e-5 here (5.7e-5 with AMD's MKL)
    flow = make_flow(130, dtype=torch.float32, n_blocks=1, hidden=8, std=0.1)
    z = torch.randn(3, 130)
    assert not flow.fused(z)
    torch.testing.assert_close(flow.inverse(flow(z)[0])[0], z, atol=1e-5, rtol=1e-5)


def test_sample_draws_from_the_generator():
    flow = make_flow(6, dtype=torch.float32)
    a = flow.sample(5, generator=torch.Generator().manual_seed(0))
    b = flow.sample(5, generator=torch.Generator().manual_seed(0))
    assert a.shape == (5, 6) and torch.equal(a, b)
    assert flow.sample(0).shape == (0, 6)


def test_an_overflowing_inverse_is_reported():
    flow = CouplingFlow(4, n_blocks=1, scale="exp")
    with torch.no_grad():
        flow.subnets[1][-1].bias[:2] = -100.0  # log-scale -100: the inverse multiplies by e^100
    with pytest.raises(FloatingPointError, match="inverse overflowed"):
        flow.inverse(-torch.ones(2, 4))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(dim=1), ValueError, "^dim must be >= 2"),
        (dict(dim=4.0), TypeError, "^dim must be an int"),
        (dict(dim=4, n_blocks=0), ValueError, "^n_blocks must be >= 1"),
        (dict(dim=4, hidden=0), ValueError, "^hidden must be >= 1"),
        (dict(dim=4, scale="softplus"), ValueError, "^scale must be one of"),
        (dict(dim=4, activation="gelu"), ValueError, "^activation must be one of"),
        (dict(dim=4, clamp=0.0), ValueError, "^clamp must be in"),
        (dict(dim=4, seed=-1), ValueError, "^seed must be in"),
        (dict(dim=4, recompute=1), TypeError, "^recompute must be a bool or None"),
    ],
)
def test_bad_construction_names_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        CouplingFlow(**kwargs)


def test_bad_input_names_the_argument():
    flow = CouplingFlow(4)
    with pytest.raises(ValueError, match=r"^z must have shape \(batch, 4\), got \(3, 5\)"):
        flow(torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"^u must have shape \(batch, 4\)"):
        flow.inverse(torch.zeros(4))
    with pytest.raises(TypeError, match="^z must have a dtype in"):
        flow(torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="dtype and device of the flow's parameters"):
        flow(torch.zeros(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="^n must be >= 0"):
        flow.sample(-1)
    assert math.isfinite(float(flow.log_prob(torch.zeros(1, 4))))


def test_the_op_rejects_a_permutation_that_is_not_one():
    """The op is reachable without the module: its kernel checks what its raw loops rely on."""
    flow = make_flow(4, dtype=torch.float32, n_blocks=1)
    layers = [layer for subnet in flow.subnets for layer in subnet]
    weights, biases = [x.weight.detach() for x in layers], [x.bias.detach() for x in layers]
    for perm in (torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 2, 7])):
        with pytest.raises(RuntimeError, match="permutation"):
            torch.ops.dgm_fast.coupling_flow(torch.zeros(2, 4), weights, biases, [perm], "atan", 2.0, "relu",
                                             True, True)
    with pytest.raises(RuntimeError, match="layer 0 of coupling 0"):
        torch.ops.dgm_fast.coupling_flow(torch.zeros(2, 4), weights[::-1], biases, [flow.perm0], "atan", 2.0,
                                         "relu", False, True)
