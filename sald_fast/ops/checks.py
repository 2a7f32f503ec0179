"""Input checks shared by the ``sald_fast.ops`` wrappers and the kernel launchers.

Two kinds, kept apart on purpose:

- metadata checks (:func:`check_float`, :func:`check_device`, :func:`check_qkv`,
  :func:`check_lengths`): read only shapes, dtypes and devices, so they never wait for the
  accelerator and are safe inside a training step, a sampling step or a CUDA-graph capture;
- value checks (:func:`validate_lengths`, :func:`validate_text_mask`, :func:`validate_csr`):
  read tensor contents on the host (one synchronisation each), and so run once at the public
  entry points (``SignSALD.generate``, ``GaussianDiffusion.sample``, the trainer's datasets) or
  where a skeleton's neighbourhoods are built -- never per op call.

This module imports only torch, so the Triton launchers in ``kernels/`` use it too (one copy of
the q/k/v checks).
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["FLOAT_DTYPES", "check_float", "check_device", "check_qkv", "check_lengths", "validate_lengths",
           "validate_text_mask", "validate_csr"]

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_float(name: str, t: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    """``t`` is a floating tensor of a supported dtype (and equal to ``dtype`` when given)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {t.dtype}; supported: float32, float16, bfloat16, float64")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but the other inputs are {dtype}")


def check_device(ref: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    """Every given tensor (None skipped) is on ``ref``'s device."""
    for name, t in tensors.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but the inputs are on {ref.device}")


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
              check_tensor: Callable[[str, torch.Tensor], None] | None = None,
              max_joints: int | None = None, max_head_dim: int | None = None, who: str = "") -> None:
    """q, k, v are (B, N, J, H, d) tensors of one shape, dtype and device (metadata only).

    ``check_tensor(name, t)``: a launcher's own per-tensor check (dtype support, strides, device
    kind), run instead of :func:`check_float`. ``max_joints`` / ``max_head_dim``: limits of a
    kernel, named by ``who`` in the error.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 5:
            raise ValueError(f"{name} must be (B, N, J, H, d), got shape {tuple(t.shape)}")
        if check_tensor is None:
            check_float(name, t, q.dtype)
        else:
            check_tensor(name, t)
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    check_device(q, k=k, v=v)
    if max_joints is not None and q.shape[2] > max_joints:
        raise ValueError(f"J={q.shape[2]} joints > {max_joints} is not supported by {who or 'this kernel'}")
    if max_head_dim is not None and q.shape[-1] > max_head_dim:
        raise ValueError(f"head dim d={q.shape[-1]} > {max_head_dim} is not supported by {who or 'this kernel'}")


def check_lengths(lengths: torch.Tensor | None, B: int, device: torch.device, who: str = "q") -> None:
    """lengths is None or an int32/int64 (B,) tensor on ``device`` (metadata only: values are
    checked once by :func:`validate_lengths` at the entry points)."""
    if lengths is None:
        return
    if not isinstance(lengths, torch.Tensor) or lengths.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"lengths must be an int32/int64 tensor of shape (B,), got "
                        f"{getattr(lengths, 'dtype', type(lengths).__name__)}")
    if tuple(lengths.shape) != (B,):
        raise ValueError(f"lengths must be (B,) = ({B},), got shape {tuple(lengths.shape)}")
    if lengths.device != device:
        raise ValueError(f"lengths is on {lengths.device} but {who} is on {device}")


def validate_lengths(lengths: torch.Tensor | None, B: int, frames: int, name: str = "lengths",
                     low: int = 1, unit: str = "N'") -> None:
    """Values check (one host read): ``lengths`` (B,) ints all in [low, frames]. Call once per
    batch at an entry point, never per op."""
    if lengths is None:
        return
    if not isinstance(lengths, torch.Tensor) or lengths.dtype.is_floating_point or lengths.dtype == torch.bool \
            or lengths.is_complex():
        raise TypeError(f"{name} must be an int32/int64 tensor (B,), got "
                        f"{getattr(lengths, 'dtype', type(lengths).__name__)}")
    if tuple(lengths.shape) != (B,):
        raise ValueError(f"{name} must be (B,) = ({B},), got shape {tuple(lengths.shape)}")
    if B == 0:
        return
    lo, hi = (int(x) for x in torch.stack([lengths.min(), lengths.max()]).tolist())
    if lo < low or hi > frames:
        raise ValueError(f"{name} must lie in [{low}, {unit}={frames}], got min {lo}, max {hi}")


def validate_text_mask(text_mask: torch.Tensor | None, drop_text: torch.Tensor | None = None) -> None:
    """Values check (one host read): every sample not dropped (``drop_text`` False or None) has
    at least one real token in ``text_mask`` (B, L) bool."""
    if text_mask is None:
        return
    empty = ~text_mask.any(dim=1)
    if drop_text is not None:
        empty = empty & ~drop_text.to(empty.device)
    if not bool(empty.any()):  # the one host read of a valid mask
        return
    bad = empty.nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"text_mask has no real token (all False) for sample(s) {bad} that are not "
                         "dropped; give each sample at least one token or set drop_text")


def validate_csr(indptr: torch.Tensor, indices: torch.Tensor, num_joints: int) -> None:
    """Values check of CSR neighbourhoods over ``num_joints`` joints: indptr (J+1,) from 0 to
    nnz and increasing (no empty row: self loops included), indices (nnz,) in [0, J), each row
    strictly sorted. Reads the tensors on the host; call it where the neighbourhoods are built
    (``STConv``), not per op call. Nothing is cached."""
    for name, t in (("indptr", indptr), ("indices", indices)):
        if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int32, torch.int64) or t.dim() != 1:
            raise TypeError(f"{name} must be a 1-D int32/int64 tensor")
    J = int(num_joints)
    if indptr.numel() != J + 1:
        raise ValueError(f"indptr has {indptr.numel()} entries; J={J} joints need {J + 1}")
    ip = indptr.detach().cpu().long()
    ix = indices.detach().cpu().long()
    if int(ip[0]) != 0 or int(ip[-1]) != ix.numel():
        raise ValueError(f"indptr must start at 0 and end at nnz={ix.numel()}, got {int(ip[0])}..{int(ip[-1])}")
    if bool(((ip[1:] - ip[:-1]) <= 0).any()):
        raise ValueError("every joint needs a non-empty neighbourhood (include the self loop): indptr not increasing")
    if ix.numel() and (int(ix.min()) < 0 or int(ix.max()) >= J):
        raise ValueError(f"indices must lie in [0, {J}), got min {int(ix.min())}, max {int(ix.max())}")
    for i in range(J):
        row = ix[int(ip[i]):int(ip[i + 1])]
        if row.numel() > 1 and bool((row[1:] <= row[:-1]).any()):
            raise ValueError(f"CSR row {i} is not strictly sorted: {row.tolist()}")
