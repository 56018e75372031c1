"""Models built on dgm_fast's ops: energy-based models trained with short-run dynamics and their ODE flows (§2.4),
Generative Latent Flow (§3.2) with its auto-encoders, the digits data and sample-quality metrics, the
latent EBM booster of §3.3 with a small VAE for 2-D toys, and the face-reenactment model of §4.3.5
with the 3D morphable model of §4.3.4; the VAEs of §2.1 and §4.2 (the DCGAN VAE of Table 4.6, an MLP VAE,
Variational Latent Optimization) and Likelihood Regret's OOD scoring (``dgm_fast.models.ood``)."""

from dgm_fast.models.autoencoder import InfoGANAutoEncoder, MLPAutoEncoder
from dgm_fast.models.dcgan_vae import DCGANVAE
from dgm_fast.models.digits import load_digits
from dgm_fast.models.ebm import (Dynamics, ReplayBuffer, TrainConfig, ebm_loss, fit_energy, frozen_energy, ml_loss,
                                 toy_energy, train_ebm)
from dgm_fast.models.face3dmm import (Coefficients, MorphableModel, load_morphable_model, rotation_matrix,
                                      synthetic_morphable_model)
from dgm_fast.models.glf import GLF, default_flow, train_glf
from dgm_fast.models.latent_ebm import LatentEBM, train_latent_ebm
from dgm_fast.models.mlp_vae import MLPVAE, train_vae_mlp
from dgm_fast.models.ode_flow import ODEFlow, baseline_log_prob
from dgm_fast.models.reenactment import (AppearanceEncoder, DeltaNet, DenseMotion, DenseMotionNetwork, Generator,
                                         Reenactment, ReenactmentLoss, ReenactmentModel)
from dgm_fast.models.sample_quality import (FeatureNet, frechet_distance, nearest_neighbours, prd, prd_f_beta,
                                            train_feature_classifier)
from dgm_fast.models.toy_vae import ToyVAE, train_toy_vae
from dgm_fast.models.vlo import VLO, evaluate_vae, format_table_2_2, table_2_2

__all__ = [
    "Dynamics", "ReplayBuffer", "TrainConfig", "ebm_loss", "fit_energy", "frozen_energy", "ml_loss", "toy_energy",
    "train_ebm", "ODEFlow", "baseline_log_prob", "LatentEBM", "train_latent_ebm", "ToyVAE", "train_toy_vae",
    "GLF", "default_flow", "train_glf", "InfoGANAutoEncoder", "MLPAutoEncoder", "load_digits",
    "FeatureNet", "frechet_distance", "nearest_neighbours", "prd", "prd_f_beta", "train_feature_classifier",
    "AppearanceEncoder", "DeltaNet", "DenseMotion", "DenseMotionNetwork", "Generator", "Reenactment",
    "ReenactmentLoss", "ReenactmentModel",
    "Coefficients", "MorphableModel", "load_morphable_model", "rotation_matrix", "synthetic_morphable_model",
    "DCGANVAE", "MLPVAE", "train_vae_mlp", "VLO", "evaluate_vae", "format_table_2_2", "table_2_2",
]
