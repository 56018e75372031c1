"""End-to-end demo of ``dgm_fast.sample_langevin``: the 2-D toy experiments of §2.4.6.

EBMs (``dgm_fast.models``) on the 9-Gaussian grid and the Swiss roll are
trained by maximum likelihood (2.13) with negatives from short-run noisy
(2.15) or noise-free (2.20) dynamics, scored by MMD and mode counts, and
plotted as in Figures 2.1 / 2.2.
"""

from dgm_fast.demo.run import MODES, run_demo

__all__ = ["MODES", "run_demo"]
