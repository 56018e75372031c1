"""The contract every registered op keeps, on every backend that runs here.

Reference equivalence on the samples of tests/helpers.py (outputs poisoned
with NaN first), torch.library.opcheck, torch.compile(fullgraph=True),
version counters, inference tensors, make_fx / jit.trace / export, forward
AD and the torch.func transforms. Family test files hold only what is
particular to a family.
"""

from __future__ import annotations

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import dgm_fast
from dgm_fast import _extension, _op
from helpers import OP_SAMPLES, TOL, clone_args, dtypes_for, gradcheck_fast_mode, significant_strides

OPS = _op.registered_ops()
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
CASES = [(op, d, b) for op in OPS for d in DEVICES for b, why in op.availability(torch.device(d)).items()
         if why is None]
NATIVE_CASES = [c for c in CASES if c[2] != "reference"]


def case_id(case):
    return f"{case[0].name}-{case[1]}-{case[2]}"


@pytest.fixture(params=CASES, ids=case_id)
def case(request):
    op, device, backend = request.param
    with dgm_fast.use_backend(backend):
        yield op, device, backend


@pytest.fixture(params=NATIVE_CASES, ids=case_id)
def native_case(request):
    op, device, backend = request.param
    with dgm_fast.use_backend(backend):
        yield op, device, backend


def first_sample(op, device, dtype=torch.float32, index=4):
    return clone_args(OP_SAMPLES[op.name](device, dtype)[index])


def run(op, args):
    """The op's result: its output(s), or the argument it writes."""
    out = op(*args)
    return args[op.mutated] if op.mutated is not None else out


def outputs(result) -> tuple:
    """The op's output tensors, Tensor[] outputs flattened."""
    if isinstance(result, torch.Tensor):
        return (result,)
    return tuple(t for r in result for t in outputs(r))


def float_inputs(op, args) -> tuple[list[torch.Tensor], object]:
    """The op's floating tensor inputs, flattened out of any Tensor[] argument, and a function
    that rebuilds the whole argument tuple from new values of them (other inputs kept)."""
    shapes, floats = [], []
    for a in args[: op.n_inputs]:
        items = [a] if isinstance(a, torch.Tensor) else list(a)
        shapes.append(None if isinstance(a, torch.Tensor) else len(items))
        floats += [t for t in items if t.is_floating_point()]

    def rebuild(values):
        values, out = iter(values), []
        for a, n in zip(args[: op.n_inputs], shapes):
            items = [next(values) if t.is_floating_point() else t for t in ([a] if n is None else a)]
            out.append(items[0] if n is None else items)
        return (*out, *args[op.n_inputs:])

    return floats, rebuild


def flat(result) -> torch.Tensor:
    """All outputs as one vector: what the single-output torch.func transforms take."""
    return torch.cat([o.reshape(-1) for o in outputs(result)])


def test_every_registered_op_has_samples_and_a_kernel_name():
    assert OPS, "no op registered"
    for op in OPS:
        assert op.name in OP_SAMPLES, f"add samples for {op.name} to tests/helpers.py"
        assert op.availability(torch.device("cpu"))["reference"] is None


def test_outputs_are_poisoned_for_the_tests():
    assert torch.isnan(_op.empty_output(torch.zeros(3))).all()
    if _extension._C is not None:
        assert _extension._C.poison_outputs()


def test_matches_reference(case):
    op, device, _ = case
    for dtype in dtypes_for(device):
        for args in OP_SAMPLES[op.name](device, dtype):
            expect = op.reference(*clone_args(args))
            got = run(op, clone_args(args))
            for g, e in zip(outputs(got), outputs(expect), strict=True):
                assert g.shape == e.shape and g.dtype == e.dtype and g.device == e.device
                assert significant_strides(g) == significant_strides(e), "memory format differs from the reference"
                torch.testing.assert_close(g, e, equal_nan=True, **TOL[dtype])


def test_opcheck(native_case):
    op, device, backend = native_case
    for index in (0, 4, -1):  # default options, every option, channels_last
        args = first_sample(op, device, torch.float64, index)
        torch.library.opcheck(op._op, clone_args(args))
        torch.library.opcheck(op._op_backend, (*clone_args(args), backend))


def test_compile_fullgraph_matches_eager(native_case):
    op, device, _ = native_case
    args = first_sample(op, device)
    # every case compiles the same lambda's code: without a reset the ops after the eighth hit
    # dynamo's recompile limit, which fullgraph=True turns into a failure
    torch.compiler.reset()
    compiled = torch.compile(lambda *a: run(op, a), fullgraph=True, dynamic=False)
    torch.testing.assert_close(compiled(*clone_args(args)), run(op, clone_args(args)), atol=0, rtol=0)


def test_version_counters(case):
    op, device, _ = case
    args = first_sample(op, device)
    before = [t._version for t in args if isinstance(t, torch.Tensor)]
    run(op, args)
    after = [t._version for t in args if isinstance(t, torch.Tensor)]
    bumped = [b != a for b, a in zip(before, after)]
    assert bumped == [i == op.mutated for i in range(len(bumped))]


def test_autograd_sees_an_in_place_write_to_a_saved_tensor(case):
    op, device, _ = case
    if op.mutated is None:
        pytest.skip("not an in-place op")
    args = first_sample(op, device)
    w = torch.ones_like(args[op.mutated], requires_grad=True)
    loss = (w * args[op.mutated]).sum()  # saves the tensor the op then overwrites
    run(op, args)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_inference_tensors(case):
    op, device, _ = case
    with torch.inference_mode():
        args = first_sample(op, device)
        assert all(o.is_inference() for o in outputs(run(op, args)))
    if op.mutated is not None:
        with pytest.raises(RuntimeError, match="[Ii]nference tensor"):
            run(op, args)


def _is(op, func) -> bool:
    return getattr(getattr(func, "_schema", None), "name", None) == f"dgm_fast::{op.name}"


class _Logged(torch.Tensor):
    seen: list = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.seen.append(func)
        return super().__torch_function__(func, types, args, kwargs or {})


def test_modes_and_subclasses_see_the_op(native_case):
    """Calls that need no autograd take a shortcut below the Autograd key; torch function
    modes, dispatch modes and __torch_function__ subclasses must still see the op."""
    op, device, _ = native_case
    seen = []

    class FunctionMode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    class DispatchMode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    for mode in (FunctionMode, DispatchMode):
        seen.clear()
        with mode():
            run(op, first_sample(op, device))
        assert any(_is(op, f) for f in seen), f"{mode.__name__} did not see {op.name}"
    args = first_sample(op, device)
    _Logged.seen.clear()
    run(op, (args[0].as_subclass(_Logged), *args[1:]))
    assert any(_is(op, f) for f in _Logged.seen), "the subclass's __torch_function__ did not see the op"


@pytest.mark.skipif(_extension._C is None, reason="needs the compiled extension")
def test_below_autograd_call_checks_what_it_converts():
    call = _extension._C.BelowAutogradCall("dgm_fast::langevin_step", "")
    x = torch.zeros(3)
    good = (x, x, 0.1, 0.0, 0.0, 1.0, -1.0, 1.0, 0, 0, None)
    torch.testing.assert_close(call(*good), torch.ops.dgm_fast.langevin_step(*good), atol=0, rtol=0)
    assert call(x, x, 1, 0, 0, 1, -1, 1, 0, 0, None).shape == x.shape  # ints are floats, as in torch
    with pytest.raises(TypeError, match="takes 11 arguments, got 2"):
        call(x, x)
    with pytest.raises(TypeError, match="argument step_size has the wrong type: str"):
        call(x, x, "0.1", *good[3:])
    with pytest.raises(TypeError, match="argument seed has the wrong type: bool"):
        call(*good[:8], True, *good[9:])
    with pytest.raises(OverflowError):
        call(*good[:8], 2**63, *good[9:])
    with pytest.raises(RuntimeError, match="unavailable"):  # an error raised in a Python kernel
        _extension._C.BelowAutogradCall("dgm_fast::langevin_step", "backend")(*good, "cuda")
    with pytest.raises(RuntimeError, match="dgm_fast::nope"):
        _extension._C.BelowAutogradCall("dgm_fast::nope", "")


def test_make_fx_records_the_op(native_case):
    op, device, _ = native_case
    args = first_sample(op, device)
    graph = make_fx(lambda *a: run(op, a))(*clone_args(args))
    assert f"dgm_fast.{op.name}" in graph.code
    torch.testing.assert_close(graph(*clone_args(args)), run(op, clone_args(args)), atol=0, rtol=0)


def test_jit_trace_records_the_op(native_case):
    op, device, _ = native_case
    tensors, rebuild = float_inputs(op, first_sample(op, device))

    def fn(*t):
        return run(op, rebuild(t))

    traced = torch.jit.trace(fn, clone_args(tensors), check_trace=False)
    assert f"dgm_fast::{op.name}" in str(traced.graph)
    torch.testing.assert_close(traced(*clone_args(tensors)), fn(*clone_args(tensors)), atol=0, rtol=0)


def test_export(native_case):
    op, device, _ = native_case
    tensors, rebuild = float_inputs(op, first_sample(op, device))

    class Wrapper(torch.nn.Module):
        def forward(self, *t):
            return run(op, rebuild([x.clone() for x in t]))

    exported = torch.export.export(Wrapper(), clone_args(tensors))
    assert f"dgm_fast.{op.name}" in str(exported.graph)
    torch.testing.assert_close(exported.module()(*clone_args(tensors)), Wrapper()(*clone_args(tensors)),
                               atol=0, rtol=0)


def _differentiable(op):
    if op.mutated is not None:
        pytest.skip("in-place op: autograd goes through its out-of-place twin")
    if not op.differentiable:
        pytest.skip("a backward op: its inputs never require grad (double backward uses the PyTorch formula)")


def test_gradcheck(case):
    op, device, backend = case
    _differentiable(op)
    tensors, rebuild = float_inputs(op, first_sample(op, device, torch.float64, index=2))
    tensors = tuple(t.detach().requires_grad_() for t in tensors)
    fn = lambda *t: op(*rebuild(t))  # noqa: E731
    fast = gradcheck_fast_mode(device, backend)
    assert torch.autograd.gradcheck(fn, tensors, fast_mode=fast)
    assert torch.autograd.gradgradcheck(fn, tensors, fast_mode=fast)


def _forward_ad(fn, tensors):
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        duals = [fwAD.make_dual(t, torch.ones_like(t)) for t in tensors]
        return fwAD.unpack_dual(fn(*duals)).tangent


def _batched(tensors):
    return [torch.stack([t, 2 * t, -t]) for t in tensors]


# transform: (what torch.func / forward AD computes, the same from plain reverse-mode autograd
# of the op on the backend under test, i.e. through its registered backward formula)
TRANSFORMS = {
    "forward_ad": (_forward_ad, lambda fn, t: torch.autograd.functional.jvp(
        fn, tuple(t), tuple(torch.ones_like(x) for x in t))[1]),
    "jvp": (lambda fn, t: torch.func.jvp(fn, tuple(t), tuple(torch.ones_like(x) for x in t))[1],
            lambda fn, t: torch.autograd.functional.jvp(fn, tuple(t), tuple(torch.ones_like(x) for x in t))[1]),
    "grad": (lambda fn, t: torch.func.grad(lambda *a: fn(*a).sum(), argnums=tuple(range(len(t))))(*t),
             lambda fn, t: torch.autograd.grad(fn(*[x.requires_grad_() for x in t]).sum(), t, allow_unused=True,
                                               materialize_grads=True)),
    "jacrev": (lambda fn, t: torch.func.jacrev(fn, argnums=tuple(range(len(t))))(*t),
               lambda fn, t: torch.autograd.functional.jacobian(fn, tuple(t))),
    "vmap": (lambda fn, t: torch.func.vmap(fn)(*_batched(t)),
             lambda fn, t: torch.stack([fn(*row) for row in zip(*_batched(t))])),
}


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_forward_ad_and_torch_func(case, transform):
    """Transforms run the reference (the kernels have no batching or forward-AD rules); they must
    agree with what reverse-mode autograd and a loop compute through the backend under test."""
    op, device, _ = case
    _differentiable(op)
    tensors, rebuild = float_inputs(op, first_sample(op, device, torch.float64, index=2))
    fn = lambda *t: flat(op(*rebuild(t)))  # noqa: E731
    transformed, expected = TRANSFORMS[transform]
    torch.testing.assert_close(transformed(fn, clone_args(tensors)), expected(fn, clone_args(tensors)),
                               atol=1e-12, rtol=1e-12)
