"""The ``triton`` backend of ``sald_fast.ops``: custom ops with fake implementations and autograd.

Six ``torch.library`` ops in the ``sald_fast_triton`` namespace, a forward and a backward per op:

- ``film_ln_fwd(z, h, gamma, beta, weight?, bias?, eps) -> (z', y, mean, rstd)`` /
  ``film_ln_bwd(dz'?, dy?, h, z', gamma, weight?, mean, rstd, has_bias) -> (dz, dh, dgamma, dbeta, dweight, dbias)``
- ``temporal_attn_fwd(q, k, v, lengths?, scale) -> (o, lse)`` /
  ``temporal_attn_bwd(do, q, k, v, o, lse, lengths?, scale) -> (dq, dk, dv)``
- ``skeletal_attn_fwd(q, k, v, scale) -> (o, lse)`` / ``skeletal_attn_bwd(do, q, k, v, o, lse, scale) -> (dq, dk, dv)``

With compiled Triton kernels (a GPU machine) the ops are ``torch.library.triton_op`` s whose
kernels launch through ``wrap_triton``, so ``torch.compile`` sees (and can optimise around) the
kernels; the op body itself is the fake implementation. Under ``TRITON_INTERPRET=1`` (kernels are
interpreter objects that cannot run on fake tensors) the same ops are ``custom_op`` s with
explicit fake implementations: ``torch.compile`` still traces the whole model without graph
breaks, and the interpreter runs at execution time. The backward of every forward op is
registered with ``register_autograd`` and is itself one of these ops, so compiled training
graphs contain no Python autograd.Function.

The three functions registered with the dispatcher take the reference's positional signatures
(``sald_fast/ops/reference.py``). Inputs are validated by the public wrappers in
``sald_fast.ops``; the kernel launchers check again what they rely on (devices, dtypes, strides).
"""

from typing import Optional

import torch

try:
    from torch.library import triton_op, wrap_triton  # noqa: F401  (torch >= 2.6)
except ImportError as exc:  # pragma: no cover - older torch
    raise ImportError(f"the triton backend needs torch >= 2.6 (torch.library.wrap_triton / triton_op); this is "
                      f"torch {torch.__version__}") from exc

from kernels import film_layernorm as _film
from kernels import SUPPORTED_DTYPES, identity_wrap, is_interpreted
from kernels import skeletal_attention as _skel
from kernels import temporal_attention as _temp

from .dispatch import Inputs, register

__all__ = ["NAMESPACE", "INTERPRETED", "film_residual_layernorm", "temporal_attention", "skeletal_attention"]

NAMESPACE = "sald_fast_triton"
INTERPRETED = is_interpreted(_film.film_ln_fwd_kernel)
# how the launchers call a kernel: through wrap_triton (traceable by torch.compile) when compiled;
# directly under the interpreter, where the ops are plain custom ops (torch 2.6's wrap_triton
# refuses an interpreted kernel)
_WRAP = identity_wrap if INTERPRETED else wrap_triton
Tensor = torch.Tensor


def _define(name: str, impl, fake):
    """``triton_op`` with compiled kernels; ``custom_op`` + ``register_fake`` under the interpreter."""
    qualname = f"{NAMESPACE}::{name}"
    if INTERPRETED:
        op = torch.library.custom_op(qualname, impl, mutates_args=())
        op.register_fake(fake)
    else:
        op = torch.library.triton_op(qualname, impl, mutates_args=())
    return op


# ----------------------------------------------------------------------------- FiLM + LayerNorm

def _film_fwd_impl(z: Tensor, h: Tensor, gamma: Tensor, beta: Tensor, weight: Optional[Tensor],
                   bias: Optional[Tensor], eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _film.film_layernorm_forward(z, h, gamma, beta, weight, bias, eps, wrap=_WRAP)


def _film_fwd_fake(z, h, gamma, beta, weight, bias, eps):
    B, N, J, D = z.shape
    stats = z.new_empty((B * N * J,), dtype=torch.float32)
    return z.new_empty((B, N, J, D)), z.new_empty((B, N, J, D)), stats, torch.empty_like(stats)


def _film_bwd_impl(dz_new: Optional[Tensor], dy: Optional[Tensor], h: Tensor, z_new: Tensor, gamma: Tensor,
                   weight: Optional[Tensor], mean: Tensor, rstd: Tensor,
                   has_bias: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _film.film_layernorm_backward(dz_new, dy, h, z_new, gamma, weight, mean, rstd, has_bias,
                                         wrap=_WRAP)


def _film_bwd_fake(dz_new, dy, h, z_new, gamma, weight, mean, rstd, has_bias):
    B, N, J, D = z_new.shape
    f32 = torch.float32
    return (z_new.new_empty((B, N, J, D)), z_new.new_empty((B, N, J, D)), gamma.new_empty((B, D)),
            gamma.new_empty((B, D)), z_new.new_empty((D,) if weight is not None else (0,), dtype=f32),
            z_new.new_empty((D,) if has_bias else (0,), dtype=f32))


film_ln_fwd = _define("film_ln_fwd", _film_fwd_impl, _film_fwd_fake)
film_ln_bwd = _define("film_ln_bwd", _film_bwd_impl, _film_bwd_fake)


def _film_setup(ctx, inputs, output) -> None:
    z, h, gamma, beta, weight, bias, eps = inputs
    z_new, _y, mean, rstd = output
    ctx.save_for_backward(h, z_new, gamma, weight, mean, rstd)
    ctx.has_bias = bias is not None
    ctx.weight_dtype = None if weight is None else weight.dtype
    ctx.bias_dtype = None if bias is None else bias.dtype


def _film_backward(ctx, dz_new, dy, _dmean, _drstd):
    h, z_new, gamma, weight, mean, rstd = ctx.saved_tensors
    dz, dh, dgamma, dbeta, dweight, dbias = film_ln_bwd(dz_new, dy, h, z_new, gamma, weight, mean, rstd,
                                                        ctx.has_bias)
    dweight = dweight.to(ctx.weight_dtype) if ctx.weight_dtype is not None else None
    dbias = dbias.to(ctx.bias_dtype) if ctx.bias_dtype is not None else None
    return dz, dh, dgamma, dbeta, dweight, dbias, None


film_ln_fwd.register_autograd(_film_backward, setup_context=_film_setup)


def film_residual_layernorm(z, h, gamma, beta, weight=None, bias=None, eps=1e-5):
    """Triton ``film_residual_layernorm``: (z (B,N,J,D), h, gamma (B,D), beta, weight?, bias?, eps) -> (z', y)."""
    z_new, y, _mean, _rstd = film_ln_fwd(z, h, gamma, beta, weight, bias, float(eps))
    return z_new, y


# ----------------------------------------------------------------------------- temporal attention

def _attn_fwd_fake(q, *rest):
    B, N, J, H, d = q.shape
    return q.new_empty((B, N, J, H, d)), q.new_empty((B, J, H, N), dtype=torch.float32)


def _skel_fwd_fake(q, k, v, scale):
    B, N, J, H, d = q.shape
    return q.new_empty((B, N, J, H, d)), q.new_empty((B, N, H, J), dtype=torch.float32)


def _attn_bwd_fake(do, q, *rest):
    shape = q.shape
    return q.new_empty(shape), q.new_empty(shape), q.new_empty(shape)


def _temporal_fwd_impl(q: Tensor, k: Tensor, v: Tensor, lengths: Optional[Tensor],
                       scale: float) -> tuple[Tensor, Tensor]:
    return _temp.temporal_attention_forward(q, k, v, lengths, scale, wrap=_WRAP)


def _temporal_bwd_impl(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor,
                       lengths: Optional[Tensor], scale: float) -> tuple[Tensor, Tensor, Tensor]:
    return _temp.temporal_attention_backward(do, q, k, v, o, lse, lengths, scale, wrap=_WRAP)


temporal_attn_fwd = _define("temporal_attn_fwd", _temporal_fwd_impl, _attn_fwd_fake)
temporal_attn_bwd = _define("temporal_attn_bwd", _temporal_bwd_impl, _attn_bwd_fake)


def _temporal_setup(ctx, inputs, output) -> None:
    q, k, v, lengths, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, lengths)
    ctx.scale = scale


def _temporal_backward(ctx, do, _dlse):
    q, k, v, o, lse, lengths = ctx.saved_tensors
    dq, dk, dv = temporal_attn_bwd(do, q, k, v, o, lse, lengths, ctx.scale)
    return dq, dk, dv, None, None


temporal_attn_fwd.register_autograd(_temporal_backward, setup_context=_temporal_setup)


def temporal_attention(q, k, v, lengths=None, scale=None):
    """Triton ``temporal_attention``: q, k, v (B,N,J,H,d) any strides, lengths (B,) or None -> o contiguous."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    o, _lse = temporal_attn_fwd(q, k, v, lengths, scale)
    return o


# ----------------------------------------------------------------------------- skeletal attention

def _skeletal_fwd_impl(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    return _skel.skeletal_attention_forward(q, k, v, scale, wrap=_WRAP)


def _skeletal_bwd_impl(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor,
                       scale: float) -> tuple[Tensor, Tensor, Tensor]:
    return _skel.skeletal_attention_backward(do, q, k, v, o, lse, scale, wrap=_WRAP)


skeletal_attn_fwd = _define("skeletal_attn_fwd", _skeletal_fwd_impl, _skel_fwd_fake)
skeletal_attn_bwd = _define("skeletal_attn_bwd", _skeletal_bwd_impl, _attn_bwd_fake)


def _skeletal_setup(ctx, inputs, output) -> None:
    q, k, v, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse)
    ctx.scale = scale


def _skeletal_backward(ctx, do, _dlse):
    q, k, v, o, lse = ctx.saved_tensors
    dq, dk, dv = skeletal_attn_bwd(do, q, k, v, o, lse, ctx.scale)
    return dq, dk, dv, None


skeletal_attn_fwd.register_autograd(_skeletal_backward, setup_context=_skeletal_setup)


def skeletal_attention(q, k, v, scale=None):
    """Triton ``skeletal_attention``: q, k, v (B,N,J,H,d) any strides -> o (B,N,J,H,d) contiguous."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    o, _lse = skeletal_attn_fwd(q, k, v, scale)
    return o


def _supports(max_joints: int | None = None, max_head_dim: int | None = None):
    """``supports`` for the dispatcher: None when these kernels take the inputs, else why not
    (``auto`` then runs the reference and logs the reason once)."""

    def supports(inputs: Inputs) -> str | None:
        if inputs.dtype is not None and inputs.dtype not in SUPPORTED_DTYPES:
            return f"dtype {inputs.dtype} (the Triton kernels take float32, float16, bfloat16)"
        if inputs.device_type == "cpu" and not INTERPRETED:
            return "CPU tensors need TRITON_INTERPRET=1"
        if max_joints is not None and inputs.num_joints is not None and inputs.num_joints > max_joints:
            return f"J={inputs.num_joints} joints > {max_joints}"
        if max_head_dim is not None and inputs.head_dim is not None and inputs.head_dim > max_head_dim:
            return f"head dim {inputs.head_dim} > {max_head_dim}"
        return None

    return supports


register("film_residual_layernorm", "triton", film_residual_layernorm, supports=_supports())
register("temporal_attention", "triton", temporal_attention, supports=_supports(max_head_dim=_temp.MAX_HEAD_DIM))
register("skeletal_attention", "triton", skeletal_attention,
         supports=_supports(max_joints=_skel.MAX_JOINTS, max_head_dim=_skel.MAX_HEAD_DIM))
