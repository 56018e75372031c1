"""The reference noise generator, dgm_fast/philox.py, is Philox4x32-10 as published."""

import torch

from dgm_fast.philox import normal_noise, philox4x32, uniform_from_bits
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
