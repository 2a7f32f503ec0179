"""Temporal and skeletal attention Triton kernels vs the reference in fp64 (Triton interpreter on the CPU).

The oracle is ``sald_fast.ops.reference`` run on the same (low-precision) inputs upcast to fp64,
differentiated with autograd. q, k, v are views of a fused (B, N, J, 3, H, d) projection output
(non-contiguous), dO is a permuted view, and every output / internal buffer is poisoned with NaN
before the launch. Tolerances, as ``max|a - b| / max(max|b|, 1)`` (inputs are O(1); forward
and gradients): fp32 2e-5, fp16 4e-3, bf16 2.5e-2 (P is rounded to the input dtype before P @ V,
as in every flash-attention kernel; accumulation is fp32).
"""

from __future__ import annotations

import pytest
import torch

from _support import triton_device_or_skip

triton = pytest.importorskip("triton")  # before the kernels: tests/conftest.py has chosen the interpreter

from kernels import skeletal_attention as skel  # noqa: E402
from kernels import temporal_attention as temp  # noqa: E402
from sald_fast.ops import reference  # noqa: E402

DEVICE = triton_device_or_skip(temp.temporal_attn_fwd_kernel)

pytestmark = pytest.mark.triton

TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2.5e-2}


def _fused_qkv(B, N, J, H, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, N, J, 3, H, d, generator=g).to(dtype).to(DEVICE)
    q, k, v = qkv.unbind(3)
    assert not q.is_contiguous()
    return q, k, v


def _grad_out(B, N, J, H, d, dtype, seed):
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randn(H, d, B, N, J, generator=g).to(dtype).to(DEVICE).permute(2, 3, 4, 0, 1)


def _assert_close(name, actual, expected, dtype):
    assert actual.shape == expected.shape, name
    assert not torch.isnan(actual).any(), f"{name}: NaN (an unwritten poisoned element?)"
    scale = expected.abs().max().clamp_min(1.0)  # inputs are O(1): absolute error floor
    rel = ((actual.double() - expected).abs().max() / scale).item()
    assert rel <= TOL[dtype], f"{name}: normalised max error {rel:.3g} > {TOL[dtype]}"


def _oracle(fn, q, k, v, do, *args):
    leaves = [t.double().requires_grad_() for t in (q, k, v)]
    o = fn(*leaves, *args)
    o.backward(do.double())
    return o.detach(), [t.grad for t in leaves]


TEMPORAL_CASES = [  # (B, N, J, H, d, dtype); lengths per sample drawn below (0 and N always included)
    (3, 1, 5, 2, 16, torch.float32),
    (3, 5, 7, 2, 16, torch.bfloat16),
    (3, 17, 9, 1, 24, torch.float16),
    (3, 64, 7, 1, 16, torch.float32),   # fp32 uses 32-frame blocks: separate dq kernel
    (3, 64, 5, 1, 32, torch.bfloat16),  # one 64-frame block: dq fused into the dk/dv kernel
    (3, 40, 7, 2, 8, torch.float16),
    (4, 70, 5, 1, 16, torch.float16),   # 70 > 64 frames: two key blocks, separate dq kernel
]


@pytest.mark.parametrize("B,N,J,H,d,dtype", TEMPORAL_CASES)
def test_temporal_forward_backward(B, N, J, H, d, dtype):
    seed = N * 31 + J
    q, k, v = _fused_qkv(B, N, J, H, d, dtype, seed)
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([0, N] + torch.randint(0, N + 1, (B - 2,), generator=g).tolist(), device=DEVICE)
    o, lse = temp.temporal_attention_forward(q, k, v, lengths, None, poison=True)
    assert o.is_contiguous() and o.shape == q.shape and o.dtype == dtype
    do = _grad_out(B, N, J, H, d, dtype, seed)
    o_ref, grads_ref = _oracle(reference.temporal_attention, q, k, v, do, lengths)
    _assert_close("o", o, o_ref, dtype)
    assert float(o[0].abs().max()) == 0.0, "length 0 must give zeros"
    lse_valid = lse[1:]  # samples with at least one key: finite logsumexp
    assert torch.isfinite(lse_valid).all() and bool((lse[0] == float("-inf")).all())
    grads = temp.temporal_attention_backward(do, q, k, v, o, lse, lengths, None, poison=True)
    for name, got, ref in zip(("dq", "dk", "dv"), grads, grads_ref):
        _assert_close(name, got, ref, dtype)
        assert float(got[0].abs().max()) == 0.0, f"{name}: length-0 sample must get zero gradient"
    # keys at frames >= length get no gradient
    for b in range(B):
        L = int(lengths[b])
        assert float(grads[1][b, L:].abs().sum()) == 0.0
        assert float(grads[2][b, L:].abs().sum()) == 0.0


def test_temporal_without_lengths_and_custom_scale():
    q, k, v = _fused_qkv(2, 9, 5, 2, 16, torch.float32, 5)
    do = _grad_out(2, 9, 5, 2, 16, torch.float32, 5)
    o, lse = temp.temporal_attention_forward(q, k, v, None, 0.3, poison=True)
    o_ref, grads_ref = _oracle(reference.temporal_attention, q, k, v, do, None, 0.3)
    _assert_close("o", o, o_ref, torch.float32)
    for name, got, ref in zip(("dq", "dk", "dv"), temp.temporal_attention_backward(do, q, k, v, o, lse, None, 0.3,
                                                                                   poison=True), grads_ref):
        _assert_close(name, got, ref, torch.float32)


def test_temporal_lengths_out_of_range_are_clamped_in_the_kernel():
    """The public wrapper rejects them; the kernel itself never reads outside [0, N)."""
    q, k, v = _fused_qkv(2, 6, 5, 1, 16, torch.float32, 1)
    o_big, _ = temp.temporal_attention_forward(q, k, v, torch.tensor([100, -3], device=DEVICE), None, poison=True)
    o_ok, _ = temp.temporal_attention_forward(q, k, v, torch.tensor([6, 0], device=DEVICE), None, poison=True)
    assert torch.equal(o_big, o_ok)


SKELETAL_CASES = [  # (B, N, J, H, d, dtype)
    (2, 3, 5, 2, 16, torch.float32),
    (2, 3, 7, 2, 16, torch.bfloat16),
    (2, 2, 9, 3, 24, torch.float16),
    (1, 2, 32, 2, 16, torch.float32),  # the largest supported J
    (3, 5, 7, 8, 32, torch.bfloat16),  # paper head layout (8 heads of 32), 120 problems
    (2, 1, 1, 1, 8, torch.float16),
    (2, 3, 17, 1, 16, torch.bfloat16),
]


@pytest.mark.parametrize("B,N,J,H,d,dtype", SKELETAL_CASES)
def test_skeletal_forward_backward(B, N, J, H, d, dtype):
    seed = J * 17 + N
    q, k, v = _fused_qkv(B, N, J, H, d, dtype, seed)
    o, lse = skel.skeletal_attention_forward(q, k, v, None, poison=True)
    assert o.is_contiguous() and o.shape == q.shape and o.dtype == dtype
    do = _grad_out(B, N, J, H, d, dtype, seed)
    o_ref, grads_ref = _oracle(reference.skeletal_attention, q, k, v, do)
    _assert_close("o", o, o_ref, dtype)
    assert torch.isfinite(lse).all()
    grads = skel.skeletal_attention_backward(do, q, k, v, o, lse, None, poison=True)
    for name, got, ref in zip(("dq", "dk", "dv"), grads, grads_ref):
        _assert_close(name, got, ref, dtype)


@pytest.mark.parametrize("op", ["temporal", "skeletal"])
def test_public_ops_autograd_through_fused_qkv(op, monkeypatch):
    """sald_fast.ops with backend='triton' (custom ops + registered autograd) vs the reference backend."""
    from sald_fast import ops

    monkeypatch.setenv("SALD_FAST_TRITON_POISON", "1")
    B, N, J, H, d = 2, 6, 7, 2, 16
    g = torch.Generator().manual_seed(11)
    base = torch.randn(B, N, J, 3, H, d, generator=g, dtype=torch.float64).to(DEVICE)
    lengths = torch.tensor([4, 0], device=DEVICE)
    grads, outs = {}, {}
    for backend, dtype in (("triton", torch.float32), ("reference", torch.float64)):
        qkv = base.to(dtype).requires_grad_()
        q, k, v = qkv.unbind(3)
        if op == "temporal":
            o = ops.temporal_attention(q, k, v, lengths, backend=backend)
        else:
            o = ops.skeletal_attention(q, k, v, scale=0.2, backend=backend)
        (o * torch.arange(d, device=DEVICE, dtype=dtype)).sum().backward()
        grads[backend], outs[backend] = qkv.grad, o.detach()
    _assert_close("o", outs["triton"], outs["reference"], torch.float32)
    _assert_close("dqkv", grads["triton"], grads["reference"], torch.float32)


def test_bad_inputs_raise_clear_errors():
    q, k, v = _fused_qkv(2, 4, 5, 2, 16, torch.float32, 0)
    with pytest.raises(ValueError, match="J=33"):
        z = torch.zeros(1, 1, 33, 1, 16, device=DEVICE)
        skel.skeletal_attention_forward(z, z, z, None)
    with pytest.raises(ValueError, match="head dim"):
        z = torch.zeros(1, 2, 3, 1, 256, device=DEVICE)
        temp.temporal_attention_forward(z, z, z, None, None)
    with pytest.raises(ValueError, match="shapes differ"):
        temp.temporal_attention_forward(q, k[:, :3], v, None, None)
    with pytest.raises(TypeError, match="k has dtype"):
        skel.skeletal_attention_forward(q, k.half(), v, None)
    with pytest.raises(TypeError, match="float64"):
        skel.skeletal_attention_forward(q.double(), k.double(), v.double(), None)
    with pytest.raises(ValueError, match="on meta"):
        temp.temporal_attention_forward(q, k, v.to("meta"), None, None)
    with pytest.raises(TypeError, match="lengths"):
        temp.temporal_attention_forward(q, k, v, torch.ones(2, device=DEVICE), None)
    with pytest.raises(ValueError, match="lengths must be"):
        temp.temporal_attention_forward(q, k, v, torch.ones(3, dtype=torch.long, device=DEVICE), None)
    o, lse = temp.temporal_attention_forward(q, k, v, None, None)
    with pytest.raises(ValueError, match="lse"):
        temp.temporal_attention_backward(o, q, k, v, o, lse[:, :1], None, None)
