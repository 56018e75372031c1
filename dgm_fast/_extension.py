"""Loads the compiled extension ``dgm_fast._C`` once; says why if it cannot."""

from __future__ import annotations

import warnings

import torch

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


def build_info() -> dict:
    """What the extension was compiled with (empty fields when it did not load), and why no CUDA."""
    info = dict(_C.build_info()) if _C is not None else {"loaded": False, "load_error": LOAD_ERROR}
    if not info.get("cuda"):
        info["cuda_reason"] = (
            "torch has no CUDA" if torch.version.cuda is None
            else "its build found no CUDA toolkit matching torch's CUDA, or DGM_FAST_NO_CUDA=1 was set "
            "(the build log says which)"
        )
    return info
