"""The reference ops (``sald_fast.ops.reference``, the specification) against naive oracles, and the
validation of the public wrappers in ``sald_fast.ops``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sald_fast import ops
from sald_fast.ops import reference
from sald_fast.skeleton import SIGNING_SKELETON


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- oracles

def oracle_film_ln(z, h, gamma, beta, weight, bias, eps=1e-5):
    """Loop over (b, n, j): z' = z + gamma_b * h + beta_b; y = F.layer_norm(z')."""
    B, N, J, D = z.shape
    z_new = torch.empty(B, N, J, D, dtype=torch.float64)
    y = torch.empty_like(z_new)
    w = None if weight is None else weight.double()
    b_ = None if bias is None else bias.double()
    for b in range(B):
        for n in range(N):
            for j in range(J):
                row = z[b, n, j].double() + gamma[b].double() * h[b, n, j].double() + beta[b].double()
                z_new[b, n, j] = row
                y[b, n, j] = F.layer_norm(row, (D,), w, b_, eps)
    return z_new, y


def oracle_temporal(q, k, v, lengths):
    """Loop over (b, j, head): SDPA on explicit (N, d) slices of the first lengths[b] keys."""
    B, N, J, H, d = q.shape
    o = torch.zeros(B, N, J, H, d, dtype=torch.float64)
    for b in range(B):
        n_valid = N if lengths is None else int(lengths[b])
        if n_valid == 0:
            continue
        for j in range(J):
            for hh in range(H):
                qs = q[b, :, j, hh].double().contiguous()
                ks = k[b, :n_valid, j, hh].double().contiguous()
                vs = v[b, :n_valid, j, hh].double().contiguous()
                o[b, :, j, hh] = F.scaled_dot_product_attention(qs[None], ks[None], vs[None])[0]
    return o


def oracle_skeletal(q, k, v):
    """Loop over (b, n, head): softmax(q k^T / sqrt(d)) v written out over the joints."""
    B, N, J, H, d = q.shape
    o = torch.zeros(B, N, J, H, d, dtype=torch.float64)
    for b in range(B):
        for n in range(N):
            for hh in range(H):
                qs, ks, vs = (x[b, n, :, hh].double() for x in (q, k, v))
                p = torch.softmax(qs @ ks.T / d ** 0.5, dim=-1)
                o[b, n, :, hh] = p @ vs
    return o


def oracle_graph_conv(h, indptr, indices, w_self, w_neigh, bias):
    """Explicit neighbour loops from the CSR: out_i = W_s h_i + W_n mean_{j in row i} h_j + b."""
    B, N, J, _ = h.shape
    hd = h.double()
    out = torch.empty(B, N, J, w_self.shape[0], dtype=torch.float64)
    for i in range(J):
        row = indices[int(indptr[i]):int(indptr[i + 1])].tolist()
        agg = sum(hd[:, :, j] for j in row) / len(row)
        out[:, :, i] = hd[:, :, i] @ w_self.double().T + agg @ w_neigh.double().T
        if bias is not None:
            out[:, :, i] += bias.double()
    return out


# ----------------------------------------------------------------------------- FiLM + LayerNorm

@pytest.mark.parametrize("affine", [True, False])
def test_film_layernorm_matches_oracle(affine):
    g = gen(1)
    B, N, J, D = 2, 3, 4, 16
    z, h = torch.randn(B, N, J, D, generator=g), torch.randn(B, N, J, D, generator=g)
    gamma, beta = 1 + 0.3 * torch.randn(B, D, generator=g), torch.randn(B, D, generator=g)
    w = 1 + 0.5 * torch.randn(D, generator=g) if affine else None
    b = torch.randn(D, generator=g) if affine else None
    z_new, y = ops.film_residual_layernorm(z, h, gamma, beta, w, b, backend="reference")
    oz, oy = oracle_film_ln(z, h, gamma, beta, w, b)
    assert z_new.dtype == torch.float32 and y.dtype == torch.float32
    torch.testing.assert_close(z_new.double(), oz, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y.double(), oy, rtol=1e-4, atol=1e-4)


def test_film_layernorm_non_contiguous_and_grads():
    g = gen(2)
    B, N, J, D = 2, 3, 5, 8
    z = torch.randn(B, J, N, D, generator=g, dtype=torch.float64).transpose(1, 2)  # non-contiguous
    h = torch.randn(B, N, J, 2 * D, generator=g, dtype=torch.float64)[..., ::2]   # strided last axis
    gamma = torch.randn(D, B, generator=g, dtype=torch.float64).T
    beta = torch.randn(B, D, generator=g, dtype=torch.float64)
    w, b = torch.randn(D, generator=g, dtype=torch.float64), torch.randn(D, generator=g, dtype=torch.float64)
    assert not (z.is_contiguous() or h.is_contiguous() or gamma.is_contiguous())
    leaves = [t.detach().clone().requires_grad_() for t in (z, h, gamma, beta, w, b)]
    z_new, y = ops.film_residual_layernorm(*leaves)
    oz, oy = oracle_film_ln(z, h, gamma, beta, w, b)
    torch.testing.assert_close(z_new, oz, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y, oy, rtol=1e-10, atol=1e-10)
    # gradients against autograd through an unfused formula
    gz, gy = torch.randn_like(oz), torch.randn_like(oy)
    grads = torch.autograd.grad((z_new * gz).sum() + (y * gy).sum(), leaves)
    ref_leaves = [t.detach().clone().requires_grad_() for t in (z, h, gamma, beta, w, b)]
    rz, rh, rg, rb, rw, rbias = ref_leaves
    rz_new = rz + rg[:, None, None] * rh + rb[:, None, None]
    ry = F.layer_norm(rz_new, (D,), rw, rbias)
    ref_grads = torch.autograd.grad((rz_new * gz).sum() + (ry * gy).sum(), ref_leaves)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_film_layernorm_low_precision(dtype):
    g = gen(3)
    B, N, J, D = 2, 2, 3, 32
    z, h = torch.randn(B, N, J, D, generator=g), torch.randn(B, N, J, D, generator=g)
    gamma, beta = torch.randn(B, D, generator=g), torch.randn(B, D, generator=g)
    z_new, y = ops.film_residual_layernorm(*(t.to(dtype) for t in (z, h, gamma, beta)))
    assert z_new.dtype == dtype and y.dtype == dtype
    oz, oy = oracle_film_ln(*(t.to(dtype) for t in (z, h, gamma, beta)), None, None)
    torch.testing.assert_close(z_new.double(), oz, rtol=2e-2, atol=2e-2)
    # y is the LayerNorm of the *rounded* z' (as a fused kernel stores it)
    torch.testing.assert_close(y.double(), F.layer_norm(z_new.double(), (D,)), rtol=2e-2, atol=2e-2)


# ----------------------------------------------------------------------------- attention

def fused_qkv(B, N, J, H, d, seed, dtype=torch.float32):
    """q, k, v as strided (B, N, J, H, d) views of one (B, N, J, 3*H*d) projection, as in the model."""
    qkv = torch.randn(B, N, J, 3 * H * d, generator=gen(seed), dtype=dtype).view(B, N, J, 3, H, d)
    return qkv.unbind(dim=3)


def test_temporal_attention_matches_oracle_with_lengths():
    B, N, J, H, d = 4, 6, 3, 2, 4
    q, k, v = fused_qkv(B, N, J, H, d, seed=4)
    assert not q.is_contiguous()
    lengths = torch.tensor([6, 3, 0, 1])
    o = ops.temporal_attention(q, k, v, lengths, backend="reference")
    assert o.shape == (B, N, J, H, d) and o.is_contiguous() and o.dtype == torch.float32
    torch.testing.assert_close(o.double(), oracle_temporal(q, k, v, lengths), rtol=1e-5, atol=1e-6)
    assert torch.equal(o[2], torch.zeros_like(o[2]))  # length 0 -> zeros, not NaN
    # no lengths: every frame attends to every frame
    o_all = ops.temporal_attention(q, k, v)
    torch.testing.assert_close(o_all.double(), oracle_temporal(q, k, v, None), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(o_all, ops.temporal_attention(q, k, v, torch.full((B,), N)), rtol=0, atol=0)


def test_temporal_attention_padded_keys_do_not_matter_and_grads():
    B, N, J, H, d = 2, 5, 2, 2, 3
    q, k, v = (t.double() for t in fused_qkv(B, N, J, H, d, seed=5))
    lengths = torch.tensor([2, 5], dtype=torch.int32)
    k2, v2 = k.clone(), v.clone()
    k2[0, 2:] = 1e3
    v2[0, 2:] = -1e3
    torch.testing.assert_close(ops.temporal_attention(q, k, v, lengths), ops.temporal_attention(q, k2, v2, lengths),
                               rtol=0, atol=0)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    o = ops.temporal_attention(*leaves, lengths)
    go = torch.randn(o.shape, generator=gen(6), dtype=torch.float64)
    grads = torch.autograd.grad((o * go).sum(), leaves)
    ref = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    oo = oracle_temporal(*ref, lengths)
    ref_grads = torch.autograd.grad((oo * go).sum(), ref)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert torch.equal(grads[1][0, 2:], torch.zeros_like(grads[1][0, 2:]))  # padded keys get no gradient


def test_temporal_attention_custom_scale_and_permuted_layout():
    B, N, J, H, d = 2, 4, 3, 2, 4
    q, k, v = (torch.randn(B, J, H, N, d, generator=gen(s)).permute(0, 3, 1, 2, 4) for s in (7, 8, 9))
    o = ops.temporal_attention(q, k, v, scale=0.3)
    want = oracle_temporal(q * (0.3 * d ** 0.5), k, v, None)  # scale s == default scale on q * s * sqrt(d)
    torch.testing.assert_close(o.double(), want, rtol=1e-5, atol=1e-6)


def test_skeletal_attention_matches_oracle():
    B, N, J, H, d = 2, 3, 7, 2, 4
    q, k, v = fused_qkv(B, N, J, H, d, seed=10)
    o = ops.skeletal_attention(q, k, v, backend="reference")
    assert o.shape == (B, N, J, H, d) and o.is_contiguous()
    torch.testing.assert_close(o.double(), oracle_skeletal(q, k, v), rtol=1e-5, atol=1e-6)
    # frames are independent: changing frame 0 changes nothing at frame 1
    q2 = q.clone()
    q2[:, 0] += 1.0
    o2 = ops.skeletal_attention(q2, k, v)
    assert torch.equal(o2[:, 1:], o[:, 1:]) and not torch.allclose(o2[:, 0], o[:, 0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_attention_low_precision(dtype):
    q, k, v = fused_qkv(2, 4, 3, 2, 8, seed=11)
    lengths = torch.tensor([4, 2])
    lo = ops.temporal_attention(q.to(dtype), k.to(dtype), v.to(dtype), lengths)
    assert lo.dtype == dtype
    torch.testing.assert_close(lo.double(), oracle_temporal(q, k, v, lengths), rtol=3e-2, atol=3e-2)
    so = ops.skeletal_attention(q.to(dtype), k.to(dtype), v.to(dtype))
    torch.testing.assert_close(so.double(), oracle_skeletal(q, k, v), rtol=3e-2, atol=3e-2)


# ----------------------------------------------------------------------------- graph convolution

@pytest.mark.parametrize("with_bias", [True, False])
def test_graph_conv_on_skeleton_matches_neighbour_loops(with_bias):
    g = gen(12)
    indptr, indices = SIGNING_SKELETON.neighbourhood()
    J = indptr.numel() - 1
    h = torch.randn(2, 3, J, 5, generator=g)
    w_self, w_neigh = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    bias = torch.randn(4, generator=g) if with_bias else None
    out = ops.skeletal_graph_conv(h, indptr, indices, w_self, w_neigh, bias, backend="reference")
    assert out.shape == (2, 3, J, 4) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), oracle_graph_conv(h, indptr, indices, w_self, w_neigh, bias),
                               rtol=1e-5, atol=1e-5)


def test_graph_conv_random_csr_non_contiguous_int32_and_grads():
    g = gen(13)
    J = 6
    rows = [[0, 2], [1], [0, 1, 2, 5], [3, 4], [4], [0, 2, 5]]
    indptr = torch.tensor([0] + torch.tensor([len(r) for r in rows]).cumsum(0).tolist(), dtype=torch.int32)
    indices = torch.tensor(sum(rows, []), dtype=torch.int32)
    h = torch.randn(2, J, 3, 8, generator=g, dtype=torch.float64).transpose(1, 2)  # (B, N=3, J, C) strided
    w_self = torch.randn(8, 4, generator=g, dtype=torch.float64).T  # (4, 8) transposed view
    w_neigh = torch.randn(4, 8, generator=g, dtype=torch.float64)
    bias = torch.randn(4, generator=g, dtype=torch.float64)
    leaves = [t.detach().clone().requires_grad_() for t in (h, w_self, w_neigh, bias)]
    out = ops.skeletal_graph_conv(leaves[0], indptr, indices, *leaves[1:])
    ref = [t.detach().clone().requires_grad_() for t in (h, w_self, w_neigh, bias)]
    want = oracle_graph_conv(ref[0], indptr, indices, *ref[1:])
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    go = torch.randn(out.shape, generator=g, dtype=torch.float64)
    for got, exp in zip(torch.autograd.grad((out * go).sum(), leaves), torch.autograd.grad((want * go).sum(), ref)):
        torch.testing.assert_close(got, exp, rtol=1e-10, atol=1e-10)


def test_neighbourhood_mean_matrix():
    indptr, indices = SIGNING_SKELETON.neighbourhood()
    J = indptr.numel() - 1
    a = reference.neighbourhood_mean_matrix(indptr, indices, J)
    for i in range(J):
        row = set(indices[int(indptr[i]):int(indptr[i + 1])].tolist())
        assert i in row
        for j in range(J):
            assert a[i, j].item() == pytest.approx(1.0 / len(row) if j in row else 0.0)


# ----------------------------------------------------------------------------- wrapper validation

def _film_args(**patch):
    B, N, J, D = 2, 3, 4, 8
    args = dict(z=torch.randn(B, N, J, D), h=torch.randn(B, N, J, D), gamma=torch.randn(B, D),
                beta=torch.randn(B, D), weight=torch.ones(D), bias=torch.zeros(D))
    args.update(patch)
    return args


@pytest.mark.parametrize("patch,exc,pattern", [
    (dict(z=torch.randn(2, 3, 8)), ValueError, r"z must be \(B, N, J, D\)"),
    (dict(h=torch.randn(2, 3, 4, 9)), ValueError, r"h has shape \(2, 3, 4, 9\) but z has \(2, 3, 4, 8\)"),
    (dict(gamma=torch.randn(2, 7)), ValueError, r"gamma must be \(B, D\) = \(2, 8\)"),
    (dict(beta=torch.randn(8)), ValueError, r"beta must be \(B, D\)"),
    (dict(weight=torch.ones(4)), ValueError, r"weight must be \(D,\) = \(8,\)"),
    (dict(bias=torch.zeros(8, 1)), ValueError, r"bias must be \(D,\)"),
    (dict(z=torch.zeros(2, 3, 4, 8, dtype=torch.long)), TypeError, r"z has dtype torch.int64"),
    (dict(h=torch.randn(2, 3, 4, 8).double()), TypeError, r"h has dtype torch.float64 but the other inputs are"),
    (dict(gamma=torch.randn(2, 8).half()), TypeError, r"gamma has dtype torch.float16"),
    (dict(z=[1.0]), TypeError, r"z must be a torch.Tensor"),
], ids=["z-rank", "h-shape", "gamma-shape", "beta-shape", "weight-shape", "bias-shape", "z-int", "h-dtype",
        "gamma-dtype", "z-list"])
def test_film_wrapper_validation(patch, exc, pattern):
    with pytest.raises(exc, match=pattern):
        ops.film_residual_layernorm(**_film_args(**patch))


@pytest.mark.parametrize("which,patch,exc,pattern", [
    ("t", dict(k=torch.randn(2, 5, 3, 2, 4)), ValueError, r"q, k, v shapes differ"),
    ("t", dict(q=torch.randn(2, 4, 3, 8)), ValueError, r"q must be \(B, N, J, H, d\)"),
    ("t", dict(v=torch.randn(2, 4, 3, 2, 4).double()), TypeError, r"v has dtype torch.float64"),
    ("t", dict(q=torch.zeros(2, 4, 3, 2, 4, dtype=torch.int32)), TypeError, r"q has dtype torch.int32"),
    ("t", dict(lengths=torch.tensor([4.0, 2.0])), TypeError, r"lengths must be an int32/int64"),
    ("t", dict(lengths=torch.tensor([4, 2, 1])), ValueError, r"lengths must be \(B,\) = \(2,\)"),
    ("s", dict(k=torch.randn(2, 4, 2, 2, 4)), ValueError, r"q, k, v shapes differ"),
    ("s", dict(k=torch.randn(2, 4, 3, 2, 4).half()), TypeError, r"k has dtype torch.float16"),
], ids=["t-shape", "t-rank", "t-dtype", "t-int", "t-len-float", "t-len-shape",
        "s-shape", "s-dtype"])
def test_attention_wrapper_validation(which, patch, exc, pattern):
    args = dict(q=torch.randn(2, 4, 3, 2, 4), k=torch.randn(2, 4, 3, 2, 4), v=torch.randn(2, 4, 3, 2, 4))
    if which == "t":
        args["lengths"] = torch.tensor([4, 2])
    args.update(patch)
    fn = ops.temporal_attention if which == "t" else ops.skeletal_attention
    with pytest.raises(exc, match=pattern):
        fn(**args)


def _csr():
    # 3 joints in a chain, self loops: rows [0,1], [0,1,2], [1,2]
    return torch.tensor([0, 2, 5, 7]), torch.tensor([0, 1, 0, 1, 2, 1, 2])


def test_lengths_values_are_checked_once_by_validate_lengths_not_by_the_op():
    """The op reads only the metadata of lengths (a value check would stall every layer on the
    device); the entry points validate the values once with ops.validate_lengths."""
    q = torch.randn(2, 4, 3, 2, 4)
    for bad, pattern in ((torch.tensor([4, 5]), r"lengths must lie in \[0, N=4\], got min 4, max 5"),
                         (torch.tensor([-1, 2]), r"lengths must lie in \[0, N=4\], got min -1, max 2")):
        with pytest.raises(ValueError, match=pattern):
            ops.validate_lengths(bad, 2, 4, low=0, unit="N")
        out = ops.temporal_attention(q, q, q, bad)  # no check of values: clamped to [0, N]
        clamped = ops.temporal_attention(q, q, q, bad.clamp(0, 4))
        torch.testing.assert_close(out, clamped)
    ops.validate_lengths(torch.tensor([4, 0]), 2, 4, low=0, unit="N")
    with pytest.raises(TypeError, match="lengths must be an int32/int64"):
        ops.validate_lengths(torch.tensor([4.0, 2.0]), 2, 4)


@pytest.mark.parametrize("patch,exc,pattern", [
    (dict(indices=torch.tensor([0, 1, 1, 0, 2, 1, 2])), ValueError, r"CSR row 1 is not strictly sorted"),
    (dict(indices=torch.tensor([0, 1, 0, 1, 3, 1, 2])), ValueError, r"indices must lie in \[0, 3\)"),
    (dict(indices=torch.tensor([0, -1, 0, 1, 2, 1, 2])), ValueError, r"indices must lie in \[0, 3\)"),
    (dict(indptr=torch.tensor([0, 2, 5])), ValueError, r"indptr has 3 entries; J=3 joints"),
    (dict(indptr=torch.tensor([1, 2, 5, 7])), ValueError, r"indptr must start at 0 and end at nnz=7"),
    (dict(indptr=torch.tensor([0, 2, 2, 7])), ValueError, r"non-empty neighbourhood"),
    (dict(indptr=torch.tensor([0.0, 2.0, 5.0, 7.0])), TypeError, r"indptr must be a 1-D int32/int64"),
], ids=["unsorted-row", "index-too-big", "index-negative", "indptr-length", "indptr-start", "empty-row",
        "indptr-float"])
def test_validate_csr(patch, exc, pattern):
    indptr, indices = _csr()
    args = dict(indptr=indptr, indices=indices, num_joints=3)
    args.update(patch)
    with pytest.raises(exc, match=pattern):
        ops.validate_csr(**args)


@pytest.mark.parametrize("patch,exc,pattern", [
    (dict(indptr=torch.tensor([0, 2, 5])), ValueError, r"indptr has 3 entries; h has J=3 joints"),
    (dict(indptr=torch.tensor([0.0, 2.0, 5.0, 7.0])), TypeError, r"indptr must be a 1-D int32/int64"),
    (dict(h=torch.randn(2, 3, 3, 5).double()), TypeError, r"w_self has dtype torch.float32 but"),
    (dict(h=torch.randn(2, 3, 5)), ValueError, r"h must be \(B, N, J, C_in\)"),
    (dict(w_self=torch.randn(4, 6)), ValueError, r"w_self must be \(C_out, C_in=5\)"),
    (dict(w_neigh=torch.randn(3, 5)), ValueError, r"w_neigh \(3, 5\) and w_self \(4, 5\) differ"),
    (dict(bias=torch.randn(5)), ValueError, r"bias must be \(C_out,\) = \(4,\)"),
], ids=["indptr-length", "indptr-float", "dtype-mismatch", "h-rank", "w-self-shape", "w-neigh-shape", "bias-shape"])
def test_graph_conv_wrapper_validation(patch, exc, pattern):
    indptr, indices = _csr()
    args = dict(h=torch.randn(2, 3, 3, 5), indptr=indptr, indices=indices, w_self=torch.randn(4, 5),
                w_neigh=torch.randn(4, 5), bias=torch.randn(4))
    args.update(patch)
    with pytest.raises(exc, match=pattern):
        ops.skeletal_graph_conv(**args)


def test_csr_validation_is_not_cached_by_address():
    """A CSR rewritten in place (same data_ptr, as a new tensor at a reused address would be) is
    validated again: nothing is remembered by address any more."""
    indptr, indices = _csr()
    ops.validate_csr(indptr, indices, 3)
    ptr = indices.data_ptr()
    indices.copy_(torch.tensor([0, 1, 1, 0, 2, 1, 2]))  # row 1 unsorted, same storage
    assert indices.data_ptr() == ptr
    with pytest.raises(ValueError, match="CSR row 1 is not strictly sorted"):
        ops.validate_csr(indptr, indices, 3)
    # and the same tensors freed and a new bad CSR built (possibly at the same address) also fail
    del indptr, indices
    indptr2, indices2 = torch.tensor([0, 2, 5, 7]), torch.tensor([0, 1, 0, 1, 3, 1, 2])
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 3\)"):
        ops.validate_csr(indptr2, indices2, 3)
    assert not any("csr" in name.lower() and isinstance(getattr(ops, name), (set, dict))
                   for name in dir(ops)), "no cache of validated CSRs"


def test_stconv_validates_its_skeleton_csr_when_built(monkeypatch):
    from sald_fast.skeleton import SIGNING_SKELETON
    from sald_fast.vae import STConv

    calls = []
    real = ops.validate_csr
    monkeypatch.setattr(ops, "validate_csr", lambda *a: calls.append(a[2]) or real(*a))
    conv = STConv(SIGNING_SKELETON, 3, 4)
    assert calls == [SIGNING_SKELETON.num_joints]
    conv(torch.randn(1, 2, SIGNING_SKELETON.num_joints, 3))
    assert calls == [SIGNING_SKELETON.num_joints]  # not per call


def test_unknown_backend_is_rejected_and_use_backend_restores():
    q = torch.randn(1, 2, 2, 1, 4)
    with pytest.raises(ValueError, match="unknown backend 'fastest'"):
        ops.skeletal_attention(q, q, q, backend="fastest")
    before = ops.get_backend()
    with ops.use_backend("reference"):
        assert ops.get_backend() == "reference"
    assert ops.get_backend() == before
    with pytest.raises(ValueError, match="unknown backend"):
        ops.set_backend("nope")
