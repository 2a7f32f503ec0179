"""The ``cuda`` backend of ``sald_fast.ops``: the C++/CUDA extension in ``csrc/`` (CPU and CUDA tensors).

Importing this module JIT-builds the extension with ``torch.utils.cpp_extension.load`` (ninja),
once per source version: the build lives in ``~/.cache/sald_fast/ext-<hash>`` (or
``$SALD_FAST_EXT_DIR/ext-<hash>``), where the hash covers the sources, the flags, the compiler
name and the torch / CUDA / Python versions. The CUDA kernels (``csrc/cuda/*.cu``) are compiled only
when torch has CUDA and ``CUDA_HOME`` (nvcc) is usable; otherwise the CPU kernels alone are built
and CUDA tensors fall back to the reference with a one-line notice. If the build is impossible
(no C++ compiler, no ninja, a compile error) the import raises ``ImportError`` saying why; the
dispatcher then reports the backend as unavailable (a requested ``cuda`` raises ``RuntimeError``)
and ``auto`` uses the reference, logging the reason once. Imported directly (not by the
dispatcher), the failing import also logs one line.

Ops, in the ``sald_fast_ext`` torch.library namespace (schemas in ``csrc/binding.cpp``):

- ``graph_conv(h, indptr, indices, w_self, w_neigh, bias?) -> out``: the skeletal graph
  convolution; its backward ``graph_conv_backward(grad_out, h, indptr, indices, w_self, w_neigh,
  has_bias, compute_dh, compute_dw) -> (dh, dw_self, dw_neigh, dbias)`` is itself an op, so
  compiled training graphs hold no Python autograd.Function.
- ``csr_mean_aggregate(x, indptr, indices, transpose) -> A x`` (or ``A^T x``), ``A`` the row-mean
  neighbourhood matrix; differentiable (its gradient is the other one).
- ``film_layernorm(z, h, gamma, beta, weight?, bias?, eps) -> (z', y)``: the fused FiLM + residual
  + LayerNorm, CPU kernels only (``csrc/cpu/film_layernorm.cpp``; CUDA tensors get the
  reference); its backward ``film_layernorm_backward(grad_z?, grad_y?, z_new, h, gamma, weight?,
  bias?, eps, compute_dz, compute_dh, compute_dfilm, compute_daffine) -> (dz, dh, dgamma, dbeta,
  dweight, dbias)`` is an op too (it recomputes the row statistics from the saved z').

Fake (meta) implementations and autograd are registered here with ``torch.library``, so
``torch.compile(fullgraph=True)`` traces through the ops with no graph breaks.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

import torch
from torch.utils import cpp_extension

from . import dispatch as _dispatch
from .dispatch import register

__all__ = ["NAMESPACE", "CSRC_DIR", "WITH_CUDA", "DEVICE_TYPES", "FILM_DEVICE_TYPES", "BUILD_DIR", "BUILD_SECONDS",
           "skeletal_graph_conv", "film_residual_layernorm", "csr_mean_aggregate", "load_extension"]

logger = logging.getLogger(__name__)

NAMESPACE = "sald_fast_ext"
CSRC_DIR = Path(__file__).resolve().parents[2] / "csrc"
_CPU_SOURCES = ("binding.cpp", "cpu/graph_conv.cpp", "cpu/film_layernorm.cpp")
_CUDA_SOURCES = ("cuda/graph_conv.cu",)
_HEADERS = ("cuda/graph_conv.h", "cpu/common.h", "cpu/film_layernorm_kernels.h")
_CFLAGS = ("-O3", "-fopenmp")
_LDFLAGS = ("-fopenmp",)
_CUDA_CFLAGS = ("-O3",)
Tensor = torch.Tensor


def _cuda_buildable() -> bool:
    """CUDA torch and a usable CUDA toolkit (``CUDA_HOME`` with nvcc)."""
    if torch.version.cuda is None or not torch.cuda.is_available():
        return False
    home = cpp_extension.CUDA_HOME
    return home is not None and (Path(home) / "bin" / "nvcc").exists()


def _version_hash(with_cuda: bool) -> str:
    h = hashlib.sha256()
    for rel in _CPU_SOURCES + _CUDA_SOURCES + _HEADERS:
        h.update(rel.encode())
        h.update((CSRC_DIR / rel).read_bytes())
    flags = _CFLAGS + _LDFLAGS + (_CUDA_CFLAGS if with_cuda else ())
    for part in (torch.__version__, str(torch.version.cuda), str(with_cuda), sys.version, platform.machine(),
                 " ".join(flags), os.environ.get("CXX", "c++")):
        h.update(part.encode())
    return h.hexdigest()[:16]


def _cache_root() -> Path:
    root = os.environ.get("SALD_FAST_EXT_DIR")
    return Path(root) if root else Path.home() / ".cache" / "sald_fast"


STALE_LOCK_SECONDS = 300.0  # a cold build takes about 20 s on 2 CPU cores


def _clear_stale_lock(lock: Path, stale_after: float = STALE_LOCK_SECONDS, poll: float = 0.5) -> None:
    """Wait while another process builds into ``lock``'s folder; remove the lock of a build that
    died (killed mid-build: the lock is never removed, and torch's loader would wait forever)
    once it is ``stale_after`` seconds old, with a warning."""
    announced = False
    while True:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return
        if age > stale_after:
            logger.warning("sald_fast: removing the stale build lock %s (%.0f s old: a build was interrupted); "
                           "rebuilding", lock, age)
            lock.unlink(missing_ok=True)
            return
        if not announced:
            logger.warning("sald_fast: waiting for another process to finish building the extension (%s)", lock)
            announced = True
        time.sleep(poll)


def _build(with_cuda: bool, verbose: bool) -> Path:
    """JIT-build (or load the cached build of) the sources into ``<cache>/ext-<hash>``; ImportError on failure."""
    sources = [str(CSRC_DIR / rel) for rel in _CPU_SOURCES + (_CUDA_SOURCES if with_cuda else ())]
    digest = _version_hash(with_cuda)
    build_dir = _cache_root() / f"ext-{digest}"
    build_dir.mkdir(parents=True, exist_ok=True)
    _clear_stale_lock(build_dir / "lock")
    cflags = list(_CFLAGS) + (["-DSALD_FAST_WITH_CUDA"] if with_cuda else [])
    try:
        cpp_extension.load(name=f"sald_fast_ext_{digest}", sources=sources, build_directory=str(build_dir),
                           extra_cflags=cflags, extra_ldflags=list(_LDFLAGS), extra_cuda_cflags=list(_CUDA_CFLAGS),
                           with_cuda=with_cuda, is_python_module=False, verbose=verbose)
    except Exception as exc:  # noqa: BLE001 - a compile/link error of any kind means "not available"
        lines = [line for line in str(exc).splitlines() if line.strip()]
        tail = "\n".join(lines[-25:])
        raise ImportError(f"sald_fast extension: the build in {build_dir} failed "
                          f"({type(exc).__name__}):\n{tail}") from exc
    return build_dir


def load_extension(verbose: bool = False) -> tuple[Path, bool, float]:
    """Build (or reuse the cached build of) the extension and load it into torch.

    Returns (build directory, whether the CUDA kernels are in it, seconds spent building or
    loading). Raises ImportError naming the missing tool or the compile error.
    """
    missing = [rel for rel in _CPU_SOURCES + _HEADERS if not (CSRC_DIR / rel).exists()]
    if missing:
        raise ImportError(f"sald_fast extension sources not found under {CSRC_DIR}: {missing} "
                          "(install sald_fast from a source checkout to use backend 'cuda')")
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx.split()[0] if cxx.strip() else "c++") is None:
        raise ImportError(f"sald_fast extension: no C++ compiler found ({cxx!r} is not on PATH); "
                          "install g++ or set CXX to build backend 'cuda'")
    if not cpp_extension.is_ninja_available():
        raise ImportError("sald_fast extension: the build needs ninja (pip install ninja)")
    with_cuda = _cuda_buildable()
    if torch.version.cuda is not None and torch.cuda.is_available() and not with_cuda:
        logger.warning("sald_fast: nvcc / CUDA_HOME not found; the extension is built for CPU tensors only "
                       "(CUDA tensors use the reference graph convolution)")
    start = time.perf_counter()
    try:
        build_dir = _build(with_cuda, verbose)
    except ImportError as exc:
        if not with_cuda:
            raise
        logger.warning("sald_fast: the CUDA build of the extension failed; retrying for CPU tensors only (%s)",
                       str(exc).splitlines()[0])
        with_cuda = False
        build_dir = _build(with_cuda, verbose)
    return build_dir, with_cuda, time.perf_counter() - start


try:
    BUILD_DIR, WITH_CUDA, BUILD_SECONDS = load_extension(verbose=os.environ.get("SALD_FAST_EXT_VERBOSE") == "1")
except ImportError as _exc:
    if not _dispatch._importing:  # through the dispatcher, it logs the fallback (auto) or raises (cuda)
        logger.warning("sald_fast: C++/CUDA extension unavailable, skeletal_graph_conv and film_residual_layernorm "
                       "use the reference (%s)", str(_exc).splitlines()[0])
    raise
logger.info("sald_fast: extension ready in %.1f s (%s, CUDA kernels: %s)", BUILD_SECONDS, BUILD_DIR, WITH_CUDA)

_ops = getattr(torch.ops, NAMESPACE)


# --------------------------------------------------------------------------------- fake kernels

@torch.library.register_fake(f"{NAMESPACE}::graph_conv")
def _graph_conv_fake(h, indptr, indices, w_self, w_neigh, bias=None):
    torch._check(h.dim() == 4, lambda: f"h must be (B, N, J, C_in), got {tuple(h.shape)}")
    torch._check(w_self.shape[1] == h.shape[3], lambda: "w_self must be (C_out, C_in)")
    B, N, J, _ = h.shape
    return h.new_empty((B, N, J, w_self.shape[0]))


@torch.library.register_fake(f"{NAMESPACE}::graph_conv_backward")
def _graph_conv_backward_fake(grad_out, h, indptr, indices, w_self, w_neigh, has_bias, compute_dh, compute_dw):
    dh = h.new_empty(h.shape) if compute_dh else h.new_empty((0,))
    dws = w_self.new_empty(w_self.shape) if compute_dw else w_self.new_empty((0,))
    dwn = w_neigh.new_empty(w_neigh.shape) if compute_dw else w_neigh.new_empty((0,))
    db = h.new_empty((w_self.shape[0],)) if has_bias else h.new_empty((0,))
    return dh, dws, dwn, db


@torch.library.register_fake(f"{NAMESPACE}::csr_mean_aggregate")
def _csr_mean_aggregate_fake(x, indptr, indices, transpose):
    return x.new_empty(x.shape)


@torch.library.register_fake(f"{NAMESPACE}::film_layernorm")
def _film_layernorm_fake(z, h, gamma, beta, weight=None, bias=None, eps=1e-5):
    torch._check(z.dim() == 4, lambda: f"z must be (B, N, J, D), got {tuple(z.shape)}")
    return z.new_empty(z.shape), z.new_empty(z.shape)


@torch.library.register_fake(f"{NAMESPACE}::film_layernorm_backward")
def _film_layernorm_backward_fake(grad_z, grad_y, z_new, h, gamma, weight, bias, eps, compute_dz, compute_dh,
                                  compute_dfilm, compute_daffine):
    def like(t, wanted):  # unwanted / absent outputs are (0,) in z_new's dtype, as the kernel returns them
        return t.new_empty(t.shape) if wanted else z_new.new_empty((0,))

    return (like(z_new, compute_dz), like(z_new, compute_dh), like(gamma, compute_dfilm), like(gamma, compute_dfilm),
            like(weight, compute_daffine and weight is not None), like(bias, compute_daffine and bias is not None))


# ------------------------------------------------------------------------------------- autograd

def _graph_conv_setup(ctx, inputs, output):
    h, indptr, indices, w_self, w_neigh, bias = inputs
    ctx.save_for_backward(h, indptr, indices, w_self, w_neigh)
    ctx.has_bias = bias is not None


def _graph_conv_backward(ctx, grad_out):
    h, indptr, indices, w_self, w_neigh = ctx.saved_tensors
    need = ctx.needs_input_grad
    compute_dh, compute_dw = bool(need[0]), bool(need[3] or need[4])
    dh, dws, dwn, db = _ops.graph_conv_backward(grad_out, h, indptr, indices, w_self, w_neigh,
                                                ctx.has_bias, compute_dh, compute_dw)
    return (dh if compute_dh else None, None, None, dws if need[3] else None, dwn if need[4] else None,
            db if ctx.has_bias and need[5] else None)


torch.library.register_autograd(f"{NAMESPACE}::graph_conv", _graph_conv_backward, setup_context=_graph_conv_setup)


def _aggregate_setup(ctx, inputs, output):
    _, indptr, indices, transpose = inputs
    ctx.save_for_backward(indptr, indices)
    ctx.transpose = transpose


def _aggregate_backward(ctx, grad):
    indptr, indices = ctx.saved_tensors
    return _ops.csr_mean_aggregate(grad, indptr, indices, not ctx.transpose), None, None, None


torch.library.register_autograd(f"{NAMESPACE}::csr_mean_aggregate", _aggregate_backward,
                                setup_context=_aggregate_setup)


def _film_setup(ctx, inputs, output):
    z, h, gamma, beta, weight, bias, eps = inputs
    ctx.save_for_backward(output[0], h, gamma, weight, bias)
    ctx.eps = eps


def _film_backward(ctx, grad_z, grad_y):
    z_new, h, gamma, weight, bias = ctx.saved_tensors
    need = ctx.needs_input_grad
    compute_dfilm, compute_daffine = bool(need[2] or need[3]), bool(need[4] or need[5])
    dz, dh, dgamma, dbeta, dweight, dbias = _ops.film_layernorm_backward(
        grad_z, grad_y, z_new, h, gamma, weight, bias, ctx.eps, bool(need[0]), bool(need[1]), compute_dfilm,
        compute_daffine)
    return (dz if need[0] else None, dh if need[1] else None, dgamma if need[2] else None,
            dbeta if need[3] else None, dweight if weight is not None and need[4] else None,
            dbias if bias is not None and need[5] else None, None)


torch.library.register_autograd(f"{NAMESPACE}::film_layernorm", _film_backward, setup_context=_film_setup)


# --------------------------------------------------------------------------------- public calls

_fallback_noted: set[str] = set()


DEVICE_TYPES = ("cpu", "cuda") if WITH_CUDA else ("cpu",)
FILM_DEVICE_TYPES = ("cpu",)  # film_layernorm has CPU kernels only (CUDA: the Triton backend)


def _runs_here(device: torch.device, devices: tuple[str, ...] = DEVICE_TYPES) -> bool:
    return device.type in devices


def _note_fallback(device: torch.device, op: str = "skeletal_graph_conv") -> None:
    key = f"{op}:{device.type}"
    if not torch.compiler.is_compiling() and key not in _fallback_noted:
        _fallback_noted.add(key)
        logger.warning("sald_fast: the extension has no %s kernels in this build; %s uses the reference on %s tensors",
                       device.type, op, device.type)


def skeletal_graph_conv(h: Tensor, indptr: Tensor, indices: Tensor, w_self: Tensor, w_neigh: Tensor,
                        bias: Optional[Tensor] = None) -> Tensor:
    """``out_i = W_self h_i + W_neigh mean_{j in N(i)} h_j + b`` with the extension's kernels.

    h: (B, N, J, C_in), any strides; indptr (J+1,), indices (nnz,) int32/int64 CSR (self loops,
    sorted rows); w_self, w_neigh: (C_out, C_in); bias: (C_out,) or None. Returns
    (B, N, J, C_out), contiguous, in h's dtype (fp32 accumulation for fp16/bf16).
    """
    if not _runs_here(h.device):
        _note_fallback(h.device)
        from .reference import skeletal_graph_conv as reference

        return reference(h, indptr, indices, w_self, w_neigh, bias)
    return _ops.graph_conv(h, indptr, indices, w_self, w_neigh, bias)


def film_residual_layernorm(z: Tensor, h: Tensor, gamma: Tensor, beta: Tensor, weight: Optional[Tensor] = None,
                            bias: Optional[Tensor] = None, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """``z' = z + gamma * h + beta``, ``y = LayerNorm(z')`` (affine when weight / bias given), fused.

    z, h: (B, N, J, D), any strides; gamma, beta: (B, D); weight, bias: (D,) or None. Returns
    (z', y), contiguous, in z's dtype (fp32 statistics for fp16/bf16, fp64 for fp64). CPU tensors
    run the extension's kernels; others the reference (logged once).
    """
    if not _runs_here(z.device, FILM_DEVICE_TYPES):
        _note_fallback(z.device, "film_residual_layernorm")
        from .reference import film_residual_layernorm as reference

        return reference(z, h, gamma, beta, weight, bias, eps)
    z_new, y = _ops.film_layernorm(z, h, gamma, beta, weight, bias, float(eps))
    return z_new, y


def csr_mean_aggregate(x: Tensor, indptr: Tensor, indices: Tensor, transpose: bool = False) -> Tensor:
    """The neighbourhood mean ``(A x)_i = mean_{j in N(i)} x_j`` per frame (``A^T x`` if ``transpose``).

    x: (B, N, J, C), any strides; CSR as in :func:`skeletal_graph_conv`. Returns (B, N, J, C).
    """
    return _ops.csr_mean_aggregate(x, indptr, indices, transpose)


# The dispatcher sends tensors on other devices to the reference itself (and logs it once).
register("skeletal_graph_conv", "cuda", skeletal_graph_conv, devices=DEVICE_TYPES)
register("film_residual_layernorm", "cuda", film_residual_layernorm, devices=FILM_DEVICE_TYPES)
