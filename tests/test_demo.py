"""The end-to-end demo (dgm_fast.demo): toy data, MMD, mode counts, and a quick training run of the
EBMs and of GLF vs regularized GLF vs VAE+flow prior on the digits."""

import json
import math

import pytest
import torch

from dgm_fast.demo import run_demo
from dgm_fast.demo.glf_digits import DATA, VARIANTS
from dgm_fast.demo.metrics import grid_modes, mmd2
from dgm_fast.demo.toy_data import GRID_STD, gaussian_grid, grid_centres, swiss_roll


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GLF_FIGURES = {"samples": "glf_samples.png", "neighbours": "glf_neighbours.png",
               "interpolation": "glf_interpolation.png"}


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
    png, metrics = out / "ebm_toy.png", out / "metrics.json"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == PNG_SIGNATURE
    saved = json.loads(metrics.read_text())
    assert saved["scores"] == result["scores"] and saved["glf"]["scores"] == result["glf"]["scores"]
    assert result["figure"] == str(png) and result["metrics_json"] == str(metrics)
    assert result["glf"]["figures"] == {key: str(out / name) for key, name in GLF_FIGURES.items()}
    assert result["warp"]["figure"] == str(out / "warp_head.png") and saved["warp"]["timings"] == result["warp"]["timings"]
    for name in (*GLF_FIGURES.values(), "warp_head.png"):
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
    scores = quick_run[1]["scores"]
    assert set(scores) == {"9-gaussians", "swiss-roll"}
    for name, by_dynamics in scores.items():
        prior = by_dynamics["prior N(0,I)"]["mmd2"]
        for dynamics in ("noisy", "noise-free"):
            mmd = by_dynamics[dynamics]["mmd2"]
            # training must move the samples well away from the N(0, I) starting points
            assert math.isfinite(mmd) and mmd < 0.3 * prior, (name, dynamics, by_dynamics)


def test_quick_demo_finds_the_grid_modes(quick_run):
    grid = quick_run[1]["scores"]["9-gaussians"]
    assert grid["prior N(0,I)"]["high_quality"] < 0.15
    for dynamics in ("noisy", "noise-free"):
        # a structureless disc has ~8% of its samples near a mode and captures at most the centre one
        assert grid[dynamics]["high_quality"] > 0.5 and grid[dynamics]["modes"] >= 8, (dynamics, grid)


def test_run_demo_checks_its_arguments_before_training(tmp_path, monkeypatch):
    def _fail(*args, **kwargs):
        pytest.fail("trained before the checks")

    monkeypatch.setattr("dgm_fast.demo.run._evaluate", _fail)
    monkeypatch.setattr("dgm_fast.demo.glf_digits.run_glf", _fail)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="out_dir .*cannot write"):
        run_demo(blocker / "out", mode="quick")
    with pytest.raises(ValueError, match="out_dir .*not a folder"):
        run_demo(blocker, mode="quick")
    with pytest.raises(ValueError, match="mode must be one of"):
        run_demo(tmp_path, mode="fast")
