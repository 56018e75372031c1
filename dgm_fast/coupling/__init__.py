"""Affine coupling layers (dissertation §2.2.3) and the coupling flow of GLF (§3.2)."""

from dgm_fast.coupling.flow import CouplingFlow
from dgm_fast.coupling.functional import affine_coupling

__all__ = ["CouplingFlow", "affine_coupling"]
