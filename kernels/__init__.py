"""Triton kernels of dgm_fast, installed as ``dgm_fast.kernels``.

Nothing is imported here: ``@triton.jit`` reads ``TRITON_INTERPRET`` when a
kernel module is imported, so callers import ``dgm_fast.kernels.langevin``
(and the like) only once the backend is chosen.
"""
