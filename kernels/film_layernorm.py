"""Fused FiLM + residual + LayerNorm: ``z' = z + gamma * h + beta``, ``y = LayerNorm(z')``.

Shapes: z, h (B, N, J, D) with any strides; gamma, beta (B, D); weight, bias (D,) or None.
Rows are the R = B*N*J vectors of length D; any D <= 1024 (power of two or not: the column
block is padded to the next power of two and masked).

Forward (one pass over memory): reads z, h (and gamma/beta/weight/bias, tiny), writes z', y
and the per-row fp32 mean / rstd (8 bytes per row) that the backward needs. z' is rounded to
the input dtype before the LayerNorm, exactly like the reference.

Backward (one pass): reads z' (to rebuild x_hat), dz', dy, h; writes dz, dh. Per-batch reductions
dgamma[b] = sum_rows dzt * h and dbeta[b] = sum_rows dzt (over the N*J rows of batch b), and
dweight = sum dy * x_hat, dbias = sum dy (over all rows), use a deterministic **two-stage
reduction**: the grid is (B, C); program (b, c) owns a contiguous chunk of batch b's rows,
accumulates fp32 partial sums in registers and writes one partial row per program to a
(B, C, D) buffer; the launcher sums the C (and B) partials with ``torch.sum`` in fp32. No atomics,
so results are bitwise reproducible.
"""

from __future__ import annotations

from typing import Callable

import torch
import triton
import triton.language as tl

from . import check_tensor, identity_wrap, new_output, on_device

__all__ = ["film_layernorm_forward", "film_layernorm_backward", "MAX_D", "forward_config", "backward_config"]

MAX_D = 1024


@triton.jit
def film_ln_fwd_kernel(
    z_ptr, h_ptr, gamma_ptr, beta_ptr, w_ptr, b_ptr,
    zout_ptr, y_ptr, mean_ptr, rstd_ptr,
    R, NJ, J, D,
    s_zb, s_zn, s_zj, s_zd,
    s_hb, s_hn, s_hj, s_hd,
    s_gb, s_gd, s_bb, s_bd, s_w, s_bias,
    eps,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program: BLOCK_R rows x BLOCK_D (>= D) columns. Outputs are contiguous (R, D)."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < R
    cmask = cols < D
    mask = rmask[:, None] & cmask[None, :]
    b = rows // NJ
    rem = rows - b * NJ
    n = rem // J
    j = rem - n * J

    z_off = (b * s_zb + n * s_zn + j * s_zj)[:, None] + cols[None, :] * s_zd
    h_off = (b * s_hb + n * s_hn + j * s_hj)[:, None] + cols[None, :] * s_hd
    z = tl.load(z_ptr + z_off, mask=mask, other=0.0).to(tl.float32)
    h = tl.load(h_ptr + h_off, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(gamma_ptr + b[:, None] * s_gb + cols[None, :] * s_gd, mask=mask, other=0.0).to(tl.float32)
    be = tl.load(beta_ptr + b[:, None] * s_bb + cols[None, :] * s_bd, mask=mask, other=0.0).to(tl.float32)

    z_new = (z + g * h + be).to(zout_ptr.dtype.element_ty)
    out_off = rows[:, None] * D + cols[None, :]
    tl.store(zout_ptr + out_off, z_new, mask=mask)

    x = z_new.to(tl.float32)
    mean = tl.sum(x, axis=1) / D
    xc = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / D
    rstd = 1.0 / tl.sqrt(var + eps)
    y = xc * rstd[:, None]
    if HAS_WEIGHT:
        w = tl.load(w_ptr + cols * s_w, mask=cmask, other=0.0).to(tl.float32)
        y = y * w[None, :]
    if HAS_BIAS:
        bias = tl.load(b_ptr + cols * s_bias, mask=cmask, other=0.0).to(tl.float32)
        y = y + bias[None, :]
    tl.store(y_ptr + out_off, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + rows, mean, mask=rmask)
    tl.store(rstd_ptr + rows, rstd, mask=rmask)


@triton.jit
def film_ln_bwd_kernel(
    dzo_ptr, dy_ptr, h_ptr, zout_ptr, gamma_ptr, w_ptr, mean_ptr, rstd_ptr,
    dz_ptr, dh_ptr, dgamma_part_ptr, dbeta_part_ptr, dw_part_ptr, dbias_part_ptr,
    NJ, J, D, ROWS_PER_PROG,
    s_ob, s_on, s_oj, s_od,
    s_yb, s_yn, s_yj, s_yd,
    s_hb, s_hn, s_hj, s_hd,
    s_gb, s_gd, s_w,
    HAS_DZO: tl.constexpr, HAS_DY: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Program (b, c): rows [c*ROWS_PER_PROG, (c+1)*ROWS_PER_PROG) of batch b, BLOCK_R at a time.

    dzt = dz' + LN_backward(dy); dz = dzt; dh = gamma[b] * dzt; partial sums of dzt*h, dzt,
    dy*x_hat, dy go to row (b*C + c) of the (B*C, D) partial buffers.
    """
    b = tl.program_id(0)
    c = tl.program_id(1)
    C = tl.num_programs(1)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    g = tl.load(gamma_ptr + b * s_gb + cols * s_gd, mask=cmask, other=0.0).to(tl.float32)
    if HAS_WEIGHT:
        w = tl.load(w_ptr + cols * s_w, mask=cmask, other=0.0).to(tl.float32)
    acc_dg = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
    acc_db = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
    acc_dw = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
    acc_dbias = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
    start = c * ROWS_PER_PROG
    end = tl.minimum(start + ROWS_PER_PROG, NJ)
    for r0 in range(start, end, BLOCK_R):
        rr = r0 + tl.arange(0, BLOCK_R)
        rmask = rr < end
        mask = rmask[:, None] & cmask[None, :]
        n = rr // J
        j = rr - n * J
        rows = b * NJ + rr
        out_off = rows[:, None] * D + cols[None, :]
        dzt = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
        if HAS_DY:
            x = tl.load(zout_ptr + out_off, mask=mask, other=0.0).to(tl.float32)
            mean = tl.load(mean_ptr + rows, mask=rmask, other=0.0)
            rstd = tl.load(rstd_ptr + rows, mask=rmask, other=0.0)
            xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
            y_off = (b * s_yb + n * s_yn + j * s_yj)[:, None] + cols[None, :] * s_yd
            dy = tl.load(dy_ptr + y_off, mask=mask, other=0.0).to(tl.float32)
            if HAS_WEIGHT:
                gy = dy * w[None, :]
                acc_dw += dy * xhat
            else:
                gy = dy
            if HAS_BIAS:
                acc_dbias += dy
            c1 = tl.sum(xhat * gy, axis=1) / D
            c2 = tl.sum(gy, axis=1) / D
            dzt = tl.where(mask, (gy - xhat * c1[:, None] - c2[:, None]) * rstd[:, None], 0.0)
        if HAS_DZO:
            o_off = (b * s_ob + n * s_on + j * s_oj)[:, None] + cols[None, :] * s_od
            dzt += tl.load(dzo_ptr + o_off, mask=mask, other=0.0).to(tl.float32)
        h_off = (b * s_hb + n * s_hn + j * s_hj)[:, None] + cols[None, :] * s_hd
        h = tl.load(h_ptr + h_off, mask=mask, other=0.0).to(tl.float32)
        tl.store(dz_ptr + out_off, dzt.to(dz_ptr.dtype.element_ty), mask=mask)
        tl.store(dh_ptr + out_off, (dzt * g[None, :]).to(dh_ptr.dtype.element_ty), mask=mask)
        acc_dg += dzt * h
        acc_db += dzt
    part = (b * C + c) * D + cols
    tl.store(dgamma_part_ptr + part, tl.sum(acc_dg, axis=0), mask=cmask)
    tl.store(dbeta_part_ptr + part, tl.sum(acc_db, axis=0), mask=cmask)
    if HAS_WEIGHT:
        tl.store(dw_part_ptr + part, tl.sum(acc_dw, axis=0), mask=cmask)
    if HAS_BIAS:
        tl.store(dbias_part_ptr + part, tl.sum(acc_dbias, axis=0), mask=cmask)


def forward_config(D: int) -> dict:
    """Block sizes / warps of the forward kernel for row length D (also used by the AOT test)."""
    block_d = max(16, triton.next_power_of_2(D))
    block_r = max(1, min(16, 2048 // block_d))
    return {"BLOCK_R": block_r, "BLOCK_D": block_d, "num_warps": 4 if block_r * block_d <= 2048 else 8}


def backward_config(D: int) -> dict:
    """Block sizes / warps of the backward kernel for row length D."""
    block_d = max(16, triton.next_power_of_2(D))
    block_r = max(1, min(8, 1024 // block_d))
    return {"BLOCK_R": block_r, "BLOCK_D": block_d, "num_warps": 4 if block_d <= 512 else 8}


def _check_shapes(z: torch.Tensor, h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                  weight: torch.Tensor | None, bias: torch.Tensor | None) -> None:
    if z.dim() != 4:
        raise ValueError(f"z must be (B, N, J, D), got shape {tuple(z.shape)}")
    B, N, J, D = z.shape
    if h.shape != z.shape:
        raise ValueError(f"h has shape {tuple(h.shape)} but z has {tuple(z.shape)}")
    if D > MAX_D or D < 1:
        raise ValueError(f"z has D={D}; the triton FiLM+LayerNorm kernel supports 1 <= D <= {MAX_D}")
    for name, t in (("gamma", gamma), ("beta", beta)):
        if tuple(t.shape) != (B, D):
            raise ValueError(f"{name} must be (B, D) = {(B, D)}, got {tuple(t.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (D,):
            raise ValueError(f"{name} must be (D,) = ({D},), got {tuple(t.shape)}")


def film_layernorm_forward(
    z: torch.Tensor, h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
    weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
    *, wrap: Callable = identity_wrap, poison: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward. Returns (z' (B,N,J,D), y (B,N,J,D), mean (R,) fp32, rstd (R,) fp32).

    z, h: any strides; outputs contiguous, in z's dtype. ``wrap``: ``torch.library.wrap_triton``
    when called inside a ``triton_op``. ``poison``: fill outputs with NaN before the launch.
    """
    kernel = film_ln_fwd_kernel
    _check_shapes(z, h, gamma, beta, weight, bias)
    for name, t in (("z", z), ("h", h), ("gamma", gamma), ("beta", beta)):
        check_tensor(name, t, kernel, dtype=z.dtype, device=z.device)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            check_tensor(name, t, kernel, device=z.device)
    B, N, J, D = z.shape
    R = B * N * J
    z_new = new_output((B, N, J, D), z.dtype, z.device, poison)
    y = new_output((B, N, J, D), z.dtype, z.device, poison)
    mean = new_output((R,), torch.float32, z.device, poison)
    rstd = new_output((R,), torch.float32, z.device, poison)
    if R == 0:
        return z_new, y, mean, rstd
    cfg = forward_config(D)
    w_arg = weight if weight is not None else gamma  # never read when HAS_WEIGHT is False
    b_arg = bias if bias is not None else gamma
    grid = (triton.cdiv(R, cfg["BLOCK_R"]),)
    with on_device(h):
        wrap(kernel)[grid](
            z, h, gamma, beta, w_arg, b_arg, z_new, y, mean, rstd,
            R, N * J, J, D,
            *z.stride(), *h.stride(), *gamma.stride(), *beta.stride(),
            w_arg.stride(0) if weight is not None else 0, b_arg.stride(0) if bias is not None else 0,
            float(eps),
            HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
            BLOCK_R=cfg["BLOCK_R"], BLOCK_D=cfg["BLOCK_D"], num_warps=cfg["num_warps"],
        )
    return z_new, y, mean, rstd


def _num_chunks(B: int, NJ: int, block_r: int) -> int:
    """Programs per batch in the backward: about 1024 programs in all, at least BLOCK_R rows each."""
    return max(1, min(triton.cdiv(NJ, block_r), triton.cdiv(1024, max(B, 1))))


def film_layernorm_backward(
    dz_new: torch.Tensor | None, dy: torch.Tensor | None, h: torch.Tensor, z_new: torch.Tensor,
    gamma: torch.Tensor, weight: torch.Tensor | None, mean: torch.Tensor, rstd: torch.Tensor,
    has_bias: bool, *, wrap: Callable = identity_wrap, poison: bool | None = None, num_chunks: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward. Returns (dz, dh, dgamma, dbeta, dweight, dbias).

    dz_new, dy: gradients of z' and y (any strides, or None for zero); h: the forward input;
    z_new, mean, rstd: the forward outputs (contiguous). dgamma, dbeta: (B, D) in gamma's dtype;
    dweight / dbias: (D,) **float32** sums (the caller casts them to the parameters' dtypes), or
    empty (0,) tensors when there is no weight / bias. ``num_chunks``: programs per batch (None:
    about 1024 programs in all); each program loops over its rows BLOCK_R at a time.
    """
    kernel = film_ln_bwd_kernel
    if z_new.dim() != 4 or not z_new.is_contiguous():
        raise ValueError(f"z_new must be the contiguous (B, N, J, D) forward output, got {tuple(z_new.shape)} "
                         f"strides {tuple(z_new.stride())}")
    B, N, J, D = z_new.shape
    R = B * N * J
    dev, dt = z_new.device, z_new.dtype
    check_tensor("z_new", z_new, kernel, device=dev)
    check_tensor("h", h, kernel, dtype=dt, device=dev)
    if h.shape != z_new.shape:
        raise ValueError(f"h has shape {tuple(h.shape)} but z_new has {tuple(z_new.shape)}")
    for name, t in (("dz_new", dz_new), ("dy", dy)):
        if t is not None:
            check_tensor(name, t, kernel, device=dev)
            if t.shape != z_new.shape:
                raise ValueError(f"{name} has shape {tuple(t.shape)} but z_new has {tuple(z_new.shape)}")
    check_tensor("gamma", gamma, kernel, dtype=dt, device=dev)
    if weight is not None:
        check_tensor("weight", weight, kernel, device=dev)
    for name, t in (("mean", mean), ("rstd", rstd)):
        if t.dtype != torch.float32 or t.shape != (R,) or not t.is_contiguous():
            raise ValueError(f"{name} must be the contiguous float32 ({R},) forward output")
    cfg = backward_config(D)
    C, rows_per_prog = 1, 0
    if R > 0:
        C = _num_chunks(B, N * J, cfg["BLOCK_R"]) if num_chunks is None else max(1, int(num_chunks))
        rows_per_prog = triton.cdiv(triton.cdiv(N * J, C), cfg["BLOCK_R"]) * cfg["BLOCK_R"]
        C = triton.cdiv(N * J, rows_per_prog)
    dz = new_output((B, N, J, D), dt, dev, poison)
    dh = new_output((B, N, J, D), dt, dev, poison)
    if R == 0:
        zeros = torch.zeros((B, D), dtype=gamma.dtype, device=dev)
        wsum = torch.zeros((D,) if weight is not None else (0,), dtype=torch.float32, device=dev)
        bsum = torch.zeros((D,) if has_bias else (0,), dtype=torch.float32, device=dev)
        return dz, dh, zeros, zeros.clone(), wsum, bsum
    dgamma_part = new_output((B, C, D), torch.float32, dev, poison)
    dbeta_part = new_output((B, C, D), torch.float32, dev, poison)
    dw_part = new_output((B, C, D), torch.float32, dev, poison) if weight is not None else dgamma_part
    dbias_part = new_output((B, C, D), torch.float32, dev, poison) if has_bias else dgamma_part
    dzo_arg = dz_new if dz_new is not None else z_new  # never read when HAS_DZO is False
    dy_arg = dy if dy is not None else z_new
    w_arg = weight if weight is not None else gamma
    with on_device(h):
        wrap(kernel)[(B, C)](
            dzo_arg, dy_arg, h, z_new, gamma, w_arg, mean, rstd,
            dz, dh, dgamma_part, dbeta_part, dw_part, dbias_part,
            N * J, J, D, rows_per_prog,
            *dzo_arg.stride(), *dy_arg.stride(), *h.stride(), *gamma.stride(),
            w_arg.stride(0) if weight is not None else 0,
            HAS_DZO=dz_new is not None, HAS_DY=dy is not None, HAS_WEIGHT=weight is not None,
            HAS_BIAS=has_bias, BLOCK_R=cfg["BLOCK_R"], BLOCK_D=cfg["BLOCK_D"], num_warps=cfg["num_warps"],
        )
    dgamma = dgamma_part.sum(dim=1).to(gamma.dtype)
    dbeta = dbeta_part.sum(dim=1).to(gamma.dtype)
    dweight = dw_part.sum(dim=(0, 1)) if weight is not None else dgamma_part.new_zeros((0,))
    dbias = dbias_part.sum(dim=(0, 1)) if has_bias else dgamma_part.new_zeros((0,))
    return dz, dh, dgamma, dbeta, dweight, dbias
