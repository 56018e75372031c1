"""One way to register an op: ``FusedOp`` and the registry of all ops.

A ``FusedOp`` is declared once per op with its schema, reference, output
allocation, autograd formula and mutated arguments. It registers with
torch.library:

* ``dgm_fast::<name>`` — the production op. Its CPU kernel is registered in
  C++ by the extension (``TORCH_LIBRARY_IMPL``, so a call costs a C++
  dispatch, not a Python one); its CUDA kernel here picks Triton, else the
  CUDA kernel, else the reference (``dgm_fast.backend``);
* ``dgm_fast::<name>.backend`` — the same op with the backend as a last
  argument, for backends forced with ``use_backend``;
* one fake (shape) function and one autograd formula for both overloads; for
  mutating ops an ADInplaceOrView kernel that bumps version counters.

Every call goes through torch's dispatcher, so autograd, version counters,
inference tensors, make_fx / jit.trace / export, torch.compile, modes and
tensor subclasses see a real op. The one shortcut: when no input needs
autograd (and no tensor subclass or torch function mode wants the call),
the call enters the dispatcher below the Autograd key, which is exactly
where the Autograd kernel would redispatch it, through the extension's
``BelowAutogradCall`` (csrc/below_autograd_call.h): its C++ argument
conversion saves ~3 us of OpOverload's per call. Inputs under forward-mode
AD or a ``torch.func`` transform run the reference, which supports them
all.

Outputs are allocated here (``empty_output``) and by the C++ helper of
``csrc/ops.h``; tests poison both with NaN through ``poison_outputs``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from dgm_fast import _extension
from dgm_fast.backend import BACKENDS, forced_backend, has_kernel, kernel, select, unavailable_reason

_LIB = torch.library.Library("dgm_fast", "FRAGMENT")
_REGISTRY: dict[str, FusedOp] = {}
_POISON = False


def poison_outputs(enabled: bool) -> None:
    """Fill every newly allocated kernel output with NaN (for tests: an unwritten element then fails)."""
    global _POISON
    _POISON = enabled
    if _extension._C is not None:
        _extension._C.set_poison_outputs(enabled)


def empty_output(like: Tensor, memory_format: torch.memory_format | None = None) -> Tensor:
    """A new output laid out like ``like`` (or in ``memory_format``)."""
    out = torch.empty_like(like) if memory_format is None else torch.empty_like(like, memory_format=memory_format)
    return out.fill_(float("nan")) if _POISON and out.is_floating_point() else out


def registered_ops() -> list[FusedOp]:
    return list(_REGISTRY.values())


def get_op(name: str) -> FusedOp:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown dgm_fast op {name!r}; registered: {sorted(_REGISTRY)}") from None


# bound once: __call__ is on every op's hot path
_is_compiling = torch.compiler.is_compiling
_tracing_state = torch._C._get_tracing_state
_grad_enabled = torch.is_grad_enabled
_any_requires_grad = torch._C._any_requires_grad
_functorch_level = torch._C._functorch.maybe_current_level
_has_torch_function = torch._C._has_torch_function
_BelowAutograd = torch._C._AutoDispatchBelowAutograd


def _transformed(tensors: Sequence[Tensor]) -> bool:
    """Inputs under a torch.func transform or forward-mode AD: only the reference supports them."""
    if _functorch_level() is not None:
        return True
    return fwAD._current_level >= 0 and any(fwAD.unpack_dual(t).tangent is not None for t in tensors)


def _below_autograd_call(op: torch._ops.OpOverload) -> Callable:
    """``op`` entered below the Autograd key, for calls that need no autograd."""
    if _extension._C is not None:
        return _extension._C.BelowAutogradCall(op._schema.name, op._schema.overload_name)
    call = op._op  # the C++ entry point behind OpOverload.__call__

    def below_autograd(*args):
        with _BelowAutograd():
            return call(*args)

    return below_autograd


class FusedOp:
    """An op with a plain-PyTorch reference and per-backend kernels found by name.

    ``schema``: argument list and returns, e.g. ``"(Tensor x, Tensor grad, float a) -> Tensor"``;
    the leading ``Tensor`` arguments are the kernel's inputs, the other
    arguments its scalars (mapped by ``kernel_scalars``). ``reference(*args)``
    is the specification. ``outputs(*args)`` allocates the outputs (with
    ``empty_output``); a mutating op (``mutates``: one argument name) instead
    writes that argument, which is also the kernel's output. Kernels of
    ``kernel_name`` (default ``name``) are called ``kernel(*inputs, *outputs,
    *scalars)`` on contiguous tensors. ``setup_context`` / ``backward`` are
    torch.library's autograd formula, for non-mutating ops.
    """

    def __init__(
        self, family: str, name: str, schema: str, *, reference: Callable,
        outputs: Callable | None = None, mutates: str | None = None, kernel_name: str | None = None,
        kernel_scalars: Callable = lambda *s: s, setup_context: Callable | None = None,
        backward: Callable | None = None,
    ):
        if name in _REGISTRY:
            raise ValueError(f"op {name!r} is registered already")
        self.family, self.name, self.kernel_name = family, name, kernel_name or name
        self.reference, self.outputs, self.kernel_scalars = reference, outputs, kernel_scalars
        parsed = torch._C.parse_schema(f"dgm_fast::{name}{schema}")
        arg_names = [a.name for a in parsed.arguments]
        types = [str(a.type) for a in parsed.arguments]
        self.n_inputs = next((i for i, t in enumerate(types) if t not in ("Tensor", "List[Tensor]")), len(types))
        self._has_lists = "List[Tensor]" in types[: self.n_inputs]
        self.mutated = arg_names.index(mutates) if mutates else None
        self.differentiable = backward is not None
        args, returns = schema.rsplit("->", 1)
        _LIB.define(f"{name}{schema}")
        _LIB.define(f"{name}.backend{args.rstrip()[:-1]}, str backend) ->{returns}")
        self._kernels: dict[str, Callable] = {}  # by backend, found once
        self._op = getattr(torch.ops.dgm_fast, name).default
        self._op_backend = getattr(torch.ops.dgm_fast, name).backend
        self._below_autograd = {op: _below_autograd_call(op) for op in (self._op, self._op_backend)}
        self._eager_autograd: Callable | None = None  # differentiable ops: set by _register
        self._register(setup_context, backward)
        _REGISTRY[name] = self

    # --- registration --------------------------------------------------------
    def _register(self, setup_context, backward) -> None:
        qual = f"dgm_fast::{self.name}"
        fake = self._fake
        torch.library.register_fake(qual, fake, lib=_LIB)
        torch.library.register_fake(f"{qual}.backend", lambda *a: fake(*a[:-1]), lib=_LIB)
        _LIB.impl(self.name, lambda *a: self._run(select(a[0].device, self.family, self.kernel_name), *a), "CUDA")
        if not torch._C._dispatch_has_kernel_for_dispatch_key(qual, "CPU"):
            # no C++ dispatcher kernel (optional: it only saves Python per call) or no extension at all
            cpu = "cpu" if has_kernel(self.family, self.kernel_name, "cpu") else "reference"
            _LIB.impl(self.name, lambda *a: self._run(cpu, *a), "CPU")
        for key in ("CPU", "CUDA"):
            _LIB.impl(f"{self.name}.backend", lambda *a: self._run(a[-1], *a[:-1]), key)
        if self.mutated is not None:
            for overload, op in ((self.name, self._op), (f"{self.name}.backend", self._op_backend)):
                if _extension._C is not None:  # the same kernel in C++, without a Python frame per call
                    _extension._C.register_version_bump(overload)
                else:
                    _LIB.impl(overload, functools.partial(self._bump_version, op), "ADInplaceOrView", with_keyset=True)
        elif backward is not None:
            torch.library.register_autograd(qual, backward, setup_context=setup_context, lib=_LIB)
            torch.library.register_autograd(
                f"{qual}.backend", lambda ctx, *g: (*backward(ctx, *g), None), setup_context=setup_context, lib=_LIB
            )
            self._eager_autograd = _eager_autograd(self._below_autograd, setup_context, backward)

    def _fake(self, *args):
        if self.mutated is not None:
            return None
        outs = self.outputs(*args)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _bump_version(self, op, keyset, *args):
        # what torch does for its own in-place ops: the version counter tells
        # autograd that a saved tensor changed (and inference tensors refuse)
        target = args[self.mutated]
        if target.is_inference() and not torch.is_inference_mode_enabled():
            raise RuntimeError("Inplace update to inference tensor outside InferenceMode is not allowed")
        torch.autograd.graph.increment_version(target)
        with torch._C._AutoDispatchBelowADInplaceOrView():
            return op.redispatch(keyset & torch._C._after_ADInplaceOrView_keyset, *args)

    # --- running -------------------------------------------------------------
    def _run(self, backend: str, *args):
        """The kernel of ``backend`` on ``args`` (below autograd): contiguous inputs, outputs allocated here."""
        if backend == "reference":
            return self._call_reference(*args)
        fn = self._kernels.get(backend) or self._find_kernel(backend)
        inputs = [t.contiguous() if isinstance(t, Tensor) else [x.contiguous() for x in t]
                  for t in args[: self.n_inputs]]
        scalars = self.kernel_scalars(*args[self.n_inputs:])
        if self.mutated is not None:
            target = args[self.mutated]
            fn(*inputs, inputs[self.mutated], *scalars)
            if inputs[self.mutated] is not target:  # kernels index row-major; write back the layout
                target.copy_(inputs[self.mutated])
            return None
        outs = self.outputs(*args)  # a list output (Tensor[]) is allocated contiguous
        bufs = [o if not isinstance(o, Tensor) or o.is_contiguous() else empty_output(o, torch.contiguous_format)
                for o in outs]
        fn(*inputs, *bufs, *scalars)
        for out, buf in zip(outs, bufs):
            if buf is not out:
                out.copy_(buf)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _find_kernel(self, backend: str) -> Callable:
        found = kernel(self.family, self.kernel_name, backend)
        if isinstance(found, str):  # reachable by calling the .backend overload directly
            raise RuntimeError(f"dgm_fast backend {backend!r} is unavailable for {self.name}: {found}")
        self._kernels[backend] = found
        return found

    def resolve(self, device: torch.device) -> str:
        return select(device, self.family, self.kernel_name)

    def availability(self, device: torch.device) -> dict[str, str | None]:
        """Each backend: None if it can run this op on ``device``, else why not."""
        return {b: unavailable_reason(b, device, self.family, self.kernel_name) for b in BACKENDS}

    def __call__(self, *args):
        """Run the op on validated arguments with the backend that ``dgm_fast.backend`` selects."""
        tensors = args[: self.n_inputs]
        if self._has_lists:
            tensors = [x for t in tensors for x in ((t,) if isinstance(t, Tensor) else t)]
        device = tensors[0].device
        backend = select(device, self.family, self.kernel_name)
        compiling = _is_compiling()
        if backend == "reference" or (not compiling and _transformed(tensors)):
            return self._call_reference(*args)
        if backend == "cpu" or (device.type == "cuda" and forced_backend() == "auto"):
            op, extra = self._op, ()
        else:
            op, extra = self._op_backend, (backend,)
        if compiling or _tracing_state() or _has_torch_function(tensors):
            return op(*args, *extra)
        if _grad_enabled() and _any_requires_grad(*tensors):
            return self._eager_autograd(op, args, extra) if self._eager_autograd else op(*args, *extra)
        return self._below_autograd[op](*args, *extra)

    def _call_reference(self, *args):
        if self.mutated is None:
            return self.reference(*args)
        # a differentiable in-place write: autograd records it as a copy_
        target = args[self.mutated]
        target.copy_(self.reference(*args))
        return None


def _eager_autograd(below_autograd: dict, setup_context: Callable, backward: Callable) -> Callable:
    """``call(op, args, extra)``: ``op`` under the op's own autograd formula (the one registered with
    torch.library) as a plain ``torch.autograd.Function``, for eager calls that need autograd.

    torch.library's autograd wrapper flattens and rebuilds every argument with pytree on each call
    and in each backward: for a whole coupling flow's 100 tensors that was ~0.5 ms a training step.
    Here the ``Tensor[]`` arguments are spliced into the Function's arguments (so autograd sees each
    tensor) by their lengths alone. Compiled, traced and subclass calls still take the registered op.
    """

    class Call(torch.autograd.Function):
        # forward takes ctx (no separate setup_context): Function.apply then skips binding the
        # arguments to forward's signature with inspect on every call (~0.1 ms for a flow's 55)
        @staticmethod
        def forward(ctx, op, lengths, *flat):
            args = _unflatten(flat, lengths)
            output = below_autograd[op](*args)
            ctx.lengths, ctx.n_flat = lengths, len(flat)
            setup_context(ctx, args, output)
            return output

        @staticmethod
        def backward(ctx, *grads):
            flat = _flatten(backward(ctx, *grads), ctx.lengths)  # no gradient for a .backend's name
            return (None, None, *flat, *[None] * (ctx.n_flat - len(flat)))

    def call(op, args, extra):
        lengths = tuple(len(a) if isinstance(a, (list, tuple)) else -1 for a in (*args, *extra))
        return Call.apply(op, lengths, *_flatten((*args, *extra), lengths))

    return call


def _flatten(args, lengths: tuple[int, ...]) -> list:
    """The items of ``args`` with each list (length >= 0 in ``lengths``) spliced in; a gradient of None
    for a whole list becomes one None per element."""
    flat = []
    for a, n in zip(args, lengths):
        if n < 0:
            flat.append(a)
        else:
            flat.extend([None] * n if a is None else a)
    return flat


def _unflatten(flat, lengths: tuple[int, ...]) -> list:
    out, i = [], 0
    for n in lengths:
        if n < 0:
            out.append(flat[i])
            i += 1
        else:
            out.append(list(flat[i:i + n]))
            i += n
    return out
