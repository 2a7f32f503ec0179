"""Backend switch for ``sald_fast.ops``.

Backends: ``reference`` (plain PyTorch, the specification), ``triton`` (kernels/ through
``sald_fast.ops.triton_backend``), ``cuda`` (the C++/CUDA extension, CPU and CUDA tensors, through
``sald_fast.ops.extension_backend``), and ``auto`` (the fastest one available for the tensor's
device, per op). Backend modules are imported lazily and register their functions with
:func:`register`.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Callable, Iterator

import torch

__all__ = ["BACKENDS", "OPS", "set_backend", "get_backend", "use_backend", "register", "resolve",
           "available_backends"]

BACKENDS = ("reference", "triton", "cuda", "auto")
OPS = ("film_residual_layernorm", "temporal_attention", "skeletal_attention", "skeletal_graph_conv")

_BACKEND_MODULES = {
    "triton": "sald_fast.ops.triton_backend",
    "cuda": "sald_fast.ops.extension_backend",
}
# For `auto`: which backends to try per op, fastest first; the reference always works.
_AUTO_ORDER = {
    "film_residual_layernorm": {"cuda_device": ("triton",), "cpu_device": ()},
    "temporal_attention": {"cuda_device": ("triton",), "cpu_device": ()},
    "skeletal_attention": {"cuda_device": ("triton",), "cpu_device": ()},
    "skeletal_graph_conv": {"cuda_device": ("cuda",), "cpu_device": ("cuda",)},
}

_IMPLS: dict[str, dict[str, Callable]] = {op: {} for op in OPS}
_load_errors: dict[str, str] = {}
_default_backend = "reference"


def register(op: str, backend: str, fn: Callable) -> None:
    """Register ``fn`` as ``backend``'s implementation of ``op`` (called by backend modules)."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; ops are {OPS}")
    if backend not in ("reference", "triton", "cuda"):
        raise ValueError(f"unknown backend {backend!r}")
    _IMPLS[op][backend] = fn


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
    return name


def set_backend(name: str) -> None:
    """Set the process-wide default backend used when an op gets ``backend=None``."""
    global _default_backend
    _default_backend = _check_name(name)


def get_backend() -> str:
    """The process-wide default backend (``reference`` unless changed by :func:`set_backend`)."""
    return _default_backend


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Temporarily change the default backend: ``with use_backend("triton"): ...``."""
    global _default_backend
    old = _default_backend
    _default_backend = _check_name(name)
    try:
        yield
    finally:
        _default_backend = old


_loaded: set[str] = set()


def _try_load(backend: str) -> bool:
    """Import the module of ``backend`` once; False (and the reason kept) when it cannot load."""
    if backend == "reference" or backend in _loaded:
        return True
    if backend in _load_errors:
        return False
    module = _BACKEND_MODULES[backend]
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
        _load_errors[backend] = f"{type(exc).__name__}: {exc}"
        return False
    _loaded.add(backend)  # later calls stay import-free, so torch.compile can trace through
    return True


def available_backends(op: str) -> list[str]:
    """The backends that can run ``op`` in this process (loading backend modules as needed)."""
    for backend in _BACKEND_MODULES:
        _try_load(backend)
    return [b for b in ("reference", "triton", "cuda") if b in _IMPLS[op]]


def resolve(op: str, backend: str | None, device: torch.device) -> Callable:
    """The implementation of ``op`` for ``backend`` (None: the default) on ``device``."""
    name = _check_name(backend) if backend is not None else _default_backend
    if name == "auto":
        order = _AUTO_ORDER[op]["cuda_device" if device.type == "cuda" else "cpu_device"]
        for candidate in order:
            if _try_load(candidate) and candidate in _IMPLS[op]:
                return _IMPLS[op][candidate]
        return _IMPLS[op]["reference"]
    if name != "reference" and not _try_load(name):
        raise RuntimeError(f"backend {name!r} is not available: {_load_errors[name]}")
    if name not in _IMPLS[op]:
        raise RuntimeError(f"backend {name!r} has no implementation of {op}")
    return _IMPLS[op][name]
