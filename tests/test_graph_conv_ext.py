"""The C++/CUDA extension's skeletal graph convolution (backend ``cuda``) against the reference.

Runs on CPU tensors (the extension's CPU kernels; CUDA tensors too when a GPU is present). The
module is skipped only when the build is impossible (no C++ compiler or no ninja); any other
build failure is an error. The first run JIT-builds the extension (~10-20 s, cached after).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sald_fast import ops
from sald_fast.ops import reference
from sald_fast.skeleton import SIGNING_SKELETON, pooling_hierarchy

from _support import assert_one_graph, extension_or_skip, graph_grabbing_backend

ext = extension_or_skip()

REPO = Path(__file__).resolve().parents[1]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and ext.WITH_CUDA else [])
TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-4, 1e-5), torch.bfloat16: (2e-2, 2e-2),
       torch.float16: (2e-3, 2e-3)}


def _levels() -> list[tuple[str, tuple[torch.Tensor, torch.Tensor]]]:
    """(name, CSR) for the 44-joint skeleton, the pooled 20-joint one and the 5/7/9-atom ones."""
    out = [("J44", SIGNING_SKELETON.neighbourhood())]
    hier = pooling_hierarchy(7)
    out.append((f"J{hier.levels[1].num_joints}", hier.levels[1].neighbourhood()))
    for atoms in (5, 7, 9):
        level = pooling_hierarchy(atoms).levels[2]
        out.append((f"J{level.num_joints}", level.neighbourhood()))
    return out


LEVELS = _levels()


def _inputs(B, N, J, C_in, C_out, dtype=torch.float32, device="cpu", bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, N, J, C_in, generator=g)
    ws = torch.randn(C_out, C_in, generator=g) / C_in ** 0.5
    wn = torch.randn(C_out, C_in, generator=g) / C_in ** 0.5
    b = torch.randn(C_out, generator=g) if bias else None
    to = dict(dtype=dtype, device=device)
    return h.to(**to), ws.to(**to), wn.to(**to), None if b is None else b.to(**to)


def _dense_mean(indptr, indices, J, dtype=torch.float64):
    """Independent oracle for A: loops over the CSR in Python."""
    a = torch.zeros(J, J, dtype=dtype)
    ip, ix = indptr.tolist(), indices.tolist()
    for i in range(J):
        row = ix[ip[i]:ip[i + 1]]
        for j in row:
            a[i, j] = 1.0 / len(row)
    return a


def _oracle(h, indptr, indices, ws, wn, b):
    """fp64 graph convolution with a Python-built dense A (independent of both implementations)."""
    J = h.shape[2]
    a = _dense_mean(indptr.cpu(), indices.cpu(), J)
    hd = h.double().cpu()
    agg = torch.einsum("ij,bnjc->bnic", a, hd)
    out = hd @ ws.double().cpu().t() + agg @ wn.double().cpu().t()
    return out if b is None else out + b.double().cpu()


# ------------------------------------------------------------------------------------- forward

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("level", LEVELS, ids=[name for name, _ in LEVELS])
@pytest.mark.parametrize("B,N,C_in,C_out,bias", [(1, 1, 8, 8, True), (3, 5, 16, 24, False), (2, 7, 64, 64, True),
                                                 (2, 3, 3, 5, True)])
def test_forward_matches_reference_fp32(device, level, B, N, C_in, C_out, bias):
    _, (indptr, indices) = level
    J = indptr.numel() - 1
    h, ws, wn, b = _inputs(B, N, J, C_in, C_out, bias=bias, device=device)
    indptr, indices = indptr.to(device), indices.to(device)
    out = ops.skeletal_graph_conv(h, indptr, indices, ws, wn, b, backend="cuda")
    ref = reference.skeletal_graph_conv(h, indptr, indices, ws, wn, b)
    assert out.shape == (B, N, J, C_out) and out.dtype == h.dtype and out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.double().cpu(), _oracle(h, indptr, indices, ws, wn, b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_forward_dtypes(device, dtype):
    indptr, indices = (t.to(device) for t in SIGNING_SKELETON.neighbourhood())
    h, ws, wn, b = _inputs(2, 6, 44, 32, 48, dtype=dtype, device=device)
    out = ops.skeletal_graph_conv(h, indptr, indices, ws, wn, b, backend="cuda")
    ref = reference.skeletal_graph_conv(h, indptr, indices, ws, wn, b)
    assert out.dtype == dtype
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["permuted", "sliced_channels", "channel_strided", "expanded_batch"])
def test_forward_non_contiguous(device, layout):
    indptr, indices = (t.to(device) for t in SIGNING_SKELETON.neighbourhood())
    g = torch.Generator().manual_seed(1)
    if layout == "permuted":  # (B, J, N, C) storage viewed as (B, N, J, C)
        h = torch.randn(2, 44, 5, 16, generator=g).to(device).transpose(1, 2)
    elif layout == "sliced_channels":  # a channel slice of a wider tensor: row stride 40
        h = torch.randn(2, 5, 44, 40, generator=g).to(device)[..., 8:24]
    elif layout == "channel_strided":  # channel stride 2
        h = torch.randn(2, 5, 44, 32, generator=g).to(device)[..., ::2]
    else:  # stride 0 over the batch
        h = torch.randn(1, 5, 44, 16, generator=g).to(device).expand(3, 5, 44, 16)
    assert not h.is_contiguous()
    _, ws, wn, b = _inputs(1, 1, 44, 16, 12, device=device)
    ws_t = torch.randn(16, 12, generator=g).to(device).t()  # non-contiguous weight too
    out = ops.skeletal_graph_conv(h, indptr, indices, ws_t, wn, b, backend="cuda")
    ref = reference.skeletal_graph_conv(h.contiguous(), indptr, indices, ws_t.contiguous(), wn, b)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_int32_csr_and_empty_shapes():
    ip, ix = SIGNING_SKELETON.neighbourhood()
    h, ws, wn, b = _inputs(2, 3, 44, 8, 8)
    out = ops.skeletal_graph_conv(h, ip.int(), ix.int(), ws, wn, b, backend="cuda")
    torch.testing.assert_close(out, reference.skeletal_graph_conv(h, ip, ix, ws, wn, b), rtol=1e-4, atol=1e-5)
    empty = torch.zeros(0, 3, 44, 8)
    assert ops.skeletal_graph_conv(empty, ip, ix, ws, wn, b, backend="cuda").shape == (0, 3, 44, 8)
    no_channels = torch.zeros(2, 3, 44, 0)
    out = ops.skeletal_graph_conv(no_channels, ip, ix, ws[:, :0], wn[:, :0], b, backend="cuda")
    torch.testing.assert_close(out, b.expand(2, 3, 44, 8))


def test_many_frames_cross_tile_boundaries():
    """More frames than one CPU tile (whole frames per tile) and a frame count that is not a multiple."""
    indptr, indices = SIGNING_SKELETON.neighbourhood()
    h, ws, wn, b = _inputs(3, 37, 44, 24, 40)
    out = ops.skeletal_graph_conv(h, indptr, indices, ws, wn, b, backend="cuda")
    torch.testing.assert_close(out, reference.skeletal_graph_conv(h, indptr, indices, ws, wn, b), rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_portable_gemm_fallback(monkeypatch, dtype):
    """SALD_FAST_EXT_NO_BLAS=1: the CPU tiles multiply with at::mm_out instead of sgemm_/dgemm_."""
    monkeypatch.setenv("SALD_FAST_EXT_NO_BLAS", "1")
    indptr, indices = SIGNING_SKELETON.neighbourhood()
    h, ws, wn, b = _inputs(2, 13, 44, 12, 20, dtype=dtype, seed=2)
    grad_out = torch.randn(2, 13, 44, 20, generator=torch.Generator().manual_seed(2)).to(dtype)
    got = _grads(ext.skeletal_graph_conv, h, ws, wn, b, grad_out, indptr, indices)
    want = _grads(reference.skeletal_graph_conv, h, ws, wn, b, grad_out, indptr, indices)
    rtol, atol = TOL[dtype]
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=max(rtol, 1e-4), atol=max(atol, 1e-4) * y.abs().max().item())
    torch.testing.assert_close(ext.skeletal_graph_conv(h, indptr, indices, ws, wn, b),
                               reference.skeletal_graph_conv(h, indptr, indices, ws, wn, b), rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------ backward

def _grads(fn, h, ws, wn, b, grad_out, indptr, indices):
    leaves = [t.detach().clone().requires_grad_() for t in (h, ws, wn) + ((b,) if b is not None else ())]
    out = fn(leaves[0], indptr, indices, leaves[1], leaves[2], leaves[3] if b is not None else None)
    return torch.autograd.grad(out, leaves, grad_out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("level", LEVELS[:3], ids=[name for name, _ in LEVELS[:3]])
@pytest.mark.parametrize("B,N,C_in,C_out,bias", [(2, 3, 16, 8, True), (1, 9, 64, 64, False), (3, 2, 5, 7, True)])
def test_gradients_match_reference(device, level, B, N, C_in, C_out, bias):
    _, (indptr, indices) = level
    indptr, indices = indptr.to(device), indices.to(device)
    J = indptr.numel() - 1
    h, ws, wn, b = _inputs(B, N, J, C_in, C_out, bias=bias, device=device, seed=3)
    grad_out = torch.randn(B, N, J, C_out, generator=torch.Generator().manual_seed(4)).to(device)
    ext_fn = lambda *a: ops.skeletal_graph_conv(*a, backend="cuda")  # noqa: E731
    got = _grads(ext_fn, h, ws, wn, b, grad_out, indptr, indices)
    want = _grads(reference.skeletal_graph_conv, h, ws, wn, b, grad_out, indptr, indices)
    for name, x, y in zip(("dh", "dw_self", "dw_neigh", "dbias"), got, want):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gradients_low_precision(dtype):
    indptr, indices = SIGNING_SKELETON.neighbourhood()
    h, ws, wn, b = _inputs(2, 4, 44, 16, 16, dtype=dtype, seed=5)
    grad_out = torch.randn(2, 4, 44, 16, generator=torch.Generator().manual_seed(6)).to(dtype)
    ext_fn = lambda *a: ops.skeletal_graph_conv(*a, backend="cuda")  # noqa: E731
    got = _grads(ext_fn, h, ws, wn, b, grad_out, indptr, indices)
    want = _grads(reference.skeletal_graph_conv, h.double(), ws.double(), wn.double(), b.double(),
                  grad_out.double(), indptr, indices)
    for x, y in zip(got, want):
        assert x.dtype == dtype
        torch.testing.assert_close(x.double(), y, rtol=3e-2, atol=3e-2 * y.abs().max().item())


def test_gradcheck_fp64():
    for _, (indptr, indices) in (LEVELS[0], LEVELS[2]):
        J = indptr.numel() - 1
        h, ws, wn, b = (t.requires_grad_() for t in _inputs(2, 2, J, 3, 4, dtype=torch.float64, seed=7))
        fn = lambda h, ws, wn, b: ext.skeletal_graph_conv(h, indptr, indices, ws, wn, b)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (h, ws, wn, b))
        # a non-contiguous h: the op must read through its strides in the backward too
        hp = torch.randn(2, J, 2, 3, dtype=torch.float64).transpose(1, 2).requires_grad_()
        assert torch.autograd.gradcheck(fn, (hp, ws, wn, b))


def test_partial_gradients_and_expanded_grad_out():
    """Only some inputs need gradients; grad_out with zero strides (from .sum())."""
    indptr, indices = SIGNING_SKELETON.neighbourhood()
    h, ws, wn, b = _inputs(2, 3, 44, 8, 6, seed=8)
    for wanted in ((0,), (1, 2), (3,), (0, 3)):
        leaves = [t.clone().requires_grad_(i in wanted) for i, t in enumerate((h, ws, wn, b))]
        ext.skeletal_graph_conv(leaves[0], indptr, indices, *leaves[1:]).sum().backward()
        ref_leaves = [t.clone().requires_grad_(i in wanted) for i, t in enumerate((h, ws, wn, b))]
        reference.skeletal_graph_conv(ref_leaves[0], indptr, indices, *ref_leaves[1:]).sum().backward()
        for i, (x, y) in enumerate(zip(leaves, ref_leaves)):
            if i in wanted:
                torch.testing.assert_close(x.grad, y.grad, rtol=1e-4, atol=1e-4)
            else:
                assert x.grad is None


def test_backward_op_directly_and_unneeded_outputs():
    indptr, indices = SIGNING_SKELETON.neighbourhood()
    h, ws, wn, _ = _inputs(1, 2, 44, 4, 5)
    go = torch.randn(1, 2, 44, 5)
    dh, dws, dwn, db = torch.ops.sald_fast_ext.graph_conv_backward(go, h, indptr, indices, ws, wn, False, True, False)
    assert dh.shape == h.shape and dws.numel() == 0 and dwn.numel() == 0 and db.numel() == 0
    a = _dense_mean(indptr, indices, 44, torch.float32)
    want_dh = go @ ws + torch.einsum("ij,bnic->bnjc", a, go @ wn)  # A^T (dout W_neigh)
    torch.testing.assert_close(dh, want_dh, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------- the aggregation op

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("level", LEVELS[:3], ids=[name for name, _ in LEVELS[:3]])
def test_csr_mean_aggregate(device, transpose, level):
    _, (indptr, indices) = level
    J = indptr.numel() - 1
    x = torch.randn(2, 3, J, 24, generator=torch.Generator().manual_seed(9))
    a = _dense_mean(indptr, indices, J, torch.float32)
    want = torch.einsum("ji,bnjc->bnic" if transpose else "ij,bnjc->bnic", a, x)
    got = ext.csr_mean_aggregate(x.to(device), indptr.to(device), indices.to(device), transpose)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-6)


def test_csr_mean_aggregate_gradcheck():
    indptr, indices = pooling_hierarchy(7).levels[1].neighbourhood()
    x = torch.randn(2, 2, indptr.numel() - 1, 3, dtype=torch.float64, requires_grad=True)
    for transpose in (False, True):
        assert torch.autograd.gradcheck(lambda t: ext.csr_mean_aggregate(t, indptr, indices, transpose), (x,))


def test_non_symmetric_csr():
    """A directed neighbourhood (A^T has a different pattern than A) still matches the oracle, grads too."""
    J = 6
    rows = [[0, 3], [1], [0, 1, 2, 5], [3, 4], [2, 4], [0, 5]]
    indptr = torch.tensor([0] + torch.tensor([len(r) for r in rows]).cumsum(0).tolist())
    indices = torch.tensor([j for r in rows for j in r])
    h, ws, wn, b = (t.requires_grad_() for t in _inputs(2, 3, J, 4, 3, dtype=torch.float64, seed=10))
    torch.testing.assert_close(ext.skeletal_graph_conv(h, indptr, indices, ws, wn, b),
                               _oracle(h.detach(), indptr, indices, ws.detach(), wn.detach(), b.detach()))
    assert torch.autograd.gradcheck(lambda *a: ext.skeletal_graph_conv(a[0], indptr, indices, *a[1:]), (h, ws, wn, b))


# ------------------------------------------------------------------------------- torch.compile

def _block(x, indptr, indices, ws, wn, b, conv):
    y = conv(torch.nn.functional.gelu(x), indptr, indices, ws, wn, b)
    return (x + y).square().mean()


def test_compile_fullgraph_forward_backward():
    """torch.compile(fullgraph=True) through the op: forward and backward match the reference."""
    torch._dynamo.reset()
    indptr, indices = SIGNING_SKELETON.neighbourhood()
    h, ws, wn, b = _inputs(2, 4, 44, 16, 16, seed=11)
    compiled = torch.compile(lambda *a: _block(a[0], indptr, indices, *a[1:], conv=ext.skeletal_graph_conv),
                             fullgraph=True, backend="aot_eager")
    leaves = [t.clone().requires_grad_() for t in (h, ws, wn, b)]
    loss = compiled(*leaves)
    loss.backward()
    ref_leaves = [t.clone().requires_grad_() for t in (h, ws, wn, b)]
    ref_loss = _block(ref_leaves[0], indptr, indices, *ref_leaves[1:], conv=reference.skeletal_graph_conv)
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for got, want in zip(leaves, ref_leaves):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-5)


def test_cuda_kernels_are_built_where_there_is_a_gpu():
    """On a GPU machine the CUDA cases above exist only when the extension has its CUDA kernels:
    say so (a skip with the reason), instead of passing without ever running them."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU: the CPU cases are the ones to run")
    if not ext.WITH_CUDA:
        pytest.skip("the extension was built without its CUDA kernels (no nvcc found): the CUDA graph-convolution "
                    "cases did not run, and `auto` uses the reference on cuda")
    assert "cuda" in DEVICES


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU Inductor codegen: the CPU suite runs it")
def test_compile_inductor_forward_backward():
    """Inductor (C++ codegen on the CPU) around the op: the op stays an extern kernel."""
    torch._dynamo.reset()
    indptr, indices = SIGNING_SKELETON.neighbourhood()
    h, ws, wn, b = _inputs(2, 3, 44, 8, 8, seed=13)
    compiled = torch.compile(lambda *a: _block(a[0], indptr, indices, *a[1:], conv=ext.skeletal_graph_conv),
                             fullgraph=True)
    leaves = [t.clone().requires_grad_() for t in (h, ws, wn, b)]
    compiled(*leaves).backward()
    ref_leaves = [t.clone().requires_grad_() for t in (h, ws, wn, b)]
    _block(ref_leaves[0], indptr, indices, *ref_leaves[1:], conv=reference.skeletal_graph_conv).backward()
    for got, want in zip(leaves, ref_leaves):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-5)


def test_compiled_graph_calls_the_ops():
    """The traced forward and backward graphs contain the extension ops (no decomposition)."""
    torch._dynamo.reset()
    indptr, indices = SIGNING_SKELETON.neighbourhood()
    backend, graphs = graph_grabbing_backend()

    leaves = [t.requires_grad_() for t in _inputs(1, 2, 44, 8, 8)]
    fn = torch.compile(lambda *a: _block(a[0], indptr, indices, *a[1:], conv=ext.skeletal_graph_conv),
                       fullgraph=True, backend=backend)
    fn(*leaves).backward()
    assert len(graphs) == 2
    assert "sald_fast_ext.graph_conv.default" in graphs[0]
    assert "sald_fast_ext.graph_conv_backward.default" in graphs[1]


def test_public_op_has_no_graph_breaks():
    torch._dynamo.reset()
    indptr, indices = SIGNING_SKELETON.neighbourhood()
    args = _inputs(2, 3, 44, 8, 8, seed=12)

    def block(x, ws, wn, b):
        conv = lambda *a: ops.skeletal_graph_conv(*a, backend="cuda")  # noqa: E731
        return _block(x, indptr, indices, ws, wn, b, conv=conv)

    assert_one_graph(block, *args)


def test_fake_tensor_shapes_dynamic():
    """The fake implementations handle symbolic batch/frame sizes (dynamic=True)."""
    torch._dynamo.reset()
    indptr, indices = SIGNING_SKELETON.neighbourhood()
    _, ws, wn, b = _inputs(1, 1, 44, 8, 12)
    fn = torch.compile(lambda x: ext.skeletal_graph_conv(x, indptr, indices, ws, wn, b), fullgraph=True,
                       dynamic=True, backend="aot_eager")
    for B, N in ((1, 3), (2, 5), (3, 2)):
        x = torch.randn(B, N, 44, 8)
        torch.testing.assert_close(fn(x), reference.skeletal_graph_conv(x, indptr, indices, ws, wn, b), rtol=1e-4,
                                   atol=1e-5)


def test_opcheck():
    """torch.library.opcheck: schema, fake tensor, autograd registration and AOT dispatch agree."""
    indptr, indices = SIGNING_SKELETON.neighbourhood()
    h, ws, wn, b = (t.requires_grad_() for t in _inputs(1, 2, 44, 4, 3))
    torch.library.opcheck(torch.ops.sald_fast_ext.graph_conv.default, (h, indptr, indices, ws, wn, b))
    torch.library.opcheck(torch.ops.sald_fast_ext.graph_conv.default, (h, indptr, indices, ws, wn, None))
    x = torch.randn(1, 2, 44, 4, requires_grad=True)
    torch.library.opcheck(torch.ops.sald_fast_ext.csr_mean_aggregate.default, (x, indptr, indices, True))


# -------------------------------------------------------------------------------- bad input

def _bad_csr_cases():
    ip, ix = SIGNING_SKELETON.neighbourhood()
    out_of_range = ix.clone()
    out_of_range[5] = 44
    negative = ix.clone()
    negative[0] = -1
    unsorted = ix.clone()
    unsorted[ip[3]], unsorted[ip[3] + 1] = ix[ip[3] + 1], ix[ip[3]]
    bad_end = ip.clone()
    bad_end[-1] -= 1
    empty_row = ip.clone()
    empty_row[1] = empty_row[0]
    return [("out_of_range", ip, out_of_range, r"indices must lie in \[0, J=44\)"),
            ("negative", ip, negative, r"indices must lie in \[0, J=44\)"),
            ("unsorted", ip, unsorted, r"CSR row 3 is not strictly sorted"),
            ("bad_end", bad_end, ix, r"indptr must start at 0 and end at nnz"),
            ("empty_row", empty_row, ix, r"row 0 is empty")]


@pytest.mark.parametrize("case", _bad_csr_cases(), ids=lambda c: c[0])
def test_bad_csr_raises_in_the_extension(case):
    _, ip, ix, pattern = case
    h, ws, wn, b = _inputs(1, 2, 44, 4, 4)
    # the op itself (no public wrapper in front): a clear ValueError before any kernel runs
    with pytest.raises(ValueError, match=pattern):
        torch.ops.sald_fast_ext.graph_conv(h, ip, ix, ws, wn, b)
    with pytest.raises(ValueError, match=pattern):
        torch.ops.sald_fast_ext.graph_conv_backward(torch.ones(1, 2, 44, 4), h, ip, ix, ws, wn, True, True, True)
    with pytest.raises(ValueError, match=pattern):
        torch.ops.sald_fast_ext.csr_mean_aggregate(h, ip, ix, False)
    # and through the public wrapper
    with pytest.raises(ValueError):
        ops.skeletal_graph_conv(h, ip, ix, ws, wn, b, backend="cuda")


def test_bad_csr_raises_inside_compiled_graph():
    """The public wrapper skips its CSR check while compiling; the op itself still checks at run time."""
    torch._dynamo.reset()
    ip, ix = SIGNING_SKELETON.neighbourhood()
    ix = ix.clone()
    ix[7] = 99
    h, ws, wn, b = _inputs(1, 2, 44, 4, 4)
    fn = torch.compile(lambda x: ext.skeletal_graph_conv(x, ip, ix, ws, wn, b), fullgraph=True, backend="aot_eager")
    with pytest.raises(ValueError, match="indices must lie in"):
        fn(h)


def test_bad_shapes_and_dtypes_raise():
    ip, ix = SIGNING_SKELETON.neighbourhood()
    h, ws, wn, b = _inputs(1, 2, 44, 4, 6)
    op = torch.ops.sald_fast_ext.graph_conv
    cases = [
        ((h[0], ip, ix, ws, wn, b), ValueError, r"h must be \(B, N, J, C_in\)"),
        ((h[:, :, :40], ip, ix, ws, wn, b), ValueError, r"indptr has 45 entries; the input has J=40"),
        ((h, ip, ix, ws[:, :3], wn, b), ValueError, r"w_self must be \(C_out, C_in=4\)"),
        ((h, ip, ix, ws, wn[:5], b), ValueError, r"w_neigh has shape \[5, 4\] but w_self has \[6, 4\]"),
        ((h, ip, ix, ws, wn, b[:5]), ValueError, r"bias must be \(C_out=6,\)"),
        ((h.double(), ip, ix, ws, wn, b), TypeError, r"w_self has dtype Float but h has Double"),
        ((h, ip, ix, ws, wn, b.half()), TypeError, r"bias has dtype Half but h has Float"),
        ((h.int(), ip, ix, ws, wn, b), TypeError, r"h has dtype Int; supported"),
        ((h, ip.float(), ix, ws, wn, b), TypeError, r"indptr must be int32 or int64"),
        ((h, ip, ix.view(-1, 1), ws, wn, b), ValueError, r"indices must be 1-D"),
    ]
    for args, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            op(*args)
    with pytest.raises(ValueError, match=r"grad_out must be \(B, N, J, C_out\)"):
        torch.ops.sald_fast_ext.graph_conv_backward(torch.ones(1, 2, 44, 5), h, ip, ix, ws, wn, True, True, True)
    with pytest.raises(TypeError, match=r"grad_out has dtype Double but h has Float"):
        torch.ops.sald_fast_ext.graph_conv_backward(torch.ones(1, 2, 44, 6).double(), h, ip, ix, ws, wn, True, True,
                                                    True)


@pytest.mark.skipif(not torch.cuda.is_available() or not ext.WITH_CUDA, reason="needs a GPU and the CUDA kernels")
def test_device_mismatch_raises():
    ip, ix = SIGNING_SKELETON.neighbourhood()
    h, ws, wn, b = _inputs(1, 2, 44, 4, 6, device="cuda")
    with pytest.raises(ValueError, match="indptr is on cpu"):
        torch.ops.sald_fast_ext.graph_conv(h, ip, ix, ws, wn, b)
    with pytest.raises(ValueError, match="w_self is on cpu"):
        torch.ops.sald_fast_ext.graph_conv(h, ip.cuda(), ix.cuda(), ws.cpu(), wn, b)


# --------------------------------------------------------------------------- dispatch and build

def test_dispatcher_sees_the_backend():
    assert "cuda" in ops.available_backends("skeletal_graph_conv")
    from sald_fast.ops.dispatch import resolve

    assert resolve("skeletal_graph_conv", "auto", torch.device("cpu")) is ext.skeletal_graph_conv
    assert resolve("skeletal_graph_conv", "cuda", torch.device("cpu")) is ext.skeletal_graph_conv


def test_build_is_cached_per_version():
    assert ext.BUILD_DIR.name.startswith("ext-") and ext.BUILD_DIR.is_dir()
    assert any(ext.BUILD_DIR.glob("*.so")), "no shared library in the build directory"
    assert ext.BUILD_DIR.name == f"ext-{ext._version_hash(ext.WITH_CUDA)}"


def test_missing_compiler_gives_import_error_and_auto_falls_back(tmp_path):
    """A fresh process with no compiler: ImportError naming the compiler; auto uses the reference."""
    script = textwrap.dedent("""
        import logging, torch
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        from sald_fast import ops
        from sald_fast.skeleton import SIGNING_SKELETON
        ip, ix = SIGNING_SKELETON.neighbourhood()
        h, w = torch.randn(1, 2, 44, 3), torch.randn(3, 3)
        for _ in range(3):
            out = ops.skeletal_graph_conv(h, ip, ix, w, w, backend="auto")
        print("AUTO-OK", tuple(out.shape), ops.available_backends("skeletal_graph_conv"))
        try:
            ops.skeletal_graph_conv(h, ip, ix, w, w, backend="cuda")
        except RuntimeError as exc:
            print("EXPLICIT:", str(exc).splitlines()[0])
        try:
            import sald_fast.ops.extension_backend
        except ImportError as exc:
            print("IMPORT-ERROR:", str(exc).splitlines()[0])
    """)
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), SALD_FAST_EXT_DIR=str(tmp_path / "cache"),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    auto_line = next(line for line in proc.stdout.splitlines() if line.startswith("AUTO-OK"))
    assert auto_line.startswith("AUTO-OK (1, 2, 44, 3)") and "'cuda'" not in auto_line
    assert "EXPLICIT: backend 'cuda' is not available: ImportError: sald_fast extension: no C++ compiler" in proc.stdout
    assert "IMPORT-ERROR: sald_fast extension: no C++ compiler found" in proc.stdout
    # the dispatcher imports the backend once: one notice for the three auto calls and the explicit one
    notices = [line for line in proc.stderr.splitlines() if "extension unavailable" in line]
    assert len(notices) == 2, proc.stderr  # + one for the direct re-import at the end
    assert "no C++ compiler found" in notices[0]


# --------------------------------------------------------------------------------------- VAE

def test_vae_with_extension_backend_matches_reference(monkeypatch):
    """SkeletonVAE(backend="cuda") on CPU tensors equals the reference VAE with the same weights."""
    from sald_fast import vae as vae_module
    from sald_fast.config import VAEConfig

    torch.manual_seed(0)
    config = VAEConfig(channels=(16, 24, 32), blocks_per_level=1, latent_dim=8)
    ref_vae = vae_module.SkeletonVAE(config, backend="reference")
    ext_vae = vae_module.SkeletonVAE(config, backend="cuda")
    ext_vae.load_state_dict(ref_vae.state_dict())
    x = torch.randn(2, 8, 44, 9, generator=torch.Generator().manual_seed(1))
    results = []
    for vae in (ref_vae, ext_vae):
        vae.eval()
        out = vae(x)
        loss = vae.loss(x, out)["total"]
        grads = torch.autograd.grad(loss, [p for p in vae.parameters()])
        results.append((out, loss, dict(zip([n for n, _ in vae.named_parameters()], grads))))
    (ref_out, ref_loss, ref_grads), (ext_out, ext_loss, ext_grads) = results
    for key in ("recon", "mu", "logvar"):
        torch.testing.assert_close(ext_out[key], ref_out[key], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ext_loss, ref_loss, rtol=1e-5, atol=1e-6)
    conv_params = [n for n in ref_grads if n.endswith(("w_self", "w_neigh"))]
    assert conv_params, "the VAE has no graph convolutions"
    for name, grad in ref_grads.items():
        torch.testing.assert_close(ext_grads[name], grad, rtol=1e-3, atol=1e-5, msg=lambda m: f"{name}: {m}")
    # the extension really ran (once per STConv), and the backend attribute switches it off
    from sald_fast.ops import dispatch

    calls = []

    def counting(*args):
        calls.append(args[0].shape)
        return ext.skeletal_graph_conv(*args)

    monkeypatch.setitem(dispatch._IMPLS["skeletal_graph_conv"], "cuda", counting)
    ext_vae(x)
    assert len(calls) == len(conv_params) // 2
    ext_vae.backend = "reference"
    torch.testing.assert_close(ext_vae(x)["recon"], ref_out["recon"], rtol=0, atol=0)
