"""Plain-PyTorch reference implementations: the specification every fast kernel is tested against.

All math runs in fp32 (or fp64 for fp64 inputs) and results are cast back to the input dtype.
Inputs are validated by the public wrappers in ``sald_fast.ops``, not here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..frames import frame_mask
from .dispatch import register

__all__ = [
    "film_residual_layernorm",
    "temporal_attention",
    "skeletal_attention",
    "skeletal_graph_conv",
    "neighbourhood_mean_matrix",
]


def _acc(t: torch.Tensor) -> torch.Tensor:
    return t.double() if t.dtype == torch.float64 else t.float()


def film_residual_layernorm(z, h, gamma, beta, weight=None, bias=None, eps=1e-5):
    """``z' = z + gamma * h + beta``, ``y = LayerNorm(z')`` over the last axis.

    z, h: (B, N, J, D); gamma, beta: (B, D); weight, bias: (D,) or None. Returns (z', y), both in
    z's dtype; z' is rounded to that dtype before the LayerNorm, as a fused kernel stores it.
    """
    B, D = gamma.shape
    g = _acc(gamma).view(B, 1, 1, D)
    b = _acc(beta).view(B, 1, 1, D)
    z_new = (_acc(z) + g * _acc(h) + b).to(z.dtype)
    y = F.layer_norm(_acc(z_new), (D,), None if weight is None else _acc(weight),
                     None if bias is None else _acc(bias), eps)
    return z_new, y.to(z.dtype)


def _attention(q, k, v, key_mask, scale):
    """q, k, v: (..., L, d); key_mask: broadcastable to (..., L_q, L_k) bool (True = attend)."""
    s = torch.matmul(_acc(q), _acc(k).transpose(-1, -2)) * scale
    if key_mask is not None:
        s = s.masked_fill(~key_mask, float("-inf"))
    p = torch.softmax(s, dim=-1)
    if key_mask is not None:
        p = torch.nan_to_num(p, nan=0.0)  # rows with every key masked give 0
    return torch.matmul(p, _acc(v)).to(q.dtype)


def temporal_attention(q, k, v, lengths=None, scale=None):
    """Attention over frames for every (batch, joint, head).

    q, k, v: (B, N, J, H, d), any strides. lengths: (B,) integer in [0, N] or None (all valid);
    keys at frame >= lengths[b] are masked; a sample with length 0 gets zeros.
    Returns o: (B, N, J, H, d), contiguous.
    """
    B, N, J, H, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    perm = (0, 2, 3, 1, 4)  # (B, J, H, N, d)
    mask = None
    if lengths is not None:
        mask = frame_mask(lengths, N, device=q.device).view(B, 1, 1, 1, N)
    o = _attention(q.permute(perm), k.permute(perm), v.permute(perm), mask, scale)
    return o.permute(0, 3, 1, 2, 4).contiguous()


def skeletal_attention(q, k, v, scale=None):
    """Attention over joints for every (batch, frame, head).

    q, k, v: (B, N, J, H, d), any strides. Returns o: (B, N, J, H, d), contiguous.
    """
    d = q.shape[-1]
    scale = d ** -0.5 if scale is None else scale
    perm = (0, 1, 3, 2, 4)  # (B, N, H, J, d)
    o = _attention(q.permute(perm), k.permute(perm), v.permute(perm), None, scale)
    return o.permute(0, 1, 3, 2, 4).contiguous()


def neighbourhood_mean_matrix(indptr, indices, num_joints, dtype=torch.float32):
    """Dense (J, J) row-normalised matrix A with A[i, j] = 1 / |N(i)| for j in the CSR row i."""
    counts = indptr[1:] - indptr[:-1]
    rows = torch.repeat_interleave(torch.arange(num_joints, device=indptr.device), counts,
                                   output_size=indices.numel())
    a = torch.zeros(num_joints, num_joints, dtype=dtype, device=indptr.device)
    a[rows, indices.long()] = (1.0 / counts.to(dtype))[rows]
    return a


def skeletal_graph_conv(h, indptr, indices, w_self, w_neigh, bias=None):
    """``out_i = W_self h_i + W_neigh mean_{j in N(i)} h_j + b`` over the joint axis.

    h: (B, N, J, C_in); indptr: (J + 1,), indices: (nnz,) CSR neighbourhoods (self included);
    w_self, w_neigh: (C_out, C_in) (nn.Linear layout); bias: (C_out,) or None.
    Returns (B, N, J, C_out) in h's dtype. Uses a dense (J, J) aggregation matrix.
    """
    J = h.shape[2]
    hf = _acc(h)
    a = neighbourhood_mean_matrix(indptr, indices, J, dtype=hf.dtype)
    agg = torch.einsum("ij,bnjc->bnic", a, hf)
    out = hf @ _acc(w_self).t() + agg @ _acc(w_neigh).t()
    if bias is not None:
        out = out + _acc(bias)
    return out.to(h.dtype)


register("film_residual_layernorm", "reference", film_residual_layernorm)
register("temporal_attention", "reference", temporal_attention)
register("skeletal_attention", "reference", skeletal_attention)
register("skeletal_graph_conv", "reference", skeletal_graph_conv)
