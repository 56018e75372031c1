"""Triton helpers shared by the kernels that round as their plain-PyTorch references do."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def div_rn(a, b):
    """IEEE-rounded a / b: in float32 plain ``/`` lowers to the approximate div.full on NVIDIA."""
    if b.dtype == tl.float64:
        q = a / b
    else:
        q = tl.div_rn(a, b)
    return q
