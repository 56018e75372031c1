"""Argument validators shared by every op: each names the argument it rejects.

Bad input gets a TypeError (wrong kind of value) or ValueError (right kind,
wrong value) whose message starts with the argument's name, before any
kernel runs.
"""

from __future__ import annotations

import math
import numbers
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from dgm_fast.philox import signed_seed

FLOAT_DTYPES = frozenset((torch.float16, torch.bfloat16, torch.float32, torch.float64))
SEED_RANGE = 1 << 64


def real(name: str, value, *, low: float = -math.inf, high: float = math.inf,
         low_open: bool = False, finite: bool = False) -> float:
    """A real number (not bool, not NaN) in [low, high] ((low, high] with ``low_open``)."""
    if type(value) is not float:  # the common case skips the slower ABC checks
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
        value = float(value)
    if value != value:
        raise ValueError(f"{name} must not be NaN")
    if finite and math.isinf(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value}")
    return value


def integer(name: str, value, *, low: int | None = None, high: int | None = None) -> int:
    """An int (not bool) in [low, high)."""
    if type(value) is not int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        value = int(value)
    if (low is not None and value < low) or (high is not None and value >= high):
        bounds = f">= {low}" if high is None else f"< {high}" if low is None else f"in [{low}, {high})"
        raise ValueError(f"{name} must be {bounds}, got {value}")
    return value


def boolean(name: str, value) -> bool:
    """A bool (not an int standing for one)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def seed(value) -> int:
    """A 64-bit seed in [0, 2**64), as the signed int64 the ops carry (two's complement)."""
    return signed_seed(integer("seed", value, low=0, high=SEED_RANGE))


def dense_tensor(name: str, t, dtypes: frozenset[torch.dtype] = FLOAT_DTYPES) -> Tensor:
    """A strided (dense, not nested) tensor of one of ``dtypes``."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_nested:
        raise TypeError(f"{name} must be a dense tensor, got a nested tensor")
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must have a dtype in {sorted(map(str, dtypes))}, got {t.dtype}")
    return t


def like(name: str, t: Tensor, ref_name: str, ref: Tensor) -> None:
    """``t`` has the shape, dtype and device of ``ref``."""
    if t.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(t.shape)}")
    same_kind(name, t, ref_name, ref)


def same_kind(name: str, t: Tensor, ref_name: str, ref: Tensor) -> None:
    """``t`` has the dtype and device of ``ref``."""
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {t.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{name} must be on the device of {ref_name} ({ref.device}), got {t.device}")


def writable_without_partial_overlap(name: str, out: Tensor, other_name: str, other: Tensor) -> None:
    """In-place writes into ``out`` while reading ``other`` elementwise are safe only if the two
    are the same view or share no memory; torch raises for the rest, and so do we. (Under
    torch.compile the write is functionalized, which reads every input before writing.)"""
    if torch.compiler.is_compiling():
        return
    if torch._debug_has_internal_overlap(out) == 1:
        raise ValueError(f"{name} has elements that share memory (e.g. expanded); it cannot be written in place")
    if out.untyped_storage().data_ptr() != other.untyped_storage().data_ptr() or out.numel() == 0:
        return
    if out.data_ptr() == other.data_ptr() and out.stride() == other.stride():
        return  # exactly the same elements: an elementwise update reads before it writes
    size = out.element_size()

    def span(t: Tensor) -> tuple[int, int]:
        last = sum((n - 1) * s for n, s in zip(t.shape, t.stride()) if n > 0)
        return t.data_ptr(), t.data_ptr() + (last + 1) * size

    (a0, a1), (b0, b1) = span(out), span(other)
    if a0 < b1 and b0 < a1:
        raise ValueError(
            f"{name} and {other_name} partially overlap in memory; an in-place update would read "
            f"elements of {other_name} it has already overwritten (pass a clone of {other_name})"
        )


def writable_dir(name: str, path) -> Path:
    """``path`` as an absolute folder, created if missing and proven writable with a temporary
    file: checked before long work starts, so that its results are not lost at the end."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name} {path}: not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ValueError(f"{name} {path}: cannot write there ({exc.strerror or exc})") from None
    return path.resolve()
