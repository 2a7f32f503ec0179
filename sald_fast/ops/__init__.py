"""The ops the fast kernels replace, behind one backend switch.

Every model module calls these functions, never a kernel directly. Each wrapper validates the
metadata of its inputs (shape, dtype, device: a clear ``ValueError``/``TypeError`` naming the
argument) -- never their values, which would make the host wait for the device in every layer of
every step: lengths, text masks and CSR neighbourhoods are checked once where they enter
(:func:`validate_lengths`, :func:`validate_text_mask`, :func:`validate_csr`, called by the
pipeline, the sampler, the trainer's datasets and ``STConv``). It then opens an NVTX range and
calls the implementation chosen by ``backend`` (per call) or by :func:`set_backend` /
:func:`use_backend` (process default, initially ``"reference"``); ``auto`` chooses per call from
the inputs' device, dtype and shape.

:func:`backend_report` / :func:`backend_line` say which implementation each op runs on a device
(``train.full`` and the ``sald-fast`` command print the line at start); :func:`prepare` loads (and
builds) a backend's modules ahead of time, so ``torch.compile`` never traces an import. Fallbacks
to the reference are logged once on the ``sald_fast.ops`` logger.
"""

from __future__ import annotations

import torch

from ..profiling import nvtx_range
from . import checks
from . import reference  # noqa: F401  (registers the reference implementations)
from .checks import validate_csr, validate_lengths, validate_text_mask
from .dispatch import (BACKENDS, IMPLEMENTATIONS, OPS, available_backends, backend_line, backend_report, get_backend,
                       prepare, register, resolve, set_backend, use_backend)

__all__ = [
    "film_residual_layernorm",
    "temporal_attention",
    "skeletal_attention",
    "skeletal_graph_conv",
    "set_backend",
    "get_backend",
    "use_backend",
    "available_backends",
    "register",
    "prepare",
    "backend_report",
    "backend_line",
    "BACKENDS",
    "OPS",
    "IMPLEMENTATIONS",
    "validate_csr",
    "validate_lengths",
    "validate_text_mask",
]

FLOAT_DTYPES = checks.FLOAT_DTYPES
_check_float = checks.check_float
_check_device = checks.check_device


def _records_grad(*tensors) -> bool:
    """Whether a call on ``tensors`` records autograd (grad mode on, an input requiring grad): part
    of ``auto``'s choice on the CPU. Reads metadata only."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def film_residual_layernorm(z, h, gamma, beta, weight=None, bias=None, eps: float = 1e-5, *, backend=None):
    """Fused FiLM + residual + LayerNorm: ``z' = z + gamma*h + beta``, ``y = LN(z')``.

    z, h: (B, N, J, D); gamma, beta: (B, D); weight, bias: (D,) or None (no affine).
    Returns (z', y), both (B, N, J, D) in z's dtype.
    """
    _check_float("z", z)
    if z.dim() != 4:
        raise ValueError(f"z must be (B, N, J, D), got shape {tuple(z.shape)}")
    B, N, J, D = z.shape
    _check_float("h", h, z.dtype)
    if h.shape != z.shape:
        raise ValueError(f"h has shape {tuple(h.shape)} but z has {tuple(z.shape)}")
    for name, t in (("gamma", gamma), ("beta", beta)):
        _check_float(name, t, z.dtype)
        if t.shape != (B, D):
            raise ValueError(f"{name} must be (B, D) = {(B, D)}, got {tuple(t.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            _check_float(name, t)
            if t.shape != (D,):
                raise ValueError(f"{name} must be (D,) = {(D,)}, got {tuple(t.shape)}")
    _check_device(z, h=h, gamma=gamma, beta=beta, weight=weight, bias=bias)
    fn = resolve("film_residual_layernorm", backend, z.device, z.dtype, J,
                 grad=_records_grad(z, h, gamma, beta, weight, bias))
    with nvtx_range("film_residual_layernorm"):
        return fn(z, h, gamma, beta, weight, bias, eps)


def temporal_attention(q, k, v, lengths=None, *, scale: float | None = None, backend=None):
    """Softmax attention over frames for every (batch, joint, head), with a key padding mask.

    q, k, v: (B, N, J, H, d), any strides (e.g. views into a fused qkv projection).
    lengths: (B,) integers in [0, N], or None for all frames valid. Keys at frames >= lengths[b]
    are ignored; a sample with length 0 gets an all-zero output. Returns o: (B, N, J, H, d).
    Only the metadata of ``lengths`` is checked here (values: :func:`validate_lengths` once per
    batch; implementations clamp them to [0, N]).
    """
    checks.check_qkv(q, k, v)
    checks.check_lengths(lengths, q.shape[0], q.device)
    fn = resolve("temporal_attention", backend, q.device, q.dtype, q.shape[2], q.shape[-1])
    with nvtx_range("temporal_attention"):
        return fn(q, k, v, lengths, scale)


def skeletal_attention(q, k, v, *, scale: float | None = None, backend=None):
    """Softmax attention over joints for every (batch, frame, head).

    q, k, v: (B, N, J, H, d), any strides. Returns o: (B, N, J, H, d).
    """
    checks.check_qkv(q, k, v)
    fn = resolve("skeletal_attention", backend, q.device, q.dtype, q.shape[2], q.shape[-1])
    with nvtx_range("skeletal_attention"):
        return fn(q, k, v, scale)


def skeletal_graph_conv(h, indptr, indices, w_self, w_neigh, bias=None, *, backend=None):
    """Skeletal graph convolution: ``out_i = W_self h_i + W_neigh mean_{j in N(i)} h_j + b``.

    h: (B, N, J, C_in); indptr (J+1,), indices (nnz,): integer CSR neighbourhoods over the J
    joints (self loops included, each row sorted); w_self, w_neigh: (C_out, C_in); bias: (C_out,).
    Returns (B, N, J, C_out). Only the CSR's metadata is checked here; its values once, where it is
    built (:func:`validate_csr`, e.g. by ``STConv``).
    """
    _check_float("h", h)
    if h.dim() != 4:
        raise ValueError(f"h must be (B, N, J, C_in), got shape {tuple(h.shape)}")
    J, C_in = h.shape[2], h.shape[3]
    for name, t in (("indptr", indptr), ("indices", indices)):
        if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int32, torch.int64) or t.dim() != 1:
            raise TypeError(f"{name} must be a 1-D int32/int64 tensor")
    if indptr.numel() != J + 1:
        raise ValueError(f"indptr has {indptr.numel()} entries; h has J={J} joints, so it needs {J + 1}")
    for name, w in (("w_self", w_self), ("w_neigh", w_neigh)):
        _check_float(name, w, h.dtype)
        if w.dim() != 2 or w.shape[1] != C_in:
            raise ValueError(f"{name} must be (C_out, C_in={C_in}), got {tuple(w.shape)}")
    if w_neigh.shape != w_self.shape:
        raise ValueError(f"w_neigh {tuple(w_neigh.shape)} and w_self {tuple(w_self.shape)} differ")
    if bias is not None:
        _check_float("bias", bias, h.dtype)
        if bias.shape != (w_self.shape[0],):
            raise ValueError(f"bias must be (C_out,) = ({w_self.shape[0]},), got {tuple(bias.shape)}")
    _check_device(h, indptr=indptr, indices=indices, w_self=w_self, w_neigh=w_neigh, bias=bias)
    fn = resolve("skeletal_graph_conv", backend, h.device, h.dtype, J,
                 grad=_records_grad(h, w_self, w_neigh, bias))
    with nvtx_range("skeletal_graph_conv"):
        return fn(h, indptr, indices, w_self, w_neigh, bias)
