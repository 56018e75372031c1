"""Energy-based models on fused ops: an MLP energy's gradient, Laplacian and whole Langevin chain
(§2.4, §3.3), and divergence estimators for the ODE flow (2.19)."""

from dgm_fast.ebm.divergence import exact_divergence, hutchinson_divergence
from dgm_fast.ebm.energy import MLPEnergy
from dgm_fast.ebm.functional import mlp_energy_grad, mlp_energy_laplacian, mlp_energy_sample

__all__ = ["MLPEnergy", "exact_divergence", "hutchinson_divergence", "mlp_energy_grad", "mlp_energy_laplacian",
           "mlp_energy_sample"]
