"""End-to-end demo: the 2-D toy EBMs of §2.4.6 and the Generative Latent Flow comparison of §3.2.

EBMs (``dgm_fast.models``) on the 9-Gaussian grid and the Swiss roll are
trained by maximum likelihood (2.13) with negatives from short-run noisy
(2.15) or noise-free (2.20) dynamics, scored by MMD and mode counts, and
plotted as in Figures 2.1 / 2.2. Then GLF (3.3), regularized GLF (3.2) and a
VAE with a flow prior (3.1) are trained on scikit-learn's digits
(``dgm_fast.demo.glf_digits``) and scored by Fréchet distance, PRD and test
NLL, with the samples, nearest neighbours (Figure 3.3) and interpolations
(Figure 3.2(f)) plotted.
"""

from dgm_fast.demo.run import MODES, run_demo

__all__ = ["MODES", "run_demo"]
