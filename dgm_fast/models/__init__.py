"""Models built on dgm_fast's ops: energy-based models trained with short-run dynamics (§2.4),
Generative Latent Flow (§3.2) with its auto-encoders, the digits data and sample-quality metrics, and
the face-reenactment model of §4.3.5 with the 3D morphable model of §4.3.4."""

from dgm_fast.models.autoencoder import InfoGANAutoEncoder, MLPAutoEncoder
from dgm_fast.models.digits import load_digits
from dgm_fast.models.ebm import Dynamics, EnergyMLP, TrainConfig, ml_loss, train_ebm
from dgm_fast.models.face3dmm import (Coefficients, MorphableModel, load_morphable_model, rotation_matrix,
                                      synthetic_morphable_model)
from dgm_fast.models.glf import GLF, default_flow, train_glf
from dgm_fast.models.reenactment import (AppearanceEncoder, DeltaNet, DenseMotion, DenseMotionNetwork, Generator,
                                         Reenactment, ReenactmentLoss, ReenactmentModel)
from dgm_fast.models.sample_quality import (FeatureNet, frechet_distance, nearest_neighbours, prd, prd_f_beta,
                                            train_feature_classifier)

__all__ = [
    "Dynamics", "EnergyMLP", "TrainConfig", "ml_loss", "train_ebm",
    "GLF", "default_flow", "train_glf", "InfoGANAutoEncoder", "MLPAutoEncoder", "load_digits",
    "FeatureNet", "frechet_distance", "nearest_neighbours", "prd", "prd_f_beta", "train_feature_classifier",
    "AppearanceEncoder", "DeltaNet", "DenseMotion", "DenseMotionNetwork", "Generator", "Reenactment",
    "ReenactmentLoss", "ReenactmentModel",
    "Coefficients", "MorphableModel", "load_morphable_model", "rotation_matrix", "synthetic_morphable_model",
]
