"""The Triton Philox helpers (kernels/philox.py) reproduce the reference stream, dgm_fast/philox.py,
and compile for a GPU to correctly rounded noise and (in the Langevin kernel) vector loads."""

from __future__ import annotations

import os
import re

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from dgm_fast.kernels.philox import philox4x32_10, philox_normal4  # noqa: E402
from dgm_fast.philox import normal_noise, philox4x32, split_seed  # noqa: E402
from helpers import PHILOX_KAT, run_ptx_script  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1", allow_module_level=True)

BLOCK = 1024


@triton.jit(do_not_specialize=["k0", "k1"])
def _words_kernel(ctr_ptr, out_ptr, n, k0: tl.uint32, k1: tl.uint32, BLOCK: tl.constexpr):
    # ctr/out: [n, 4] int64 holding 32-bit words
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    c0 = tl.load(ctr_ptr + 4 * i, mask=m).to(tl.uint32)
    c1 = tl.load(ctr_ptr + 4 * i + 1, mask=m).to(tl.uint32)
    c2 = tl.load(ctr_ptr + 4 * i + 2, mask=m).to(tl.uint32)
    c3 = tl.load(ctr_ptr + 4 * i + 3, mask=m).to(tl.uint32)
    r0, r1, r2, r3 = philox4x32_10(c0, c1, c2, c3, k0.to(tl.uint32), k1.to(tl.uint32))
    tl.store(out_ptr + 4 * i, r0.to(tl.int64), mask=m)
    tl.store(out_ptr + 4 * i + 1, r1.to(tl.int64), mask=m)
    tl.store(out_ptr + 4 * i + 2, r2.to(tl.int64), mask=m)
    tl.store(out_ptr + 4 * i + 3, r3.to(tl.int64), mask=m)


@triton.jit(do_not_specialize=["c_first", "k0", "k1"])
def _normal4_kernel(out_ptr, n, c_first: tl.int64, k0: tl.uint32, k1: tl.uint32, BLOCK: tl.constexpr):
    # out[4 i + j] = normal j of counter c_first + i, i.e. stream index 4 c_first + 4 i + j
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    dtype = out_ptr.dtype.element_ty
    z0, z1, z2, z3 = philox_normal4(c_first.to(tl.int64) + i, k0.to(tl.uint32), k1.to(tl.uint32), dtype)
    tl.store(out_ptr + 4 * i, z0, mask=m)
    tl.store(out_ptr + 4 * i + 1, z1, mask=m)
    tl.store(out_ptr + 4 * i + 2, z2, mask=m)
    tl.store(out_ptr + 4 * i + 3, z3, mask=m)


def triton_words(counters: torch.Tensor, key: tuple[int, int]) -> torch.Tensor:
    ctr = counters.to(DEVICE).contiguous()
    out = torch.empty_like(ctr)
    n = ctr.shape[0]
    _words_kernel[(triton.cdiv(n, BLOCK),)](ctr, out, n, key[0], key[1], BLOCK=BLOCK)
    return out.cpu()


def reference_words(counters: torch.Tensor, key: tuple[int, int]) -> torch.Tensor:
    return torch.stack(philox4x32(tuple(counters.unbind(1)), key), dim=1)


@pytest.mark.parametrize("counter, key, expected", PHILOX_KAT)
def test_known_answers(counter, key, expected):
    words = triton_words(torch.tensor([counter], dtype=torch.int64), key)
    assert words[0].tolist() == list(expected)


@pytest.mark.parametrize("seed", [0, 1, 0xFFFFFFFF, 2**31 + 5, 2**63 + 12345, 2**64 - 1, 0x0123456789ABCDEF])
def test_random_counters_match_reference(seed):
    gen = torch.Generator().manual_seed(seed % 1000)
    counters = torch.randint(0, 2**32, (3 * BLOCK + 17, 4), dtype=torch.int64, generator=gen)
    counters[:4] = torch.tensor([[0] * 4, [2**32 - 1] * 4, [2**31] * 4, [1, 0, 0, 0]])
    key = split_seed(seed)
    assert torch.equal(triton_words(counters, key), reference_words(counters, key))


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-6), (torch.float64, 1e-14)])
@pytest.mark.parametrize("seed, c_first", [(7, 0), (2**64 - 12345, 2**32 - 3), (2**63 + 1, 2**60 + 11)])
def test_normals_match_reference(dtype, tol, seed, c_first):
    n = BLOCK + 5  # counters, spanning two programs
    out = torch.empty(4 * n, dtype=dtype, device=DEVICE)
    k0, k1 = split_seed(seed)
    _normal4_kernel[(triton.cdiv(n, BLOCK),)](out, n, c_first, k0, k1, BLOCK=BLOCK, enable_fp_fusion=False)
    expected = normal_noise(4 * n, seed, 4 * c_first, dtype=dtype)
    torch.testing.assert_close(out.cpu(), expected, rtol=tol, atol=tol)


# Compiles, for sm_90 and without a GPU, the Langevin kernel exactly as
# langevin_step_triton launches it for a GPU tensor of argv[1] elements (a meta
# tensor stands in for it), and prints the PTX. Run without TRITON_INTERPRET,
# under which @triton.jit makes no compilable kernel.
COMPILE_PTX = """
from dgm_fast.kernels import langevin

kernel, launch = langevin._langevin_kernel, {}
class Capture:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: launch.update(args=args, kwargs=kwargs)
langevin._langevin_kernel = Capture()
x = torch.empty(int(sys.argv[1]), device="meta")
inf = float("inf")
langevin.langevin_step_triton(x, x, x, 0.01, 1.0, 0.0, inf, -inf, inf, 5, 0)
# small CPU tensors for the pointers: only their dtype and 16-byte alignment count
args = [torch.empty(16, dtype=a.dtype) if isinstance(a, torch.Tensor) else a for a in launch["args"]]
target = GPUTarget("cuda", 90, 32)
backend = make_backend(target)
try:
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, spec, options = binder(*args, **launch["kwargs"])
    options, signature, constexprs, attrs = kernel._pack_args(backend, launch["kwargs"], bound, spec, options)
except (AttributeError, TypeError) as exc:  # another Triton's internals
    skip(exc)
src = ASTSource(kernel, signature, constexprs, attrs)
print(triton.compile(src, target=target, options=options.__dict__).asm["ptx"])
"""


def test_compiled_langevin_kernel_vectorises_and_rounds_correctly(tmp_path):
    n = 10**7 + 1  # no multiple of 16: only the last program may mask
    ptx = run_ptx_script(COMPILE_PTX, tmp_path, str(n))
    assert "ld.global.v4.b32" in ptx and "st.global.v4.b32" in ptx
    assert "sqrt.rn.f32" in ptx and "sqrt.approx" not in ptx
    assert re.search(r"mul\.rn\.f32[^;]*0f40C90FDB;", ptx)  # t = fl32(2 pi) * u, rounded on its own
