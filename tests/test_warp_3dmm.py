"""The 3D Morphable Model of §4.3.4 (dgm_fast/models/face3dmm.py): eq. (4.6)-(4.8), the rotation,
fitting coefficients to 2-D and 3-D landmarks, pose and expression editing (§4.3.6), the synthetic
model, loading BFM-style files, and bad input."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
import scipy.io
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dgm_fast.models.face3dmm import (Coefficients, MorphableModel, load_morphable_model, rotation_matrix,
                                      synthetic_morphable_model)

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The fits' tensors are tiny (a few hundred rows): with more threads, OpenMP's waits on a busy
    shared machine made this module ~6x slower, and taught nothing."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> MorphableModel:
    return synthetic_morphable_model(dtype=F64)


def small_model(dtype=F64) -> MorphableModel:
    """10 vertices, 4 + 2 basis vectors, 3 landmarks: for file and gradient tests."""
    g = torch.Generator().manual_seed(0)
    return MorphableModel(torch.randn(30, generator=g, dtype=dtype), torch.randn(30, 4, generator=g, dtype=dtype),
                          torch.randn(30, 2, generator=g, dtype=dtype), torch.tensor([0, 3, 9]))


def random_coeffs(model: MorphableModel, batch: int, *, seed: int, shape: bool = True, angle: float = 0.5,
                  planar: bool = False) -> Coefficients:
    """Coefficients as the prior draws them (P ~ N(0, I); zero with ``shape=False``), scale in [0.8, 1.2],
    angles up to ``angle`` rad, translation ~ 0.2 N(0, I) (b_z = 0 with ``planar``: 2-D fits keep it 0)."""
    g = torch.Generator().manual_seed(seed)
    p_id, p_exp = (torch.randn(batch, n, generator=g, dtype=F64) * shape for n in (model.n_id, model.n_exp))
    scale = 0.8 + 0.4 * torch.rand(batch, generator=g, dtype=F64)
    angles = angle * (2 * torch.rand(batch, 3, generator=g, dtype=F64) - 1)
    translation = 0.2 * torch.randn(batch, 3, generator=g, dtype=F64)
    if planar:
        translation[:, 2] = 0
    return Coefficients(p_id, p_exp, scale, angles, translation)


def assert_coeffs_close(got: Coefficients, want: Coefficients, atol: float) -> None:
    for name, g, w in zip(("p_id", "p_exp", "scale", "angles", "translation"), got.tensors(), want.tensors()):
        torch.testing.assert_close(g, w, atol=atol, rtol=0, msg=lambda m, name=name: f"{name}: {m}")


# ---------------------------------------------------------------------------------------------- rotation

@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-7.0, 7.0), min_size=3, max_size=3))
def test_rotation_is_orthonormal_with_determinant_one(angles):
    r = rotation_matrix(torch.tensor(angles, dtype=F64))
    torch.testing.assert_close(r @ r.T, torch.eye(3, dtype=F64), atol=1e-14, rtol=0)
    assert abs(torch.linalg.det(r).item() - 1) < 1e-14


def test_rotation_convention():
    """Zero angles give I; R = Rz(roll) Ry(yaw) Rx(pitch) with the documented directions, batched."""
    eye = torch.eye(3, dtype=F64)
    torch.testing.assert_close(rotation_matrix(torch.zeros(2, 4, 3, dtype=F64)), eye.expand(2, 4, 3, 3))
    a = 0.3
    nose = torch.tensor([0.0, 0.0, 1.0], dtype=F64)
    pitch, yaw, roll = (rotation_matrix(torch.tensor(v, dtype=F64)) for v in ([a, 0, 0], [0, a, 0], [0, 0, a]))
    torch.testing.assert_close(pitch @ nose, torch.tensor([0, -math.sin(a), math.cos(a)], dtype=F64))
    torch.testing.assert_close(yaw @ nose, torch.tensor([math.sin(a), 0, math.cos(a)], dtype=F64))
    torch.testing.assert_close(roll @ torch.tensor([1.0, 0, 0], dtype=F64),
                               torch.tensor([math.cos(a), math.sin(a), 0], dtype=F64))
    angles = torch.tensor([[0.2, -0.4, 1.1], [-1.3, 0.5, 0.1]], dtype=F64)
    composed = torch.stack([rotation_matrix(angles[:, i, None] * eye[i]) for i in (2, 1, 0)])
    torch.testing.assert_close(rotation_matrix(angles), composed[0] @ composed[1] @ composed[2])


def test_rotation_gradcheck():
    angles = torch.tensor([[0.3, -1.2, 2.0], [1.4, 0.1, -0.7]], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(rotation_matrix, (angles,))
    assert torch.autograd.gradgradcheck(rotation_matrix, (angles,))


# ------------------------------------------------------------------------------------ (4.6) - (4.8)

def test_vertices_follow_equations_4_6_and_4_7(model):
    """Per sample, written out: V = s R reshape(mean + U_id p_id + U_exp p_exp) + b, rows (x, y, z)."""
    c = random_coeffs(model, 3, seed=1, angle=3.0)
    got = model.vertices(c)
    assert got.shape == (3, model.n_vertices, 3)
    for i in range(3):
        v_c = model.mean + model.id_basis @ c.p_id[i] + model.exp_basis @ c.p_exp[i]
        want = (c.scale[i] * rotation_matrix(c.angles[i]) @ v_c.view(-1, 3).T).T + c.translation[i]
        torch.testing.assert_close(got[i], want, atol=1e-12, rtol=0)


def test_landmarks_are_the_vertices_at_the_index(model):
    c = random_coeffs(model, 4, seed=2)
    lm = model.landmarks(c)
    assert lm.shape == (4, model.n_landmarks, 3)
    torch.testing.assert_close(lm, model.vertices(c)[:, model.landmark_index], atol=1e-13, rtol=0)


def test_landmarks_are_differentiable():
    model = small_model()
    c = random_coeffs(model, 2, seed=3)
    leaves = [t.clone().requires_grad_() for t in c.tensors()]
    assert torch.autograd.gradcheck(lambda *t: model.landmarks(Coefficients(*t)), leaves)
    detached = Coefficients(*leaves).detach()
    assert not any(t.requires_grad for t in detached.tensors())
    assert all(torch.equal(a, b) for a, b in zip(detached.tensors(), c.tensors()))


# ------------------------------------------------------------------------------------------- fitting
# Exact, noise-free landmarks of known coefficients: Levenberg-Marquardt converges to rounding, so
# float64 recovery is asked to 1e-8 (the fits reach ~1e-13; the margin is the conditioning of the
# landmark Jacobian, ~1e4 on this model, times the float64 loss resolution).

@pytest.mark.parametrize("dims", [3, 2])
def test_fit_recovers_a_rigid_pose(model, dims):
    true = random_coeffs(model, 4, seed=10 + dims, shape=False, angle=0.9, planar=dims == 2)
    target = model.landmarks(true)[..., :dims]
    fitted = model.fit(target, steps_all=0)
    assert_coeffs_close(fitted, true, atol=1e-8)


@pytest.mark.parametrize("dims", [3, 2])
def test_fit_recovers_all_coefficients(model, dims):
    """Without a prior, 36 unknowns from 68 landmarks are identifiable here, in 3-D and, thanks to the
    face's relief, from the orthographic 2-D view."""
    true = random_coeffs(model, 4, seed=20 + dims, angle=0.7, planar=dims == 2)
    target = model.landmarks(true)[..., :dims]
    fitted = model.fit(target, id_weight=0.0, exp_weight=0.0)
    assert_coeffs_close(fitted, true, atol=1e-8)


def test_fit_keeps_samples_independent_deterministic_and_detached(model):
    true = random_coeffs(model, 2, seed=30)
    target = model.landmarks(true)[..., :2].requires_grad_()
    batched = model.fit(target)
    alone = [model.fit(target[i:i + 1]) for i in range(2)]
    # batched and single-sample BLAS round differently; the prior fit amplifies that by ~1e6
    assert_coeffs_close(batched, Coefficients(*(torch.cat(t) for t in zip(*(a.tensors() for a in alone)))), 1e-6)
    again = model.fit(target)
    assert all(torch.equal(a, b) for a, b in zip(batched.tensors(), again.tensors()))
    assert not any(t.requires_grad for t in batched.tensors())


def test_fit_prior_shrinks_the_coefficients(model):
    """A noisy target: a larger weight gives smaller coefficients and a larger landmark error; the
    default weight recovers the landmarks to within the noise."""
    true = random_coeffs(model, 2, seed=40)
    clean = model.landmarks(true)
    noisy = clean + 0.005 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    fits = [model.fit(noisy, id_weight=w, exp_weight=w) for w in (0.0, 1e-3, 1e-1)]
    norms = [torch.cat([f.p_id, f.p_exp], 1).norm(dim=1) for f in fits]
    errors = [(model.landmarks(f) - noisy).square().sum((1, 2)) for f in fits]
    assert bool((norms[0] > norms[1]).all() and (norms[1] > norms[2]).all())
    assert bool((errors[0] < errors[1]).all() and (errors[1] < errors[2]).all())
    rms_to_clean = (model.landmarks(fits[1]) - clean).square().sum(2).mean(1).sqrt()
    assert bool((rms_to_clean < 0.005 * math.sqrt(3)).all())


def test_fit_is_free_of_the_targets_units(model):
    """Scaling and shifting the target scales and shifts s and b, and changes nothing else."""
    true = random_coeffs(model, 2, seed=50)
    target = model.landmarks(true)
    shift = torch.tensor([30.0, -20.0, 5.0], dtype=F64)
    base, moved = model.fit(target), model.fit(100 * target + shift)
    torch.testing.assert_close(moved.scale, 100 * base.scale, rtol=1e-7, atol=0)
    torch.testing.assert_close(moved.translation, 100 * base.translation + shift, rtol=1e-7, atol=1e-6)
    for a, b in ((moved.p_id, base.p_id), (moved.p_exp, base.p_exp), (moved.angles, base.angles)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_fit_in_float32():
    """float32 rounding (~1e-7 of the unit size) bounds the fit, not the algorithm."""
    model32 = synthetic_morphable_model()
    true = random_coeffs(model32, 2, seed=60)
    target = model32.landmarks(Coefficients(*(t.float() for t in true.tensors())))
    fitted = model32.fit(target, id_weight=0.0, exp_weight=0.0)
    assert fitted.scale.dtype == torch.float32
    assert (model32.landmarks(fitted) - target).abs().max().item() < 1e-5


# --------------------------------------------------------------------------------- editing (§4.3.6)

def test_frontalize_sets_zero_angles_and_keeps_the_rest(model):
    c = random_coeffs(model, 3, seed=70)
    front = model.frontalize(c)
    assert torch.equal(front.angles, torch.zeros_like(c.angles))
    for name in ("p_id", "p_exp", "scale", "translation"):
        assert torch.equal(getattr(front, name), getattr(c, name))
    # R = I: the landmarks are the canonical mesh scaled and shifted
    canonical = model.landmarks(dataclasses.replace(c, scale=torch.ones_like(c.scale), angles=front.angles,
                                                    translation=torch.zeros_like(c.translation)))
    torch.testing.assert_close(model.landmarks(front), c.scale[:, None, None] * canonical + c.translation[:, None])


def test_random_expression_changes_only_the_expression(model):
    c = random_coeffs(model, 500, seed=80)
    new = model.random_expression(c, torch.Generator().manual_seed(1))
    for name in ("p_id", "scale", "angles", "translation"):
        assert torch.equal(getattr(new, name), getattr(c, name))
    assert not torch.equal(new.p_exp, c.p_exp)
    again = model.random_expression(c, torch.Generator().manual_seed(1))
    assert torch.equal(new.p_exp, again.p_exp)
    # q_exp ~ N(0, I): 5000 draws, mean within ~4 standard errors, variance within ~4 of its own
    assert abs(new.p_exp.mean().item()) < 0.06 and abs(new.p_exp.var().item() - 1) < 0.08


# ----------------------------------------------------------------------------------- the synthetic model

def test_synthetic_model_is_a_head_facing_the_viewer(model):
    vertices = model.mean.view(-1, 3)
    assert vertices.abs().max() <= 1
    landmarks = vertices[model.landmark_index]
    assert model.landmark_index.unique().numel() == model.n_landmarks == 68
    # on the face front: ahead of the head's middle, within the face's width and height
    assert bool((landmarks[:, 2] > 0.3).all()) and landmarks[:, 1].min() > -0.7 and landmarks[:, 1].max() < 0.5
    nose_tip = vertices[vertices[:, 2].argmax()]
    assert abs(nose_tip[0]) < 0.05 and nose_tip[2] > 0.85
    # the layout's left-right symmetry survives the choice of vertices (iBUG order: jaw 0-16)
    torch.testing.assert_close(landmarks[:8, 0], -landmarks[9:17, 0].flip(0), atol=0.03, rtol=0)


def test_synthetic_bases_are_orthogonal_with_decreasing_variances(model):
    for basis in (model.id_basis, model.exp_basis):
        gram = basis.T @ basis
        off_diagonal = gram - torch.diag(gram.diagonal())
        assert off_diagonal.abs().max() < 1e-10 * gram.diagonal().max()
        assert bool((gram.diagonal()[1:] < gram.diagonal()[:-1]).all())


def test_synthetic_expression_is_concentrated_around_mouth_and_eyes(model):
    """The expression moves the landmarks of eyes and mouth (iBUG 36-67) far more than the jaw's
    upper ends (0-2, 14-16) and brows; identity moves them all."""
    def motion(basis, rows):
        return basis.view(-1, 3, basis.shape[1])[model.landmark_index[rows]].square().sum((1, 2)).mean()

    eyes_mouth, far = list(range(36, 68)), [0, 1, 2, 14, 15, 16, *range(17, 27)]
    assert motion(model.exp_basis, eyes_mouth) > 20 * motion(model.exp_basis, far)
    assert motion(model.id_basis, far) > 0.2 * motion(model.id_basis, eyes_mouth)


def test_synthetic_model_is_deterministic_and_seeded():
    a, b = synthetic_morphable_model(n_landmarks=15), synthetic_morphable_model(n_landmarks=15)
    c = synthetic_morphable_model(n_landmarks=15, seed=1)
    assert a.n_landmarks == 15 and a.mean.dtype == torch.float32
    assert all(torch.equal(x, y) for x, y in zip(a.buffers(), b.buffers()))
    assert torch.equal(a.mean, c.mean) and not torch.equal(a.id_basis, c.id_basis)


# --------------------------------------------------------------------------------------------- files

@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_npz_round_trip(tmp_path, dtype):
    original = small_model(dtype)
    original.save_npz(tmp_path / "model.npz")
    loaded = load_morphable_model(tmp_path / "model.npz")
    assert loaded.mean.dtype == dtype
    for name, buffer in original.named_buffers():
        assert torch.equal(getattr(loaded, name), buffer), name


def test_mat_file_in_the_bfm_layout(tmp_path):
    """BFM-style keys: column vectors, an orthonormal PC with standard deviations (EV), 1-based
    landmark indices stored as doubles (as MATLAB does); scipy.io.savemat writes float64."""
    g = np.random.default_rng(0)
    mean = g.normal(size=(30, 1))
    shape_pc, exp_pc = np.linalg.qr(g.normal(size=(30, 4)))[0], np.linalg.qr(g.normal(size=(30, 2)))[0]
    shape_ev, exp_ev = np.array([[3.0], [2.0], [1.0], [0.5]]), np.array([[0.2], [0.1]])
    scipy.io.savemat(tmp_path / "bfm.mat", {"shapeMU": mean, "shapePC": shape_pc, "shapeEV": shape_ev,
                                            "expPC": exp_pc, "expEV": exp_ev, "kpt_ind": [[1.0, 4.0, 9.0]]})
    model = load_morphable_model(tmp_path / "bfm.mat")
    assert model.mean.dtype == F64
    torch.testing.assert_close(model.mean, torch.from_numpy(mean[:, 0]))
    torch.testing.assert_close(model.id_basis, torch.from_numpy(shape_pc * shape_ev.T))
    torch.testing.assert_close(model.exp_basis, torch.from_numpy(exp_pc * exp_ev.T))
    assert model.landmark_index.tolist() == [0, 3, 8]
    assert load_morphable_model(tmp_path / "bfm.mat", one_based=False).landmark_index.tolist() == [1, 4, 9]


def test_other_key_names_and_an_explicit_one_based_npz(tmp_path):
    """Deep3DFaceRecon's names, a (1, 3 Nv) float32 mean."""
    ref = small_model(torch.float32)
    np.savez(tmp_path / "d3d.npz", meanshape=ref.mean.numpy()[None], idBase=ref.id_basis.numpy(),
             exBase=ref.exp_basis.numpy(), keypoints=ref.landmark_index.numpy() + 1)
    model = load_morphable_model(tmp_path / "d3d.npz", one_based=True)
    for name, buffer in ref.named_buffers():
        assert torch.equal(getattr(model, name), buffer), name


GOOD = {"mean": np.zeros(30), "id_basis": np.ones((30, 4)), "exp_basis": np.ones((30, 2)),
        "landmark_index": np.array([0, 3, 9])}


def with_(**changes):
    arrays = {**GOOD, **changes}
    return {k: v for k, v in arrays.items() if v is not None}


MALFORMED = {  # name: (arrays to save, or bytes, or None for no file; what the message must say)
    "missing file": (None, "cannot read"),
    "garbage": (b"not an archive" * 10, "cannot read"),
    "pickled objects": (with_(mean=np.array([object()] * 30, dtype=object)), "cannot read"),
    "missing mean": (with_(mean=None), r"missing mean, expected one of the keys \['mean', 'meanshape'"),
    "missing landmarks": (with_(landmark_index=None), "missing landmark_index"),
    "two means": (with_(shapeMU=np.zeros(30)), r"mean is ambiguous.*\['mean', 'shapeMU'\]"),
    "mean not 3 Nv": (with_(mean=np.zeros(31)), r"mean must have 3 \* n_vertices > 0 values, got 31"),
    "empty mean": (with_(mean=np.zeros(0)), "mean must have 3 \\* n_vertices > 0 values, got 0"),
    "mean a matrix": (with_(mean=np.zeros((10, 3))), r"mean must be a vector.*\(10, 3\)"),
    "integer mean": (with_(mean=np.zeros(30, dtype=np.int32)), "mean must hold finite floating-point values"),
    "text mean": (with_(mean=np.array(["x"] * 30)), "mean must hold finite floating-point values"),
    "NaN in mean": (with_(mean=np.full(30, np.nan)), "mean must hold finite .* non-finite"),
    "inf in basis": (with_(id_basis=np.full((30, 4), np.inf)), "id_basis must hold finite .* non-finite"),
    "basis rows": (with_(exp_basis=np.ones((29, 2))), r"exp_basis must have shape \(30, n\).*\(29, 2\)"),
    "basis 1-D": (with_(id_basis=np.ones(30)), r"id_basis must have shape \(30, n\)"),
    "basis no columns": (with_(id_basis=np.ones((30, 0))), r"id_basis must have shape \(30, n\) with n >= 1"),
    "std length": (with_(id_std=np.ones(3)), "id_std must be 4 non-negative values"),
    "negative std": (with_(exp_std=np.array([1.0, -1.0])), "exp_std must be 2 non-negative values"),
    "index too large": (with_(landmark_index=np.array([0, 10])), r"0-based vertex indices in \[0, 10\), got .*10\]"),
    "negative index": (with_(landmark_index=np.array([-1, 3])), r"0-based vertex indices in \[0, 10\)"),
    "fractional index": (with_(landmark_index=np.array([0.5, 3.0])), "non-empty vector of integers, got dtype float64"),
    "empty index": (with_(landmark_index=np.zeros(0, dtype=np.int64)), "landmark_index must be a non-empty vector"),
    "index matrix": (with_(landmark_index=np.zeros((2, 2), dtype=np.int64)), "landmark_index must be a vector"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_npz_raises_naming_the_file_and_problem(tmp_path, case):
    content, message = MALFORMED[case]
    path = tmp_path / "model.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        np.savez(path, **content)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + message):
        load_morphable_model(path)


@pytest.mark.parametrize("write, message", [
    (lambda p: p.write_bytes(b"MATLAB garbage" * 20), "cannot read it as a .mat file"),
    (lambda p: scipy.io.savemat(p, {**GOOD, "landmark_index": [[0.0, 3.0]]}),
     r"1-based vertex indices in \[1, 11\), got values in \[0.0, 3.0\]"),
    (lambda p: scipy.io.savemat(p, {**GOOD, "mean": "thirty chars of text, not nums."}),
     "mean must hold finite floating-point values"),
], ids=["garbage", "zero in a 1-based index", "text"])
def test_malformed_mat_raises(tmp_path, write, message):
    path = tmp_path / "model.mat"
    write(path)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + message):
        load_morphable_model(path)


def test_other_file_kinds_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"model.txt: expected a .npz or .mat file, got suffix '.txt'"):
        load_morphable_model(tmp_path / "model.txt")
    single = tmp_path / "single.npz"
    with open(single, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(ValueError, match="single.npz: cannot read .*not an archive of named arrays"):
        load_morphable_model(single)
    with pytest.raises(TypeError, match="one_based must be a bool or None, got int"):
        load_morphable_model(single, one_based=1)


# --------------------------------------------------------------------------------------- bad arguments

def test_bad_rotation_arguments():
    with pytest.raises(TypeError, match="angles must be a torch.Tensor"):
        rotation_matrix([0.0, 0.0, 0.0])
    with pytest.raises(TypeError, match="angles must have a dtype in"):
        rotation_matrix(torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"angles must have shape \(\.\.\., 3\), got \(2, 4\)"):
        rotation_matrix(torch.zeros(2, 4))


def test_bad_coefficients():
    z = torch.zeros
    good = dict(p_id=z(2, 4), p_exp=z(2, 3), scale=torch.ones(2), angles=z(2, 3), translation=z(2, 3))
    Coefficients(**good)
    cases = [
        (dict(p_id=z(4)), ValueError, r"p_id must have shape \(B, alpha\), got \(4,\)"),
        (dict(p_exp=z(3, 3)), ValueError, r"p_exp must have shape \(B, beta\) with p_id's B = 2, got \(3, 3\)"),
        (dict(scale=torch.ones(2, 1)), ValueError, r"scale must have shape \(2,\)"),
        (dict(angles=z(2, 2)), ValueError, r"angles must have shape \(2, 3\)"),
        (dict(translation=z(3, 3)), ValueError, r"translation must have shape \(2, 3\)"),
        (dict(scale=torch.tensor([1.0, 0.0])), ValueError, "scale must be positive"),
        (dict(angles=z(2, 3, dtype=F64)), TypeError, r"angles must have the dtype of p_id \(torch.float32\)"),
        (dict(p_exp=[[0.0] * 3] * 2), TypeError, "p_exp must be a torch.Tensor"),
    ]
    for change, error, message in cases:
        with pytest.raises(error, match=message):
            Coefficients(**{**good, **change})


def test_bad_model_arguments():
    m, u, v, i = torch.zeros(30), torch.zeros(30, 4), torch.zeros(30, 2), torch.tensor([0, 9])
    cases = [
        ((torch.zeros(31), u, v, i), ValueError, r"mean must have shape \(3 \* n_vertices,\)"),
        ((m, torch.zeros(30), v, i), ValueError, r"id_basis must have shape \(30, n\)"),
        ((m, u, torch.zeros(30, 2, dtype=F64), i), TypeError, "exp_basis must have the dtype of mean"),
        ((m, torch.full((30, 4), math.nan), v, i), ValueError, "id_basis must be finite"),
        ((m, u, v, torch.tensor([0, 10])), ValueError, r"landmark_index must be vertex indices in \[0, 10\)"),
        ((m, u, v, torch.tensor([0, 9], dtype=torch.int32)), TypeError, "landmark_index must have a dtype in"),
        ((m, u, v, torch.zeros(0, dtype=torch.int64)), ValueError, r"landmark_index must have shape \(L,\) with L"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            MorphableModel(*args)


def test_bad_calls(model):
    c = random_coeffs(model, 2, seed=0)
    with pytest.raises(TypeError, match="coeffs must be a Coefficients, got tuple"):
        model.landmarks(c.tensors())
    with pytest.raises(ValueError, match=f"coeffs.p_id must have the model's {model.n_id} columns, got 3"):
        model.vertices(dataclasses.replace(c, p_id=torch.zeros(2, 3, dtype=F64)))
    with pytest.raises(TypeError, match=r"coeffs must have the dtype of the model \(torch.float64\)"):
        model.frontalize(Coefficients(*(t.float() for t in c.tensors())))
    with pytest.raises(TypeError, match="coeffs must be a Coefficients"):
        model.random_expression(None)
    target = model.landmarks(c)
    bad_targets = [
        (target[:, :10], ValueError, rf"target must have shape \(B, {model.n_landmarks}, 2 or 3\).*\(2, 10, 3\)"),
        (torch.zeros(2, model.n_landmarks, 4, dtype=F64), ValueError, "target must have shape"),
        (target[:0], ValueError, "with B >= 1"),
        (target.float(), TypeError, "target must have the dtype of the model"),
        (target.numpy(), TypeError, "target must be a torch.Tensor"),
        (torch.full_like(target, math.nan), ValueError, "target must be finite"),
        (torch.ones_like(target), ValueError, "target must not have a sample whose landmarks all coincide"),
    ]
    for t, error, message in bad_targets:
        with pytest.raises(error, match=message):
            model.fit(t)
    bad_options = [(dict(steps_rigid=-1), ValueError, "steps_rigid must be >= 0"),
                   (dict(steps_all=2.5), TypeError, "steps_all must be an int"),
                   (dict(id_weight=-1e-3), ValueError, "id_weight must be in"),
                   (dict(exp_weight=math.inf), ValueError, "exp_weight must be finite")]
    for options, error, message in bad_options:
        with pytest.raises(error, match=message):
            model.fit(target, **options)


def test_bad_synthetic_arguments():
    cases = [(dict(n_landmarks=14), ValueError, r"n_landmarks must be in \[15, 69\)"),
             (dict(n_landmarks=69), ValueError, "n_landmarks must be in"),
             (dict(n_vertices=999), ValueError, "n_vertices must be >= 1000"),
             (dict(n_id=0), ValueError, "n_id must be in"),
             (dict(seed=-1), ValueError, "seed must be in"),
             (dict(dtype=torch.float16), TypeError, "dtype must be torch.float32 or torch.float64")]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            synthetic_morphable_model(**kwargs)
