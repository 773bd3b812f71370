"""Tensors without data (meta, FakeTensorMode's) through the ops, and the declared scratch memory.

Whether each op's declared scratch is what its implementation holds is measured in
tests/bench/test_memory.py, which counts the implementation's allocations on real tensors."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from gpt2_kernels._common import _WORKSPACE, as_rows, has_data, rows_copy_bytes, workspace_bytes
from tests.conftest import run_without_interpreter


def test_has_data():
    assert has_data(torch.zeros(2))
    assert not has_data(torch.zeros(2, device="meta"))
    with FakeTensorMode():
        assert not has_data(torch.zeros(2))


def test_every_op_declares_its_scratch():
    ops = {n for n in torch._C._dispatch_get_all_op_names() if n.startswith("gpt2_kernels::")}
    assert len(ops) >= 12
    assert ops <= set(_WORKSPACE), f"ops without a workspace declaration: {sorted(ops - set(_WORKSPACE))}"
    with pytest.raises(KeyError):
        workspace_bytes("gpt2_kernels::no_such_op")


def _layouts():
    base = torch.zeros(4, 6, 8)
    return {
        "contiguous": base,
        "transposed leading dims": base.transpose(0, 1),  # (6, 4, 8): rows no longer fold into one
        "strided last dim": base[..., ::2],
        "sliced rows": base[:, 1:5],  # each batch's rows are contiguous, batches are not adjacent
        "size-1 dim": base[:1].transpose(0, 1),  # (6, 1, 8): the size-1 dim's stride does not matter
        "expanded": torch.zeros(1, 6, 8).expand(4, 6, 8),
        "sliced batch": base[1:3],
    }


@pytest.mark.parametrize("name", list(_layouts()))
def test_rows_copy_bytes_is_what_as_rows_allocates(name):
    t = _layouts()[name]
    rows = as_rows(t, t.shape[-1])
    copied = rows.untyped_storage().data_ptr() != t.untyped_storage().data_ptr()  # the reference: as_rows itself
    assert rows_copy_bytes(t, t.shape[-1]) == (t.numel() * t.element_size() if copied else 0)


def test_ops_take_tensors_without_data_without_the_interpreter():
    # Without TRITON_INTERPRET, CPU tensors with data are refused, but fake ones reach each op's
    # fake implementation (with gradients), so a model can be traced or counted on a CPU-only
    # machine; linear_cross_entropy's target range check, which reads values, is skipped.
    code = """
import torch, gpt2_kernels
from torch._subclasses.fake_tensor import FakeTensorMode
try:
    gpt2_kernels.layer_norm(torch.randn(2, 8), torch.ones(8), torch.zeros(8))
except ValueError as e:
    print("real:", str(e).split(":")[1].strip())
with FakeTensorMode():
    x = torch.randn(2, 3, 64, requires_grad=True)
    w, b = torch.ones(64, requires_grad=True), torch.zeros(64, requires_grad=True)
    y = gpt2_kernels.layer_norm(x, w, b)
    y2, h = gpt2_kernels.add_layer_norm(y, x, w, b)
    g = gpt2_kernels.gelu(y2, b)
    q = g.view(2, 3, 1, 64).transpose(1, 2).expand(2, 2, 3, 64)
    o = gpt2_kernels.attention(q, q, q)
    loss = gpt2_kernels.linear_cross_entropy(o.reshape(12, 64), torch.randn(50, 64), torch.zeros(12, dtype=torch.long))
    loss.backward()
    print("fake:", tuple(o.shape), loss.dtype, tuple(x.grad.shape), type(x.grad).__name__)
"""
    out = run_without_interpreter(code)
    assert out.returncode == 0, out.stderr
    assert "real: got CPU tensors" in out.stdout
    assert "fake: (2, 2, 3, 64) torch.float32 (2, 3, 64) FakeTensor" in out.stdout
