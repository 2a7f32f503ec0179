"""Temporal attention: softmax attention over the N frames for every (batch, joint, head).

q, k, v: (B, N, J, H, d) with any strides (e.g. views into a fused qkv projection output of shape
(B, N, J, 3, H, d)); the kernels take the five strides of each and never copy. o is written
contiguous (B, N, J, H, d). Key padding mask from per-sample ``lengths`` (B,): keys at frames
>= lengths[b] are ignored; lengths are clamped to [0, N] inside the kernel (never an
out-of-bounds read); a sample with length 0 gets o = 0 and zero gradients.

Forward (flash-attention style, online softmax, fp32 accumulation): program (problem (b, j, h), query block)
loops over key blocks up to lengths[b] only. Saves the natural-log logsumexp (B, J, H, N) fp32.

Backward: ``dkdv`` kernel, program per (key block, problem), loops over query blocks,
recomputes P from the logsumexp, accumulates dk, dv in fp32. When the whole sequence fits one
key block (N <= BLOCK_N, the paper's N' = 64), the same kernel also writes dq (a single key
block sees every key, so no reduction across programs is needed). Otherwise a ``dq`` kernel,
program per (query block, problem), loops over key blocks. Delta = rowsum(dO * O) is computed
inline from o and dO. Deterministic, no atomics.
"""

from __future__ import annotations

from typing import Callable

import torch
import triton
import triton.language as tl

from sald_fast.ops.checks import check_lengths, check_qkv

from . import check_tensor, dot_in_fp32, identity_wrap, mm, new_output, on_device

__all__ = ["temporal_attention_forward", "temporal_attention_backward", "MAX_HEAD_DIM", "attention_config"]

MAX_HEAD_DIM = 128
LOG2E = 1.4426950408889634


@triton.jit
def _key_count(len_ptr, b, N, HAS_LENGTHS: tl.constexpr):
    """Keys of sample ``b``: lengths[b] clamped to [0, N] (never an out-of-bounds read), or N."""
    if HAS_LENGTHS:
        return tl.minimum(tl.maximum(tl.load(len_ptr + b).to(tl.int32), 0), N)
    return N


@triton.jit
def temporal_attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, len_ptr,
    N, J, H, HEAD_DIM,
    s_qb, s_qn, s_qj, s_qh, s_qd,
    s_kb, s_kn, s_kj, s_kh, s_kd,
    s_vb, s_vn, s_vj, s_vh, s_vd,
    qk_scale,
    HAS_LENGTHS: tl.constexpr, PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Program (pid_p, pid_m): query rows [pid_m*BLOCK_M, ...) of problem p = (b*J + j)*H + h.

    qk_scale = softmax scale * log2(e) (exp2 domain). lse (natural log) goes to lse[p, n].
    """
    pid_p = tl.program_id(0)
    pid_m = tl.program_id(1)
    h = pid_p % H
    bj = pid_p // H
    j = bj % J
    b = bj // J
    kv_len = _key_count(len_ptr, b, N, HAS_LENGTHS)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mmask = offs_m < N
    dmask = offs_d < HEAD_DIM
    q = tl.load(q_ptr + b * s_qb + j * s_qj + h * s_qh + offs_m[:, None] * s_qn + offs_d[None, :] * s_qd,
                mask=mmask[:, None] & dmask[None, :], other=0.0)
    k_base = k_ptr + b * s_kb + j * s_kj + h * s_kh
    v_base = v_ptr + b * s_vb + j * s_vj + h * s_vh

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for start_n in range(0, kv_len, BLOCK_N):
        kn = start_n + offs_n
        kmask = kn < kv_len
        kd_mask = kmask[:, None] & dmask[None, :]
        k = tl.load(k_base + kn[:, None] * s_kn + offs_d[None, :] * s_kd, mask=kd_mask, other=0.0)
        v = tl.load(v_base + kn[:, None] * s_vn + offs_d[None, :] * s_vd, mask=kd_mask, other=0.0)
        s = mm(q, tl.trans(k, 1, 0), PRECISION, DOT_FP32) * qk_scale
        s = tl.where(kmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + mm(p.to(v.dtype), v, PRECISION, DOT_FP32)
        m_i = m_new
    has_keys = l_i > 0.0
    l_safe = tl.where(has_keys, l_i, 1.0)
    o = acc / l_safe[:, None]
    lse = tl.where(has_keys, (m_i + tl.log2(l_safe)) * 0.6931471805599453, float("-inf"))
    o_off = (((b * N + offs_m) * J + j) * H + h)[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(o_ptr + o_off, o.to(o_ptr.dtype.element_ty), mask=mmask[:, None] & dmask[None, :])
    tl.store(lse_ptr + pid_p * N + offs_m, lse, mask=mmask)


@triton.jit
def temporal_attn_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, do_ptr, lse_ptr, len_ptr, dq_ptr, dk_ptr, dv_ptr,
    N, J, H, HEAD_DIM,
    s_qb, s_qn, s_qj, s_qh, s_qd,
    s_kb, s_kn, s_kj, s_kh, s_kd,
    s_vb, s_vn, s_vj, s_vh, s_vd,
    s_ob, s_on, s_oj, s_oh, s_od,
    sm_scale, qk_scale,
    HAS_LENGTHS: tl.constexpr, WRITE_DQ: tl.constexpr, PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Program (pid_p, pid_n): dk, dv for keys [pid_n*BLOCK_N, ...) of problem p; with WRITE_DQ
    (a single key block covers all N frames) also dq for every query. dO strides are s_o*;
    o, dq, dk, dv are contiguous (B, N, J, H, d)."""
    pid_p = tl.program_id(0)
    pid_n = tl.program_id(1)
    h = pid_p % H
    bj = pid_p // H
    j = bj % J
    b = bj // J
    kv_len = _key_count(len_ptr, b, N, HAS_LENGTHS)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < HEAD_DIM
    kvalid = offs_n < kv_len
    kd_mask = kvalid[:, None] & dmask[None, :]
    k = tl.load(k_ptr + b * s_kb + j * s_kj + h * s_kh + offs_n[:, None] * s_kn + offs_d[None, :] * s_kd,
                mask=kd_mask, other=0.0)
    v = tl.load(v_ptr + b * s_vb + j * s_vj + h * s_vh + offs_n[:, None] * s_vn + offs_d[None, :] * s_vd,
                mask=kd_mask, other=0.0)
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    q_base = q_ptr + b * s_qb + j * s_qj + h * s_qh
    do_base = do_ptr + b * s_ob + j * s_oj + h * s_oh
    # Without WRITE_DQ, a key block past the sample's length only writes zeros.
    if WRITE_DQ:
        m_end = N
    else:
        m_end = tl.where(pid_n * BLOCK_N < kv_len, N, 0)
    # Transposed formulation (as in Triton's fused-attention tutorial): P^T = exp(K Q^T - lse),
    # so every dot takes loaded tiles or fresh results as operands, never a transposed result.
    kT = tl.trans(k, 1, 0)
    for start_m in range(0, m_end, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        mmask = offs_m < N
        dm_mask = dmask[:, None] & mmask[None, :]
        qT = tl.load(q_base + offs_m[None, :] * s_qn + offs_d[:, None] * s_qd, mask=dm_mask, other=0.0)
        doT = tl.load(do_base + offs_m[None, :] * s_on + offs_d[:, None] * s_od, mask=dm_mask, other=0.0)
        rowT_off = (((b * N + offs_m) * J + j) * H + h)[None, :] * HEAD_DIM + offs_d[:, None]
        oT = tl.load(o_ptr + rowT_off, mask=dm_mask, other=0.0)
        delta = tl.sum(doT.to(tl.float32) * oT.to(tl.float32), axis=0)
        lse = tl.load(lse_ptr + pid_p * N + offs_m, mask=mmask, other=0.0)
        lse2 = tl.where(lse == float("-inf"), 0.0, lse * 1.4426950408889634)
        sT = mm(k, qT, PRECISION, DOT_FP32) * qk_scale  # (BLOCK_N, BLOCK_M)
        pT = tl.exp2(sT - lse2[None, :])
        pT = tl.where(kvalid[:, None] & mmask[None, :], pT, 0.0)
        dv += mm(pT.to(doT.dtype), tl.trans(doT, 1, 0), PRECISION, DOT_FP32)
        dpT = mm(v, doT, PRECISION, DOT_FP32)
        dsT = pT * (dpT - delta[None, :])
        dk += mm(dsT.to(qT.dtype), tl.trans(qT, 1, 0), PRECISION, DOT_FP32)
        if WRITE_DQ:
            dqT = mm(kT, dsT.to(k.dtype), PRECISION, DOT_FP32) * sm_scale  # (BLOCK_D, BLOCK_M)
            tl.store(dq_ptr + rowT_off, dqT.to(dq_ptr.dtype.element_ty), mask=dm_mask)
    out_off = (((b * N + offs_n) * J + j) * H + h)[:, None] * HEAD_DIM + offs_d[None, :]
    nd_mask = (offs_n < N)[:, None] & dmask[None, :]
    tl.store(dk_ptr + out_off, (dk * sm_scale).to(dk_ptr.dtype.element_ty), mask=nd_mask)
    tl.store(dv_ptr + out_off, dv.to(dv_ptr.dtype.element_ty), mask=nd_mask)


@triton.jit
def temporal_attn_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, do_ptr, lse_ptr, len_ptr, dq_ptr,
    N, J, H, HEAD_DIM,
    s_qb, s_qn, s_qj, s_qh, s_qd,
    s_kb, s_kn, s_kj, s_kh, s_kd,
    s_vb, s_vn, s_vj, s_vh, s_vd,
    s_ob, s_on, s_oj, s_oh, s_od,
    sm_scale, qk_scale,
    HAS_LENGTHS: tl.constexpr, PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Program (pid_p, pid_m): dq for queries [pid_m*BLOCK_M, ...) of problem p (used when N > BLOCK_N)."""
    pid_p = tl.program_id(0)
    pid_m = tl.program_id(1)
    h = pid_p % H
    bj = pid_p // H
    j = bj % J
    b = bj // J
    kv_len = _key_count(len_ptr, b, N, HAS_LENGTHS)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mmask = offs_m < N
    dmask = offs_d < HEAD_DIM
    md_mask = mmask[:, None] & dmask[None, :]
    q = tl.load(q_ptr + b * s_qb + j * s_qj + h * s_qh + offs_m[:, None] * s_qn + offs_d[None, :] * s_qd,
                mask=md_mask, other=0.0)
    do = tl.load(do_ptr + b * s_ob + j * s_oj + h * s_oh + offs_m[:, None] * s_on + offs_d[None, :] * s_od,
                 mask=md_mask, other=0.0)
    row_off = (((b * N + offs_m) * J + j) * H + h)[:, None] * HEAD_DIM + offs_d[None, :]
    o = tl.load(o_ptr + row_off, mask=md_mask, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)
    lse = tl.load(lse_ptr + pid_p * N + offs_m, mask=mmask, other=0.0)
    lse2 = tl.where(lse == float("-inf"), 0.0, lse * 1.4426950408889634)
    k_base = k_ptr + b * s_kb + j * s_kj + h * s_kh
    v_base = v_ptr + b * s_vb + j * s_vj + h * s_vh
    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for start_n in range(0, kv_len, BLOCK_N):
        kn = start_n + offs_n
        kmask = kn < kv_len
        kd_mask = kmask[:, None] & dmask[None, :]
        k = tl.load(k_base + kn[:, None] * s_kn + offs_d[None, :] * s_kd, mask=kd_mask, other=0.0)
        v = tl.load(v_base + kn[:, None] * s_vn + offs_d[None, :] * s_vd, mask=kd_mask, other=0.0)
        s = mm(q, tl.trans(k, 1, 0), PRECISION, DOT_FP32) * qk_scale
        p = tl.exp2(s - lse2[:, None])
        p = tl.where(mmask[:, None] & kmask[None, :], p, 0.0)
        dp = mm(do, tl.trans(v, 1, 0), PRECISION, DOT_FP32)
        ds = p * (dp - delta[:, None])
        dq += mm(ds.to(k.dtype), k, PRECISION, DOT_FP32)
    tl.store(dq_ptr + row_off, (dq * sm_scale).to(dq_ptr.dtype.element_ty), mask=md_mask)


def attention_config(N: int, head_dim: int, dtype: torch.dtype) -> dict:
    """Block sizes / warps / dot precision for sequence length N and head dim d."""
    block = min(32 if dtype == torch.float32 else 64, max(16, triton.next_power_of_2(max(N, 1))))
    return {
        "BLOCK_M": block,
        "BLOCK_N": block,
        "BLOCK_D": max(16, triton.next_power_of_2(head_dim)),
        "num_warps": 4,
        # the fp32 dK/dV kernel (ieee dots) spilled 8 bytes with 4 warps under Triton 3.6 at
        # N' = 128 (sm_80, sm_90; tests/test_triton_aot.py): 8 warps halve its registers per thread
        "num_warps_dkdv": 8 if dtype == torch.float32 else 4,
        "PRECISION": "ieee" if dtype == torch.float32 else "tf32",
    }


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: object) -> None:
    """The shared q/k/v checks (``sald_fast.ops.checks.check_qkv``) with this launcher's per-tensor
    check and limits."""
    check_qkv(q, k, v, check_tensor=lambda name, t: check_tensor(name, t, kernel, dtype=q.dtype, device=q.device),
              max_head_dim=MAX_HEAD_DIM, who="the triton kernels")


def _check_lengths(lengths: torch.Tensor | None, B: int, device: torch.device) -> None:
    check_lengths(lengths, B, device)


def temporal_attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor | None, scale: float | None,
    *, wrap: Callable = identity_wrap, poison: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward. Returns o (B, N, J, H, d) contiguous and lse (B, J, H, N) fp32.

    lengths: (B,) int or None; values are clamped to [0, N] in the kernel (the public wrapper
    validates them once at the entry points, never per call). scale: None means d ** -0.5.
    """
    kernel = temporal_attn_fwd_kernel
    _check_qkv(q, k, v, kernel)
    B, N, J, H, d = q.shape
    _check_lengths(lengths, B, q.device)
    scale = d ** -0.5 if scale is None else float(scale)
    o = new_output((B, N, J, H, d), q.dtype, q.device, poison)
    lse = new_output((B, J, H, N), torch.float32, q.device, poison)
    if q.numel() == 0:
        return o, lse
    cfg = attention_config(N, d, q.dtype)
    grid = (B * J * H, triton.cdiv(N, cfg["BLOCK_M"]))
    with on_device(q):
        wrap(kernel)[grid](
            q, k, v, o, lse, lengths if lengths is not None else q,
            N, J, H, d, *q.stride(), *k.stride(), *v.stride(), scale * LOG2E,
            HAS_LENGTHS=lengths is not None, PRECISION=cfg["PRECISION"], DOT_FP32=dot_in_fp32(kernel, q.dtype),
            BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_D=cfg["BLOCK_D"], num_warps=cfg["num_warps"],
        )
    return o, lse


def temporal_attention_backward(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
    lse: torch.Tensor, lengths: torch.Tensor | None, scale: float | None,
    *, wrap: Callable = identity_wrap, poison: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward. Returns dq, dk, dv: (B, N, J, H, d) contiguous in q's dtype.

    do: gradient of o (any strides); o, lse: the forward's outputs (contiguous).
    """
    kernel = temporal_attn_bwd_dkdv_kernel
    _check_qkv(q, k, v, kernel)
    B, N, J, H, d = q.shape
    _check_lengths(lengths, B, q.device)
    check_tensor("do", do, kernel, dtype=q.dtype, device=q.device)
    check_tensor("o", o, kernel, dtype=q.dtype, device=q.device)
    if do.shape != q.shape or o.shape != q.shape:
        raise ValueError(f"do {tuple(do.shape)} and o {tuple(o.shape)} must match q {tuple(q.shape)}")
    if not o.is_contiguous():
        raise ValueError("o must be the contiguous forward output")
    if lse.dtype != torch.float32 or tuple(lse.shape) != (B, J, H, N) or not lse.is_contiguous():
        raise ValueError(f"lse must be the contiguous float32 (B, J, H, N) = {(B, J, H, N)} forward output")
    scale = d ** -0.5 if scale is None else float(scale)
    dq = new_output((B, N, J, H, d), q.dtype, q.device, poison)
    dk = new_output((B, N, J, H, d), q.dtype, q.device, poison)
    dv = new_output((B, N, J, H, d), q.dtype, q.device, poison)
    if q.numel() == 0:
        return dq, dk, dv
    cfg = attention_config(N, d, q.dtype)
    single_block = N <= cfg["BLOCK_N"]
    len_arg = lengths if lengths is not None else q
    common = dict(HAS_LENGTHS=lengths is not None, PRECISION=cfg["PRECISION"],
                  DOT_FP32=dot_in_fp32(kernel, q.dtype), BLOCK_M=cfg["BLOCK_M"],
                  BLOCK_N=cfg["BLOCK_N"], BLOCK_D=cfg["BLOCK_D"], num_warps=cfg["num_warps"])
    strides = (*q.stride(), *k.stride(), *v.stride(), *do.stride())
    with on_device(q):
        wrap(kernel)[(B * J * H, triton.cdiv(N, cfg["BLOCK_N"]))](
            q, k, v, o, do, lse, len_arg, dq, dk, dv, N, J, H, d, *strides, scale, scale * LOG2E,
            WRITE_DQ=single_block, **{**common, "num_warps": cfg["num_warps_dkdv"]},
        )
    if not single_block:
        with on_device(q):
            wrap(temporal_attn_bwd_dq_kernel)[(B * J * H, triton.cdiv(N, cfg["BLOCK_M"]))](
                q, k, v, o, do, lse, len_arg, dq, N, J, H, d, *strides, scale, scale * LOG2E, **common,
            )
    return dq, dk, dv

