"""Skeletal attention: softmax attention over the J joints for every (batch, frame, head).

q, k, v: (B, N, J, H, d) with any strides (e.g. views into a fused qkv projection output of shape
(B, N, J, 3, H, d)); o is written contiguous (B, N, J, H, d). Any J <= 32.

There are B*N*H tiny problems (paper: 32768 problems of 7 x 7). Each program packs BLOCK_P of
them (problem id p = (b*N + n)*H + h, so one program covers all heads of a few frames: contiguous
memory when the inputs come from a fused projection) and works on 3-D tiles
(BLOCK_P, BLOCK_J, BLOCK_D) with batched ``tl.dot``; the joint axis is padded to
BLOCK_J >= 16 (tensor-core minimum) and masked. The whole softmax row fits in registers, so
the forward is a plain (not online) softmax; it saves the natural-log logsumexp (B, N, H, J)
fp32. The backward recomputes P from it and computes dq, dk, dv for its problems in one
program (fp32 accumulation), with no cross-program reduction.
"""

from __future__ import annotations

from typing import Callable

import torch
import triton
import triton.language as tl

from sald_fast.ops.checks import check_qkv

from . import check_tensor, dot_in_fp32, identity_wrap, mm, new_output, on_device

__all__ = ["skeletal_attention_forward", "skeletal_attention_backward", "MAX_JOINTS", "MAX_HEAD_DIM",
           "attention_config"]

MAX_JOINTS = 32
MAX_HEAD_DIM = 128
LOG2E = 1.4426950408889634


@triton.jit
def _problem_offsets(p, N, H, s_b, s_n, s_h):
    h = p % H
    bn = p // H
    n = bn % N
    b = bn // N
    return b * s_b + n * s_n + h * s_h


@triton.jit
def _load_tile(ptr, p, offs_j, offs_d, mask, N, H, s_b, s_n, s_j, s_h, s_d):
    """The (BLOCK_P, BLOCK_J, BLOCK_D) tile of problems ``p`` of a strided (B, N, J, H, d) tensor."""
    off = _problem_offsets(p, N, H, s_b, s_n, s_h)[:, None, None]
    return tl.load(ptr + off + (offs_j[None, :, None] * s_j + offs_d[None, None, :] * s_d), mask=mask, other=0.0)


@triton.jit
def skeletal_attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr,
    P, N, J, H, HEAD_DIM,
    s_qb, s_qn, s_qj, s_qh, s_qd,
    s_kb, s_kn, s_kj, s_kh, s_kd,
    s_vb, s_vn, s_vj, s_vh, s_vd,
    qk_scale,
    PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Program pid: problems [pid*BLOCK_P, (pid+1)*BLOCK_P). qk_scale = scale * log2(e)."""
    pid = tl.program_id(0)
    p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_j = tl.arange(0, BLOCK_J)
    offs_d = tl.arange(0, BLOCK_D)
    pmask = p < P
    jmask = offs_j < J
    mask = pmask[:, None, None] & jmask[None, :, None] & (offs_d < HEAD_DIM)[None, None, :]
    q = _load_tile(q_ptr, p, offs_j, offs_d, mask, N, H, s_qb, s_qn, s_qj, s_qh, s_qd)
    k = _load_tile(k_ptr, p, offs_j, offs_d, mask, N, H, s_kb, s_kn, s_kj, s_kh, s_kd)
    v = _load_tile(v_ptr, p, offs_j, offs_d, mask, N, H, s_vb, s_vn, s_vj, s_vh, s_vd)

    s = mm(q, tl.trans(k, 0, 2, 1), PRECISION, DOT_FP32) * qk_scale  # (P, Jq, Jk), log2 domain
    s = tl.where(jmask[None, None, :], s, float("-inf"))
    m = tl.max(s, axis=2)
    e = tl.exp2(s - m[:, :, None])
    l = tl.sum(e, axis=2)
    o = mm(e.to(v.dtype), v, PRECISION, DOT_FP32) / l[:, :, None]

    # o[b, n, j, h, :] contiguous: ((b*N + n)*J + j)*H + h = (p // H * J + j) * H + p % H
    row = ((p // H)[:, None] * J + offs_j[None, :]) * H + (p % H)[:, None]
    tl.store(o_ptr + row[:, :, None] * HEAD_DIM + offs_d[None, None, :], o.to(o_ptr.dtype.element_ty), mask=mask)
    lse = (m + tl.log2(l)) * 0.6931471805599453
    tl.store(lse_ptr + p[:, None] * J + offs_j[None, :], lse, mask=pmask[:, None] & jmask[None, :])


@triton.jit
def skeletal_attn_bwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, do_ptr, lse_ptr, dq_ptr, dk_ptr, dv_ptr,
    P, N, J, H, HEAD_DIM,
    s_qb, s_qn, s_qj, s_qh, s_qd,
    s_kb, s_kn, s_kj, s_kh, s_kd,
    s_vb, s_vn, s_vj, s_vh, s_vd,
    s_ob, s_on, s_oj, s_oh, s_od,
    sm_scale, qk_scale,
    PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Program pid: dq, dk, dv of problems [pid*BLOCK_P, ...). dO strides are s_o*; o, lse, dq,
    dk, dv are contiguous."""
    pid = tl.program_id(0)
    p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_j = tl.arange(0, BLOCK_J)
    offs_d = tl.arange(0, BLOCK_D)
    pmask = p < P
    jmask = offs_j < J
    pj_mask = pmask[:, None] & jmask[None, :]
    mask = pj_mask[:, :, None] & (offs_d < HEAD_DIM)[None, None, :]
    q = _load_tile(q_ptr, p, offs_j, offs_d, mask, N, H, s_qb, s_qn, s_qj, s_qh, s_qd)
    k = _load_tile(k_ptr, p, offs_j, offs_d, mask, N, H, s_kb, s_kn, s_kj, s_kh, s_kd)
    v = _load_tile(v_ptr, p, offs_j, offs_d, mask, N, H, s_vb, s_vn, s_vj, s_vh, s_vd)
    do = _load_tile(do_ptr, p, offs_j, offs_d, mask, N, H, s_ob, s_on, s_oj, s_oh, s_od)
    row = ((p // H)[:, None] * J + offs_j[None, :]) * H + (p % H)[:, None]
    out_off = row[:, :, None] * HEAD_DIM + offs_d[None, None, :]
    o = tl.load(o_ptr + out_off, mask=mask, other=0.0)
    lse = tl.load(lse_ptr + p[:, None] * J + offs_j[None, :], mask=pj_mask, other=0.0) * 1.4426950408889634
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=2)  # (P, Jq)

    s = mm(q, tl.trans(k, 0, 2, 1), PRECISION, DOT_FP32) * qk_scale
    pr = tl.exp2(s - lse[:, :, None])
    pr = tl.where(pj_mask[:, :, None] & jmask[None, None, :], pr, 0.0)
    dv = mm(tl.trans(pr.to(do.dtype), 0, 2, 1), do, PRECISION, DOT_FP32)
    dp = mm(do, tl.trans(v, 0, 2, 1), PRECISION, DOT_FP32)
    ds = pr * (dp - delta[:, :, None])
    dq = mm(ds.to(k.dtype), k, PRECISION, DOT_FP32) * sm_scale
    dk = mm(tl.trans(ds.to(q.dtype), 0, 2, 1), q, PRECISION, DOT_FP32) * sm_scale
    tl.store(dq_ptr + out_off, dq.to(dq_ptr.dtype.element_ty), mask=mask)
    tl.store(dk_ptr + out_off, dk.to(dk_ptr.dtype.element_ty), mask=mask)
    tl.store(dv_ptr + out_off, dv.to(dv_ptr.dtype.element_ty), mask=mask)


def attention_config(J: int, head_dim: int, dtype: torch.dtype, backward: bool = False) -> dict:
    """Block sizes / warps / dot precision for J joints and head dim d (forward or backward)."""
    block_j = max(16, triton.next_power_of_2(J))
    block_d = max(16, triton.next_power_of_2(head_dim))
    budget = 2048 if backward else 4096  # elements of one (P, J, d) tile
    block_p = max(1, min(16, budget // (block_j * block_d)))
    return {"BLOCK_P": block_p, "BLOCK_J": block_j, "BLOCK_D": block_d, "num_warps": 4,
            "PRECISION": "ieee" if dtype == torch.float32 else "tf32"}


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: object) -> None:
    """The shared q/k/v checks (``sald_fast.ops.checks.check_qkv``) with this launcher's per-tensor
    check and limits."""
    check_qkv(q, k, v, check_tensor=lambda name, t: check_tensor(name, t, kernel, dtype=q.dtype, device=q.device),
              max_joints=MAX_JOINTS, max_head_dim=MAX_HEAD_DIM, who="the triton skeletal attention")


def skeletal_attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None,
    *, wrap: Callable = identity_wrap, poison: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward. Returns o (B, N, J, H, d) contiguous and lse (B, N, H, J) fp32."""
    kernel = skeletal_attn_fwd_kernel
    _check_qkv(q, k, v, kernel)
    B, N, J, H, d = q.shape
    scale = d ** -0.5 if scale is None else float(scale)
    o = new_output((B, N, J, H, d), q.dtype, q.device, poison)
    lse = new_output((B, N, H, J), torch.float32, q.device, poison)
    if q.numel() == 0:
        return o, lse
    cfg = attention_config(J, d, q.dtype)
    P = B * N * H
    with on_device(q):
        wrap(kernel)[(triton.cdiv(P, cfg["BLOCK_P"]),)](
            q, k, v, o, lse, P, N, J, H, d, *q.stride(), *k.stride(), *v.stride(), scale * LOG2E,
            PRECISION=cfg["PRECISION"], DOT_FP32=dot_in_fp32(kernel, q.dtype), BLOCK_P=cfg["BLOCK_P"],
            BLOCK_J=cfg["BLOCK_J"], BLOCK_D=cfg["BLOCK_D"], num_warps=cfg["num_warps"],
        )
    return o, lse


def skeletal_attention_backward(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
    lse: torch.Tensor, scale: float | None, *, wrap: Callable = identity_wrap, poison: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward. Returns dq, dk, dv: (B, N, J, H, d) contiguous in q's dtype.

    do: gradient of o (any strides); o, lse: the forward's outputs (contiguous).
    """
    kernel = skeletal_attn_bwd_kernel
    _check_qkv(q, k, v, kernel)
    B, N, J, H, d = q.shape
    check_tensor("do", do, kernel, dtype=q.dtype, device=q.device)
    check_tensor("o", o, kernel, dtype=q.dtype, device=q.device)
    if do.shape != q.shape or o.shape != q.shape:
        raise ValueError(f"do {tuple(do.shape)} and o {tuple(o.shape)} must match q {tuple(q.shape)}")
    if not o.is_contiguous():
        raise ValueError("o must be the contiguous forward output")
    if lse.dtype != torch.float32 or tuple(lse.shape) != (B, N, H, J) or not lse.is_contiguous():
        raise ValueError(f"lse must be the contiguous float32 (B, N, H, J) = {(B, N, H, J)} forward output")
    scale = d ** -0.5 if scale is None else float(scale)
    dq = new_output((B, N, J, H, d), q.dtype, q.device, poison)
    dk = new_output((B, N, J, H, d), q.dtype, q.device, poison)
    dv = new_output((B, N, J, H, d), q.dtype, q.device, poison)
    if q.numel() == 0:
        return dq, dk, dv
    cfg = attention_config(J, d, q.dtype, backward=True)
    P = B * N * H
    with on_device(q):
        wrap(kernel)[(triton.cdiv(P, cfg["BLOCK_P"]),)](
            q, k, v, o, do, lse, dq, dk, dv, P, N, J, H, d,
            *q.stride(), *k.stride(), *v.stride(), *do.stride(), scale, scale * LOG2E,
            PRECISION=cfg["PRECISION"], DOT_FP32=dot_in_fp32(kernel, q.dtype), BLOCK_P=cfg["BLOCK_P"],
            BLOCK_J=cfg["BLOCK_J"], BLOCK_D=cfg["BLOCK_D"], num_warps=cfg["num_warps"],
        )
    return dq, dk, dv
