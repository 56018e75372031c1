"""The end-to-end demo (dgm_fast.demo): toy data, MMD, mode counts, and a quick training run of the
EBMs (with their ODE flows and the latent booster) and of GLF vs regularized GLF vs VAE+flow prior on
the digits."""

import json
import math
from dataclasses import replace

import pytest
import torch

from dgm_fast.demo import glf_digits, run_demo
from dgm_fast.demo import run as demo_run
from dgm_fast.demo.glf_digits import DATA, VARIANTS
from dgm_fast.demo.metrics import grid_modes, mmd2
from dgm_fast.demo.toy_data import GRID_STD, gaussian_grid, grid_centres, swiss_roll
from dgm_fast.models import TrainConfig


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GLF_FIGURES = {"samples": "glf_samples.png", "neighbours": "glf_neighbours.png",
               "interpolation": "glf_interpolation.png"}
EBM_FIGURES = ("ebm_toy.png", "ebm_flow_density.png", "ebm_booster.png")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_gaussian_grid_has_nine_equal_tight_modes():
    x = gaussian_grid(9000, _gen())
    assert x.shape == (9000, 2)
    dist, mode = torch.cdist(x, grid_centres()).min(dim=1)
    assert set(grid_centres().abs().unique().tolist()) == {0.0, 2.0}
    assert (dist < 5 * GRID_STD).all()
    counts = torch.bincount(mode, minlength=9)
    assert (counts - 1000).abs().max() < 150
    assert (x - grid_centres()[mode]).std().item() == pytest.approx(GRID_STD, rel=0.05)


def test_swiss_roll_is_a_centred_spiral():
    x = swiss_roll(5000, _gen())
    assert x.shape == (5000, 2)
    radius = x.norm(dim=1)
    # noise-free radius t / 5 spans [0.3 pi, 0.9 pi]; the noise (std 0.2) blurs the ends
    assert 0.6 < radius.quantile(0.01) < 1.2 and 2.5 < radius.quantile(0.99) < 3.2
    assert x.mean(dim=0).abs().max() < 0.5


def test_generators_are_reproducible():
    assert torch.equal(swiss_roll(100, _gen(3)), swiss_roll(100, _gen(3)))
    assert torch.equal(gaussian_grid(100, _gen(3)), gaussian_grid(100, _gen(3)))


def test_mmd_near_zero_for_same_law_and_grows_with_shift():
    x, y = gaussian_grid(1000, _gen(1)), gaussian_grid(1000, _gen(2))
    same = mmd2(x, y)
    assert abs(same) < 2e-3
    shifts = [mmd2(x, y + torch.tensor([s, 0.0])) for s in (0.1, 0.3, 1.0)]
    assert same < shifts[0] < shifts[1] < shifts[2]
    assert shifts[0] > 10 * abs(same)


def test_mmd_is_symmetric_and_exact_on_tiny_input():
    x, y = torch.tensor([[0.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0], [3.0, 0.0]])
    assert mmd2(x, y) == pytest.approx(mmd2(y, x))

    def k(a, b):  # the RBF kernel with bandwidth 1
        return math.exp(-((a - b).norm().item() ** 2) / 2)

    cross = sum(k(a, b) for a in x for b in y) / 4
    expected = k(x[0], x[1]) + k(y[0], y[1]) - 2 * cross
    assert mmd2(x, y, bandwidths=(1.0,)) == pytest.approx(expected)


def test_grid_modes_tell_the_grid_from_a_disc():
    data, disc = grid_modes(gaussian_grid(9000, _gen())), grid_modes(torch.randn(9000, 2, generator=_gen()))
    assert data["modes"] == 9 and data["high_quality"] > 0.98
    assert disc["modes"] <= 1 and disc["high_quality"] < 0.15
    one_mode = grid_modes(grid_centres()[4] + 0.05 * torch.randn(900, 2, generator=_gen()))
    assert one_mode == {"high_quality": 1.0, "modes": 1}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, mode="quick", seed=0)


def test_quick_demo_writes_its_files(quick_run):
    out, result = quick_run
    metrics = out / "metrics.json"
    saved = json.loads(metrics.read_text())
    assert saved["ebm"]["toy"]["scores"] == result["ebm"]["toy"]["scores"]
    assert saved["glf"]["scores"] == result["glf"]["scores"] and result["metrics_json"] == str(metrics)
    # the EBM part saves its own metrics as soon as it is done
    assert json.loads((out / "ebm_metrics.json").read_text())["booster"] == saved["ebm"]["booster"]
    ebm = result["ebm"]
    assert ebm["toy"]["figures"] == {"toy": str(out / "ebm_toy.png"), "flow_density": str(out / "ebm_flow_density.png")}
    assert ebm["booster"]["figure"] == str(out / "ebm_booster.png") and "digits_booster" not in ebm
    assert result["glf"]["figures"] == {key: str(out / name) for key, name in GLF_FIGURES.items()}
    assert result["warp"]["figure"] == str(out / "warp_head.png") and saved["warp"]["timings"] == result["warp"]["timings"]
    for name in (*EBM_FIGURES, *GLF_FIGURES.values(), "warp_head.png"):
        png = out / name
        assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == PNG_SIGNATURE


def test_quick_glf_scores_are_in_range(quick_run):
    scores = quick_run[1]["glf"]["scores"]
    assert set(scores) == {DATA, *VARIANTS}
    for name, s in scores.items():
        assert math.isfinite(s["frechet_distance"]) and s["frechet_distance"] >= 0, (name, s)
        assert 0 <= s["f8"] <= 1 and 0 <= s["f1_8"] <= 1, (name, s)
        if name != DATA:
            assert math.isfinite(s["test_nll"]) and s["latent_rms"] > 0 and s["train_seconds"] > 0, (name, s)


def test_quick_glf_models_are_farther_from_the_test_digits_than_training_digits(quick_run):
    scores = quick_run[1]["glf"]["scores"]
    floor = scores[DATA]
    # training vs test digits: the same law, so a small FD and PRD near 1 in both directions
    assert floor["f8"] > 0.9 and floor["f1_8"] > 0.9, floor
    for name in VARIANTS:
        assert 3 * floor["frechet_distance"] < scores[name]["frechet_distance"], (name, scores)


def test_quick_glf_shows_the_dissertations_pattern(quick_run):
    scores = quick_run[1]["glf"]["scores"]
    glf, regularized, vae = (scores[name] for name in ("GLF", "regularized GLF", "VAE+flow prior"))
    # Table 3.1: VAE+flow prior at beta = 1 samples worse than GLF
    assert vae["frechet_distance"] > glf["frechet_distance"], scores
    # §3.2.3 / Figure 3.8: without the stop gradient the NLL shrinks the latents and runs negative
    assert regularized["latent_rms"] < 0.5 * glf["latent_rms"], scores
    assert regularized["test_nll"] < glf["test_nll"] - 10, scores


def test_quick_warp_times_both_warps_and_they_agree(quick_run):
    timings = quick_run[1]["warp"]["timings"]
    for name in ("dgm_fast", "eager chain"):
        assert all(timings[name][key] > 0 for key in ("forward_ms", "forward_backward_ms")), timings
    assert timings["max_abs_difference"] < 1e-4  # float32 outputs of the same warp (values ~1)


def test_quick_demo_beats_the_prior(quick_run):
    scores = quick_run[1]["ebm"]["toy"]["scores"]
    assert set(scores) == {"9-gaussians", "swiss-roll"}
    for name, by_variant in scores.items():
        assert set(by_variant) == {demo_run.PRIOR, *demo_run.VARIANTS}
        prior = by_variant[demo_run.PRIOR]["mmd2"]
        for variant in demo_run.VARIANTS:
            mmd = by_variant[variant]["mmd2"]
            assert math.isfinite(mmd) and by_variant[variant]["train_seconds"] > 0, (name, variant, by_variant)
            # training must move the samples away from the N(0, I) starting points; (2.25) collapses
            # modes on these toys (see the demo's tables), so it only has to beat the prior
            bound = prior if demo_run.VARIANTS[variant].generator_loss else 0.3 * prior
            assert mmd < bound, (name, variant, by_variant)


def test_quick_demo_finds_the_grid_modes(quick_run):
    grid = quick_run[1]["ebm"]["toy"]["scores"]["9-gaussians"]
    assert grid[demo_run.PRIOR]["high_quality"] < 0.15
    for variant in ("noisy", "noise-free"):
        # a structureless disc has ~8% of its samples near a mode and captures at most the centre one
        assert grid[variant]["high_quality"] > 0.5 and grid[variant]["modes"] >= 8, (variant, grid)


def test_quick_demo_scores_the_ode_flows(quick_run):
    toy = quick_run[1]["ebm"]["toy"]
    for name, by_variant in toy["scores"].items():
        for variant in demo_run.VARIANTS:
            if variant not in demo_run.FLOW_VARIANTS:
                assert "loglik" not in by_variant[variant]  # a noisy chain is no invertible flow
                continue
            loglik = by_variant[variant]["loglik"]
            assert math.isfinite(loglik["mean"]) and 0 < loglik["stderr"] < 1, (name, variant, loglik)
    # no model beats the grid's own density on fresh points (by more than the estimates' noise)
    grid, ceiling = toy["scores"]["9-gaussians"], toy["data_loglik"]["9-gaussians"]
    for variant in demo_run.FLOW_VARIANTS:
        assert grid[variant]["loglik"]["mean"] < ceiling + 3 * grid[variant]["loglik"]["stderr"], (variant, grid)


def test_grid_log_likelihood_is_the_mixture_density():
    # at a mode centre the mixture is (1/9) N(0; 0, std^2 I) plus negligible far modes
    centre = torch.zeros(1, 2)
    expected = -math.log(9) - math.log(2 * math.pi * GRID_STD**2)
    assert demo_run._grid_log_likelihood(centre) == pytest.approx(expected, abs=1e-6)


def test_quick_booster_scores_before_and_after(quick_run):
    booster = quick_run[1]["ebm"]["booster"]["scores"]
    assert set(booster) == set(demo_run.BOOSTER_DATASETS)
    for name, s in booster.items():
        assert len(s["mmd2"]) == 3 and all(math.isfinite(v) for v in s["mmd2"].values()), (name, s)
        assert s["train_seconds"] > 0


def test_digits_booster_runs_and_scores_both(tmp_path, monkeypatch):
    """The --full mode's GLF booster (Table 3.7's pattern), on a tiny budget: it must not fail after hours."""
    monkeypatch.setitem(glf_digits.MODES, "default", replace(glf_digits.MODES["quick"], epochs=1, classifier_epochs=1))
    monkeypatch.setattr(demo_run, "DIGITS_BOOSTER", TrainConfig(n_iters=2, batch_size=16, energy_reg=0.1))
    with demo_run._one_thread():  # as run_ebm: a second thread only waits on these tiny matrices
        result = demo_run._digits_booster(tmp_path, seed=0)
    assert set(result["scores"]) == {"GLF", "+ EBM, 60 steps", "+ EBM, 100 steps"}
    assert all(math.isfinite(v) and v > 0 for v in result["scores"].values()), result
    png = tmp_path / "ebm_booster_digits.png"
    assert result["figure"] == str(png) and png.read_bytes()[:8] == PNG_SIGNATURE


def test_gaussian_grid_25_has_25_tight_modes():
    torch.manual_seed(0)
    x = demo_run.gaussian_grid_25(10_000)
    axis = torch.arange(-2.0, 3.0)
    dist, mode = torch.cdist(x, torch.cartesian_prod(axis, axis)).min(dim=1)
    assert (dist < 0.3).all() and torch.bincount(mode, minlength=25).min() > 300


def test_run_demo_checks_its_arguments_before_training(tmp_path, monkeypatch):
    def _fail(*args, **kwargs):
        pytest.fail("trained before the checks")

    monkeypatch.setattr("dgm_fast.demo.run._evaluate", _fail)
    monkeypatch.setattr("dgm_fast.demo.run._toy_booster", _fail)
    monkeypatch.setattr("dgm_fast.demo.glf_digits.run_glf", _fail)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="out_dir .*cannot write"):
        run_demo(blocker / "out", mode="quick")
    with pytest.raises(ValueError, match="out_dir .*not a folder"):
        run_demo(blocker, mode="quick")
    with pytest.raises(ValueError, match="mode must be one of"):
        run_demo(tmp_path, mode="fast")
    with pytest.raises(ValueError, match="out_dir .*not a folder"):
        demo_run.run_ebm(blocker, mode="quick")
