"""Sample-quality metrics of §3.2.4: Fréchet distance, PRD (F_8, F_1/8), nearest neighbours, feature net."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from dgm_fast.models import sample_quality as sq


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The machine is shared: one intra-op thread keeps training time predictable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def exact_moments(rng, n, mean, std):
    """n samples whose sample mean is exactly ``mean`` and sample covariance exactly diag(std^2)."""
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return mean + z * std


# ---- Fréchet distance -------------------------------------------------------------------------


def test_frechet_distance_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).standard_normal((400, 16))
    assert abs(sq.frechet_distance(x, x)) < 1e-8


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(1)
    m1, s1 = rng.normal(size=6), rng.uniform(0.5, 2.0, 6)
    m2, s2 = rng.normal(size=6), rng.uniform(0.5, 2.0, 6)
    a, b = exact_moments(rng, 300, m1, s1), exact_moments(rng, 500, m2, s2)
    expected = np.sum((m1 - m2) ** 2) + np.sum((s1 - s2) ** 2)
    assert sq.frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)
    assert sq.frechet_distance(a[:, :1], b[:, :1]) == pytest.approx((m1[0] - m2[0]) ** 2 + (s1[0] - s2[0]) ** 2)


def test_frechet_distance_matches_eigenvalue_form_for_full_covariances():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((300, 5)) @ rng.standard_normal((5, 5))
    b = rng.standard_normal((300, 5)) @ rng.standard_normal((5, 5)) + 1.0
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ra = np.linalg.cholesky(sa)  # Tr (S_a S_b)^{1/2} = sum sqrt eig(L^T S_b L) for S_a = L L^T
    tr_sqrt = np.sqrt(np.linalg.eigvalsh(ra.T @ sb @ ra)).sum()
    expected = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(sa) + np.trace(sb) - 2 * tr_sqrt
    assert sq.frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)
    assert sq.frechet_distance(b, a) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_grows_with_a_mean_shift():
    x = np.random.default_rng(3).standard_normal((300, 8))
    shifts = [0.1, 0.5, 1.0, 2.0]
    fds = [sq.frechet_distance(x, x + s) for s in shifts]
    np.testing.assert_allclose(fds, [8 * s**2 for s in shifts], rtol=1e-6)  # same covariance: ||shift||^2


def test_frechet_distance_is_finite_for_singular_covariances():
    x = np.random.default_rng(4).standard_normal((6, 10))  # n < d: rank-deficient covariance
    fd = sq.frechet_distance(x, x + 0.5)
    assert np.isfinite(fd) and fd == pytest.approx(10 * 0.25, abs=1e-3)


def test_frechet_distance_retries_with_eps_when_sqrtm_is_not_finite(monkeypatch):
    real_sqrtm = sq.linalg.sqrtm
    calls = []

    def nan_first(m):
        calls.append(m)
        return np.full_like(m, np.nan) if len(calls) == 1 else real_sqrtm(m)

    monkeypatch.setattr(sq.linalg, "sqrtm", nan_first)
    x = np.random.default_rng(5).standard_normal((200, 3))
    assert sq.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-4)
    cov = np.cov(x, rowvar=False)  # the retry adds eps*I to both factors: (S + eps I)^2 - S^2
    assert len(calls) == 2
    np.testing.assert_allclose(calls[1] - calls[0], 2e-6 * cov + 1e-12 * np.eye(3), rtol=1e-6, atol=1e-15)


def test_frechet_distance_rejects_a_non_negligible_imaginary_sqrtm(monkeypatch):
    monkeypatch.setattr(sq.linalg, "sqrtm", lambda m: m + 1j * np.ones_like(m))
    x = np.random.default_rng(6).standard_normal((50, 3))
    with pytest.raises(ValueError, match="imaginary"):
        sq.frechet_distance(x, x)


@pytest.mark.parametrize(
    "a, b, name",
    [
        (np.zeros(10), np.zeros((10, 3)), "feats_a"),
        (np.zeros((10, 3)), np.zeros((10, 3, 1)), "feats_b"),
        (np.zeros((10, 3)), np.zeros((10, 4)), "feats_b"),
        (np.zeros((10, 3)), np.zeros((1, 3)), "feats_b"),
        (np.full((10, 3), np.nan), np.zeros((10, 3)), "feats_a"),
    ],
)
def test_frechet_distance_bad_shapes_name_the_argument(a, b, name):
    with pytest.raises(ValueError, match=name):
        sq.frechet_distance(a, b)


# ---- PRD (Sajjadi et al., 2018) ---------------------------------------------------------------


def test_prd_curve_of_a_dropped_bin_and_f_beta_values():
    # Q puts all its mass on one of P's two bins: precision reaches 1, recall only 1/2.
    precision, recall = sq.prd_curve(np.array([0.5, 0.5]), np.array([1.0, 0.0]))
    assert precision.max() == pytest.approx(1.0) and recall.max() == pytest.approx(0.5)
    f8, f_eighth = sq.f_beta_scores(precision, recall)
    # maxima at (p, r) = (1, 1/2), up to the 1001-angle grid: F_8 is recall-like, F_1/8 precision-like
    assert f8 == pytest.approx(65 * 0.5 / (64 + 0.5), rel=1e-4)
    assert f_eighth == pytest.approx((65 / 64) * 0.5 / (1 / 64 + 0.5), rel=1e-4)


def test_prd_curve_swapping_the_distributions_swaps_precision_and_recall():
    rng = np.random.default_rng(7)
    p, q = rng.dirichlet(np.ones(12)), rng.dirichlet(np.ones(12))
    precision, recall = sq.prd_curve(p, q)
    swapped_precision, swapped_recall = sq.prd_curve(q, p)
    np.testing.assert_allclose(swapped_precision, recall[::-1], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(swapped_recall, precision[::-1], rtol=1e-6, atol=1e-12)


def mixture(rng, n, modes):
    """n points from equal-weight, well-separated Gaussian modes (ids ``modes``, centres 10 e_i) in R^10."""
    return 10.0 * np.eye(10)[rng.choice(modes, n)] + 0.5 * rng.standard_normal((n, 10))


@pytest.fixture(scope="module")
def reference():
    return mixture(np.random.default_rng(8), 600, np.arange(10))


def test_prd_identical_distributions_score_near_one(reference):
    fresh = mixture(np.random.default_rng(9), 600, np.arange(10))
    f8, f_eighth = sq.prd_f_beta(reference, fresh, num_runs=3)
    assert f8 > 0.9 and f_eighth > 0.9


def test_prd_mode_dropping_lowers_recall_not_precision(reference):
    half_the_modes = mixture(np.random.default_rng(10), 600, np.arange(5))
    f8, f_eighth = sq.prd_f_beta(reference, half_the_modes, num_runs=3)
    assert f8 < 0.65 and f_eighth > 0.9


def test_prd_mass_off_the_reference_lowers_precision_not_recall(reference):
    rng = np.random.default_rng(11)
    far = 50.0 + rng.standard_normal((300, 10))
    half_far = np.concatenate([mixture(rng, 300, np.arange(10)), far])
    f8, f_eighth = sq.prd_f_beta(reference, half_far, num_runs=3)
    assert f_eighth < 0.65 and f8 > 0.9


def test_prd_curves_are_deterministic_under_the_seed(reference):
    other = mixture(np.random.default_rng(12), 600, np.arange(7))
    first, second = sq.prd(reference, other, num_runs=2, seed=3), sq.prd(reference, other, num_runs=2, seed=3)
    np.testing.assert_array_equal(first, second)
    assert first[0].shape == (1001,)


def test_prd_bad_shapes_name_the_argument(reference):
    with pytest.raises(ValueError, match="feats_eval"):
        sq.prd(reference, reference[:, :3])


# ---- nearest neighbours (Figure 3.3) ----------------------------------------------------------


def test_nearest_neighbours_match_brute_force():
    gen = torch.Generator().manual_seed(13)
    train, samples = torch.rand(200, 1, 8, 8, generator=gen), torch.rand(20, 1, 8, 8, generator=gen)
    dist = ((samples[:, None] - train[None]) ** 2).flatten(2).sum(-1)
    expected = dist.argsort(dim=1)[:, :5].numpy()
    np.testing.assert_array_equal(sq.nearest_neighbours(samples, train, k=5), expected)
    assert (sq.nearest_neighbours(train[:7], train, k=1)[:, 0] == np.arange(7)).all()


def test_nearest_neighbours_reject_mismatched_images():
    with pytest.raises(ValueError, match="train"):
        sq.nearest_neighbours(torch.rand(3, 1, 8, 8), torch.rand(10, 1, 16, 16))
    with pytest.raises(ValueError, match="k must"):
        sq.nearest_neighbours(torch.rand(3, 1, 8, 8), torch.rand(4, 1, 8, 8), k=5)


# ---- feature classifier on scikit-learn's 8x8 digits ------------------------------------------


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    labels = torch.tensor(data.target)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1400], perm[1400:]
    return images[train], labels[train], images[test], labels[test]


@pytest.fixture(scope="module")
def feature_net(digits):
    train_x, train_y, _, _ = digits
    return sq.train_feature_classifier(train_x, train_y, epochs=5, seed=0)


def test_feature_classifier_reaches_high_held_out_accuracy(digits, feature_net):
    _, _, test_x, test_y = digits
    assert feature_net.accuracy(test_x, test_y) > 0.95  # measured ~0.98; chance is 0.1


def test_features_are_float64_and_deterministic(digits, feature_net):
    train_x, train_y, test_x, _ = digits
    feats = feature_net.features(test_x, batch_size=100)
    assert feats.shape == (len(test_x), 64) and feats.dtype == np.float64
    np.testing.assert_array_equal(feats, feature_net.features(test_x))
    first, second = (sq.train_feature_classifier(train_x[:300], train_y[:300], epochs=1, seed=4) for _ in range(2))
    np.testing.assert_array_equal(first.features(test_x), second.features(test_x))
    assert not np.allclose(first.features(test_x), feats)


def test_frechet_distance_in_feature_space_ranks_corrupted_digits_worse(digits, feature_net):
    train_x, _, test_x, _ = digits
    noisy = (test_x + 0.3 * torch.randn(test_x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    train_feats = feature_net.features(train_x)
    held_out_fd = sq.frechet_distance(train_feats, feature_net.features(test_x))
    assert held_out_fd < 0.5 * sq.frechet_distance(train_feats, feature_net.features(noisy))


def test_features_reject_images_of_another_shape(feature_net):
    with pytest.raises(ValueError, match="images"):
        feature_net.features(torch.rand(4, 1, 16, 16))
