"""The 3D Morphable Model of dissertation §4.3.4: a face mesh from identity and expression
coefficients and a similarity transform, its landmarks, and the fit of coefficients to landmarks.

- (4.6) ``V_c = mean + U_id P_id + U_exp P_exp``, vertices stored interleaved
  ``(x0, y0, z0, x1, ...)`` as in the Basel Face Model, so ``reshape(V_c)`` is ``(Nv, 3)``;
- (4.7) ``V = s R reshape(V_c) + b`` (rows: ``V = s reshape(V_c) R^T + b``);
- (4.8) ``H = V[IDX, :]``, the landmarks, and the fit ``argmin ||H - K_I||^2``.

Frame: x right, y up, z towards the viewer (BFM's); landmarks from images (y down) need y -> -y
first. 2-D landmarks are the orthographic projection: the first two coordinates. The PCA space is
normalised (§4.3.4): coefficients are N(0, I) a priori, so the bases carry the standard deviations.
Pose editing (§4.3.6): ``frontalize`` (R = I) and ``random_expression`` (q_exp ~ N(0, I_beta)).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
import torch
from torch import Tensor, nn

from dgm_fast import _checks

MODEL_DTYPES = frozenset((torch.float32, torch.float64))
# load_morphable_model's accepted key names, per role (Basel Face Model, face3d, 3DDFA, Deep3DFaceRecon)
KEYS = {
    "mean": ("mean", "meanshape", "mu_shape", "shapeMU"),
    "id_basis": ("id_basis", "idBase", "w_shape", "shapePC"),
    "exp_basis": ("exp_basis", "exBase", "w_exp", "expPC"),
    "landmark_index": ("landmark_index", "keypoints", "kpt_ind"),
    "id_std": ("id_std", "shapeEV"),  # optional: per-column standard deviations of an orthonormal basis
    "exp_std": ("exp_std", "expEV"),
}
OPTIONAL_KEYS = ("id_std", "exp_std")


def rotation_matrix(angles: Tensor) -> Tensor:
    """Rotations (..., 3, 3) from Euler angles (..., 3) = (pitch, yaw, roll) in radians, about the x, y
    and z axes: ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)`` (the order of face3d's ``angle2matrix``), acting on
    column vectors, each factor counter-clockwise seen from its positive axis: in the model's frame a
    positive pitch turns the nose (+z) down (-y), a positive yaw turns it to +x, a positive roll turns
    +x towards +y."""
    _checks.dense_tensor("angles", angles, MODEL_DTYPES)
    if angles.dim() < 1 or angles.shape[-1] != 3:
        raise ValueError(f"angles must have shape (..., 3), got {tuple(angles.shape)}")
    c, s = angles.cos().unbind(-1), angles.sin().unbind(-1)
    one, zero = torch.ones_like(c[0]), torch.zeros_like(c[0])

    def mat(*rows):
        return torch.stack([torch.stack(r, -1) for r in rows], -2)

    rx = mat((one, zero, zero), (zero, c[0], -s[0]), (zero, s[0], c[0]))
    ry = mat((c[1], zero, s[1]), (zero, one, zero), (-s[1], zero, c[1]))
    rz = mat((c[2], -s[2], zero), (s[2], c[2], zero), (zero, zero, one))
    return rz @ ry @ rx


@dataclass(frozen=True)
class Coefficients:
    """A batch of 3DMM coefficients (P_id, P_exp, s, R, b) of (4.6)-(4.7), R given by ``angles`` (see
    ``rotation_matrix``): p_id (B, alpha), p_exp (B, beta), scale (B,) > 0, angles (B, 3),
    translation (B, 3); one float dtype and device."""

    p_id: Tensor
    p_exp: Tensor
    scale: Tensor
    angles: Tensor
    translation: Tensor

    def __post_init__(self):
        for f in dataclasses.fields(self):
            _checks.dense_tensor(f.name, getattr(self, f.name), MODEL_DTYPES)
            _checks.same_kind(f.name, getattr(self, f.name), "p_id", self.p_id)
        if self.p_id.dim() != 2:
            raise ValueError(f"p_id must have shape (B, alpha), got {tuple(self.p_id.shape)}")
        batch = self.p_id.shape[0]
        if self.p_exp.dim() != 2 or self.p_exp.shape[0] != batch:
            raise ValueError(f"p_exp must have shape (B, beta) with p_id's B = {batch}, got {tuple(self.p_exp.shape)}")
        for name, shape in (("scale", (batch,)), ("angles", (batch, 3)), ("translation", (batch, 3))):
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} must have shape {shape} (B = p_id's batch size), "
                                 f"got {tuple(getattr(self, name).shape)}")
        if not bool((self.scale > 0).all()):
            raise ValueError("scale must be positive (s in R+ of (4.7))")

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(p_id, p_exp, scale, angles, translation)."""
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def detach(self) -> Coefficients:
        return Coefficients(*(t.detach() for t in self.tensors()))


def _mesh(p_id: Tensor, p_exp: Tensor, scale: Tensor, angles: Tensor, translation: Tensor, mean: Tensor,
          id_basis: Tensor, exp_basis: Tensor) -> Tensor:
    """(4.6) then (4.7) on the given rows of mean and bases: (B, rows / 3, 3)."""
    v_c = torch.addmm(torch.addmm(mean, p_id, id_basis.T), p_exp, exp_basis.T)
    rotation = rotation_matrix(angles).mT * scale[:, None, None]
    return torch.baddbmm(translation[:, None, :], v_c.reshape(len(p_id), -1, 3), rotation)


class MorphableModel(nn.Module):
    """Buffers ``mean`` (3 Nv,), ``id_basis`` (3 Nv, alpha), ``exp_basis`` (3 Nv, beta) of (4.6), one float
    dtype, vertices interleaved, and ``landmark_index`` (L,) int64, the IDX of (4.8)."""

    def __init__(self, mean: Tensor, id_basis: Tensor, exp_basis: Tensor, landmark_index: Tensor):
        super().__init__()
        _checks.dense_tensor("mean", mean, MODEL_DTYPES)
        if mean.dim() != 1 or mean.numel() == 0 or mean.numel() % 3:
            raise ValueError(f"mean must have shape (3 * n_vertices,) with n_vertices >= 1, got {tuple(mean.shape)}")
        for name, basis in (("id_basis", id_basis), ("exp_basis", exp_basis)):
            _checks.dense_tensor(name, basis, MODEL_DTYPES)
            if basis.dim() != 2 or basis.shape[0] != mean.numel() or basis.shape[1] == 0:
                raise ValueError(f"{name} must have shape ({mean.numel()}, n) with n >= 1 (rows: mean's), "
                                 f"got {tuple(basis.shape)}")
            _checks.same_kind(name, basis, "mean", mean)
        for name, t in (("mean", mean), ("id_basis", id_basis), ("exp_basis", exp_basis)):
            if not bool(t.isfinite().all()):
                raise ValueError(f"{name} must be finite")
        _checks.dense_tensor("landmark_index", landmark_index, frozenset((torch.int64,)))
        n_vertices = mean.numel() // 3
        if landmark_index.dim() != 1 or landmark_index.numel() == 0:
            raise ValueError(f"landmark_index must have shape (L,) with L >= 1, got {tuple(landmark_index.shape)}")
        if not bool(((landmark_index >= 0) & (landmark_index < n_vertices)).all()):
            raise ValueError(f"landmark_index must be vertex indices in [0, {n_vertices}), got values in "
                             f"[{int(landmark_index.min())}, {int(landmark_index.max())}]")
        self.register_buffer("mean", mean)
        self.register_buffer("id_basis", id_basis)
        self.register_buffer("exp_basis", exp_basis)
        self.register_buffer("landmark_index", landmark_index.to(mean.device))

    @property
    def n_vertices(self) -> int:
        return self.mean.numel() // 3

    @property
    def n_id(self) -> int:
        return self.id_basis.shape[1]

    @property
    def n_exp(self) -> int:
        return self.exp_basis.shape[1]

    @property
    def n_landmarks(self) -> int:
        return self.landmark_index.numel()

    def extra_repr(self) -> str:
        return f"n_vertices={self.n_vertices}, n_id={self.n_id}, n_exp={self.n_exp}, n_landmarks={self.n_landmarks}"

    def _check_coeffs(self, coeffs) -> Coefficients:
        if not isinstance(coeffs, Coefficients):
            raise TypeError(f"coeffs must be a Coefficients, got {type(coeffs).__name__}")
        for name, n in (("p_id", self.n_id), ("p_exp", self.n_exp)):
            got = getattr(coeffs, name).shape[1]
            if got != n:
                raise ValueError(f"coeffs.{name} must have the model's {n} columns, got {got}")
        _checks.same_kind("coeffs", coeffs.p_id, "the model", self.mean)
        return coeffs

    def _landmark_bases(self) -> tuple[Tensor, Tensor, Tensor]:
        """The rows of mean and bases at the landmarks: H (4.8) needs 3 L rows, not 3 Nv."""
        rows = (3 * self.landmark_index[:, None] + torch.arange(3, device=self.mean.device)).flatten()
        return self.mean[rows], self.id_basis[rows], self.exp_basis[rows]

    def vertices(self, coeffs: Coefficients) -> Tensor:
        """The meshes V of (4.7), (B, Nv, 3)."""
        return _mesh(*self._check_coeffs(coeffs).tensors(), self.mean, self.id_basis, self.exp_basis)

    def landmarks(self, coeffs: Coefficients) -> Tensor:
        """H of (4.8): ``vertices(coeffs)[:, landmark_index]``, (B, L, 3), from the landmark rows only."""
        return _mesh(*self._check_coeffs(coeffs).tensors(), *self._landmark_bases())

    def frontalize(self, coeffs: Coefficients) -> Coefficients:
        """The same faces seen from the front: R = I (zero angles), §4.3.6."""
        return dataclasses.replace(self._check_coeffs(coeffs), angles=torch.zeros_like(coeffs.angles))

    def random_expression(self, coeffs: Coefficients, generator: torch.Generator | None = None) -> Coefficients:
        """The same faces and poses with expressions q_exp ~ N(0, I_beta) (§4.3.6), drawn with ``generator``."""
        p_exp = self._check_coeffs(coeffs).p_exp
        q_exp = torch.randn(p_exp.shape, generator=generator, dtype=p_exp.dtype, device=p_exp.device)
        return dataclasses.replace(coeffs, p_exp=q_exp)

    def fit(self, target: Tensor, *, steps_rigid: int = 3, steps_all: int = 30, id_weight: float = 1e-3,
            exp_weight: float = 1e-3) -> Coefficients:
        """Coefficients whose landmarks match ``target`` (B, L, 3), or (B, L, 2) compared with H's first
        two coordinates (orthographic projection), each sample fitted on its own (§4.3.4).

        Minimises per sample ``||H - K||^2 + id_weight ||P_id||^2 + exp_weight ||P_exp||^2``: the MAP
        estimate under the N(0, I) prior of the normalised PCA space when the landmark noise has
        variance ``weight``. The loss is measured after centring each target and dividing it by its RMS
        radius, so the weights are free of the data's units (a noise variance relative to the face's
        size). As §4.3.4, from P = 0 (and a closed-form similarity), first ``steps_rigid``
        Levenberg-Marquardt steps on (s, R, b) alone, then ``steps_all`` on everything. Few rigid steps:
        run to convergence, the mean face's best pose can be a wrong pose for this face, which then traps
        the full fit (seen on 2-D targets turned by about 1 rad). With 2-D targets b_z is unobservable
        and stays 0. Deterministic; the result is detached.
        """
        dims = self._check_target(target)
        for name, steps in (("steps_rigid", steps_rigid), ("steps_all", steps_all)):
            _checks.integer(name, steps, low=0)
        for name, weight in (("id_weight", id_weight), ("exp_weight", exp_weight)):
            _checks.real(name, weight, low=0.0, finite=True)
        centre = target.mean(dim=1)
        radius = (target - centre[:, None]).square().sum(dim=2).mean(dim=1).sqrt()
        if not bool((radius > 0).all()):
            raise ValueError("target must not have a sample whose landmarks all coincide")
        normalised = ((target - centre[:, None]) / radius[:, None, None]).detach()
        prior = torch.cat([target.new_full((self.n_id,), id_weight), target.new_full((self.n_exp,), exp_weight)])
        theta = self._fit_normalised(normalised, prior.sqrt(), steps_rigid, steps_all)
        p_id, p_exp = theta[:, 7:].split([self.n_id, self.n_exp], dim=1)
        shift = torch.cat([centre, centre.new_zeros(len(centre), 3 - dims)], dim=1).detach()
        return Coefficients(p_id, p_exp, theta[:, 0].exp() * radius.detach(), theta[:, 1:4],
                            theta[:, 4:7] * radius.detach()[:, None] + shift)

    def _check_target(self, target) -> int:
        _checks.dense_tensor("target", target, MODEL_DTYPES)
        if target.dim() != 3 or target.shape[0] == 0 or target.shape[1] != self.n_landmarks \
                or target.shape[2] not in (2, 3):
            raise ValueError(f"target must have shape (B, {self.n_landmarks}, 2 or 3) with B >= 1, "
                             f"got {tuple(target.shape)}")
        _checks.same_kind("target", target, "the model", self.mean)
        if not bool(target.isfinite().all()):
            raise ValueError("target must be finite")
        return target.shape[2]

    def _fit_normalised(self, target: Tensor, sqrt_prior: Tensor, steps_rigid: int, steps_all: int) -> Tensor:
        """theta = (log s, angles, b, P_id, P_exp) per sample, fitted to the normalised ``target``."""
        bases = self._landmark_bases()
        batch, dims = target.shape[0], target.shape[2]

        def residual(theta: Tensor, k: Tensor) -> Tensor:  # one sample: landmark errors, then the prior's
            p_id, p_exp = theta[None, 7:].split([self.n_id, self.n_exp], dim=1)
            h = _mesh(p_id, p_exp, theta[None, 0].exp(), theta[None, 1:4], theta[None, 4:7], *bases)[0]
            return torch.cat([(h[:, :dims] - k).flatten(), sqrt_prior * theta[7:]])

        theta = _similarity_init(bases[0].view(-1, 3), target)
        # 2-D views are ambiguous: a shallow face turned by (pitch, yaw) and by (-pitch, -yaw) look
        # alike, and the affine start can be far off when the face differs from the mean; so 2-D
        # fits start from it, its mirror and the front, and keep each sample's best end.
        starts = theta.new_tensor([[1, 1, 1, 1, 1, 1, 1], [1, -1, -1, 1, 1, 1, 1], [1, 0, 0, 0, 1, 1, 1]])
        starts = starts[:1] if dims == 3 else starts
        theta = (starts[:, None] * theta).flatten(0, 1)
        target = target.repeat(len(starts), 1, 1)
        theta = torch.cat([theta, theta.new_zeros(len(theta), self.n_id + self.n_exp)], dim=1)
        theta, _ = _levenberg_marquardt(residual, theta, target, 7, steps_rigid)
        theta, loss = _levenberg_marquardt(residual, theta, target, theta.shape[1], steps_all)
        best = loss.view(len(starts), batch).argmin(dim=0)
        return theta.view(len(starts), batch, -1)[best, torch.arange(batch, device=best.device)]

    def save_npz(self, path) -> None:
        """Write the model as ``load_morphable_model`` reads it (canonical keys, 0-based landmarks)."""
        np.savez(path, mean=self.mean.cpu().numpy(), id_basis=self.id_basis.cpu().numpy(),
                 exp_basis=self.exp_basis.cpu().numpy(), landmark_index=self.landmark_index.cpu().numpy())


def _similarity_init(mean: Tensor, target: Tensor) -> Tensor:
    """(log s, angles, b) per sample (B, 7) mapping the ``mean`` landmarks (L, 3) near the centred
    ``target`` (B, L, dims): the least-squares affine map (a 2 x 3 affine camera in 2-D), its nearest
    scaled rotation (polar decomposition, third row r1 x r2), b_z = 0 in 2-D. Started from R = I
    instead, 12 of 256 synthetic faces turned by angles of std 1 rad (3-D and 2-D) ended in a wrong
    pose."""
    dims = target.shape[2]
    centred = mean - mean.mean(dim=0)
    affine = (torch.linalg.pinv(centred) @ target).mT  # (B, dims, 3)
    u, sv, vh = torch.linalg.svd(affine, full_matrices=False)
    rows = u @ vh
    rotation = torch.stack([rows[:, 0], rows[:, 1], torch.linalg.cross(rows[:, 0], rows[:, 1])], dim=1)
    scale = sv.mean(dim=1).clamp(min=1e-6)
    translation = -scale[:, None] * (rotation @ mean.mean(dim=0))
    translation[:, dims:] = 0
    angles = torch.stack([torch.atan2(rotation[:, 2, 1], rotation[:, 2, 2]),
                          torch.atan2(-rotation[:, 2, 0], rotation[:, 2, 1:].norm(dim=1)),
                          torch.atan2(rotation[:, 1, 0], rotation[:, 0, 0])], dim=1)
    return torch.cat([scale.log()[:, None], angles, translation], dim=1)


def _levenberg_marquardt(residual, theta: Tensor, target: Tensor, n_free: int,
                         steps: int) -> tuple[Tensor, Tensor]:
    """``steps`` damped Gauss-Newton steps on the first ``n_free`` entries of each row of ``theta``
    (B, d), minimising ``||residual(theta_b, target_b)||^2`` per sample; a step that does not lower a
    sample's loss is refused and its damping raised. Returns theta and each sample's loss.

    Not torch.optim: Adam (elementwise, so samples stay independent) needed thousands of steps on
    this ill-conditioned least-squares problem and still missed the coefficients by O(1), and LBFGS,
    which converges on one sample, couples a batch through its shared line search and curvature
    pairs. The per-sample Jacobians (d <= a few hundred) make each sample's solve exact, independent
    of the others, and converge in tens of steps.
    """
    values = torch.func.vmap(residual)
    jacobian = torch.func.vmap(torch.func.jacfwd(residual))
    eye = torch.eye(n_free, dtype=theta.dtype, device=theta.device)
    r = values(theta, target)
    loss = r.square().sum(dim=1)
    damping = torch.full_like(loss, 1e-3)
    for _ in range(steps):
        j = jacobian(theta, target)[..., :n_free]
        step = torch.linalg.solve(j.mT @ j + damping[:, None, None] * eye, -(j.mT @ r[..., None]))[..., 0]
        trial = torch.cat([theta[:, :n_free] + step, theta[:, n_free:]], dim=1)
        r_trial = values(trial, target)
        loss_trial = r_trial.square().sum(dim=1)
        better = loss_trial < loss  # False for NaN: a failed step is refused
        theta = torch.where(better[:, None], trial, theta)
        r = torch.where(better[:, None], r_trial, r)
        loss = torch.where(better, loss_trial, loss)
        damping = torch.where(better, damping / 3, damping * 4).clamp(1e-10, 1e10)
    return theta, loss


# ------------------------------------------------------------------------------------------------
# A synthetic model: no face scans can be downloaded here, so a head-like mesh with smooth bases.

def _fibonacci_sphere(n: int) -> Tensor:
    """``n`` well-spread unit directions (y from pole to pole)."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    y = 1 - 2 * i / n
    phi = i * math.pi * (3 - math.sqrt(5))
    r = (1 - y.square()).sqrt()
    return torch.stack([r * phi.sin(), y, r * phi.cos()], dim=1)


def _bump(u: Tensor, x: float, y: float, wx: float, wy: float) -> Tensor:
    """A Gaussian of the direction ``u`` around (x, y) on the front (z > 0) of the head."""
    return torch.exp(-((u[:, 0] - x) / wx) ** 2 - ((u[:, 1] - y) / wy) ** 2) * (u[:, 2] > 0)


def _head(u: Tensor) -> Tensor:
    """An ellipsoid with a narrowed jaw, a brow ridge, eye sockets, a nose and lips; coordinates in [-1, 1]."""
    p = u * torch.tensor([0.62, 0.8, 0.7], dtype=u.dtype)
    p[:, 0] *= 1 - 0.25 * (-u[:, 1]).clamp(min=0)  # the jaw narrows towards the chin
    depth = (0.22 * _bump(u, 0.0, -0.02, 0.1, 0.22) + 0.05 * _bump(u, 0.0, 0.33, 0.45, 0.07)
             - 0.05 * _bump(u, -0.3, 0.2, 0.12, 0.07) - 0.05 * _bump(u, 0.3, 0.2, 0.12, 0.07)
             + 0.03 * _bump(u, 0.0, -0.38, 0.25, 0.08))
    p[:, 2] += depth
    return p


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int) -> list[tuple[float, float]]:
    return [(cx + rx * math.cos(t), cy + ry * math.sin(t)) for t in np.linspace(math.pi, -math.pi, n, endpoint=False)]


def _landmark_layout() -> list[tuple[float, float]]:
    """68 landmark directions (x, y) on the front, in the iBUG 68-point order: jaw, brows, nose,
    eyes, mouth (outer then inner lip)."""
    jaw = [(0.8 * math.cos(t), 0.15 - 0.75 * math.sin(t)) for t in np.linspace(math.pi, 0, 17)]
    brows = [(x, 0.38 + 0.05 * math.cos(3 * (abs(x) - 0.33))) for x in
             (*np.linspace(-0.55, -0.12, 5), *np.linspace(0.12, 0.55, 5))]
    nose = [(0.0, y) for y in np.linspace(0.25, -0.02, 4)] + [(x, -0.12) for x in np.linspace(-0.15, 0.15, 5)]
    eyes = _ellipse(-0.3, 0.2, 0.1, 0.04, 6) + _ellipse(0.3, 0.2, 0.1, 0.04, 6)
    mouth = _ellipse(0.0, -0.38, 0.25, 0.08, 12) + _ellipse(0.0, -0.38, 0.15, 0.03, 8)
    return jaw + brows + nose + eyes + mouth


def _nearest_distinct(directions: Tensor, points: list[tuple[float, float]]) -> Tensor:
    """For each (x, y) the nearest front direction not taken by an earlier point."""
    xy = torch.tensor(points, dtype=directions.dtype)
    want = torch.cat([xy, (1 - xy.square().sum(dim=1, keepdim=True)).sqrt()], dim=1)
    dist = torch.cdist(want, directions)
    index = []
    for row in dist:
        row[index] = math.inf
        index.append(int(row.argmin()))
    return torch.tensor(index, dtype=torch.int64)


def _smooth_fields(u: Tensor, n: int, gen: torch.Generator) -> Tensor:
    """``n`` smooth displacement fields (3 Nv, n): sums of four random low-frequency sinusoids."""
    freq = 1.5 * torch.randn(n, 4, 3, generator=gen, dtype=u.dtype)
    phase = 2 * math.pi * torch.rand(n, 4, generator=gen, dtype=u.dtype)
    amp = torch.randn(n, 4, 3, generator=gen, dtype=u.dtype)
    waves = torch.sin(torch.einsum("vd,nkd->nkv", u, freq) + phase[..., None])  # (n, 4, Nv)
    return torch.einsum("nkv,nkd->vdn", waves, amp).reshape(-1, n)


def _pca_basis(fields: Tensor, mean: Tensor, rms: float) -> Tensor:
    """Orthonormal directions spanning ``fields`` with the 7 infinitesimal similarity motions of
    ``mean`` projected out (as a PCA of Procrustes-aligned scans has them), scaled so that
    coefficient k ~ N(0, 1) moves a vertex by ``rms / sqrt(k + 1)`` RMS: decreasing variances."""
    p = mean.view(-1, 3)
    zero = torch.zeros_like(p[:, 0])
    rotations = [torch.stack(r, dim=1) for r in ((zero, -p[:, 2], p[:, 1]), (p[:, 2], zero, -p[:, 0]),
                                                  (-p[:, 1], p[:, 0], zero))]
    translations = [torch.eye(3, dtype=p.dtype)[d].expand_as(p) for d in range(3)]
    rigid = torch.stack([m.flatten() for m in (*translations, *rotations, p)], dim=1)
    q = torch.linalg.qr(torch.cat([rigid, fields], dim=1)).Q[:, rigid.shape[1]:]
    k = torch.arange(q.shape[1], dtype=q.dtype)
    return q * (rms * math.sqrt(p.shape[0]) / (k + 1).sqrt())


def synthetic_morphable_model(n_vertices: int = 5000, n_id: int = 20, n_exp: int = 10, n_landmarks: int = 68,
                              seed: int = 0, dtype: torch.dtype = torch.float32) -> MorphableModel:
    """A deterministic head-like stand-in for the BFM: ``n_vertices`` well-spread vertices of a shaped
    ellipsoid in [-1, 1]^3 facing +z (the default 5000 puts each landmark within 0.03 of its place;
    down to 1000 they move to neighbouring vertices, still distinct); identity bases from
    smooth whole-head deformations, expression bases concentrated around the mouth and eyes, each set
    orthogonal with decreasing variances (the two sets are not mutually orthogonal, as BFM's and
    FaceWarehouse's, §4.3.4); ``n_landmarks`` in [15, 68] spread over the 68-point layout (jaw, brows,
    nose, eyes, mouth). ``seed`` fixes the bases."""
    n_vertices = _checks.integer("n_vertices", n_vertices, low=1000)
    _checks.integer("n_id", n_id, low=1, high=n_vertices)
    _checks.integer("n_exp", n_exp, low=1, high=n_vertices)
    _checks.integer("n_landmarks", n_landmarks, low=15, high=69)
    gen = torch.Generator().manual_seed(_checks.integer("seed", seed, low=0, high=2**64))
    if dtype not in MODEL_DTYPES:
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    u = _fibonacci_sphere(n_vertices)
    mean = _head(u).flatten()
    id_basis = _pca_basis(_smooth_fields(u, n_id, gen), mean, rms=0.025)
    around = (_bump(u, 0.0, -0.38, 0.3, 0.15) + _bump(u, -0.3, 0.2, 0.15, 0.1) + _bump(u, 0.3, 0.2, 0.15, 0.1))
    exp_basis = _pca_basis(_smooth_fields(u, n_exp, gen) * around.repeat_interleave(3)[:, None], mean, rms=0.006)
    layout = _landmark_layout()
    chosen = [layout[int(i)] for i in np.linspace(0, len(layout) - 1, n_landmarks).round()]
    landmark_index = _nearest_distinct(u, chosen)
    return MorphableModel(mean.to(dtype), id_basis.to(dtype), exp_basis.to(dtype), landmark_index)


# ------------------------------------------------------------------------------------------------
# Loading a real (BFM-style) basis.

def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a .npz or .mat file; ValueError if it cannot be read."""
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".mat"):
        raise ValueError(f"{path}: expected a .npz or .mat file, got suffix {path.suffix!r}")
    try:
        if suffix == ".mat":
            return {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an archive of named arrays")
        with data:
            return {k: data[k] for k in data.files}
    # numpy's and scipy's readers raise many types on a damaged file (IndexError, BadZipFile,
    # MatReadError, OSError, ...): all of them mean "cannot read it"
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{path}: cannot read it as a {suffix} file ({type(exc).__name__}: {exc})") from None


def _pick(path: Path, arrays: dict[str, np.ndarray], role: str) -> np.ndarray | None:
    found = [k for k in KEYS[role] if k in arrays]
    if len(found) > 1:
        raise ValueError(f"{path}: {role} is ambiguous, the file has several of its keys {found}")
    if not found and role not in OPTIONAL_KEYS:
        raise ValueError(f"{path}: missing {role}, expected one of the keys {list(KEYS[role])}")
    return arrays[found[0]] if found else None


def _vector(path: Path, role: str, a: np.ndarray) -> np.ndarray:
    """A 1-D array from (n,), (n, 1) or (1, n) (MATLAB saves vectors 2-D)."""
    if a.ndim not in (1, 2) or (a.ndim == 2 and 1 not in a.shape):
        raise ValueError(f"{path}: {role} must be a vector, (n,), (n, 1) or (1, n), got shape {a.shape}")
    return a.reshape(-1)


def _real(path: Path, role: str, a: np.ndarray) -> np.ndarray:
    if not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all():
        raise ValueError(f"{path}: {role} must hold finite floating-point values, got dtype {a.dtype}"
                         + (" with non-finite values" if np.issubdtype(a.dtype, np.floating) else ""))
    return a


def _indices(path: Path, a: np.ndarray, one_based: bool, n_vertices: int) -> np.ndarray:
    """0-based int64 landmark indices; MATLAB files often store them as doubles."""
    a = _vector(path, "landmark_index", a)
    integral = np.issubdtype(a.dtype, np.integer) or (
        np.issubdtype(a.dtype, np.floating) and np.isfinite(a).all() and (a == np.round(a)).all())
    if not integral or a.size == 0:
        raise ValueError(f"{path}: landmark_index must be a non-empty vector of integers, got dtype {a.dtype}")
    first = int(one_based)
    if a.min() < first or a.max() >= n_vertices + first:
        raise ValueError(f"{path}: landmark_index must be {'1' if one_based else '0'}-based vertex indices in "
                         f"[{first}, {n_vertices + first}), got values in [{a.min()}, {a.max()}]")
    return a.astype(np.int64) - first


def load_morphable_model(path, *, one_based: bool | None = None) -> MorphableModel:
    """A MorphableModel from a .npz (numpy) or .mat (MATLAB, scipy.io.loadmat) file.

    Keys, one per role (``KEYS``): mean "mean"/"meanshape"/"mu_shape"/"shapeMU" (3 Nv values,
    interleaved x, y, z per vertex); identity basis "id_basis"/"idBase"/"w_shape"/"shapePC" and
    expression basis "exp_basis"/"exBase"/"w_exp"/"expPC" (3 Nv, n); landmarks
    "landmark_index"/"keypoints"/"kpt_ind" (L integers, or integral floats). Optional "id_std"/"shapeEV"
    and "exp_std"/"expEV" (n,) multiply the columns of an orthonormal basis (the BFM's PC with their
    standard deviations), making the coefficients N(0, I). Landmark indices are 1-based in .mat files
    and 0-based in .npz files unless ``one_based`` says otherwise. The dtype is float64 when the mean
    and bases all are, else float32. Any malformed file raises ValueError naming it and the problem.
    """
    if one_based is not None and not isinstance(one_based, bool):
        raise TypeError(f"one_based must be a bool or None, got {type(one_based).__name__}")
    path = Path(path)
    arrays = _read_arrays(path)
    one_based = path.suffix.lower() == ".mat" if one_based is None else one_based
    mean = _real(path, "mean", _vector(path, "mean", _pick(path, arrays, "mean")))
    if mean.size == 0 or mean.size % 3:
        raise ValueError(f"{path}: mean must have 3 * n_vertices > 0 values, got {mean.size}")
    bases = []
    for role, std_role in (("id_basis", "id_std"), ("exp_basis", "exp_std")):
        basis = _real(path, role, _pick(path, arrays, role))
        if basis.ndim != 2 or basis.shape[0] != mean.size:
            raise ValueError(f"{path}: {role} must have shape ({mean.size}, n) (rows: the mean's), got {basis.shape}")
        std = _pick(path, arrays, std_role)
        if std is not None:
            std = _real(path, std_role, _vector(path, std_role, std))
            if std.size != basis.shape[1] or (std < 0).any():
                raise ValueError(f"{path}: {std_role} must be {basis.shape[1]} non-negative values (one per column "
                                 f"of {role}), got shape {std.shape}")
            basis = basis * std
        bases.append(basis)
    index = _indices(path, _pick(path, arrays, "landmark_index"), one_based, mean.size // 3)
    dtype = torch.float64 if all(a.dtype == np.float64 for a in (mean, *bases)) else torch.float32
    tensors = [torch.as_tensor(np.ascontiguousarray(a), dtype=dtype) for a in (mean, *bases)]
    try:
        return MorphableModel(*tensors, torch.from_numpy(np.ascontiguousarray(index)))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
