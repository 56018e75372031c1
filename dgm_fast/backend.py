"""Which implementation runs an op: chosen per op by the tensors' device, or forced.

Backends: ``reference`` (plain PyTorch, the specification), ``cpu`` (C++),
``triton`` and ``cuda``. A backend's kernel for op family ``F``, kernel ``K``
is found by name: ``dgm_fast._C.K_cpu``, ``dgm_fast._C.K_cuda`` and
``dgm_fast.kernels.F.K_triton``; all take ``(inputs..., outputs..., scalars...)``.

``auto`` picks, per op: on CPU tensors the C++ kernel, else the reference
(``import dgm_fast`` has said why the extension is missing); on CUDA tensors
Triton, else the CUDA kernel, else the reference, warning once per op and
reason whenever it does not get its first choice. ``use_backend(name)`` (a
context manager local to the thread / asyncio task) or the environment
variable ``DGM_FAST_BACKEND`` (read once, at the first op call) forces one;
forcing one that cannot run raises. torch.compile makes the choice while it
traces and keeps it in the compiled graph: a ``use_backend`` block around a
later call of that graph does not change it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import os
import warnings
from collections.abc import Callable, Iterator

import torch

from dgm_fast import _extension

BACKENDS = ("reference", "cpu", "triton", "cuda")
_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("dgm_fast_backend", default=None)


def _check_name(name: str, source: str) -> str:
    if name not in BACKENDS + ("auto",):
        raise ValueError(f"{source}: unknown backend {name!r}; expected one of {('auto',) + BACKENDS}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force backend ``name`` (or ``"auto"``) for the ops called inside the block, in this thread or task."""
    token = _forced.set(_check_name(name, "use_backend"))
    try:
        yield
    finally:
        _forced.reset(token)




@functools.cache
def _env_backend() -> str:
    return _check_name(os.environ.get("DGM_FAST_BACKEND", "auto"), "DGM_FAST_BACKEND")


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _triton_module(family: str):
    """``dgm_fast.kernels.<family>``, or the reason it cannot be imported."""
    try:
        return importlib.import_module(f"dgm_fast.kernels.{family}")
    except ImportError as exc:
        return f"triton kernels do not import ({type(exc).__name__}: {exc})"


def kernel(family: str, name: str, backend: str) -> Callable | str:
    """Kernel ``name`` of ``backend`` (cpu, cuda or triton), or the reason there is none."""
    if backend == "triton":
        module = _triton_module(family)
        if isinstance(module, str):
            return module
        return getattr(module, f"{name}_triton", None) or f"dgm_fast.kernels.{family} has no {name}_triton"
    if _extension._C is None:
        return f"the extension did not load ({_extension.LOAD_ERROR})"
    fn = getattr(_extension._C, f"{name}_{backend}", None)
    if fn is None and backend == "cuda":
        return f"the extension was built without CUDA kernels ({_extension.build_info()['cuda_reason']})"
    return fn or f"the extension has no {name}_{backend}"


def has_kernel(family: str, name: str, backend: str) -> bool:
    return backend == "reference" or not isinstance(kernel(family, name, backend), str)


def unavailable_reason(backend: str, device: torch.device, family: str, name: str) -> str | None:
    """Why ``backend`` cannot run kernel ``family.name`` on ``device``, or None if it can."""
    if backend == "reference":
        return None
    wanted = {"cpu": "CPU", "cuda": "CUDA"}.get(backend)
    if wanted is not None and device.type != backend:
        return f"it runs on {wanted} tensors, got {device.type}"
    if backend == "triton" and not (device.type == "cuda" or (device.type == "cpu" and triton_interpreted())):
        return f"it runs on CUDA tensors (CPU tensors only with TRITON_INTERPRET=1), got {device.type}"
    found = kernel(family, name, backend)
    return found if isinstance(found, str) else None


@functools.cache
def _auto(device_type: str, family: str, name: str) -> str:
    """The first available backend in ``auto``'s order for this op on this type of device."""
    device = torch.device(device_type)
    if device.type == "cpu":
        return "cpu" if has_kernel(family, name, "cpu") else "reference"
    if device.type != "cuda":
        return "reference"
    reasons = []
    for backend in ("triton", "cuda"):
        reason = unavailable_reason(backend, device, family, name)
        if reason is None:
            chosen = backend
            break
        reasons.append(f"{backend}: {reason}")
    else:
        chosen = "reference"
    if reasons:  # once: the choice is cached
        warnings.warn(f"dgm_fast: {name} on CUDA uses the {chosen!r} backend ({'; '.join(reasons)})",
                      RuntimeWarning, stacklevel=4)
    return chosen


def resolve(device: torch.device, op: str | None = None) -> str:
    """The concrete backend that op ``op`` (default: the Langevin step) uses on ``device`` now."""
    from dgm_fast._op import get_op  # the registry imports this module

    fused = get_op(op or "langevin_step")
    return fused.resolve(device)


def _constant_for_compile(fn):
    """torch.compiler.assume_constant_result(fn): torch.compile calls ``fn`` once, while
    tracing, and bakes its result into the graph (it cannot trace ContextVar.get). The
    decorator only sets this flag, but importing it imports torch._dynamo (1 s per import)."""
    fn._dynamo_marked_constant = True
    return fn


@_constant_for_compile
def forced_backend() -> str:
    """The backend forced by ``use_backend`` or ``DGM_FAST_BACKEND``, else ``"auto"``."""
    name = _forced.get()
    return _env_backend() if name is None else name


@_constant_for_compile
def select(device: torch.device, family: str, name: str) -> str:
    """``resolve`` for kernel ``family.name``: the forced backend, checked, or ``auto``'s choice."""
    forced = _forced.get() or _env_backend()
    if forced == "auto":
        return _auto(device.type, family, name)
    reason = unavailable_reason(forced, device, family, name)
    if reason is not None:
        raise RuntimeError(f"dgm_fast backend {forced!r} is unavailable for kernel {name}: {reason}")
    return forced


def available_backends(device: torch.device | str = "cpu", op: str | None = None) -> list[str]:
    """Backends that can run op ``op`` (default: the Langevin step) on ``device``."""
    from dgm_fast._op import get_op

    return [b for b, why in get_op(op or "langevin_step").availability(torch.device(device)).items() if why is None]
