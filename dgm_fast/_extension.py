"""Loads the compiled extension ``dgm_fast._C`` once; says why if it cannot."""

from __future__ import annotations

import warnings

try:
    from dgm_fast import _C
    LOAD_ERROR: str | None = None
except ImportError as exc:  # not built, or built against another torch
    _C = None
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"
    warnings.warn(
        f"dgm_fast: compiled extension unavailable ({LOAD_ERROR}); "
        "CPU ops use the 'reference' backend. Reinstall with "
        "'pip install --no-build-isolation -e .' to build it.",
        RuntimeWarning,
        stacklevel=2,
    )


def has_cuda_kernels() -> bool:
    return _C is not None and hasattr(_C, "langevin_step_cuda")
