"""Property-based tests: every native backend equals the reference on inputs hypothesis draws.

Each registered op has, in ``VALID``, a strategy of calls of its public
function (random shapes, layouts, dtypes, special values and options) and,
in ``INVALID``, a strategy of calls with one bad argument, which must raise
ValueError or TypeError naming it. A new op family adds its two strategies
there; ``test_every_registered_op_has_strategies`` fails until it does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dgm_fast
from dgm_fast import _op
from dgm_fast.coupling.reference import ACTIVATIONS, SCALES
from dgm_fast.ebm import mlp_energy_grad, mlp_energy_laplacian, mlp_energy_sample
from dgm_fast.ebm.reference import ACTIVATIONS as EBM_ACTIVATIONS
from dgm_fast.nn import CouplingFlow
from helpers import TOL, dtypes_for, mlp_parameters, significant_strides

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
NATIVE_CASES = [(op.name, d, b) for op in _op.registered_ops() for d in DEVICES
                for b, why in op.availability(torch.device(d)).items() if why is None and b != "reference"]
# every launch under the Triton interpreter is slow: keep its tensors small
MAX_NUMEL = {"triton": 1024}
DEFAULT_MAX_NUMEL = 4096
# the Triton interpreter computes with numpy, which warns on the overflows and NaNs these inputs are meant to make
pytestmark = pytest.mark.filterwarnings("ignore:.* encountered in :RuntimeWarning")
PROPERTY_SETTINGS = settings(
    max_examples=50, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- tensors -------------------------------------------------------------------
@dataclass(frozen=True)
class TensorSpec:
    """A tensor rebuilt identically on demand: N(0, scale) values from ``seed`` with
    ``specials`` planted at (flat index, value), cast to ``dtype``, then laid out:
    contiguous, permuted (``arg``: storage dim order), sliced (``arg``: steps),
    channels_last, or expanded (``arg``: the shape it is expanded from)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    layout: str = "contiguous"
    arg: tuple[int, ...] = ()
    seed: int = 0
    scale: float = 1.0
    specials: tuple[tuple[int, float], ...] = ()
    device: str = "cpu"

    def make(self) -> torch.Tensor:
        source = self.arg if self.layout == "expanded" else self.shape
        gen = torch.Generator().manual_seed(self.seed)
        vals = self.scale * torch.randn(source, generator=gen, dtype=torch.float64)
        flat = vals.view(-1)
        for i, v in self.specials:
            if flat.numel():
                flat[i % flat.numel()] = v
        return _LAYOUTS[self.layout](vals.to(self.dtype), self)

    def empty(self, shape) -> torch.Tensor:
        return torch.empty(shape, dtype=self.dtype, device=self.device)


def _permuted(vals, spec):
    inverse = sorted(range(len(spec.arg)), key=spec.arg.__getitem__)
    return spec.empty([vals.shape[p] for p in spec.arg]).permute(inverse).copy_(vals)


def _sliced(vals, spec):
    # every k-th element of a NaN-filled buffer: a backend that reads a gap gets NaN
    buf = spec.empty([d * k for d, k in zip(vals.shape, spec.arg)]).fill_(math.nan)
    return buf[tuple(slice(k - 1, None, k) for k in spec.arg)].copy_(vals)


_LAYOUTS = {
    "contiguous": lambda vals, spec: vals.to(spec.device),
    "permuted": _permuted,
    "sliced": _sliced,
    "channels_last": lambda vals, spec: vals.to(spec.device).contiguous(memory_format=torch.channels_last),
    "expanded": lambda vals, spec: vals.to(spec.device).expand(spec.shape),
}


def special_values(dtype: torch.dtype) -> list[float]:
    """NaN, infinities, signed zeros, the largest and smallest (subnormal) values of ``dtype``, and
    values that overflow 16-bit types."""
    info = torch.finfo(dtype)
    subnormal = info.smallest_normal * info.eps
    return [math.nan, math.inf, -math.inf, -0.0, 0.0, info.max, -info.max, subnormal, -subnormal,
            info.smallest_normal, 1e30, -1e30]


@st.composite
def shapes(draw, max_numel: int) -> tuple[int, ...]:
    """0 to 4 dims, often small, at most ``max_numel`` elements; one in eight is empty."""
    shape, budget = [], max_numel
    for _ in range(draw(st.integers(0, 4))):
        d = draw(st.integers(1, min(budget, 9)) | st.integers(1, max(budget, 1)))
        shape.append(d)
        budget = max(budget // d, 1)
    if shape and draw(st.integers(0, 7)) == 0:
        shape[draw(st.integers(0, len(shape) - 1))] = 0
    return tuple(shape)


@st.composite
def tensor_specs(draw, shape, dtype, device, layouts=("contiguous", "permuted", "sliced", "expanded")):
    layouts = [*layouts, "channels_last"] if len(shape) == 4 else layouts
    layout = draw(st.sampled_from(layouts))
    arg = ()
    if layout == "permuted":
        arg = tuple(draw(st.permutations(range(len(shape)))))
    elif layout == "sliced":
        arg = tuple(draw(st.integers(1, 3)) for _ in shape)
    elif layout == "expanded":
        arg = tuple(d if draw(st.booleans()) else 1 for d in shape)
    n = math.prod(shape)
    specials = draw(st.lists(st.tuples(st.integers(0, max(n - 1, 0)), st.sampled_from(special_values(dtype))),
                             max_size=6))
    return TensorSpec(shape, dtype, layout, arg, draw(st.integers(0, 2**31)),
                      draw(st.sampled_from([1.0, 1e-3, 1e3, 1e-30, 1e30, 1e300])), tuple(specials), device)


# --- calls -----------------------------------------------------------------------
@dataclass(frozen=True)
class Same:
    """An argument that is the very object built for argument ``index`` (aliasing)."""

    index: int


@dataclass(frozen=True)
class Case:
    """``fn(*args, **kwargs)`` with each TensorSpec built afresh, so every backend gets the same values,
    layouts and aliasing. ``error``/``argument``: for invalid calls, the exception and the argument it names."""

    fn: Callable
    args: tuple
    kwargs: dict = field(default_factory=dict)
    error: type[Exception] | None = None
    argument: str = ""

    def build(self) -> list:
        built = []
        for a in self.args:
            built.append(a.make() if isinstance(a, TensorSpec) else built[a.index] if isinstance(a, Same) else a)
        return built

    def run(self):
        """The result and the arguments after the call; ``seed=None`` draws repeat under a fixed torch seed."""
        args = self.build()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return self.fn(*args, **self.kwargs), args


# --- Langevin steps ------------------------------------------------------------
# bounds past float32's range are valid too: they act as infinite for float32 and 16-bit tensors
_PAST_FLOAT32 = st.sampled_from([3.5e38, 1e300])
_BOUND = st.floats(-3, 3) | _PAST_FLOAT32 | _PAST_FLOAT32.map(lambda v: -v) | st.floats(allow_nan=False)
_FINITE = st.floats(allow_nan=False, allow_infinity=False)
STEP_OPTIONS = st.fixed_dictionaries(dict(
    prior_weight=st.sampled_from([0.0, 1.0]) | st.floats(-1e3, 1e3) | _FINITE,
    grad_clip=st.none() | st.just(0.0) | st.floats(0.0, 10.0) | _PAST_FLOAT32 | st.floats(0.0, allow_nan=False),
    clamp=st.none() | st.floats(-3, 3).map(lambda v: (v, v))
    | st.tuples(_BOUND, _BOUND).map(lambda t: tuple(sorted(t))),
    seed=st.none() | st.integers(0, 2**64 - 1),
    offset=st.sampled_from([(0, 9), (2**32 - 8, 2**32 + 8), (2**62 - 9, 2**62 - 1), (0, 2**62 - 1)])
    .flatmap(lambda bounds: st.integers(*bounds)),
))


@st.composite
def step_scalars(draw) -> tuple[float, float | None, dict]:
    """step_size, noise_scale and the keyword options of a valid step.

    noise_scale * xi must stay below ~10: the float32 noise differs from the
    reference by a few 1e-7 relative, an absolute error once the terms cancel."""
    noise_scale = draw(st.none() | st.just(0.0) | st.floats(0.0, 2.0))
    step = draw(st.floats(0.0, 4.0, exclude_min=True) if noise_scale is None
                else st.floats(0.0, 1e4, exclude_min=True))
    return step, noise_scale, draw(STEP_OPTIONS)


def fuzzable_dtypes(device: str, backend: str) -> list[torch.dtype]:
    """The dtypes to fuzz. Not bfloat16 for Triton under its interpreter: the interpreter converts
    bfloat16 wrongly (subnormals flushed, float32 -> bfloat16 truncated instead of rounded), which a
    GPU does in hardware; the contract tests still run bfloat16 there on ordinary values."""
    interpreted = backend == "triton" and device == "cpu"
    return [d for d in dtypes_for(device) if not (interpreted and d == torch.bfloat16)]


def langevin_valid(fn: Callable) -> Callable:
    @st.composite
    def cases(draw, device: str, backend: str) -> Case:
        dtype = draw(st.sampled_from(fuzzable_dtypes(device, backend)))
        shape = draw(shapes(MAX_NUMEL.get(backend, DEFAULT_MAX_NUMEL)))
        # x is written in place by langevin_step_, so it must not be expanded there
        x_layouts = ("contiguous", "permuted", "sliced") + (("expanded",) if fn is dgm_fast.langevin_step else ())
        x = draw(tensor_specs(shape, dtype, device, x_layouts))
        grad = draw(st.just(Same(0)) | tensor_specs(shape, dtype, device))
        step, noise_scale, kwargs = draw(step_scalars())
        return Case(fn, (x, grad, step, noise_scale), kwargs)

    return cases


_NOT_REAL = st.sampled_from(["0.1", True, [1.0], 1j])
_NOT_INT = st.sampled_from([1.5, True, "3", 2.0])
# argument -> strategy of (bad value, exception); one argument is made bad per case
_BAD_STEP_ARGS = {
    "step_size": st.tuples(st.floats(max_value=0.0) | st.sampled_from([math.inf, math.nan]), st.just(ValueError))
                 | st.tuples(_NOT_REAL | st.none(), st.just(TypeError)),
    "noise_scale": st.tuples(st.floats(max_value=-5e-324) | st.sampled_from([math.inf, math.nan]),
                             st.just(ValueError)) | st.tuples(_NOT_REAL, st.just(TypeError)),
    "prior_weight": st.tuples(st.sampled_from([math.inf, -math.inf, math.nan]), st.just(ValueError))
                    | st.tuples(_NOT_REAL | st.none(), st.just(TypeError)),
    "grad_clip": st.tuples(st.floats(max_value=-5e-324) | st.just(math.nan), st.just(ValueError))
                 | st.tuples(_NOT_REAL, st.just(TypeError)),
    "clamp": st.tuples(st.tuples(st.floats(allow_nan=False), st.floats(allow_nan=False))
                       .filter(lambda t: t[0] > t[1]), st.just(ValueError))
             | st.tuples(st.tuples(st.just(math.nan), st.floats()), st.just(ValueError))
             | st.tuples(st.sampled_from([(1.0,), (0.0, 1.0, 2.0), 3.0, "ab", ("a", 1.0)]), st.just(TypeError)),
    "seed": st.tuples(st.integers(max_value=-1) | st.integers(min_value=2**64), st.just(ValueError))
            | st.tuples(_NOT_INT, st.just(TypeError)),
    "offset": st.tuples(st.integers(max_value=-1) | st.integers(min_value=2**62), st.just(ValueError))
              | st.tuples(_NOT_INT | st.none(), st.just(TypeError)),
}
_POSITIONAL = {"x": 0, "grad": 1, "step_size": 2, "noise_scale": 3}


def bad_step_tensors(fn: Callable, x: TensorSpec) -> st.SearchStrategy[tuple[str, object, type[Exception]]]:
    """A bad x or grad beside a good ``x``: not a float tensor, another shape or dtype, or (in place)
    an expanded x."""
    shape = x.shape
    choices = [
        ("x", replace(x, dtype=torch.int32), TypeError),
        ("x", list(shape), TypeError),
        ("grad", replace(x, shape=(*shape, 2)), ValueError),
        ("grad", replace(x, dtype=torch.float64), TypeError),
        ("grad", replace(x, dtype=torch.bool), TypeError),
    ]
    if fn is dgm_fast.langevin_step_:
        full = tuple(max(d, 1) for d in shape)  # an empty x has no element written twice
        choices.append(("x", replace(x, shape=(*full, 2), layout="expanded", arg=(*full, 1)), ValueError))
    return st.sampled_from(choices)


def langevin_invalid(fn: Callable) -> Callable:
    @st.composite
    def cases(draw, device: str, backend: str) -> Case:
        spec = TensorSpec(draw(shapes(64)), torch.float32, device=device)
        step, noise_scale, kwargs = draw(step_scalars())
        args = [spec, replace(spec, seed=1), step, noise_scale]
        if draw(st.booleans()):
            name, value, error = draw(bad_step_tensors(fn, spec))
            if name == "x" and isinstance(value, TensorSpec):
                args[1] = replace(spec, shape=value.shape)  # keep grad like x, so only x is bad
        else:
            name = draw(st.sampled_from(sorted(_BAD_STEP_ARGS)))
            value, error = draw(_BAD_STEP_ARGS[name])
        if name in _POSITIONAL:
            args[_POSITIONAL[name]] = value
        else:
            kwargs[name] = value
        return Case(fn, tuple(args), kwargs, error, name)

    return cases


# --- affine couplings -----------------------------------------------------------
COUPLING_OPTIONS = st.fixed_dictionaries(dict(
    scale=st.sampled_from(SCALES), clamp=st.sampled_from([2.0, 0.5]) | st.floats(1e-3, 1e3), inverse=st.booleans(),
))


def coupling_gradients(x2, s, t, **kwargs):
    """The gradients of affine_coupling for fixed output gradients: its fused backward op, reached
    through autograd (the op has no public function of its own)."""
    x2, s, t = (v.detach().requires_grad_() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                for v in (x2, s, t))
    y2, logdet = dgm_fast.affine_coupling(x2, s, t, **kwargs)
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(v.shape, generator=gen, dtype=torch.float64).to(v) for v in (y2, logdet)]
    return torch.autograd.grad((y2, logdet), (x2, s, t), grads)


def coupling_valid(fn: Callable) -> Callable:
    @st.composite
    def cases(draw, device: str, backend: str) -> Case:
        dtype = draw(st.sampled_from(fuzzable_dtypes(device, backend)))
        shape = draw(shapes(MAX_NUMEL.get(backend, DEFAULT_MAX_NUMEL)).filter(len))
        x2 = draw(tensor_specs(shape, dtype, device))
        # s and t laid out as x2, so that the reference's output layout is x2's as well
        s, t = (replace(draw(tensor_specs(shape, dtype, device, ("contiguous",))), layout=x2.layout, arg=x2.arg)
                for _ in range(2))
        if fn is coupling_gradients:
            # a planted ±max lands the gradient on the overflow boundary: for t = max the float32
            # reference's intermediate overflows to -inf in ds where the kernels give -1.2389694e38,
            # the float64 value (so the kernels are right; the reference's order is not the specification)
            x2, s, t = (replace(v, specials=tuple((i, u) for i, u in v.specials if abs(u) != torch.finfo(dtype).max))
                        for v in (x2, s, t))
        return Case(fn, (x2, s, t), draw(COUPLING_OPTIONS))

    return cases


_BAD_COUPLING_ARGS = {
    "scale": st.tuples(st.sampled_from(["Exp", "softplus", ""]), st.just(ValueError))
             | st.tuples(st.sampled_from([None, 0, ("exp",)]), st.just(TypeError)),
    "clamp": st.tuples(st.floats(max_value=0.0) | st.sampled_from([math.inf, math.nan]), st.just(ValueError))
             | st.tuples(_NOT_REAL | st.none(), st.just(TypeError)),
    "inverse": st.tuples(st.sampled_from([0, 1, "yes", None]), st.just(TypeError)),
}


def coupling_invalid(fn: Callable) -> Callable:
    @st.composite
    def cases(draw, device: str, backend: str) -> Case:
        spec = TensorSpec(draw(shapes(64).filter(len)), torch.float32, device=device)
        args, kwargs = [spec, replace(spec, seed=1), replace(spec, seed=2)], draw(COUPLING_OPTIONS)
        if draw(st.booleans()):
            name, value, error = draw(st.sampled_from([
                ("x2", replace(spec, dtype=torch.int64), TypeError),
                ("x2", TensorSpec((), torch.float32, device=device), ValueError),
                ("s", replace(spec, shape=(*spec.shape, 2)), ValueError),
                ("t", replace(spec, dtype=torch.float64), TypeError),
                ("s", 1.0, TypeError),
            ]))
            if name == "x2" and value.shape == ():
                args[1:] = [value, value]  # only x2's missing batch dimension is wrong
            args[("x2", "s", "t").index(name)] = value
        else:
            name = draw(st.sampled_from(sorted(_BAD_COUPLING_ARGS)))
            kwargs[name], error = draw(_BAD_COUPLING_ARGS[name])
        return Case(fn, tuple(args), kwargs, error, name)

    return cases


# --- coupling flows --------------------------------------------------------------
def run_flow(z, dim, n_blocks, hidden, n_hidden_layers, seed, inverse, gradients, **kwargs):
    """A CouplingFlow with random weights from ``seed`` applied to ``z`` (that direction's op); with
    ``gradients``, the gradients of z and of every parameter (the fused backward op) instead."""
    flow = CouplingFlow(dim, n_blocks, hidden, n_hidden_layers, seed=seed, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    flow = flow.to(z.dtype if isinstance(z, torch.Tensor) and z.is_floating_point() else torch.float32)
    direction = flow.inverse if inverse else flow
    if not gradients:
        return direction(z)
    z = z.detach().requires_grad_() if isinstance(z, torch.Tensor) and z.is_floating_point() else z
    out = direction(z)
    grads = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o) for o in out]
    return torch.autograd.grad(out, (z, *flow.parameters()), grads)


def flow_valid(gradients: bool) -> Callable:
    @st.composite
    def cases(draw, device: str, backend: str) -> Case:
        # float32 gradients are sums with cancellation, whose error is eps * sum|terms|, not eps * |sum|:
        # they are compared normwise (test_coupling_flow.py), here in float64
        dtype = draw(st.sampled_from([torch.float64] if gradients else [torch.float32, torch.float64]))
        dim, n_blocks = draw(st.integers(2, 12)), draw(st.integers(1, 3))
        spec = draw(tensor_specs((draw(st.integers(0, 17)), dim), dtype, device))
        # moderate values (so that no inverse overflows), non-finite ones planted
        spec = replace(spec, scale=draw(st.sampled_from([1.0, 1e-3, 3.0])),
                       specials=tuple((i, v) for i, v in spec.specials if not math.isfinite(v)))
        inverse = gradients is False and draw(st.booleans())
        # the inverse's factor e^-l is unbounded for "exp" and "sigmoid" (l = log sigmoid(s + 2) < 0):
        # it can overflow, which raises (test_coupling_flow.py), or reach 1e30 where (x - t) cancels and
        # float32 results of two correct summation orders differ in the fifth digit
        scales = [s for s in SCALES if not (inverse and s in ("exp", "sigmoid"))]
        kwargs = dict(scale=draw(st.sampled_from(scales)), clamp=draw(st.sampled_from([2.0, 0.5]) | st.floats(0.01, 100)),
                      activation=draw(st.sampled_from(sorted(ACTIVATIONS))), recompute=draw(st.sampled_from([False, True, None])))
        args = (spec, dim, n_blocks, draw(st.integers(1, 9)), draw(st.integers(0, 2)), draw(st.integers(0, 2**31)),
                inverse, gradients)
        return Case(run_flow, args, kwargs)

    return cases


_BAD_FLOW_ARGS = {
    "dim": st.tuples(st.integers(max_value=1), st.just(ValueError)) | st.tuples(st.just(4.0), st.just(TypeError)),
    "n_blocks": st.tuples(st.integers(max_value=0), st.just(ValueError)),
    "hidden": st.tuples(st.integers(max_value=0), st.just(ValueError)),
    "n_hidden_layers": st.tuples(st.integers(max_value=-1), st.just(ValueError)),
    "scale": st.tuples(st.just("softplus"), st.just(ValueError)),
    "activation": st.tuples(st.just("gelu"), st.just(ValueError)),
    "recompute": st.tuples(st.sampled_from([1, "no"]), st.just(TypeError)),
    "clamp": st.tuples(st.floats(max_value=0.0) | st.sampled_from([math.inf, math.nan]), st.just(ValueError)),
    "z": st.sampled_from([((3, 5), torch.float32, ValueError), ((4,), torch.float32, ValueError),
                          ((3, 4), torch.int64, TypeError)]),
}


def flow_invalid(gradients: bool) -> Callable:
    @st.composite
    def cases(draw, device: str, backend: str) -> Case:
        name = draw(st.sampled_from(sorted(_BAD_FLOW_ARGS)))
        bad = draw(_BAD_FLOW_ARGS[name])
        z = TensorSpec((3, 4), torch.float32, device=device)
        args = dict(z=z, dim=4, n_blocks=1, hidden=3, n_hidden_layers=1, seed=0, inverse=False, gradients=gradients)
        kwargs = dict(scale="atan", clamp=2.0, activation="relu")
        if name == "z":
            shape, dtype, error = bad
            args["z"] = TensorSpec(shape, dtype, device=device)
        else:
            value, error = bad
            (args if name in args else kwargs)[name] = value
        return Case(run_flow, tuple(args.values()), kwargs, error, name)

    return cases


# --- 3-D warping -------------------------------------------------------------------
def fixed_gradients(fn, *args):
    """The gradients of ``fn(*args)`` with respect to its tensor arguments for a fixed random gradient of
    each output: a warp op's fused backward, reached through autograd (the backward ops have no public
    functions of their own). Arguments that are not floating-point tensors pass as they are, for
    ``fn`` to reject."""
    args = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    out = fn(*args)
    outs = out if isinstance(out, tuple) else (out,)
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o) for o in outs]
    wanted = [a for a in args if isinstance(a, torch.Tensor)]
    return torch.autograd.grad(outs, wanted, grads, allow_unused=True, materialize_grads=True)


def grid_sample_gradients(input, grid, **kwargs):
    """The gradients of grid_sample_3d's input and grid for a fixed output gradient."""
    return fixed_gradients(lambda i, g: dgm_fast.grid_sample_3d(i, g, **kwargs), input, grid)


GRID_SAMPLE_OPTIONS = st.fixed_dictionaries(dict(
    padding_mode=st.sampled_from(["zeros", "border", "reflection"]), align_corners=st.booleans(),
))


def grid_sample_valid(gradients: bool) -> Callable:
    @st.composite
    def cases(draw, device: str, backend: str) -> Case:
        # float32 grid gradients are sums with cancellation (eps * sum|terms|): compared in float64 here
        dtype = torch.float64 if gradients else draw(st.sampled_from([torch.float32, torch.float64]))
        budget = MAX_NUMEL.get(backend, DEFAULT_MAX_NUMEL)
        n, c = draw(st.integers(0, 3)), draw(st.integers(0, 5))
        volume = tuple(draw(st.integers(1, 6)) for _ in range(3))
        out = tuple(draw(st.integers(0, 5)) for _ in range(3))
        if max(n, 1) * max(c, 1) * max(math.prod(volume), math.prod(out)) > budget:
            n, c = 1, 1
        x = draw(tensor_specs((n, c, *volume), dtype, device))
        grid = draw(tensor_specs((n, *out, 3), dtype, device))
        # grids mostly around [-1, 1], some far outside; NaN, inf and overflowing positions planted
        grid = replace(grid, scale=draw(st.sampled_from([0.7, 1.5, 1e-3, 1e3, 1e30])))
        if gradients:  # finite, moderate input values: an infinite one makes NaN gradients the formula zeroes
            x = replace(x, scale=draw(st.sampled_from([1.0, 1e-3, 1e3])),
                        specials=tuple((i, v) for i, v in x.specials if math.isfinite(v) and abs(v) < 1e30))
        fn = grid_sample_gradients if gradients else dgm_fast.grid_sample_3d
        return Case(fn, (x, grid), draw(GRID_SAMPLE_OPTIONS))

    return cases


_BAD_GRID_SAMPLE_ARGS = {
    "padding_mode": st.tuples(st.sampled_from(["Zeros", "circular", ""]), st.just(ValueError))
                    | st.tuples(st.sampled_from([None, 0, ("zeros",)]), st.just(TypeError)),
    "align_corners": st.tuples(st.sampled_from([0, 1, "yes", None]), st.just(TypeError)),
}


def grid_sample_invalid(gradients: bool) -> Callable:
    @st.composite
    def cases(draw, device: str, backend: str) -> Case:
        x, grid = TensorSpec((2, 3, 4, 5, 6), torch.float32, device=device), TensorSpec((2, 2, 3, 4, 3), torch.float32,
                                                                                        device=device)
        args, kwargs = [x, grid], draw(GRID_SAMPLE_OPTIONS)
        fn = grid_sample_gradients if gradients else dgm_fast.grid_sample_3d
        if draw(st.booleans()):
            name, value, error = draw(st.sampled_from([
                ("input", replace(x, dtype=torch.int64), TypeError),
                ("input", replace(x, dtype=torch.float16), TypeError),
                ("input", replace(x, shape=(2, 3, 4, 5)), ValueError),
                ("input", replace(x, shape=(2, 3, 4, 0, 6)), ValueError),
                ("input", 1.0, TypeError),
                ("grid", replace(grid, shape=(2, 2, 3, 4, 2)), ValueError),
                ("grid", replace(grid, shape=(3, 2, 3, 4, 3)), ValueError),
                ("grid", replace(grid, shape=(2, 12, 3)), ValueError),
                ("grid", replace(grid, dtype=torch.float64), TypeError),
            ]))
            args[("input", "grid").index(name)] = value
        else:
            name = draw(st.sampled_from(sorted(_BAD_GRID_SAMPLE_ARGS)))
            kwargs[name], error = draw(_BAD_GRID_SAMPLE_ARGS[name])
        return Case(fn, tuple(args), kwargs, error, name)

    return cases


def run_keypoint_warp(feature, kp_source, kp_driving, mask, jacobian, gradients, **kwargs):
    """keypoint_warp_3d's result; with ``gradients``, the gradients of every input for fixed output
    gradients instead (its fused backward op, reached through autograd)."""
    if not gradients:
        return dgm_fast.keypoint_warp_3d(feature, kp_source, kp_driving, mask, jacobian=jacobian, **kwargs)
    return fixed_gradients(
        lambda f, s, d, m, j: dgm_fast.keypoint_warp_3d(f, s, d, m, jacobian=j, return_deformation=True, **kwargs),
        feature, kp_source, kp_driving, mask, jacobian)


def keypoint_warp_valid(gradients: bool) -> Callable:
    @st.composite
    def cases(draw, device: str, backend: str) -> Case:
        dtype = torch.float64 if gradients else draw(st.sampled_from([torch.float32, torch.float64]))
        n, c, k = draw(st.integers(0, 2)), draw(st.integers(0, 4)), draw(st.integers(0, 4))
        volume = tuple(draw(st.integers(1, 5)) for _ in range(3))
        mask_volume = tuple(draw(st.integers(2, 5)) for _ in range(3))
        feature = draw(tensor_specs((n, c, *volume), dtype, device))
        kps = [replace(draw(tensor_specs((n, k, 3), dtype, device)), scale=draw(st.sampled_from([0.5, 1.0, 3.0])))
               for _ in range(2)]
        mask = draw(tensor_specs((n, k + 1, *mask_volume), dtype, device))
        jacobian = draw(st.none() | tensor_specs((n, k, 3, 3), dtype, device).map(lambda j: replace(j, scale=0.5)))
        # the forward takes every value; the gradients are compared on finite, moderate inputs, as
        # the formula's zeros for unreachable positions then agree with autograd's
        if gradients:
            feature, mask, *kps = (replace(t, scale=1.0, specials=()) for t in (feature, mask, *kps))
            jacobian = jacobian if jacobian is None else replace(jacobian, specials=())
        kwargs = dict(draw(GRID_SAMPLE_OPTIONS), mask_is_logits=draw(st.booleans()))
        if not gradients:
            # weights of 1e3 make phi a sum cancelling to 1e-5 of its terms: float32 positions then
            # differ by the summation order; logits of any size are normalised by the softmax
            big = [1e3] if kwargs["mask_is_logits"] or dtype == torch.float64 else []
            # one planted finite 1e30 among unit values makes an output ~ w * 1e30, whose float32 error
            # is the interpolation weight w's, eps / w relative: correct orders of computing a small w
            # differ there by 2e-5 (found: Triton vs the reference); infinities and NaN stay planted
            feature = replace(feature, scale=draw(st.sampled_from([1.0, 1e-3, 1e3])),
                              specials=tuple((i, v) for i, v in feature.specials
                                             if not math.isfinite(v) or abs(v) < 1e30))
            mask = replace(mask, scale=draw(st.sampled_from([1.0, 1e-3, *big])))
        if not gradients:
            kwargs["return_deformation"] = draw(st.booleans())
        return Case(run_keypoint_warp, (feature, *kps, mask, jacobian, gradients), kwargs)

    return cases


def keypoint_warp_invalid(gradients: bool) -> Callable:
    @st.composite
    def cases(draw, device: str, backend: str) -> Case:
        def spec(*shape, dtype=torch.float32):
            return TensorSpec(shape, dtype, device=device)

        args = dict(feature=spec(2, 3, 4, 5, 6), kp_source=spec(2, 3, 3), kp_driving=spec(2, 3, 3),
                    mask=spec(2, 4, 3, 4, 5), jacobian=None, gradients=gradients)
        kwargs = dict(draw(GRID_SAMPLE_OPTIONS), mask_is_logits=draw(st.booleans()))
        name, value, error = draw(st.sampled_from([
            ("feature", spec(2, 3, 4, 5), ValueError),
            ("feature", spec(2, 3, 4, 5, 6, dtype=torch.float16), TypeError),
            ("kp_source", spec(2, 3, 2), ValueError),
            ("kp_source", spec(3, 3, 3), ValueError),
            ("kp_driving", spec(2, 4, 3), ValueError),
            ("kp_driving", spec(2, 3, 3, dtype=torch.float64), TypeError),
            ("mask", spec(2, 3, 3, 4, 5), ValueError),
            ("mask", spec(2, 4, 3, 1, 5), ValueError),
            ("mask", 0.5, TypeError),
            ("jacobian", spec(2, 3, 3), ValueError),
            ("jacobian", spec(2, 3, 3, 3, dtype=torch.int64), TypeError),
            ("mask_is_logits", 1, TypeError),
            ("padding_mode", "circular", ValueError),
            ("align_corners", None, TypeError),
            ("return_deformation", "yes", TypeError),
        ]))
        (args if name in args else kwargs)[name] = value
        if name == "return_deformation" and gradients:
            name, value, error = "mask_is_logits", 1, TypeError  # the gradients ask for the deformation
            kwargs.pop("return_deformation")
            kwargs[name] = value
        return Case(run_keypoint_warp, tuple(args.values()), kwargs, error, name)

    return cases


def run_motion_features(feature, kp_source, kp_driving, jacobian, gradients, **kwargs):
    """sparse_motion_features' result; with ``gradients``, the gradients of its inputs for a fixed output
    gradient instead (its fused backward op, reached through autograd)."""
    if not gradients:
        return dgm_fast.sparse_motion_features(feature, kp_source, kp_driving, jacobian=jacobian, **kwargs)
    return fixed_gradients(lambda f, s, d, j: dgm_fast.sparse_motion_features(f, s, d, jacobian=j, **kwargs),
                           feature, kp_source, kp_driving, jacobian)


def motion_features_valid(gradients: bool) -> Callable:
    @st.composite
    def cases(draw, device: str, backend: str) -> Case:
        dtype = torch.float64 if gradients else draw(st.sampled_from([torch.float32, torch.float64]))
        n, c, k = draw(st.integers(0, 2)), draw(st.integers(0, 3)), draw(st.integers(0, 3))
        volume = tuple(draw(st.integers(2, 5)) for _ in range(3))
        feature = draw(tensor_specs((n, c, *volume), dtype, device))
        kps = [replace(draw(tensor_specs((n, k, 3), dtype, device)), scale=draw(st.sampled_from([0.5, 1.0, 3.0])))
               for _ in range(2)]
        jacobian = draw(st.none() | tensor_specs((n, k, 3, 3), dtype, device).map(lambda j: replace(j, scale=0.5)))
        if gradients:  # finite, moderate inputs (as for keypoint_warp_3d)
            feature, *kps = (replace(t, scale=1.0, specials=()) for t in (feature, *kps))
            jacobian = jacobian if jacobian is None else replace(jacobian, specials=())
        kwargs = dict(variance=draw(st.sampled_from([0.01, 0.1, 1.0])), align_corners=draw(st.booleans()))
        return Case(run_motion_features, (feature, *kps, jacobian, gradients), kwargs)

    return cases


def motion_features_invalid(gradients: bool) -> Callable:
    @st.composite
    def cases(draw, device: str, backend: str) -> Case:
        def spec(*shape, dtype=torch.float32):
            return TensorSpec(shape, dtype, device=device)

        args = dict(feature=spec(2, 3, 4, 5, 6), kp_source=spec(2, 3, 3), kp_driving=spec(2, 3, 3), jacobian=None,
                    gradients=gradients)
        kwargs = dict(variance=0.01, align_corners=draw(st.booleans()))
        name, value, error = draw(st.sampled_from([
            ("feature", spec(2, 3, 4, 5), ValueError),
            ("feature", spec(2, 3, 4, 1, 6), ValueError),
            ("feature", spec(2, 3, 4, 5, 6, dtype=torch.bfloat16), TypeError),
            ("kp_source", spec(2, 3, 4), ValueError),
            ("kp_driving", spec(1, 3, 3), ValueError),
            ("jacobian", spec(2, 3, 9), ValueError),
            ("variance", 0.0, ValueError),
            ("variance", math.nan, ValueError),
            ("variance", "small", TypeError),
            ("align_corners", 1, TypeError),
        ]))
        (args if name in args else kwargs)[name] = value
        return Case(run_motion_features, tuple(args.values()), kwargs, error, name)

    return cases


# --- MLP energies ------------------------------------------------------------------
def _last_weight_a_vector(w, b):
    w[-1] = w[-1].reshape(-1)
    return w, b


def _first_bias_too_long(w, b):
    b[0] = torch.cat([b[0], b[0][:1]])
    return w, b


def _first_weight_other_dtype(w, b):
    w[0] = w[0].to(torch.float64 if w[0].dtype == torch.float32 else torch.float32)
    return w, b


def _last_bias_integer(w, b):
    b[-1] = b[-1].long()
    return w, b


# bad weight or bias lists: kind -> (the argument the message starts with, "{last}" standing for the
# last layer's index; the exception; the corruption of (weights, biases))
_BAD_MLP_PARAMETERS = {
    "weights_a_tensor": ("weights", TypeError, lambda w, b: (w[0], b)),
    "biases_a_str": ("biases", TypeError, lambda w, b: (w, "b")),
    "no_layers": ("weights", ValueError, lambda w, b: ([], [])),
    "a_bias_missing": ("weights", ValueError, lambda w, b: (w, b[:-1])),  # "weights and biases must ..."
    "last_weight_a_vector": ("weights[{last}]", ValueError, _last_weight_a_vector),
    "first_bias_too_long": ("biases[0]", ValueError, _first_bias_too_long),
    "first_weight_other_dtype": ("weights[0]", TypeError, _first_weight_other_dtype),
    "last_bias_integer": ("biases[{last}]", TypeError, _last_bias_integer),
}


def run_mlp(fn, x, dims, parameter_seed, weight_layout, bad, /, *args, **kwargs):
    """``fn(x, weights, biases, *args, **kwargs)`` with an MLP energy of widths ``dims`` (weights and
    biases from ``parameter_seed``, in ``x``'s dtype and device, laid out as ``weight_layout``:
    "contiguous" or "transposed"), made bad first by ``_BAD_MLP_PARAMETERS[bad]`` if ``bad`` is given."""
    ok = isinstance(x, torch.Tensor) and x.dtype in (torch.float32, torch.float64)
    weights, biases = mlp_parameters(dims, x.dtype if ok else torch.float32, x.device if ok else "cpu",
                                     seed=parameter_seed, layout=weight_layout)
    if bad is not None:
        weights, biases = _BAD_MLP_PARAMETERS[bad][2](weights, biases)
    return fn(x, weights, biases, *args, **kwargs)


# a chain's options: STEP_OPTIONS with a moderate prior weight (at 1e30 float32 chains overflow where
# two correct summation orders differ)
CHAIN_OPTIONS = st.tuples(STEP_OPTIONS, st.sampled_from([0.0, 1.0]) | st.floats(-2.0, 2.0)).map(
    lambda t: t[0] | dict(prior_weight=t[1]))


def mlp_valid(fn: Callable) -> Callable:
    @st.composite
    def cases(draw, device: str, backend: str) -> Case:
        """0 to 3 hidden layers of odd and even widths, an empty batch one time in eight, every layout
        of x, transposed weights; moderate x (at scale 30 softplus is past its linear threshold) with
        non-finite values planted; every activation, slope and chain option."""
        dtype = draw(st.sampled_from([torch.float32, torch.float64]))
        batch = draw(st.integers(1, 17)) if draw(st.integers(0, 7)) else 0
        dims = (draw(st.integers(1, 6)), *(draw(st.integers(1, 20)) for _ in range(draw(st.integers(0, 3)))), 1)
        x = draw(tensor_specs((batch, dims[0]), dtype, device))
        x = replace(x, scale=draw(st.sampled_from([1.0, 1e-3, 3.0, 30.0])),
                    specials=tuple((i, v) for i, v in x.specials if not math.isfinite(v)))
        kwargs = dict(activation=draw(st.sampled_from(EBM_ACTIVATIONS)),
                      negative_slope=draw(st.sampled_from([0.2, 0.01, 0.0, 1.0]) | st.floats(-2.0, 2.0)))
        if fn is mlp_energy_sample:
            # steps up to 1, noise up to 2: float32 rounding grows at most a few times over the chain
            kwargs |= dict(n_steps=draw(st.integers(0, 4)), step_size=draw(st.floats(0.0, 1.0, exclude_min=True)),
                           noise_scale=draw(st.none() | st.just(0.0) | st.floats(0.0, 2.0)), **draw(CHAIN_OPTIONS))
        layout = draw(st.sampled_from(["contiguous", "transposed"]))
        return Case(run_mlp, (fn, x, dims, draw(st.integers(0, 2**31)), layout, None), kwargs)

    return cases


_BAD_MLP_SCALARS = {
    "activation": st.tuples(st.sampled_from(["gelu", "Swish", "silu", ""]), st.just(ValueError))
                  | st.tuples(st.sampled_from([None, 0, ("swish",)]), st.just(TypeError)),
    "negative_slope": st.tuples(st.sampled_from([math.inf, -math.inf, math.nan]), st.just(ValueError))
                      | st.tuples(_NOT_REAL | st.none(), st.just(TypeError)),
}
_BAD_CHAIN_SCALARS = _BAD_MLP_SCALARS | _BAD_STEP_ARGS | {
    "n_steps": st.tuples(st.integers(max_value=-1), st.just(ValueError))
               | st.tuples(_NOT_INT | st.none(), st.just(TypeError)),
}


def mlp_invalid(fn: Callable) -> Callable:
    @st.composite
    def cases(draw, device: str, backend: str) -> Case:
        """One bad argument: x (dtype, rank, not a tensor), x's width or the last layer's, the weight
        and bias lists, or a scalar."""
        x_name = "x0" if fn is mlp_energy_sample else "x"
        batch, dims = draw(st.integers(0, 9)), (3, *(draw(st.integers(1, 7)) for _ in range(draw(st.integers(0, 2)))), 1)
        x = TensorSpec((batch, 3), torch.float32, device=device)
        kwargs = dict(activation=draw(st.sampled_from(EBM_ACTIVATIONS)), negative_slope=0.2)
        if fn is mlp_energy_sample:
            kwargs |= dict(n_steps=draw(st.integers(0, 3)), step_size=0.1)
        bad, what = None, draw(st.sampled_from(["x", "x_width", "energy_width", "parameters", "scalar"]))
        if what == "x":
            name = x_name
            x, error = draw(st.sampled_from([
                (replace(x, dtype=torch.float16), TypeError), (replace(x, dtype=torch.int64), TypeError),
                (replace(x, shape=(batch * 3,)), ValueError), (replace(x, shape=(1, batch, 3)), ValueError),
                ([[0.0] * 3] * batch, TypeError),
            ]))
        elif what == "x_width":
            name, error = "weights[0]", ValueError
            x = replace(x, shape=(batch, draw(st.sampled_from([1, 2, 4, 7]))))
        elif what == "energy_width":  # not one output: not a scalar energy
            name, error = "weights[-1]", ValueError
            dims = (*dims[:-1], draw(st.sampled_from([0, 2, 3])))
        elif what == "parameters":
            bad = draw(st.sampled_from(sorted(_BAD_MLP_PARAMETERS)))
            name, error, _ = _BAD_MLP_PARAMETERS[bad]
            name = name.format(last=len(dims) - 2)
        else:
            scalars = _BAD_CHAIN_SCALARS if fn is mlp_energy_sample else _BAD_MLP_SCALARS
            name = draw(st.sampled_from(sorted(scalars)))
            kwargs[name], error = draw(scalars[name])
        return Case(run_mlp, (fn, x, dims, 0, "contiguous", bad), kwargs, error, name)

    return cases

# --- the categorical pixel likelihood (vae) ------------------------------------------
def nll_gradients(logits, target):
    """The logits' gradient for fixed per-sample output gradients: the fused backward op."""
    if isinstance(logits, torch.Tensor) and logits.is_floating_point():
        logits = logits.detach().requires_grad_()
    nll = dgm_fast.categorical_pixel_nll(logits, target)
    grad = torch.randn(nll.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(nll)
    return torch.autograd.grad(nll, logits, grad)


def _targets(draw, shape, dtype=None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    dtype = dtype or draw(st.sampled_from([torch.uint8, torch.int32, torch.int64]))
    return torch.randint(0, 256, shape, generator=gen).to(dtype)


def _nll_shape(draw, backend: str) -> tuple[int, int, tuple[int, ...]]:
    """(batch, nc, spatial): an empty batch one time in eight; at most 64 pixels x channels (16 under
    the Triton interpreter), 256 logits each."""
    budget = 16 if backend == "triton" else 64
    batch = draw(st.integers(1, 4)) if draw(st.integers(0, 7)) else 0
    nc = draw(st.integers(1, 3))
    spatial = draw(shapes(max(budget // (max(batch, 1) * nc), 1)))
    return batch, nc, spatial


def nll_valid(gradients: bool) -> Callable:
    @st.composite
    def cases(draw, device: str, backend: str) -> Case:
        """Any logits layout, scale and planted non-finite values, targets of any integer dtype."""
        batch, nc, spatial = _nll_shape(draw, backend)
        logits = draw(tensor_specs((batch, nc * 256, *spatial), draw(st.sampled_from([torch.float32, torch.float64])),
                                   device))
        fn = nll_gradients if gradients else dgm_fast.categorical_pixel_nll
        return Case(fn, (logits, _targets(draw, (batch, nc, *spatial)).to(device)))

    return cases


def nll_invalid(gradients: bool) -> Callable:
    @st.composite
    def cases(draw, device: str, backend: str) -> Case:
        """One bad argument: the logits' dtype, rank or channel count, or the target's dtype, shape or
        values."""
        batch, nc, spatial = _nll_shape(draw, backend)
        logits = TensorSpec((batch, nc * 256, *spatial), torch.float32, device=device)
        target = _targets(draw, (batch, nc, *spatial), torch.int64)
        name = draw(st.sampled_from(["logits", "target"]))
        if name == "logits":
            logits, error = draw(st.sampled_from([
                (replace(logits, dtype=torch.float16), TypeError), (replace(logits, dtype=torch.int64), TypeError),
                (replace(logits, shape=(batch, nc * 256 + draw(st.sampled_from([-1, 1, 128])), *spatial)),
                 ValueError),
                (replace(logits, shape=(batch,)), ValueError),
                ([0.0] * 256, TypeError),
            ]))
        else:
            bad = draw(st.sampled_from(["dtype", "shape", "value"]))
            error = TypeError if bad == "dtype" else ValueError
            if bad == "dtype":
                target = target.float()
            elif bad == "shape":
                target = target.unsqueeze(0) if draw(st.booleans()) else torch.zeros(batch + 1, nc, *spatial,
                                                                                       dtype=torch.int64)
            elif target.numel():
                target = target.clone().view(-1).index_fill_(0, torch.tensor([0]), draw(
                    st.sampled_from([-1, 256, 1000, -(2**40)]))).view(target.shape)
            else:
                target, error = target.float(), TypeError
        fn = nll_gradients if gradients else dgm_fast.categorical_pixel_nll
        return Case(fn, (logits, target.to(device)), {}, error, name)

    return cases


# op name -> (device, backend) -> strategy of Cases; a new op family adds its entries here
VALID = {
    "langevin_step": langevin_valid(dgm_fast.langevin_step),
    "langevin_step_": langevin_valid(dgm_fast.langevin_step_),
    "affine_coupling": coupling_valid(dgm_fast.affine_coupling),
    "affine_coupling_backward": coupling_valid(coupling_gradients),
    "coupling_flow": flow_valid(gradients=False),
    "coupling_flow_backward": flow_valid(gradients=True),
    "grid_sample_3d": grid_sample_valid(gradients=False),
    "grid_sample_3d_backward": grid_sample_valid(gradients=True),
    "keypoint_warp_3d": keypoint_warp_valid(gradients=False),
    "keypoint_warp_3d_backward": keypoint_warp_valid(gradients=True),
    "sparse_motion_features": motion_features_valid(gradients=False),
    "sparse_motion_features_backward": motion_features_valid(gradients=True),
    "mlp_energy_grad": mlp_valid(mlp_energy_grad),
    "mlp_energy_laplacian": mlp_valid(mlp_energy_laplacian),
    "mlp_energy_sample": mlp_valid(mlp_energy_sample),
    "categorical_pixel_nll": nll_valid(gradients=False),
    "categorical_pixel_nll_backward": nll_valid(gradients=True),
}
INVALID = {
    "langevin_step": langevin_invalid(dgm_fast.langevin_step),
    "langevin_step_": langevin_invalid(dgm_fast.langevin_step_),
    "affine_coupling": coupling_invalid(dgm_fast.affine_coupling),
    "affine_coupling_backward": coupling_invalid(coupling_gradients),
    "coupling_flow": flow_invalid(gradients=False),
    "coupling_flow_backward": flow_invalid(gradients=True),
    "grid_sample_3d": grid_sample_invalid(gradients=False),
    "grid_sample_3d_backward": grid_sample_invalid(gradients=True),
    "keypoint_warp_3d": keypoint_warp_invalid(gradients=False),
    "keypoint_warp_3d_backward": keypoint_warp_invalid(gradients=True),
    "sparse_motion_features": motion_features_invalid(gradients=False),
    "sparse_motion_features_backward": motion_features_invalid(gradients=True),
    "mlp_energy_grad": mlp_invalid(mlp_energy_grad),
    "mlp_energy_laplacian": mlp_invalid(mlp_energy_laplacian),
    "mlp_energy_sample": mlp_invalid(mlp_energy_sample),
    "categorical_pixel_nll": nll_invalid(gradients=False),
    "categorical_pixel_nll_backward": nll_invalid(gradients=True),
}


# --- tests -----------------------------------------------------------------------
def case_id(case):
    return "-".join(case)


def test_every_registered_op_has_strategies():
    for op in _op.registered_ops():
        assert op.name in VALID, f"add a strategy of valid calls of {op.name} to VALID"
        assert op.name in INVALID, f"add a strategy of invalid calls of {op.name} to INVALID"


def assert_matches(got, expect):
    """Same shape, dtype, layout, NaN positions and infinities; values within TOL of the dtype."""
    if isinstance(expect, (tuple, list)):
        assert isinstance(got, (tuple, list)) and len(got) == len(expect)
        for g, e in zip(got, expect):
            assert_matches(g, e)
        return
    assert isinstance(got, torch.Tensor) and got.shape == expect.shape and got.dtype == expect.dtype
    assert significant_strides(got) == significant_strides(expect), "memory format differs from the reference"
    torch.testing.assert_close(got, expect, equal_nan=True, **TOL[got.dtype])


@pytest.mark.parametrize("case", NATIVE_CASES, ids=case_id)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_matches_reference(case, data):
    name, device, backend = case
    call = data.draw(VALID[name](device, backend))
    with dgm_fast.use_backend("reference"):
        expect, expect_args = call.run()
    with dgm_fast.use_backend(backend):
        got, got_args = call.run()
    assert_matches(got, expect)
    for g, e in zip(got_args, expect_args):  # what the call wrote into its arguments, and nothing else
        if isinstance(g, torch.Tensor):
            torch.testing.assert_close(g, e, equal_nan=True, **TOL.get(g.dtype, dict(rtol=0, atol=0)))


@pytest.mark.parametrize("case", NATIVE_CASES, ids=case_id)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_invalid_arguments_raise_naming_them(case, data):
    name, device, backend = case
    call = data.draw(INVALID[name](device, backend))
    with dgm_fast.use_backend(backend), pytest.raises(call.error, match=f"^{re.escape(call.argument)}"):
        call.run()
