"""Modules built on dgm_fast's fused ops."""

from dgm_fast.coupling.flow import CouplingFlow

__all__ = ["CouplingFlow"]
