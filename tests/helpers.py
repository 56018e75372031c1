"""Test helpers shared by every op family: tolerances, input makers, op samples, Philox vectors.

``OP_SAMPLES[name](device, dtype)`` lists argument tuples of registered op
``name`` in its validated (op) form; the contract tests run every registered
op on them, so a new op adds its sample maker here.
"""

from __future__ import annotations

import torch

from dgm_fast.langevin.functional import step_args

# float32 kernels differ from the references by the rounding of log/sin/cos
# (~1e-6 absolute for unit values); 16-bit types by one ulp of the store.
TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float64: dict(atol=1e-12, rtol=1e-12),
    torch.bfloat16: dict(atol=1e-2, rtol=8e-3),
    torch.float16: dict(atol=1e-3, rtol=1e-3),
}
# 0-d, empty, a single element, odd sizes, a size off the kernels' vector widths
SHAPES = [(), (0,), (1,), (7,), (3, 5, 7), (1001,), (2, 0, 3)]
LAYOUTS = ("contiguous", "transposed", "strided", "channels_last")

# Random123's known-answer vectors for philox4x32_10: (counter, key, result)
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def supports_bfloat16(device: str | torch.device) -> bool:
    device = torch.device(device)
    return device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported())


def dtypes_for(device: str | torch.device) -> list[torch.dtype]:
    return [d for d in TOL if d != torch.bfloat16 or supports_bfloat16(device)]


def make_tensor(shape, dtype=torch.float32, device="cpu", *, layout="contiguous", scale=1.0, seed=0):
    """Standard-normal values (times ``scale``) in ``layout``: a transposed, strided
    (every other element) or channels_last view of the same logical shape."""
    gen = torch.Generator().manual_seed(seed)
    if layout == "transposed" and len(shape) >= 2:
        return make_tensor((*shape[:-2], shape[-1], shape[-2]), dtype, device, scale=scale, seed=seed).mT
    if layout == "strided" and len(shape) >= 1:
        wide = (*shape[:-1], 2 * shape[-1])
        return make_tensor(wide, dtype, device, scale=scale, seed=seed)[..., ::2]
    t = (scale * torch.randn(shape, generator=gen, dtype=torch.float64)).to(device, dtype)
    if layout == "channels_last" and len(shape) == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t


def _langevin_samples(device, dtype) -> list[tuple]:
    """(x, grad, *StepArgs) over shapes, layouts and every option of the step."""
    options = [
        dict(),
        dict(noise_scale=0.0),
        dict(prior_weight=1.0, grad_clip=0.5),
        dict(noise_scale=0.3, clamp=(-1.0, 1.5), offset=3),
        dict(grad_clip=2.0, clamp=(-0.5, 0.5), seed=2**64 - 12345, offset=2**33 + 1),
    ]
    cases = [(shape, "contiguous", opts) for shape in SHAPES for opts in options]
    cases += [((33, 65), layout, dict(offset=5)) for layout in ("transposed", "strided")]
    cases += [((2, 3, 5, 7), "channels_last", dict())]
    samples = []
    for i, (shape, layout, opts) in enumerate(cases):
        x = make_tensor(shape, dtype, device, layout=layout, seed=i)
        g = make_tensor(shape, dtype, device, layout=layout, scale=3.0, seed=1000 + i)
        kw = dict(noise_scale=None, prior_weight=0.0, grad_clip=None, clamp=None, seed=1234, offset=0) | opts
        samples.append((x, g, *step_args(x, g, 0.1, *kw.values())))
    return samples


OP_SAMPLES = {
    "langevin_step": _langevin_samples,
    "langevin_step_": _langevin_samples,
}


def significant_strides(t: torch.Tensor) -> tuple[int, ...]:
    """The strides that matter: a dimension of size 1 (or an empty tensor) may have any."""
    return () if t.numel() == 0 else tuple(s for s, n in zip(t.stride(), t.shape) if n > 1)


def clone_args(args: tuple) -> tuple:
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
