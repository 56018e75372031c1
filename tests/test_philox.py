"""The reference noise generator, dgm_fast/philox.py, is Philox4x32-10 as published."""

import torch

from dgm_fast.philox import normal_noise, philox4x32, uniform_from_bits

# Random123's known-answer vectors for philox4x32_10: (counter, key, result)
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def test_known_answers():
    for ctr, key, expect in KAT:
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
