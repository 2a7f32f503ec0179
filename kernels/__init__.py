"""Triton kernels for sald_fast's hot paths (one file per op, no nn.Modules, no autograd).

- :mod:`kernels.film_layernorm`: fused FiLM + residual + LayerNorm, forward and backward.
- :mod:`kernels.temporal_attention`: attention over frames (key padding mask), forward and backward.
- :mod:`kernels.skeletal_attention`: attention over joints, many problems per program.

Each file holds ``@triton.jit`` kernels and thin launchers that check devices, dtypes and
strides, allocate outputs and launch with the inputs' device made current (:func:`on_device`). Autograd and ``torch.library`` registration live in
``sald_fast.ops.triton_backend``.

``TRITON_INTERPRET=1`` must be set before Triton kernels are defined (Triton decides at
decoration time) for them to run on CPU tensors; without it the launchers refuse CPU tensors
with a :class:`TritonBackendError`. This module holds the small helpers the launchers share.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Callable

import torch
import triton
import triton.language as tl

__all__ = [
    "mm",
    "dot_in_fp32",
    "TritonBackendError",
    "SUPPORTED_DTYPES",
    "POISON_ENV",
    "is_interpreted",
    "interpreter_defect",
    "check_tensor",
    "new_output",
    "identity_wrap",
    "on_device",
]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
POISON_ENV = "SALD_FAST_TRITON_POISON"
_INT32_MAX = 2**31 - 1


class TritonBackendError(RuntimeError):
    """The Triton backend cannot run these inputs here (e.g. CPU tensors without the interpreter)."""


def is_interpreted(kernel: object) -> bool:
    """True when ``kernel`` was built by Triton's interpreter (``TRITON_INTERPRET=1`` at import)."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - very old triton
        return False
    return isinstance(kernel, InterpretedFunction)


@triton.jit
def _loop_bound_probe(n_ptr, out_ptr):
    """Counts to a loaded scalar: a loop bound read from memory, as the attention kernels have."""
    n = tl.load(n_ptr)
    count = 0
    for _ in range(0, n, 1):
        count += 1
    tl.store(out_ptr, count)


@functools.lru_cache(maxsize=None)
def interpreter_defect() -> str | None:
    """Why Triton's interpreter cannot run the kernels in this environment, or None (also None
    when the kernels are compiled: the interpreter is off).

    Triton 3.6's interpreter turns a loaded scalar into a Python int with ``int()`` of a
    one-element array, which NumPy 2.4 and later refuse ("only 0-dimensional arrays can be
    converted to Python scalars"); a loop bound read from memory (the attention kernels' key
    lengths) hits it. A tiny probe kernel is run once to find out.
    """
    if not is_interpreted(_loop_bound_probe):
        return None
    n, out = torch.tensor([3], dtype=torch.int32), torch.zeros(1, dtype=torch.int32)
    try:
        _loop_bound_probe[(1,)](n, out)
    except Exception as exc:  # the interpreter wraps the NumPy error in its own InterpreterError
        import numpy

        return (f"Triton {triton.__version__}'s interpreter cannot run these kernels with NumPy {numpy.__version__} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); install numpy<2.4 or a "
                "newer Triton to run them on the CPU (compiled kernels on a GPU do not use NumPy)")
    if int(out.item()) != 3:
        return f"Triton {triton.__version__}'s interpreter miscounts a loop bound read from memory ({int(out.item())} != 3)"
    return None


def identity_wrap(kernel: Callable) -> Callable:
    """Default ``wrap`` for the launchers: launch the kernel directly (``wrap_triton`` for tracing)."""
    return kernel


def on_device(t: torch.Tensor):
    """The context a launcher launches in: ``t``'s CUDA device made current. Triton launches on the
    current device, so a tensor on ``cuda:1`` while ``cuda:0`` is current would fail ("Pointer
    argument cannot be accessed from Triton"). A no-op off CUDA and while ``torch.compile`` traces
    (Inductor's generated code makes its graph's device current itself)."""
    if t.device.type != "cuda" or torch.compiler.is_compiling():
        return contextlib.nullcontext()
    return torch.cuda.device(t.device)


def check_tensor(name: str, t: torch.Tensor, kernel: object, dtype: torch.dtype | None = None,
                 device: torch.device | None = None) -> None:
    """Check one kernel input: dtype supported (and equal to ``dtype``), same ``device``, a device
    the kernel can run on, and int32-addressable strides (the kernels index with 32-bit offsets).
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} has dtype {t.dtype}; the triton backend supports float32, float16 and "
                        "bfloat16 (use backend='reference' for float64)")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but the other inputs are {dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but the other inputs are on {device}")
    if t.device.type == "cpu" and not is_interpreted(kernel):
        raise TritonBackendError(
            f"the triton backend got CPU tensor {name}, but Triton's interpreter is off: set "
            "TRITON_INTERPRET=1 before importing triton/sald_fast to run the kernels on the CPU, or use "
            "backend='reference' (or 'auto', which picks the reference on the CPU)")
    if t.device.type == "cpu":
        defect = interpreter_defect()
        if defect is not None:
            raise TritonBackendError(f"the triton backend cannot run CPU tensor {name} here: {defect}; or use "
                                     "backend='reference' (or 'auto', which picks the reference on the CPU)")
    if t.device.type not in ("cpu", "cuda", "meta"):
        raise TritonBackendError(f"{name} is on {t.device}; the triton backend runs on CUDA (or CPU with "
                                 "TRITON_INTERPRET=1)")
    if any(s < 0 for s in t.stride()):
        raise ValueError(f"{name} has negative strides {tuple(t.stride())}")
    span = sum((n - 1) * s for n, s in zip(t.shape, t.stride()) if n > 0)
    if span > _INT32_MAX or t.numel() > _INT32_MAX:
        raise ValueError(f"{name} {tuple(t.shape)} with strides {tuple(t.stride())} spans more than 2**31 "
                         "elements; the kernels use 32-bit offsets")


@triton.jit
def mm(a, b, PRECISION: tl.constexpr, DOT_FP32: tl.constexpr):
    """``tl.dot(a, b)`` with fp32 accumulation; ``DOT_FP32`` upcasts both operands first.

    DOT_FP32 is set only under the interpreter for bfloat16, whose ``tl.dot`` there multiplies
    the raw uint16 bit patterns (triton 3.9 interpreter bug); compiled kernels use bf16 MMAs.
    """
    if DOT_FP32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=PRECISION)


def dot_in_fp32(kernel: object, dtype: torch.dtype) -> bool:
    """The ``DOT_FP32`` flag for :func:`mm`: True for bfloat16 under the interpreter."""
    return is_interpreted(kernel) and dtype == torch.bfloat16


def _poison_requested(poison: bool | None) -> bool:
    if poison is not None:
        return poison
    return os.environ.get(POISON_ENV, "0") not in ("", "0")


def new_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
               poison: bool | None = None) -> torch.Tensor:
    """A fresh contiguous output buffer; filled with NaN when ``poison`` (None: the env var
    ``SALD_FAST_TRITON_POISON`` is set to a non-zero value), so that tests see any element a
    kernel forgot to write."""
    if _poison_requested(poison):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)
