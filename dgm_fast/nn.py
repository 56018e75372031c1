"""Modules built on dgm_fast's fused ops."""

from dgm_fast.coupling.flow import CouplingFlow
from dgm_fast.ebm.energy import MLPEnergy

__all__ = ["CouplingFlow", "MLPEnergy"]
