"""The demo's warp part: a synthetic head volume turned by a 3DMM pose change (§4.3.4) through the
fused keypoint-driven warp of §4.3.3 (``dgm_fast.keypoint_warp_3d``), and its timing against the
chain FOMM / face-vid2vid run (every motion materialised, then ``F.grid_sample``).

The keypoints are the landmarks H (4.8) of the synthetic morphable model before and after the pose
change; each keypoint's Jacobian is the combined ``R_s R_d^-1`` of the rigid part, so T_k(p) =
J_k (p - kp_driving_k) + kp_source_k is the exact inverse pose map near every keypoint. No trained
dense motion network is used: the mask is the driving head's occupancy split between the keypoints
by Gaussian heatmaps (FOMM's prior), the background following T_0 = identity.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

import dgm_fast
from dgm_fast import _checks
from dgm_fast.benchmark import peak_extra_bytes
from dgm_fast.demo.plots import plot_warp
from dgm_fast.models.face3dmm import Coefficients, MorphableModel, rotation_matrix, synthetic_morphable_model
from dgm_fast.warp.eager import keypoint_warp_chain
from dgm_fast.warp.reference import identity_grid

HEAD_RADII = (0.62, 0.8, 0.7)  # the synthetic 3DMM's mean head (dgm_fast.models.face3dmm._head), before scaling
HEAD_SCALE = 0.85  # s of (4.7): the turned head stays inside [-1, 1]^3
MASK_SIGMA = 0.1  # width of the keypoints' Gaussian heatmaps in the mask: about their spacing
MAX_ANGLE = 60.0  # degrees: beyond, the turned head leaves the volume


@dataclass(frozen=True)
class WarpConfig:
    figure_size: tuple[int, int, int]  # (D, H, W) of the rendered head volume
    timing_channels: int  # the timed feature volume: face-vid2vid's appearance features
    timing_size: tuple[int, int, int]
    repeats: int  # timed calls per contender (median reported)
    # wall time of `dgm-fast warp` in this mode on 2 CPU cores: measured 3.9 / 4.8 / 6.8 s on an AVX-512
    # Xeon; the AMD EPYC ran the rest of the demo about twice as long
    duration: str
    n_keypoints: int = 15  # K: landmarks of the synthetic 3DMM used as keypoints (§4.3.5 uses 3-D landmarks)


MODES = {
    "quick": WarpConfig((24, 64, 64), 32, (16, 64, 64), repeats=3, duration="about 5 s"),
    "default": WarpConfig((32, 96, 96), 32, (16, 64, 64), repeats=7, duration="about 10 s"),
    "full": WarpConfig((48, 128, 128), 32, (16, 64, 64), repeats=15, duration="about 15 s"),
}


def pose_keypoints(model: MorphableModel, angles_deg: tuple[float, float, float], expression_seed: int | None,
                   seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(kp_source, kp_driving, jacobian)`` (1, K, 3) / (1, K, 3, 3), float64: the
    landmarks of a random identity seen from the front, and of the same face turned by ``angles_deg``
    (pitch, yaw, roll) with, if ``expression_seed`` is given, a random expression (§4.3.6)."""
    gen = torch.Generator().manual_seed(seed)
    dtype = model.mean.dtype
    source = Coefficients(0.7 * torch.randn(1, model.n_id, generator=gen, dtype=dtype),
                          torch.zeros(1, model.n_exp, dtype=dtype), torch.full((1,), HEAD_SCALE, dtype=dtype),
                          torch.zeros(1, 3, dtype=dtype), torch.zeros(1, 3, dtype=dtype))
    driving = Coefficients(source.p_id, source.p_exp, source.scale,
                           torch.tensor([angles_deg], dtype=dtype) * (math.pi / 180), source.translation)
    if expression_seed is not None:
        driving = model.random_expression(driving, torch.Generator().manual_seed(expression_seed))
    r_source, r_driving = rotation_matrix(source.angles), rotation_matrix(driving.angles)
    jacobian = (r_source @ r_driving.mT)[:, None].expand(1, model.n_landmarks, 3, 3).contiguous()
    return model.landmarks(source), model.landmarks(driving), jacobian


def _to_source(p: Tensor, jacobian: Tensor) -> Tensor:
    """The rigid pose map driving -> source at points p (..., 3) (translation 0, §4.3.4's (s, R, b))."""
    return p @ jacobian[0, 0].mT


def _occupancy(q: Tensor, margin: float = 1.0) -> Tensor:
    """A soft head (the 3DMM's mean ellipsoid at HEAD_SCALE, its radii times ``margin``) at source-frame
    points q (..., 3)."""
    radii = torch.tensor(HEAD_RADII, dtype=q.dtype) * (HEAD_SCALE * margin)
    return torch.sigmoid(25 * (1 - (q / radii).norm(dim=-1)))


def head_volume(size: tuple[int, int, int], kp_source: Tensor) -> Tensor:
    """(1, 4, D, H, W): RGB and occupancy of a head facing +z, striped so motion shows, with a coloured
    marker at each source keypoint; float32."""
    p = identity_grid(size, torch.float64, "cpu")  # (D, H, W, 3), (x, y, z)
    skin = torch.tensor([0.92, 0.74, 0.6], dtype=torch.float64)
    stripes = 0.8 + 0.2 * torch.cos(14 * p[..., 1:2]) * torch.cos(10 * p[..., 0:1])
    rgb = skin * stripes
    k = kp_source.shape[1]
    hues = torch.linspace(0, 1, k + 1, dtype=torch.float64)[:k]
    colours = torch.stack([0.5 + 0.5 * torch.cos(2 * math.pi * (hues + s)) for s in (0.0, 1 / 3, 2 / 3)], dim=1)
    near = ((p[..., None, :] - kp_source[0]).norm(dim=-1) < 0.07).double()  # (D, H, W, K)
    marker = near.amax(dim=-1, keepdim=True)
    rgb = rgb * (1 - marker) + (near @ colours).clamp(max=1) * marker
    occupancy = torch.maximum(_occupancy(p), marker[..., 0])
    return torch.cat([rgb, occupancy[..., None]], dim=-1).permute(3, 0, 1, 2)[None].float()


def motion_mask(size: tuple[int, int, int], kp_driving: Tensor, jacobian: Tensor) -> Tensor:
    """(1, K + 1, D, H, W) weights summing to 1: T_0 (identity) outside the driving head, and inside
    it the keypoints by their Gaussian heatmaps around kp_driving (FOMM's prior, §4.3.3)."""
    p = identity_grid(size, torch.float64, "cpu")
    inside = _occupancy(_to_source(p, jacobian), margin=1.5)  # with the markers, and the nose past the ellipsoid
    heat = -((p[..., None, :] - kp_driving[0]).square().sum(dim=-1)) / (2 * MASK_SIGMA**2)
    parts = torch.softmax(heat, dim=-1) * inside[..., None]
    return torch.cat([(1 - inside)[..., None], parts], dim=-1).permute(3, 0, 1, 2)[None]


def render(volume: Tensor) -> Tensor:
    """(H, W, 3): the RGB seen from +z (the viewer), front-to-back alpha compositing along D."""
    rgb, alpha = volume[0, :3].flip(1), volume[0, 3].flip(0).clamp(0, 1)  # nearest slice first
    transmitted = torch.cumprod(torch.cat([torch.ones_like(alpha[:1]), 1 - alpha[:-1]]), dim=0)
    image = (transmitted * alpha * rgb).sum(dim=1) + transmitted[-1] * (1 - alpha[-1])  # white behind
    return image.permute(1, 2, 0).clamp(0, 1)


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, first-call dispatch
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def time_warps(cfg: WarpConfig, kp_source: Tensor, kp_driving: Tensor, jacobian: Tensor, seed: int) -> dict:
    """Median ms and peak extra MB of the fused warp and of the eager chain, forward and forward +
    backward, on a random (1, C, D, H, W) float32 feature volume with the demo's keypoints and mask,
    and the largest difference between their outputs."""
    gen = torch.Generator().manual_seed(seed)
    feature = torch.randn(1, cfg.timing_channels, *cfg.timing_size, generator=gen)
    mask = motion_mask(cfg.timing_size, kp_driving, jacobian).float()
    inputs = [feature, kp_source.float(), kp_driving.float(), mask, jacobian.float()]
    warps = {"dgm_fast": lambda f, s, d, m, j: dgm_fast.keypoint_warp_3d(f, s, d, m, jacobian=j),
             "eager chain": lambda f, s, d, m, j: keypoint_warp_chain(f, s, d, m, j, False)[0]}
    with torch.no_grad():
        diff = (warps["dgm_fast"](*inputs) - warps["eager chain"](*inputs)).abs().max().item()
    grad_out = torch.randn(1, cfg.timing_channels, *cfg.timing_size, generator=gen)
    leaves = [t.clone().requires_grad_() for t in inputs]
    result = {}
    for name, warp in warps.items():
        def forward(warp=warp):
            with torch.no_grad():
                warp(*inputs)

        def train_step(warp=warp):
            torch.autograd.grad(warp(*leaves), leaves, grad_out)

        result[name] = {"forward_ms": _median_ms(forward, cfg.repeats),
                        "forward_backward_ms": _median_ms(train_step, cfg.repeats),
                        "forward_peak_mb": (peak_extra_bytes(forward, feature.device) or 0) / 1e6}
    result["max_abs_difference"] = diff
    return result


def _print_timings(cfg: WarpConfig, timings: dict) -> None:
    d, h, w = cfg.timing_size
    print(f"\nkeypoint warp of a (1, {cfg.timing_channels}, {d}, {h}, {w}) float32 feature volume, "
          f"K = {cfg.n_keypoints}, {torch.get_num_threads()} threads (median of {cfg.repeats}; lower is better):")
    print(f"{'':<14}{'forward ms':>12}{'fwd+bwd ms':>12}{'peak MB':>10}")
    for name in ("dgm_fast", "eager chain"):
        t = timings[name]
        print(f"{name:<14}{t['forward_ms']:>12.1f}{t['forward_backward_ms']:>12.1f}{t['forward_peak_mb']:>10.0f}")
    fused, eager = timings["dgm_fast"], timings["eager chain"]
    print(f"speed-up: {eager['forward_ms'] / fused['forward_ms']:.1f}x forward, "
          f"{eager['forward_backward_ms'] / fused['forward_backward_ms']:.1f}x forward + backward; "
          f"largest difference {timings['max_abs_difference']:.1e}")


def _caption(angles_deg, expression_seed) -> str:
    change = f"pitch/yaw/roll {tuple(angles_deg)} degrees" + (
        f" and a random expression (seed {expression_seed})" if expression_seed is not None else "")
    return (f"A synthetic head volume (RGB + occupancy, markers at the source keypoints) turned by a 3DMM pose "
            f"change ({change}; §4.3.4) with dgm_fast.keypoint_warp_3d (§4.3.3). Left: the source, seen from the "
            "front, with its keypoints (dots: the 3DMM landmarks H of (4.8)). Middle: the deformation phi(p) "
            "- p at the slice through the driving keypoints' mean depth, arrows in x-y, colour the z part: "
            "where each output voxel reads the source from. Right: the warped head, with the driving "
            "keypoints (crosses); each marker should sit on its cross.")


def run_warp(out_dir: Path, *, mode: str = "default", seed: int = 0, angles_deg=(0.0, 30.0, 0.0),
             expression_seed: int | None = None) -> dict:
    """Warp the head, write ``warp_head.png`` to ``out_dir`` and time the fused warp against the eager
    chain; returns the figure's path, the timings and the settings. ``angles_deg``: the driving pose's
    (pitch, yaw, roll), each in [-MAX_ANGLE, MAX_ANGLE] degrees."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    cfg = MODES[mode]
    if len(angles_deg) != 3:
        raise ValueError(f"angles_deg must be (pitch, yaw, roll), got {angles_deg!r}")
    angles_deg = tuple(_checks.real(f"angles_deg[{i}]", a, low=-MAX_ANGLE, high=MAX_ANGLE)
                       for i, a in enumerate(angles_deg))
    if expression_seed is not None:
        _checks.integer("expression_seed", expression_seed, low=0)
    seed = _checks.integer("seed", seed, low=0)
    out_dir = _checks.writable_dir("out_dir", out_dir)
    model = synthetic_morphable_model(n_landmarks=cfg.n_keypoints, dtype=torch.float64)
    kp_source, kp_driving, jacobian = pose_keypoints(model, angles_deg, expression_seed, seed)
    volume = head_volume(cfg.figure_size, kp_source)
    mask = motion_mask(cfg.figure_size, kp_driving, jacobian).float()
    warped, phi = dgm_fast.keypoint_warp_3d(volume, kp_source.float(), kp_driving.float(), mask,
                                            jacobian=jacobian.float(), return_deformation=True)
    figure = plot_warp(render(volume), render(warped), phi[0] - identity_grid(cfg.figure_size, phi.dtype, "cpu"),
                       kp_source[0], kp_driving[0], out_dir / "warp_head.png", _caption(angles_deg, expression_seed))
    timings = time_warps(cfg, kp_source, kp_driving, jacobian, seed)
    _print_timings(cfg, timings)
    return {"figure": str(figure), "timings": timings, "config": asdict(cfg),
            "angles_deg": list(angles_deg), "expression_seed": expression_seed}
