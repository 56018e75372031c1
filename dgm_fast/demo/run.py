"""The end-to-end demo: EBMs on 2-D toy data trained with noisy vs noise-free dynamics (§2.4.6), then
GLF vs regularized GLF vs VAE + flow prior on scikit-learn's digits (§3.2.4, dgm_fast.demo.glf_digits),
then a head volume turned by a 3DMM pose change through the fused keypoint warp (§4.3,
dgm_fast.demo.warp_head)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dgm_fast import _checks
from dgm_fast.demo import glf_digits, warp_head
from dgm_fast.demo.metrics import BANDWIDTHS, grid_modes, mmd2
from dgm_fast.demo.plots import neg_energy_grid, plot_toy_results
from dgm_fast.demo.toy_data import DATASETS
from dgm_fast.models import Dynamics, EnergyMLP, TrainConfig, train_ebm

# K = 20 steps of size 0.02 run the flow (2.16) to T = K * eta / 2 = 0.2, the
# horizon of appendix 2.4.7. The noisy chain uses noise 0.05 ~ sqrt(eta) / 3,
# reduced like the appendix's 0.1 at eta = 0.1: with the full sqrt(eta) of
# (2.15) training on the grid diverged or formed no modes, as §2.4.6 reports
# for images.
DYNAMICS = (
    Dynamics("noisy", n_steps=20, step_size=0.02, noise_scale=0.05),  # Langevin (2.15)
    Dynamics("noise-free", n_steps=20, step_size=0.02, noise_scale=0.0),  # gradient flow (2.20)
)
GRID = "9-gaussians"  # the dataset scored by grid_modes too
PRIOR = "prior N(0,I)"  # the baseline: the dynamics' starting points, before any training


@dataclass(frozen=True)
class DemoConfig:
    train: TrainConfig
    hidden: int  # EnergyMLP width and depth
    depth: int
    n_eval: int  # generated and fresh data samples compared by MMD
    resolution: int  # of the -E heat maps
    # measured wall time of `dgm-fast demo` in this mode, EBMs and GLF, on 2 AMD EPYC cores shared with
    # other work (load average ~3); full: its EBM part alone took about 40 min on a 2-core Intel Xeon
    duration: str


MODES = {
    # 300 steps at lr 1e-3 leave a structureless disc on the grid; at 3e-3
    # all 9 modes form (80-90% of samples within 3 std of a mode).
    "quick": DemoConfig(TrainConfig(n_iters=300, batch_size=128, lr=3e-3), hidden=128, depth=3,
                        n_eval=1000, resolution=60, duration="about 50 s"),
    # appendix 2.4.7's lr, a smaller network and budget: minutes on 2 cores
    "default": DemoConfig(TrainConfig(n_iters=1200, batch_size=256), hidden=128, depth=3,
                          n_eval=2000, resolution=200, duration="about 3 min"),
    # appendix 2.4.7: 5 layers of 256 units, 3000 iterations of batch 800
    "full": DemoConfig(TrainConfig(n_iters=3000, batch_size=800), hidden=256, depth=4,
                       n_eval=2000, resolution=200, duration="over 40 min"),
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


def _scores(name: str, samples: torch.Tensor, truth: torch.Tensor) -> dict:
    scores = {"mmd2": mmd2(samples, truth)}
    if name == GRID:
        scores.update(grid_modes(samples))
    return scores


def _evaluate(name: str, cfg: DemoConfig) -> tuple[dict, dict, dict]:
    """Train one EBM per dynamics on dataset ``name``: its scores, training seconds and figure row."""
    sample_data = DATASETS[name]
    truth = sample_data(cfg.n_eval)
    scores = {PRIOR: _scores(name, torch.randn(cfg.n_eval, 2), truth)}
    seconds, row = {}, {"name": name, "data": truth}
    for dyn in DYNAMICS:
        start = time.perf_counter()
        energy = train_ebm(EnergyMLP(cfg.hidden, cfg.depth), sample_data, dyn, cfg.train, desc=f"{name} / {dyn.name}")
        seconds[dyn.name] = time.perf_counter() - start
        samples = dyn.sample(energy, cfg.n_eval)
        scores[dyn.name] = _scores(name, samples, truth)
        row[dyn.name] = {"samples": samples, "mmd2": scores[dyn.name]["mmd2"],
                         "neg_energy": neg_energy_grid(energy, cfg.resolution)}
        print(f"  {name} / {dyn.name}: trained in {seconds[dyn.name]:.0f} s, MMD² {scores[dyn.name]['mmd2']:.4f}")
    return scores, seconds, row


def _print_tables(scores: dict[str, dict[str, dict]]) -> None:
    columns = [PRIOR] + [d.name for d in DYNAMICS]
    print(f"\nMMD² to fresh data (lower is better; kernel bandwidths {BANDWIDTHS})")
    print(f"{'dataset':<14}" + "".join(f"{c:>14}" for c in columns))
    for name, row in scores.items():
        print(f"{name:<14}" + "".join(f"{row[c]['mmd2']:>14.4f}" for c in columns))
    grid = scores[GRID]
    print(f"\n{GRID}: share of samples within 3 std of a mode, and modes captured (the data: ~99%, 9 of 9)")
    print(f"{'':<14}" + "".join(f"{c:>14}" for c in columns))
    print(f"{'share':<14}" + "".join(f"{grid[c]['high_quality']:>14.0%}" for c in columns))
    print(f"{'modes':<14}" + "".join(f"{grid[c]['modes']:>14}" for c in columns))


def _caption() -> str:
    chains = "; ".join(
        f"{d.name}: {'Langevin (2.15)' if d.noise_scale else 'gradient flow (2.20)'}, "
        f"{d.n_steps} steps of size {d.step_size}" + (f", noise {d.noise_scale}" if d.noise_scale else "")
        for d in DYNAMICS
    )
    return (
        "Columns: the data; then, for each training dynamics, samples of the same short-run chain started at "
        f"N(0, I) ({chains}) and −E, the trained EBM's unnormalised log density.\n"
        "As §2.4.6 finds, the samples match the data while −E does not match its log density: "
        "the sampling dynamics, not exp(−E), is the generative model."
    )


def run_demo(out_dir: Path, *, mode: str = "default", seed: int = 0) -> dict:
    """Train, sample, score and plot; writes ``ebm_toy.png``, the GLF part's three PNGs, the warp part's
    ``warp_head.png`` and ``metrics.json`` to ``out_dir``.

    ``mode`` is a key of ``MODES``: "quick" (a smoke test that still shows the
    modes), "default" or "full" (the appendix 2.4.7 setting, and the InfoGAN
    auto-encoder at 28 px). Returns ``{"scores": {dataset: {PRIOR or dynamics
    name: {"mmd2": ..., and on the grid "high_quality", "modes"}}},
    "train_seconds": {dataset: {dynamics name: s}}, "glf": what
    ``glf_digits.run_glf`` returns, "warp": what ``warp_head.run_warp`` returns, "seconds": total,
    "config": {...}, "figure":
    png path, "metrics_json": json path}``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    cfg = MODES[mode]
    out_dir = _checks.writable_dir("out_dir", out_dir)  # before the minutes of training
    print(f"dgm-fast demo, {mode} mode: {len(DATASETS)} datasets x {len(DYNAMICS)} dynamics x "
          f"{cfg.train.n_iters} training steps, then {glf_digits.describe(mode)}, then a keypoint warp "
          f"of a head volume ({cfg.duration} on 2 CPU cores); output to {out_dir}")
    torch.manual_seed(seed)  # data, initial points and Langevin noise all come from torch's generator
    start = time.perf_counter()
    scores, train_seconds, rows = {}, {}, []
    with _one_thread():
        for name in DATASETS:
            scores[name], train_seconds[name], row = _evaluate(name, cfg)
            rows.append(row)
        figure = plot_toy_results(rows, out_dir / "ebm_toy.png", _caption())
        _print_tables(scores)
        glf = glf_digits.run_glf(out_dir, mode=mode, seed=seed)
    warp = warp_head.run_warp(out_dir, mode=mode, seed=seed)  # all threads: it times a parallel kernel
    result = {
        "scores": scores,
        "train_seconds": train_seconds,
        "glf": glf,
        "warp": warp,
        "seconds": time.perf_counter() - start,
        "config": {"mode": mode, "seed": seed, "mmd_bandwidths": BANDWIDTHS, "demo": asdict(cfg),
                   "dynamics": [asdict(d) for d in DYNAMICS]},
        "figure": str(figure),
        "metrics_json": str(out_dir / "metrics.json"),
    }
    Path(result["metrics_json"]).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {', '.join([str(figure), *glf['figures'].values(), warp['figure']])} and {result['metrics_json']} "
          f"({result['seconds']:.0f} s)")
    return result
