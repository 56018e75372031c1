"""The reference noise generator, dgm_fast/philox.py, is Philox4x32-10 as published."""

import pytest
import torch

from dgm_fast import _extension
from dgm_fast.philox import draw_seed, normal_noise, philox4x32, uniform_from_bits
from helpers import PHILOX_KAT

def test_known_answers():
    for ctr, key, expect in PHILOX_KAT:
        words = philox4x32(tuple(torch.tensor([c]) for c in ctr), key)
        assert tuple(int(w) for w in words) == expect


def test_uniforms_are_exact_and_open():
    r = torch.tensor([0, 511, 512, 0xFFFFFFFF])
    u = uniform_from_bits(r, torch.float32)
    assert u.tolist() == [2**-24, 2**-24, 3 * 2**-24, 1 - 2**-24]
    torch.testing.assert_close(u.double(), uniform_from_bits(r, torch.float64), atol=0, rtol=0)


def test_stream_depends_only_on_index():
    full = normal_noise(1000, seed=3, offset=0)
    torch.testing.assert_close(normal_noise(997, seed=3, offset=3), full[3:], atol=0, rtol=0)
    assert not torch.equal(normal_noise(1000, seed=4), full)


@pytest.mark.parametrize("extension", [True, False], ids=["extension", "python"])
def test_draw_seed_is_torch_randint(monkeypatch, extension):
    """seed=None draws what int(torch.randint(2**62, ())) draws, and moves the generator as far."""
    if not extension:
        monkeypatch.setattr(_extension, "_C", None)
    elif _extension._C is None:
        pytest.skip("needs the compiled extension")
    for s in (0, 1, 12345):
        torch.manual_seed(s)
        ours = [draw_seed() for _ in range(3)] + [torch.rand(())]
        torch.manual_seed(s)
        torchs = [int(torch.randint(2**62, ())) for _ in range(3)] + [torch.rand(())]
        assert ours == torchs
