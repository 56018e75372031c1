"""End-to-end demo: the 2-D toy EBMs of §2.4.6, the latent EBM booster of §3.3, the Generative Latent
Flow comparison of §3.2 and the keypoint warp of §4.3.

EBMs (``dgm_fast.models``) on the 9-Gaussian grid and the Swiss roll are
trained by maximum likelihood (2.13) with negatives from short-run noisy
(2.15) or noise-free (2.20) dynamics, and with the generator loss (2.25),
scored by MMD, mode counts and the ODE flow's test log-likelihood (2.19), and
plotted as in Figures 2.1-2.3; a toy VAE is boosted by an energy sampled with
(3.8) (Figure 3.9). Then GLF (3.3), regularized GLF (3.2) and a
VAE with a flow prior (3.1) are trained on scikit-learn's digits
(``dgm_fast.demo.glf_digits``) and scored by Fréchet distance, PRD and test
NLL, with the samples, nearest neighbours (Figure 3.3) and interpolations
(Figure 3.2(f)) plotted, and a head volume is turned through the fused
keypoint warp (``dgm_fast.demo.warp_head``).
"""

from dgm_fast.demo.run import MODES, run_demo

__all__ = ["MODES", "run_demo"]
