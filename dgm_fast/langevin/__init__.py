"""Langevin / gradient-flow dynamics of energy-based models (dissertation §2.4, §3.3)."""

from dgm_fast.langevin.functional import langevin_step, langevin_step_
from dgm_fast.langevin.reference import langevin_step_reference
from dgm_fast.langevin.sampler import LangevinSampler, sample_langevin
from dgm_fast.langevin.stream import NoiseStream

__all__ = ["LangevinSampler", "NoiseStream", "langevin_step", "langevin_step_", "langevin_step_reference",
           "sample_langevin"]
