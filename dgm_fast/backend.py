"""Which implementation runs an op: chosen by the tensors' device, or forced.

``auto`` picks the compiled kernel for the device (``cpu`` for CPU tensors,
``triton`` for CUDA tensors). ``use_backend(name)`` or the environment
variable ``DGM_FAST_BACKEND`` forces one; forcing one that cannot run raises.
Only when nothing is forced and the compiled extension failed to load does a
CPU op run on ``reference``, and ``import dgm_fast`` has said so already.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from dgm_fast import _extension

BACKENDS = ("reference", "cpu", "triton", "cuda")
_forced: str | None = None


def _check_name(name: str, source: str) -> str:
    if name not in BACKENDS + ("auto",):
        raise ValueError(f"{source}: unknown backend {name!r}; expected one of {('auto',) + BACKENDS}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force backend ``name`` (or ``"auto"``) for the ops called inside the block."""
    global _forced
    _check_name(name, "use_backend")
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous


def forced_backend() -> str:
    """The backend forced by ``use_backend`` or ``DGM_FAST_BACKEND``, else ``"auto"``."""
    if _forced is not None:
        return _forced
    return _check_name(os.environ.get("DGM_FAST_BACKEND", "auto"), "DGM_FAST_BACKEND")


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def unavailable_reason(name: str, device: torch.device) -> str | None:
    """Why backend ``name`` cannot run on ``device``, or None if it can."""
    if name == "reference":
        return None
    if name == "cpu":
        if device.type != "cpu":
            return f"it runs on CPU tensors, got {device.type}"
        return None if _extension._C is not None else f"the extension did not load ({_extension.LOAD_ERROR})"
    if name == "cuda":
        if device.type != "cuda":
            return f"it runs on CUDA tensors, got {device.type}"
        return None if _extension.has_cuda_kernels() else "the extension was built without CUDA kernels"
    # triton: CUDA tensors natively, CPU tensors only under TRITON_INTERPRET=1
    if not (device.type == "cuda" or (device.type == "cpu" and triton_interpreted())):
        return f"it runs on CUDA tensors (CPU tensors only with TRITON_INTERPRET=1), got {device.type}"
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton is not importable ({exc})"
    return None


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    device = torch.device(device)
    return [b for b in BACKENDS if unavailable_reason(b, device) is None]


def resolve(device: torch.device) -> str:
    """The concrete backend an op on ``device`` uses now."""
    name = forced_backend()
    if name == "auto":
        if device.type == "cuda":
            name = "triton"
        elif device.type == "cpu":
            name = "cpu" if _extension._C is not None else "reference"
        else:
            name = "reference"
    reason = unavailable_reason(name, device)
    if reason is not None:
        raise RuntimeError(f"dgm_fast backend {name!r} is unavailable: {reason}")
    return name
