"""Triton's fp32 -> bf16 conversion rounds to nearest-even, as torch's does, bit for bit.

On a GPU this is the hardware's conversion. Under the interpreter it holds only because
tests/conftest.py replaces the interpreter's truncating conversion; if a Triton release moves
that code, the patch stops taking effect and this test fails rather than the bf16 kernel tests
drifting one ulp toward zero again.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _to_bf16_kernel(X, STORED, CAST, N, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(X + offs, mask=mask)
    tl.store(STORED + offs, x, mask=mask)  # the store's implicit conversion
    tl.store(CAST + offs, x.to(tl.bfloat16), mask=mask)


def test_fp32_to_bf16_rounds_like_torch(device):
    one_ulp = 2.0**-7
    special = [1 + one_ulp / 2, 1 + 3 * one_ulp / 2,  # ties: to even, down then up
               1 + one_ulp / 2 + 2.0**-20,  # just past a tie: up (truncation keeps 1.0)
               2 - 2.0**-20,  # rounds up across the exponent: 2.0
               -1 - 3 * one_ulp / 2, 3.4e38, -3.4e38,  # the last two round to +-inf
               1e-40, -1e-40, 0.0, -0.0, float("inf"), float("-inf")]
    x = torch.cat([torch.tensor(special), torch.randn(1000) * 10.0 ** torch.randint(-30, 30, (1000,))])
    x = x.to(device=device, dtype=torch.float32)
    stored, cast = (torch.empty(x.shape, device=device, dtype=torch.bfloat16) for _ in range(2))
    _to_bf16_kernel[(1,)](x, stored, cast, x.numel(), BLOCK=triton.next_power_of_2(x.numel()))
    want = x.to(torch.bfloat16).view(torch.int16)
    assert torch.equal(stored.view(torch.int16), want)
    assert torch.equal(cast.view(torch.int16), want)
