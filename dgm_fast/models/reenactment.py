"""The face-reenactment model with a delta net (dissertation §4.3.5, Figure 4.14).

A delta net D corrects given 3-D landmarks q (step 2: p = q + D(I)); an encoder E lifts the source
image to a feature volume f_s (step 4); a dense motion net M weighs the motions T_j(p) = (p - p_dj) +
p_sj (step 3) per voxel and predicts an occlusion map, and f_s is warped by the weighted motion (step
5); a generator G decodes the warped volume (step 6). The networks are Tables 4.9-4.10, after
face-vid2vid [Wang et al., 2021] Figures 12-13; every width and depth is configurable, the defaults
being the tables'. The warps are dgm_fast's fused ops.

The pre-trained landmark detector F of step 1 is not available offline: callers pass the landmarks
q_s, q_d (N, K, 3), (x, y, z) in [-1, 1] over the feature volume, e.g. from a fitted 3DMM (eq. (4.8)).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from dgm_fast import _checks
from dgm_fast.warp import keypoint_warp_3d, sparse_motion_features
from dgm_fast.warp.functional import WARP_DTYPES

RESNET50_STAGES = ((256, 3), (512, 4), (1024, 6), (2048, 3))  # Table 4.10's delta net: (width, blocks)


# --- argument checks ------------------------------------------------------------------------------
def _widths(name: str, value, min_len: int) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"{name} must be a tuple of ints, got {type(value).__name__}")
    if len(value) < min_len:
        raise ValueError(f"{name} must have at least {min_len} entries, got {tuple(value)}")
    return tuple(_checks.integer(name, w, low=1) for w in value)


def _odd(name: str, value) -> int:
    value = _checks.integer(name, value, low=1)
    if value % 2 == 0:
        raise ValueError(f"{name} must be odd (a 'same' convolution), got {value}")
    return value


def _stages(name: str, value) -> tuple[tuple[int, int], ...]:
    """The delta net's (width, blocks) pairs; a width of at least 4 (the bottleneck's inner width is width / 4)."""
    if not isinstance(value, (tuple, list)) or not value or not all(
            isinstance(s, (tuple, list)) and len(s) == 2 for s in value):
        raise TypeError(f"{name} must be a non-empty tuple of (width, blocks) pairs, got {value!r}")
    return tuple((_checks.integer(f"{name} width", w, low=4), _checks.integer(f"{name} blocks", b, low=1))
                 for w, b in value)


def _height_width(name: str, x: Tensor, multiple: int) -> Tensor:
    """``x`` with its last two sizes (H, W) positive multiples of ``multiple`` (what the down blocks halve)."""
    if any(s == 0 or s % multiple for s in x.shape[-2:]):
        raise ValueError(f"{name}'s height and width must be positive multiples of {multiple} (the down blocks "
                         f"halve them), got {tuple(x.shape[-2:])}")
    return x


def _image(name: str, x, channels: int, multiple: int, dtypes=_checks.FLOAT_DTYPES) -> Tensor:
    """(N, channels, H, W) with H and W positive multiples of ``multiple`` (what the down blocks halve)."""
    _checks.dense_tensor(name, x, dtypes)
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} must have shape (N, {channels}, H, W), got {tuple(x.shape)}")
    return _height_width(name, x, multiple)


def _volume(name: str, x, channels: int, depth: int, multiple: int) -> Tensor:
    """(N, channels, depth, H, W) with H and W positive multiples of ``multiple``."""
    _checks.dense_tensor(name, x)
    if x.dim() != 5 or tuple(x.shape[1:3]) != (channels, depth):
        raise ValueError(f"{name} must have shape (N, C={channels}, D={depth}, H, W), got {tuple(x.shape)}")
    return _height_width(name, x, multiple)


def _keypoints(name: str, kp, n_keypoints: int, ref_name: str, ref: Tensor) -> Tensor:
    """(N, K, 3) of ``ref``'s batch, dtype and device."""
    _checks.dense_tensor(name, kp, WARP_DTYPES)
    if kp.shape != (ref.shape[0], n_keypoints, 3):
        raise ValueError(f"{name} must have shape (N={ref.shape[0]}, K={n_keypoints}, 3), got {tuple(kp.shape)}")
    _checks.same_kind(name, kp, ref_name, ref)
    return kp


# --- blocks (face-vid2vid Figure 13) ---------------------------------------------------------------
class DownBlock2D(nn.Sequential):
    """3x3 conv, BN, ReLU, 2x2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(),
                         nn.AvgPool2d(2))


class UpBlock2D(nn.Sequential):
    """2x nearest upsampling, 3x3 conv, BN, ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Upsample(scale_factor=2), nn.Conv2d(in_channels, out_channels, 3, padding=1),
                         nn.BatchNorm2d(out_channels), nn.ReLU())


# The 3-D blocks halve and double H and W only: the depth (D = 16 in Table 4.9) is already small.
class DownBlock3D(nn.Sequential):
    """3x3x3 conv, BN, ReLU, (1, 2, 2) average pooling."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Conv3d(in_channels, out_channels, 3, padding=1), nn.BatchNorm3d(out_channels), nn.ReLU(),
                         nn.AvgPool3d((1, 2, 2)))


class UpBlock3D(nn.Sequential):
    """(1, 2, 2) nearest upsampling, 3x3x3 conv, BN, ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Upsample(scale_factor=(1, 2, 2)), nn.Conv3d(in_channels, out_channels, 3, padding=1),
                         nn.BatchNorm3d(out_channels), nn.ReLU())


class _ResBlock(nn.Module):
    """x + (BN, ReLU, 3x3 conv) twice: the pre-activation residual block, channels kept."""

    def __init__(self, channels: int, conv: type[nn.Module], norm: type[nn.Module]):
        super().__init__()
        self.body = nn.Sequential(norm(channels), nn.ReLU(), conv(channels, channels, 3, padding=1),
                                  norm(channels), nn.ReLU(), conv(channels, channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResBlock2D(_ResBlock):
    def __init__(self, channels: int):
        super().__init__(channels, nn.Conv2d, nn.BatchNorm2d)


class ResBlock3D(_ResBlock):
    def __init__(self, channels: int):
        super().__init__(channels, nn.Conv3d, nn.BatchNorm3d)


class ResBottleneck(nn.Module):
    """ResNet-50's bottleneck: 1x1 conv to out/4, 3x3 conv (``stride``), 1x1 conv to out, each with BN (ReLU
    between), plus the input (through a strided 1x1 conv and BN when the shape changes), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        mid = out_channels // 4
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, mid, 3, stride=stride, padding=1), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, out_channels, 1), nn.BatchNorm2d(out_channels),
        )
        same = in_channels == out_channels and stride == 1
        self.skip = nn.Identity() if same else nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride),
                                                             nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class _Hourglass3D(nn.Module):
    """Table 4.10's U-net (FOMM's Hourglass): DownBlock3D to ``widths[1:]``, UpBlock3D back to
    ``widths[-2::-1]``, each up block's output concatenated with the down path's input at its scale,
    so the output has ``widths[0] + in_channels`` channels at the input's size."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]):
        super().__init__()
        levels = len(widths) - 1
        self.down = nn.ModuleList(DownBlock3D(a, b) for a, b in zip((in_channels, *widths[1:-1]), widths[1:]))
        # below the deepest level an up block also reads the skip of its input's scale: twice the width
        self.up = nn.ModuleList(UpBlock3D(widths[i + 1] * (1 if i == levels - 1 else 2), widths[i])
                                for i in reversed(range(levels)))
        self.out_channels = widths[0] + in_channels

    def forward(self, x: Tensor) -> Tensor:
        skips = [x]
        for block in self.down:
            skips.append(block(skips[-1]))
        out = skips.pop()
        for block in self.up:
            out = torch.cat([block(out), skips.pop()], dim=1)
        return out


# --- the four networks of Figure 4.14 --------------------------------------------------------------
class AppearanceEncoder(nn.Module):
    """E of Table 4.9 (left), face-vid2vid Fig. 12(a): an image (N, image_channels, H, W) to the feature
    volume f_s (N, feature_channels, depth, H / s, W / s), s = 2 ** (len(widths) - 1)."""

    def __init__(self, image_channels: int = 3, widths: tuple[int, ...] = (64, 128, 256), feature_channels: int = 32,
                 depth: int = 16, res_blocks: int = 6):
        super().__init__()
        self.image_channels = _checks.integer("image_channels", image_channels, low=1)
        self.widths = widths = _widths("widths", widths, 1)
        self.feature_channels = _checks.integer("feature_channels", feature_channels, low=1)
        self.depth = _checks.integer("depth", depth, low=2)  # the warps' identity grid spans [-1, 1]
        self.scale = 2 ** (len(widths) - 1)
        self.net = nn.Sequential(
            nn.Conv2d(image_channels, widths[0], 7, padding=3), nn.BatchNorm2d(widths[0]), nn.ReLU(),
            *(DownBlock2D(a, b) for a, b in zip(widths, widths[1:])),
            nn.Conv2d(widths[-1], feature_channels * depth, 1),
            nn.Unflatten(1, (feature_channels, depth)),  # "Reshape C512 -> D16 x C32", channel-major
            *(ResBlock3D(feature_channels) for _ in range(_checks.integer("res_blocks", res_blocks, low=0))),
        )

    def forward(self, image: Tensor) -> Tensor:
        return self.net(_image("image", image, self.image_channels, self.scale))


class DenseMotion(NamedTuple):
    """What the dense motion network returns: the motion weights and f_s warped by them."""

    mask_logits: Tensor  # (N, K + 1, D, H, W); softmax over dim 1 weighs T_0 = identity, T_1 .. T_K
    occlusion: Tensor  # (N, 1, H, W) in (0, 1)
    warped: Tensor  # (N, C, D, H, W): f_s sampled at phi(p) = sum_k softmax(mask_logits)_k(p) T_k(p)
    deformation: Tensor | None  # phi (N, D, H, W, 3) when asked


class DenseMotionNetwork(nn.Module):
    """M of Table 4.10 (left), face-vid2vid Fig. 12(d), and the warp w(f_s, T) it defines (§4.3.5 step 5;
    Table 4.9's generator input).

    Its input is ``sparse_motion_features`` of f_s (after a 1x1x1 conv, BN, ReLU to ``compress``
    channels when given, as face-vid2vid's 4; Table 4.10 has none): per motion the heatmap and the
    warped feature, (K + 1)(1 + C) channels. A 3-D hourglass with ``widths`` then gives the mask
    logits (a ``mask_kernel`` conv to K + 1 channels) and, with (channels, depth) as 2-D channels, the
    occlusion map (an ``occlusion_kernel`` conv, sigmoid). f_s is warped by the fused
    ``keypoint_warp_3d``, which never stores the motions or phi.

    ``align_corners`` applies to both warps. It defaults to True because the motions live on the
    identity grid 2 i / (n - 1) - 1 of the voxel centres: only then is T_0 the identity (with FOMM's
    and face-vid2vid's False it scales the sampling positions about the centre by n / (n - 1)).
    """

    def __init__(self, n_keypoints: int, feature_channels: int = 32, depth: int = 16,
                 widths: tuple[int, ...] = (32, 64, 128, 256, 512, 1024), *, compress: int | None = None,
                 mask_kernel: int = 7, occlusion_kernel: int = 7, variance: float = 0.01, align_corners: bool = True):
        super().__init__()
        self.n_keypoints = _checks.integer("n_keypoints", n_keypoints, low=1)
        self.feature_channels = _checks.integer("feature_channels", feature_channels, low=1)
        self.depth = _checks.integer("depth", depth, low=2)
        widths = _widths("widths", widths, 2)
        self.scale = 2 ** (len(widths) - 1)
        self.variance = _checks.real("variance", variance, low=0.0, low_open=True, finite=True)
        self.align_corners = _checks.boolean("align_corners", align_corners)
        mask_kernel, occlusion_kernel = _odd("mask_kernel", mask_kernel), _odd("occlusion_kernel", occlusion_kernel)
        if compress is None:
            self.compress, warped_channels = nn.Identity(), feature_channels
        else:
            warped_channels = _checks.integer("compress", compress, low=1)
            self.compress = nn.Sequential(nn.Conv3d(feature_channels, compress, 1), nn.BatchNorm3d(compress), nn.ReLU())
        self.hourglass = _Hourglass3D((n_keypoints + 1) * (1 + warped_channels), widths)
        hidden = self.hourglass.out_channels
        self.mask = nn.Conv3d(hidden, n_keypoints + 1, mask_kernel, padding=mask_kernel // 2)
        self.occlusion = nn.Sequential(nn.Flatten(1, 2), nn.Conv2d(hidden * depth, 1, occlusion_kernel,
                                                                   padding=occlusion_kernel // 2), nn.Sigmoid())

    def forward(self, feature: Tensor, kp_source: Tensor, kp_driving: Tensor, *, jacobian: Tensor | None = None,
                return_deformation: bool = False) -> DenseMotion:
        """f_s (N, C, D, H, W) and the keypoints p_s, p_d (N, K, 3); ``jacobian`` (N, K, 3, 3) makes the
        motions FOMM's T_k(p) = J_k (p - p_dk) + p_sk (§4.3.3) instead of §4.3.5's shifts."""
        _volume("feature", feature, self.feature_channels, self.depth, self.scale)
        _keypoints("kp_source", kp_source, self.n_keypoints, "feature", feature)
        _keypoints("kp_driving", kp_driving, self.n_keypoints, "feature", feature)
        motions = sparse_motion_features(self.compress(feature), kp_source, kp_driving, jacobian=jacobian,
                                         variance=self.variance, align_corners=self.align_corners)
        hidden = self.hourglass(motions.flatten(1, 2))
        logits = self.mask(hidden)
        warped = keypoint_warp_3d(feature, kp_source, kp_driving, logits, jacobian=jacobian, mask_is_logits=True,
                                  align_corners=self.align_corners, return_deformation=return_deformation)
        warped, deformation = warped if return_deformation else (warped, None)
        return DenseMotion(logits, self.occlusion(hidden), warped, deformation)


class Generator(nn.Module):
    """G of Table 4.9 (right), face-vid2vid Fig. 12(e): the warped volume (N, C, D, H, W) and the
    occlusion map (N, 1, H, W) to an image (N, image_channels, H * s, W * s) in (0, 1),
    s = 2 ** (len(widths) - 1)."""

    def __init__(self, feature_channels: int = 32, depth: int = 16, widths: tuple[int, ...] = (256, 128, 64),
                 res_blocks: int = 6, image_channels: int = 3):
        super().__init__()
        self.feature_channels = _checks.integer("feature_channels", feature_channels, low=1)
        self.depth = _checks.integer("depth", depth, low=1)
        widths = _widths("widths", widths, 1)
        image_channels = _checks.integer("image_channels", image_channels, low=1)
        self.head = nn.Sequential(
            nn.Flatten(1, 2),  # "Reshape D16 x C32 -> C512", channel-major as the encoder's
            nn.Conv2d(feature_channels * depth, widths[0], 3, padding=1), nn.BatchNorm2d(widths[0]), nn.LeakyReLU(),
            nn.Conv2d(widths[0], widths[0], 1),
        )
        self.body = nn.Sequential(
            *(ResBlock2D(widths[0]) for _ in range(_checks.integer("res_blocks", res_blocks, low=0))),
            *(UpBlock2D(a, b) for a, b in zip(widths, widths[1:])),
            nn.Conv2d(widths[-1], image_channels, 7, padding=3), nn.Sigmoid(),
        )

    def forward(self, warped: Tensor, occlusion: Tensor) -> Tensor:
        _volume("warped", warped, self.feature_channels, self.depth, 1)
        n, _, _, h, w = warped.shape
        _checks.dense_tensor("occlusion", occlusion)
        if occlusion.shape != (n, 1, h, w):
            raise ValueError(f"occlusion must have shape (N={n}, 1, H={h}, W={w}), got {tuple(occlusion.shape)}")
        return self.body(self.head(warped) * occlusion)


class DeltaNet(nn.Module):
    """D of Table 4.10 (right), face-vid2vid's delta branch of Fig. 12(c): a ResNet of ResBottlenecks
    (``stages`` of (width, blocks), each after the first starting with a stride-2 block) after a 7x7
    stride-2 conv to ``stem`` and a stride-2 max pool, global average pooling (the table's 7x7 pool at
    224 x 224) and a linear layer to the corrections delta (N, K, 3).

    The linear layer starts at zero, so the key points start at the given landmarks (§4.3.5).
    """

    def __init__(self, n_keypoints: int, image_channels: int = 3, stem: int = 64,
                 stages: tuple[tuple[int, int], ...] = RESNET50_STAGES):
        super().__init__()
        self.n_keypoints = _checks.integer("n_keypoints", n_keypoints, low=1)
        self.image_channels = _checks.integer("image_channels", image_channels, low=1)
        width = _checks.integer("stem", stem, low=1)
        layers: list[nn.Module] = [nn.Conv2d(image_channels, stem, 7, stride=2, padding=3), nn.BatchNorm2d(stem),
                                   nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1)]
        for s, (out, blocks) in enumerate(_stages("stages", stages)):
            for b in range(blocks):
                layers.append(ResBottleneck(width, out, stride=2 if s > 0 and b == 0 else 1))
                width = out
        head = nn.Linear(width, 3 * n_keypoints)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)

    def forward(self, image: Tensor) -> Tensor:
        return self.net(_image("image", image, self.image_channels, 1)).view(-1, self.n_keypoints, 3)


# --- the model (§4.3.5) ----------------------------------------------------------------------------
class Reenactment(NamedTuple):
    """What the model returns: V-hat, the key points and their corrections, and the motion."""

    image: Tensor  # V-hat (N, image_channels, H, W) in (0, 1)
    kp_source: Tensor  # p_s = q_s + delta_s (N, K, 3)
    kp_driving: Tensor  # p_d = q_d + delta_d
    delta_source: Tensor  # delta_s = D(I_s); zeros without the delta net
    delta_driving: Tensor  # delta_d = D(V)
    motion: DenseMotion


class ReenactmentLoss(NamedTuple):
    """Eq. (4.9) and its parts, with the forward pass's output (to log without recomputing it)."""

    total: Tensor  # eq. (4.9): reconstruction + delta_weight * delta_penalty
    reconstruction: Tensor  # mean |V - V-hat|
    delta_penalty: Tensor  # mean |delta_s| + mean |delta_d|
    output: Reenactment


class ReenactmentModel(nn.Module):
    """The model of Figure 4.14: DeltaNet D, AppearanceEncoder E, DenseMotionNetwork M, Generator G.

    ``widths`` are the encoder's (the generator's reversed, as Table 4.9), ``motion_widths`` the
    hourglass's, ``delta_stem``/``delta_stages`` the delta net's; images need height and width
    divisible by 2 ** (len(widths) + len(motion_widths) - 2) (``self.scale``). The landmarks are
    (x, y, z) in [-1, 1] over the feature volume (x along W, y along H, z along D).
    """

    def __init__(self, n_keypoints: int, *, image_channels: int = 3, widths: tuple[int, ...] = (64, 128, 256),
                 feature_channels: int = 32, depth: int = 16, res_blocks: int = 6,
                 motion_widths: tuple[int, ...] = (32, 64, 128, 256, 512, 1024), compress: int | None = None,
                 variance: float = 0.01, align_corners: bool = True, delta_stem: int = 64,
                 delta_stages: tuple[tuple[int, int], ...] = RESNET50_STAGES):
        super().__init__()
        # the sub-networks check the rest; these three they know by other names
        motion_widths = _widths("motion_widths", motion_widths, 2)
        delta_stem = _checks.integer("delta_stem", delta_stem, low=1)
        delta_stages = _stages("delta_stages", delta_stages)
        self.delta = DeltaNet(n_keypoints, image_channels, delta_stem, delta_stages)
        self.encoder = AppearanceEncoder(image_channels, widths, feature_channels, depth, res_blocks)
        self.motion = DenseMotionNetwork(n_keypoints, feature_channels, depth, motion_widths, compress=compress,
                                         variance=variance, align_corners=align_corners)
        self.generator = Generator(feature_channels, depth, self.encoder.widths[::-1], res_blocks, image_channels)
        self.n_keypoints, self.image_channels = self.motion.n_keypoints, self.encoder.image_channels
        self.scale = self.encoder.scale * self.motion.scale

    def forward(self, source: Tensor, driving: Tensor | None, q_source: Tensor, q_driving: Tensor, *,
                use_delta: bool = True, jacobian: Tensor | None = None,
                return_deformation: bool = False) -> Reenactment:
        """Steps 2-6 of §4.3.5 for source images I_s and driving images V (N, image_channels, H, W),
        float32/64, and their landmarks q_s, q_d (N, K, 3). ``use_delta=False`` takes p = q, as the
        frontalisation and expression experiments (§4.3.6), which have no driving image
        (``driving`` may then be None). ``jacobian`` (N, K, 3, 3) restores FOMM's affine motions."""
        _image("source", source, self.image_channels, self.scale, WARP_DTYPES)
        weight = self.encoder.net[0].weight
        if (source.dtype, source.device) != (weight.dtype, weight.device):
            raise TypeError(f"source must have the model's dtype and device ({weight.dtype}, {weight.device}), "
                            f"got ({source.dtype}, {source.device})")
        _keypoints("q_source", q_source, self.n_keypoints, "source", source)
        _keypoints("q_driving", q_driving, self.n_keypoints, "source", source)
        if driving is not None:
            _checks.dense_tensor("driving", driving, WARP_DTYPES)
            _checks.like("driving", driving, "source", source)
        if _checks.boolean("use_delta", use_delta):
            if driving is None:
                raise ValueError("driving must be given when use_delta=True: delta_d = D(V) (§4.3.5 step 2)")
            delta_s, delta_d = self.delta(torch.cat([source, driving])).chunk(2)  # BN statistics span both
        else:
            delta_s = delta_d = torch.zeros_like(q_source)
        kp_s, kp_d = q_source + delta_s, q_driving + delta_d
        motion = self.motion(self.encoder(source), kp_s, kp_d, jacobian=jacobian,
                             return_deformation=return_deformation)
        return Reenactment(self.generator(motion.warped, motion.occlusion), kp_s, kp_d, delta_s, delta_d, motion)

    def loss(self, source: Tensor, driving: Tensor, q_source: Tensor, q_driving: Tensor, *,
             delta_weight: float = 0.1, use_delta: bool = True, jacobian: Tensor | None = None) -> ReenactmentLoss:
        """Eq. (4.9), ||V - V-hat|| + lambda (||delta_s||_1 + ||delta_d||_1), each norm divided by its
        number of elements (so lambda = ``delta_weight`` does not depend on the image size or K; the
        dissertation gives no value).
        The dissertation's reconstruction term is LPIPS, whose network weights are downloaded; L1 here."""
        delta_weight = _checks.real("delta_weight", delta_weight, low=0.0, finite=True)
        if driving is None:
            raise ValueError("driving must be given: it is the reconstruction target V of eq. (4.9)")
        out = self(source, driving, q_source, q_driving, use_delta=use_delta, jacobian=jacobian)
        reconstruction = (driving - out.image).abs().mean()
        penalty = out.delta_source.abs().mean() + out.delta_driving.abs().mean()
        return ReenactmentLoss(reconstruction + delta_weight * penalty, reconstruction, penalty, out)
