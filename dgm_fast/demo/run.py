"""The end-to-end demo. First the energy-based models (``run_ebm``, also ``dgm-fast ebm``): toy EBMs
trained with noisy and noise-free dynamics and with the generator loss (§2.4.6), their ODE flows'
densities and test log-likelihoods (§2.4.4), and the latent EBM booster on a toy VAE (§3.3.4, Figure
3.9; on GLF's digits too with --full). Then GLF vs regularized GLF vs VAE + flow prior on scikit-learn's
digits (§3.2.4, dgm_fast.demo.glf_digits), then a head volume turned by a 3DMM pose change through the
fused keypoint warp (§4.3, dgm_fast.demo.warp_head)."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from dgm_fast import _checks
from dgm_fast.demo import glf_digits, warp_head
from dgm_fast.demo.density_plots import plot_flow_densities
from dgm_fast.demo.metrics import BANDWIDTHS, grid_modes, mmd2
from dgm_fast.demo.plots import neg_energy_grid, plot_digit_samples, plot_scatter_rows, plot_toy_results
from dgm_fast.demo.toy_data import DATASETS, GRID_STD, gaussian_grid_25, grid_centres, swiss_roll
from dgm_fast.models import (Dynamics, LatentEBM, ToyVAE, TrainConfig, frechet_distance, load_digits, toy_energy,
                             train_ebm, train_feature_classifier, train_latent_ebm, train_toy_vae)
from dgm_fast.models.latent_ebm import SAMPLE_CHAIN, TRAIN_CHAIN
from dgm_fast.models.ode_flow import ODEFlow
from dgm_fast.nn import MLPEnergy


@dataclass(frozen=True)
class Variant:
    """A training recipe of §2.4.6: the chain that makes the negatives, and whether the loss is (2.25)."""

    dynamics: Dynamics
    generator_loss: bool = False


# K = 20 steps of size 0.02 run the flow (2.16) to T = K * eta / 2 = 0.2, the
# horizon of appendix 2.4.7. The noisy chain uses noise 0.05 ~ sqrt(eta) / 3,
# reduced like the appendix's 0.1 at eta = 0.1: with the full sqrt(eta) of
# (2.15) training on the grid diverged or formed no modes, as §2.4.6 reports
# for images.
NOISY = Dynamics(n_steps=20, step_size=0.02, noise_scale=0.05)
NOISE_FREE = Dynamics(n_steps=20, step_size=0.02, noise_scale=0.0)
VARIANTS = {
    "noisy": Variant(NOISY),  # Langevin (2.15), loss (2.13)
    "noise-free": Variant(NOISE_FREE),  # gradient flow (2.20), loss (2.13)
    "noise-free + gen. loss": Variant(NOISE_FREE, generator_loss=True),  # loss (2.25)
}
FLOW_VARIANTS = [name for name, v in VARIANTS.items() if v.dynamics.noise_scale == 0]  # invertible: an ODE flow
GRID = "9-gaussians"  # the dataset scored by grid_modes too
PRIOR = "prior N(0,I)"  # the baseline: the dynamics' starting points, before any training
# §2.4.6: test log-likelihoods (nats) of ODE flows trained by the EBM objective and by maximum likelihood
PAPER_LOGLIK = {"9-gaussians": (-1.95, -1.47), "swiss-roll": (-0.86, -0.69)}


BOOSTER_DATASETS: dict[str, Callable[[int], Tensor]] = {"25-gaussians": gaussian_grid_25, "swiss-roll": swiss_roll}
VAE_SIGMA = 0.2  # the toy VAE's decoder std: its samples then cover each shape with spurious mass between modes
# appendix 3.3.6: 200 steps for a GLF, energy penalty 0.1 (it lowered FD from 36 to 22 here; 0.01: 22)
DIGITS_BOOSTER = TrainConfig(n_iters=200, batch_size=128, energy_reg=0.1)


@dataclass(frozen=True)
class BoosterConfig:
    vae_hidden: int  # ToyVAE width, 4 layers each way (§3.3.4: 256)
    vae_iters: int
    energy_hidden: int  # MLPEnergy((2, h, h, h, 1), "leaky_relu") on the data (§3.3.4: 4 layers of 512)
    # of the latent EBM. The appendix's energy penalty 0.1 (for images) held a 2-D tilt back: a toy
    # energy on z learning a shifted Gaussian did not move in 1000 steps at 0.1 and converged at 0.01
    train: TrainConfig
    digits: bool = False  # also boost GLF on the digits (Table 3.7's pattern)


@dataclass(frozen=True)
class DemoConfig:
    train: TrainConfig
    hidden: int  # toy_energy width and depth
    depth: int
    n_eval: int  # generated and fresh data samples compared by MMD
    resolution: int  # of the -E heat maps
    n_loglik: int  # fresh data points whose ODE-flow log-likelihood is averaged (§2.4.6: 10000)
    density_resolution: int  # of the ODE-flow density maps (a log_prob solve per point)
    booster: BoosterConfig
    # wall time of `dgm-fast demo` in this mode, all parts, on 2 AMD EPYC cores shared with other work
    # (load average 1-2): measured for quick (87 s) and default (3 min 7 s to 3 min 13 s); full estimated
    # from per-step timings, (2.25)'s chain with its graph at batch 800 taking about 1 hour per dataset
    duration: str


MODES = {
    # 300 steps at lr 1e-3 leave a structureless disc on the grid; at 3e-3 all 9 modes form
    "quick": DemoConfig(TrainConfig(n_iters=300, batch_size=128, lr=3e-3), hidden=128, depth=3, n_eval=1000,
                        resolution=60, n_loglik=300, density_resolution=25,
                        booster=BoosterConfig(128, 800, 64, TrainConfig(n_iters=100, batch_size=128, lr=2e-3,
                                                                        energy_reg=0.01)),
                        duration="about 1 min 30 s"),
    # a smaller network and budget than appendix 2.4.7: minutes on 2 cores (the generator loss's
    # chain with its graph, ~50 ms a step, is half of it)
    "default": DemoConfig(TrainConfig(n_iters=400, batch_size=128, lr=3e-3), hidden=128, depth=3, n_eval=2000,
                          resolution=200, n_loglik=1000, density_resolution=40,
                          booster=BoosterConfig(128, 1500, 64, TrainConfig(n_iters=200, batch_size=128, lr=2e-3,
                                                                           energy_reg=0.01)),
                          duration="about 4 min"),
    # appendix 2.4.7: 5 layers of 256 units, 3000 iterations of batch 800; §3.3.4's booster networks
    "full": DemoConfig(TrainConfig(n_iters=3000, batch_size=800), hidden=256, depth=4, n_eval=2000,
                       resolution=200, n_loglik=10000, density_resolution=100,
                       booster=BoosterConfig(256, 3000, 512, TrainConfig(n_iters=1000, batch_size=256,
                                                                         energy_reg=0.01), digits=True),
                       duration="about 4 hours"),
}


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread: the demo's matrices are tiny, so a second OpenMP
    thread gains ~15% on an idle machine, but on a busy one the threads wait for
    each other (a sampling chain took 60x longer on 2 shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _scores(name: str, samples: Tensor, truth: Tensor) -> dict:
    scores = {"mmd2": mmd2(samples, truth)}
    if name == GRID:
        scores.update(grid_modes(samples))
    return scores


def _train_variant(name: str, variant: str, cfg: DemoConfig, seed: int):
    """One toy EBM, from the same weights and data stream for every variant (a fair comparison)."""
    torch.manual_seed(seed)
    energy = toy_energy(cfg.hidden, cfg.depth)
    v = VARIANTS[variant]
    start = time.perf_counter()
    train_ebm(energy, DATASETS[name], v.dynamics, replace(cfg.train, generator_loss=v.generator_loss),
              desc=f"{name} / {variant}")
    return energy, time.perf_counter() - start


def _log_likelihood(flow: ODEFlow, x: Tensor) -> dict:
    """Mean log p(x) (2.19) over fresh data, with its standard error."""
    log_p = flow.log_prob(x)
    return {"mean": log_p.mean().item(), "stderr": log_p.std().item() / math.sqrt(len(x))}


def _grid_log_likelihood(x: Tensor) -> float:
    """The 9-Gaussian grid's own mean log density at ``x``: the best any model can score there."""
    sq = torch.cdist(x, grid_centres()).square()
    log_normal = -sq / (2 * GRID_STD**2) - math.log(2 * math.pi * GRID_STD**2)
    return (torch.logsumexp(log_normal, dim=1) - math.log(len(grid_centres()))).mean().item()


def _evaluate(name: str, cfg: DemoConfig, seed: int) -> tuple[dict, dict]:
    """Train one EBM per variant on dataset ``name``: its scores (and seconds) and its figure row."""
    truth = DATASETS[name](cfg.n_eval)
    scores = {PRIOR: _scores(name, torch.randn(cfg.n_eval, 2), truth)}
    row, flows = {"name": name, "data": truth}, {}
    for variant, v in VARIANTS.items():
        energy, seconds = _train_variant(name, variant, cfg, seed)
        samples = v.dynamics.sample(energy, cfg.n_eval)
        scores[variant] = {**_scores(name, samples, truth), "train_seconds": seconds}
        row[variant] = {"samples": samples, "mmd2": scores[variant]["mmd2"],
                        "neg_energy": neg_energy_grid(energy, cfg.resolution)}
        if variant in FLOW_VARIANTS:  # the noise-free chain is an Euler solve of the flow (2.16) up to T
            flows[variant] = ODEFlow(energy, v.dynamics.horizon)
            scores[variant]["loglik"] = _log_likelihood(flows[variant], DATASETS[name](cfg.n_loglik))
        print(f"  {name} / {variant}: trained in {seconds:.0f} s, MMD² {scores[variant]['mmd2']:.4f}")
    return scores, {"row": row, "flows": flows}


def _print_best(label: str, values: dict[str, float], fmt: str, width: int, better: Callable = min) -> None:
    """One table row of ``values``, then the column(s) holding the best of them."""
    best = better(values.values())
    winners = " = ".join(k for k, v in values.items() if v == best)
    print(f"{label:<14}" + "".join(f"{v:>{width}{fmt}}" for v in values.values()) + f"   best: {winners}")


def _print_ebm_tables(scores: dict[str, dict[str, dict]]) -> None:
    columns, width = [PRIOR, *VARIANTS], 24
    print(f"\nMMD² to fresh data (lower is better; kernel bandwidths {BANDWIDTHS})")
    print(f"{'dataset':<14}" + "".join(f"{c:>{width}}" for c in columns))
    for name, row in scores.items():
        _print_best(name, {c: row[c]["mmd2"] for c in columns}, ".4f", width)
    grid = scores[GRID]
    print(f"\n{GRID}: share of samples within 3 std of a mode, and modes captured (higher is better; the data: "
          "~99%, 9 of 9)")
    print(f"{'':<14}" + "".join(f"{c:>{width}}" for c in columns))
    _print_best("share", {c: grid[c]["high_quality"] for c in columns}, ".0%", width, max)
    _print_best("modes", {c: grid[c]["modes"] for c in columns}, "d", width, max)


def _print_loglik_table(scores: dict[str, dict[str, dict]], n: int, data_loglik: dict[str, float]) -> None:
    print(f"\nODE-flow test log-likelihood (2.19), nats per point, mean ± s.e. over {n} fresh points (higher is "
          "better).\nThe dissertation's (§2.4.6, 10000 points; its toy scales are not stated): ODE flows trained "
          "by the EBM objective, and by maximum likelihood. The data's own density scores the ceiling.")
    width = 24
    head = [*FLOW_VARIANTS, "dissertation (EBM)", "dissertation (ML)", "data's own density"]
    print(f"{'dataset':<14}" + "".join(f"{c:>{width}}" for c in head))
    for name, row in scores.items():
        ours = [f"{row[v]['loglik']['mean']:.2f} ± {row[v]['loglik']['stderr']:.2f}" for v in FLOW_VARIANTS]
        ceiling = f"{data_loglik[name]:.2f}" if name in data_loglik else "n/a"
        best = max(FLOW_VARIANTS, key=lambda v: row[v]["loglik"]["mean"])
        cells = [*ours, *(f"{p:.2f}" for p in PAPER_LOGLIK[name]), ceiling]
        print(f"{name:<14}" + "".join(f"{c:>{width}}" for c in cells) + f"   best of ours: {best}")


def _toy_caption() -> str:
    chains = "; ".join(
        f"{name}: {'Langevin (2.15)' if v.dynamics.noise_scale else 'gradient flow (2.20)'}, "
        f"{v.dynamics.n_steps} steps of size {v.dynamics.step_size}"
        + (f", noise {v.dynamics.noise_scale}" if v.dynamics.noise_scale else "")
        + (", trained by (2.25) through the chain" if v.generator_loss else ", trained by (2.13)")
        for name, v in VARIANTS.items()
    )
    return (
        "Columns: the data; then, for each training recipe, samples of its short-run chain started at "
        f"N(0, I) ({chains}) and −E, the trained EBM's unnormalised log density.\n"
        "As §2.4.6 finds, the samples match the data while −E does not match its log density: "
        "the sampling dynamics, not exp(−E), is the generative model."
    )


def _toy_ebms(out_dir: Path, cfg: DemoConfig, seed: int) -> dict:
    """§2.4.6 on both toy datasets: scores, ODE-flow log-likelihoods and the two figures."""
    scores, rows, flows = {}, [], {}
    for name in DATASETS:
        scores[name], parts = _evaluate(name, cfg, seed)
        rows.append(parts["row"])
        flows[name] = parts["flows"]["noise-free"]
    figure = plot_toy_results(rows, out_dir / "ebm_toy.png", _toy_caption())
    data_loglik = {GRID: _grid_log_likelihood(DATASETS[GRID](cfg.n_loglik))}
    _print_ebm_tables(scores)
    _print_loglik_table(scores, cfg.n_loglik, data_loglik)
    density = plot_flow_densities(flows, {row["name"]: row["data"] for row in rows}, n_samples=cfg.n_eval,
                                  resolution=cfg.density_resolution, seed=seed)
    density.savefig(out_dir / "ebm_flow_density.png", dpi=100)
    return {"scores": scores, "data_loglik": data_loglik,
            "figures": {"toy": str(figure), "flow_density": str(out_dir / "ebm_flow_density.png")}}


def _boost_toy(name: str, cfg: BoosterConfig, n_eval: int, seed: int) -> tuple[dict, list]:
    """Figure 3.9 on one dataset: a toy VAE, then a latent EBM on the data (3.6) tilting its prior."""
    sample_data = BOOSTER_DATASETS[name]
    torch.manual_seed(seed)
    vae = ToyVAE(hidden=cfg.vae_hidden, sigma=VAE_SIGMA)
    train_toy_vae(vae, sample_data, n_iters=cfg.vae_iters, desc=f"{name} / VAE")
    vae.requires_grad_(False)
    model = LatentEBM(vae.decode, MLPEnergy((2, *[cfg.energy_hidden] * 3, 1), "leaky_relu"), vae.latent_dim)
    start = time.perf_counter()
    train_latent_ebm(model, sample_data, cfg.train, desc=f"{name} / latent EBM")
    seconds = time.perf_counter() - start
    truth = sample_data(n_eval)
    samples = {"VAE": vae.sample(n_eval), f"+ EBM, {TRAIN_CHAIN.n_steps} steps": model.sample(n_eval, TRAIN_CHAIN),
               f"+ EBM, {SAMPLE_CHAIN.n_steps} steps": model.sample(n_eval, SAMPLE_CHAIN)}
    scores = {key: mmd2(x, truth) for key, x in samples.items()}
    print(f"  {name} / latent EBM: trained in {seconds:.0f} s, MMD² {scores['VAE']:.4f} -> "
          + " / ".join(f"{v:.4f}" for v in list(scores.values())[1:]))
    panels = [(f"{name}: data", truth)] + [(f"{key} (MMD² {scores[key]:.4f})", x) for key, x in samples.items()]
    return {"mmd2": scores, "train_seconds": seconds}, panels


def _booster_caption(cfg: BoosterConfig) -> str:
    return (
        f"Figure 3.9: a VAE (decoder of 4 layers of {cfg.vae_hidden} units, 2-D latent) samples G(z), z ~ N(0, I); "
        "a latent EBM (3.6) with an energy on the data, trained by (3.5) for "
        f"{cfg.train.n_iters} steps with {TRAIN_CHAIN.n_steps}-step latent chains (3.8), tilts the prior, and "
        f"G decodes its chains' ends ({TRAIN_CHAIN.n_steps} steps as in training, and {SAMPLE_CHAIN.n_steps} as "
        "appendix 3.3.6 samples). Lower MMD² is better; the decoder is the same in every panel of a row."
    )


def _toy_booster(out_dir: Path, cfg: DemoConfig, seed: int) -> dict:
    scores, rows = {}, []
    for name in BOOSTER_DATASETS:
        scores[name], panels = _boost_toy(name, cfg.booster, cfg.n_eval, seed)
        rows.append(panels)
    print("\nLatent EBM booster (§3.3.4): MMD² of decoded samples to fresh data (lower is better)")
    keys = list(next(iter(scores.values()))["mmd2"])
    print(f"{'dataset':<14}" + "".join(f"{k:>20}" for k in keys))
    for name, s in scores.items():
        _print_best(name, s["mmd2"], ".4f", 20)
    figure = plot_scatter_rows(rows, out_dir / "ebm_booster.png", _booster_caption(cfg.booster))
    return {"scores": scores, "figure": str(figure)}


def _digits_booster(out_dir: Path, seed: int) -> dict:
    """Table 3.7's pattern: GLF on the digits (glf_digits' default setting, 8x8), boosted by an energy on
    the pixels of its samples G(f^-1(u)) (3.6), the chains (3.8) running on GLF's Gaussian latents u."""
    cfg = glf_digits.MODES["default"]
    train, labels = load_digits(cfg.image_size, "train")
    test, _ = load_digits(cfg.image_size, "test")
    net = train_feature_classifier(train, labels, epochs=cfg.classifier_epochs, seed=seed)
    glf, _ = glf_digits._train("GLF", cfg, train, seed)
    glf.requires_grad_(False)
    shape = glf.autoencoder.image_shape
    model = LatentEBM(lambda u: glf.autoencoder.decode(glf.flow.inverse(u)[0]).flatten(1),
                      MLPEnergy((math.prod(shape), 200, 200, 1), "leaky_relu"), cfg.latent_dim)
    torch.manual_seed(seed)
    start = time.perf_counter()
    train_latent_ebm(model, lambda n: train[torch.randint(len(train), (n,))].flatten(1), DIGITS_BOOSTER,
                     desc="digits / latent EBM")
    seconds = time.perf_counter() - start
    samples = {"GLF": glf.sample(len(test))}
    for chain in (TRAIN_CHAIN, SAMPLE_CHAIN):
        samples[f"+ EBM, {chain.n_steps} steps"] = model.sample(len(test), chain).view(-1, *shape)
    test_feats = net.features(test)
    scores = {key: frechet_distance(net.features(x), test_feats) for key, x in samples.items()}
    print(f"\nLatent EBM booster on GLF's digits, trained in {seconds:.0f} s (Table 3.7's pattern; lower is "
          "better): FD in a digit classifier's features, beside the dissertation's MNIST FID")
    print(f"{'':<14}" + "".join(f"{k:>20}" for k in scores))
    _print_best("FD", scores, ".2f", 20)
    print(f"{'dissertation':<14}{14.2:>20.1f}{'':>20}{12.1:>20.1f}")
    figure = plot_digit_samples([(f"{k}, FD {scores[k]:.1f}", x) for k, x in samples.items()],
                                out_dir / "ebm_booster_digits.png",
                                "GLF's samples G(f⁻¹(u)), u ~ N(0, I), and with u drawn by the latent EBM's chain "
                                f"(3.8) on an energy of the pixels (3.6), {TRAIN_CHAIN.n_steps} steps as in training "
                                f"and {SAMPLE_CHAIN.n_steps} as appendix 3.3.6 samples. FD: Fréchet distance to the "
                                "test digits in a digit classifier's features (lower is better).")
    return {"scores": scores, "train_seconds": seconds, "figure": str(figure)}


def describe_ebm(mode: str) -> str:
    """What ``run_ebm`` trains in ``mode``, in words."""
    cfg = MODES[mode]
    digits = " and on GLF's digits" if cfg.booster.digits else ""
    return (f"{len(DATASETS)} toy datasets x {len(VARIANTS)} EBM recipes x {cfg.train.n_iters} training steps, "
            f"their ODE flows, and a latent EBM booster on toy VAEs{digits}")


def run_ebm(out_dir: Path, *, mode: str = "default", seed: int = 0) -> dict:
    """The EBM part: §2.4.6's toy EBMs and their ODE flows, then §3.3's latent booster. Writes
    ``ebm_toy.png``, ``ebm_flow_density.png``, ``ebm_booster.png`` (and with ``booster.digits``
    ``ebm_booster_digits.png``) and ``ebm_metrics.json``, that after each part, so no finished part is lost.

    Returns ``{"toy": {"scores": {dataset: {PRIOR or variant: {"mmd2", on the grid "high_quality" and
    "modes", for a variant "train_seconds", for a noise-free one "loglik": {"mean", "stderr"}}}},
    "data_loglik", "figures"}, "booster": {"scores": {dataset: {"mmd2": {...}, "train_seconds"}}, "figure"},
    ["digits_booster": {"scores", "figure"}], "config", "metrics_json"}``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    cfg = MODES[mode]
    out_dir = _checks.writable_dir("out_dir", out_dir)  # before the minutes of training
    metrics = out_dir / "ebm_metrics.json"
    result = {"config": {"mode": mode, "seed": seed, "mmd_bandwidths": BANDWIDTHS, "demo": asdict(cfg),
                         "variants": {name: asdict(v) for name, v in VARIANTS.items()}},
              "metrics_json": str(metrics)}
    torch.manual_seed(seed)  # fresh data and prior draws; each model reseeds for its weights and batches
    with _one_thread():
        result["toy"] = _toy_ebms(out_dir, cfg, seed)
        metrics.write_text(json.dumps(result, indent=2))
        result["booster"] = _toy_booster(out_dir, cfg, seed)
        metrics.write_text(json.dumps(result, indent=2))
        if cfg.booster.digits:
            result["digits_booster"] = _digits_booster(out_dir, seed)
            metrics.write_text(json.dumps(result, indent=2))
    return result


def _figures(result: dict) -> list[str]:
    ebm = result["ebm"]
    return [*ebm["toy"]["figures"].values(), ebm["booster"]["figure"],
            *([ebm["digits_booster"]["figure"]] if "digits_booster" in ebm else []),
            *result["glf"]["figures"].values(), result["warp"]["figure"]]


def run_demo(out_dir: Path, *, mode: str = "default", seed: int = 0) -> dict:
    """Run the EBM part (``run_ebm``), the GLF part and the warp part; writes their PNGs and ``metrics.json``
    to ``out_dir``.

    ``mode`` is a key of ``MODES``: "quick" (a smoke test that still shows the
    modes), "default" or "full" (the appendix 2.4.7 setting, §3.3.4's booster
    networks with the digits booster, and the InfoGAN auto-encoder at 28 px).
    Returns ``{"ebm": what ``run_ebm`` returns, "glf": what ``glf_digits.run_glf`` returns, "warp":
    what ``warp_head.run_warp`` returns, "seconds": total, "metrics_json": json path}``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    out_dir = _checks.writable_dir("out_dir", out_dir)
    print(f"dgm-fast demo, {mode} mode: {describe_ebm(mode)}, then {glf_digits.describe(mode)}, then a keypoint "
          f"warp of a head volume ({MODES[mode].duration} on 2 CPU cores); output to {out_dir}")
    start = time.perf_counter()
    result = {"ebm": run_ebm(out_dir, mode=mode, seed=seed)}
    with _one_thread():
        result["glf"] = glf_digits.run_glf(out_dir, mode=mode, seed=seed)
    result["warp"] = warp_head.run_warp(out_dir, mode=mode, seed=seed)  # all threads: it times a parallel kernel
    result.update(seconds=time.perf_counter() - start, metrics_json=str(out_dir / "metrics.json"))
    Path(result["metrics_json"]).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {', '.join(_figures(result))} and {result['metrics_json']} ({result['seconds']:.0f} s)")
    return result
