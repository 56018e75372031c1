"""Models built on dgm_fast's ops: energy-based models trained with short-run dynamics (§2.4)."""

from dgm_fast.models.ebm import Dynamics, EnergyMLP, TrainConfig, ml_loss, train_ebm

__all__ = ["Dynamics", "EnergyMLP", "TrainConfig", "ml_loss", "train_ebm"]
