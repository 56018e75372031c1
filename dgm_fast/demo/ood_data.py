"""Image sets for the OOD demo (§4.2.4), all 32 x 32 in [0, 1], float32 (N, nc, 32, 32), download-free.

* in-distribution: scikit-learn's 8 x 8 digits upsampled to 32 x 32 (``dgm_fast.models.load_digits``);
* the dissertation's synthetic sets (appendix 4.2.6): Noise, every pixel from Unif{0, ..., 255}, and
  Constant, one value from Unif{0, ..., 255} per image and channel;
* a real image set that ships with scikit-learn: 32 x 32 patches of its two sample photographs
  (china.jpg, flower.jpg), shrunk first so that a patch holds a scene's texture, grey for nc = 1;
* a user's folder of PNG/JPEG images or ``.npz`` array, resized to 32 x 32.

Images are read by Pillow (a dependency of matplotlib, so always installed with dgm_fast).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dgm_fast import _checks
from dgm_fast.models.digits import load_digits

IMAGE_SIZE = 32
LEVELS = 256
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 grey
PHOTO_SHRINK = 4  # the photos (427 x 640) are shrunk 4x: a patch is then 1/13 x 1/20 of the scene


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(_checks.integer("seed", seed, low=0, high=2**63))


def _check_n_nc(n: int, nc: int) -> tuple[int, int]:
    return _checks.integer("n", n, low=0), _checks.integer("nc", nc, low=1)


def digits(split: str = "train", seed: int = 0) -> Tensor:
    """The in-distribution set: scikit-learn's digits at 32 x 32 (1438 train / 359 test images)."""
    return load_digits(IMAGE_SIZE, split, seed=seed)[0]


def noise(n: int, nc: int = 1, seed: int = 0) -> Tensor:
    """Noise: every pixel and channel uniform on {0, ..., 255} / 255."""
    n, nc = _check_n_nc(n, nc)
    return torch.randint(LEVELS, (n, nc, IMAGE_SIZE, IMAGE_SIZE), generator=_generator(seed)).float() / (LEVELS - 1)


def constant(n: int, nc: int = 1, seed: int = 0) -> Tensor:
    """Constant: one value uniform on {0, ..., 255} / 255 per image and channel."""
    n, nc = _check_n_nc(n, nc)
    values = torch.randint(LEVELS, (n, nc, 1, 1), generator=_generator(seed)).float() / (LEVELS - 1)
    return values.expand(n, nc, IMAGE_SIZE, IMAGE_SIZE).contiguous()


def _to_channels(x: Tensor, nc: int) -> Tensor:
    """(N, C, H, W) with C in {1, 3, 4} as nc channels: alpha dropped, colour to grey by luma, grey repeated."""
    if x.shape[1] == 4:
        x = x[:, :3]
    if x.shape[1] == nc:
        return x
    if x.shape[1] == 3 and nc == 1:
        return (x * x.new_tensor(LUMA).reshape(1, 3, 1, 1)).sum(1, keepdim=True)
    if x.shape[1] == 1:
        return x.expand(-1, nc, -1, -1)
    raise ValueError(f"nc must be 1 or the images' channel count {x.shape[1]}, got {nc}")


def _resize(x: Tensor, size: int = IMAGE_SIZE) -> Tensor:
    """(N, C, H, W) in [0, 1] to size x size (bilinear, antialiased when shrinking)."""
    if tuple(x.shape[2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)


def photos(n: int, nc: int = 1, seed: int = 0) -> Tensor:
    """``n`` random 32 x 32 patches of scikit-learn's sample photographs (china.jpg and flower.jpg, taken in
    turn), shrunk ``PHOTO_SHRINK`` times (area average) first; grey (luma) for nc = 1."""
    from sklearn.datasets import load_sample_images  # bundled with scikit-learn

    n, nc = _check_n_nc(n, nc)
    scenes = [torch.tensor(img).permute(2, 0, 1)[None].float() / (LEVELS - 1)
              for img in load_sample_images().images]
    scenes = [_to_channels(F.avg_pool2d(s, PHOTO_SHRINK), nc)[0] for s in scenes]
    gen, patches = _generator(seed), []
    for i in range(n):
        scene = scenes[i % len(scenes)]
        top, left = (int(torch.randint(d - IMAGE_SIZE + 1, (1,), generator=gen)) for d in scene.shape[1:])
        patches.append(scene[:, top:top + IMAGE_SIZE, left:left + IMAGE_SIZE])
    return torch.stack(patches) if patches else torch.zeros(0, nc, IMAGE_SIZE, IMAGE_SIZE)


def _from_array(array: np.ndarray, where: str, nc: int) -> Tensor:
    """N x H x W or N x H x W x C, uint8 or float in [0, 1], as (N, nc, 32, 32) float32."""
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{where}: images must be N x H x W or N x H x W x C with C in (1, 3, 4), got shape "
                         f"{array.shape}")
    if array.shape[0] == 0 or 0 in array.shape[1:3]:
        raise ValueError(f"{where}: holds no images (shape {array.shape})")
    if array.dtype == np.uint8:
        x = torch.tensor(array).float() / (LEVELS - 1)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError(f"{where}: float images must be finite and in [0, 1], got values in "
                             f"[{np.nanmin(array):g}, {np.nanmax(array):g}]")
        x = torch.tensor(array, dtype=torch.float32)
    else:
        raise ValueError(f"{where}: images must be uint8 or float in [0, 1], got dtype {array.dtype}")
    return _resize(_to_channels(x.permute(0, 3, 1, 2), nc))


def _reason(exc: Exception) -> str:
    """The first line of a reader's error, so that ours stay one line."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _read_npz(path: Path, nc: int) -> Tensor:
    try:
        with np.load(path, allow_pickle=False) as data:
            key = "images" if "images" in data.files else (data.files or [None])[0]
            array = None if key is None else data[key]
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:  # not an archive, truncated, pickled
        raise ValueError(f"{path}: cannot read as .npz ({_reason(exc)})") from None
    if array is None:
        raise ValueError(f"{path}: the .npz holds no arrays")
    return _from_array(array, f"{path} (array {key!r})", nc)


def _read_image(path: Path, nc: int) -> Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("L" if nc == 1 else "RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"{path}: cannot read as an image ({_reason(exc)})") from None
    return _from_array(array[None], str(path), nc)


def load_images(path, nc: int = 1) -> Tensor:
    """A user's OOD set as (N, nc, 32, 32) in [0, 1]: a ``.npz`` (its array ``images``, else its first array;
    N x H x W or N x H x W x C, uint8 or float in [0, 1]) or a folder of .png/.jpg/.jpeg images (sorted by
    name; every image resized, grey for nc = 1). Bad input is a one-line ValueError naming the file."""
    nc = _checks.integer("nc", nc, low=1)
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{path}: the folder holds no {'/'.join(IMAGE_SUFFIXES)} images")
        return torch.cat([_read_image(f, nc) for f in files])
    if path.suffix.lower() != ".npz":
        raise ValueError(f"{path}: expected a .npz file or a folder of {'/'.join(IMAGE_SUFFIXES)} images")
    return _read_npz(path, nc)


OOD_SETS = {"noise": noise, "constant": constant, "photos": photos}  # name -> (n, nc, seed) -> images
