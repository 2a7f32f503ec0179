"""Backend switch for ``sald_fast.ops``.

Backends: ``reference`` (plain PyTorch, the specification), ``triton`` (kernels/ through
``sald_fast.ops.triton_backend``), ``cuda`` (the C++/CUDA extension, CPU and CUDA tensors, through
``sald_fast.ops.extension_backend``), and ``auto`` (per call, the fastest implementation that can
run the inputs: their device, dtype and shape -- fp64, more joints or a larger head dim than a
kernel handles go to the reference). Backend modules are imported on first use, or earlier by :func:`prepare` (the
models call it when their backend is set, so nothing is imported or built inside a
``torch.compile`` trace), and register their functions with :func:`register`.

A fallback to the reference (``auto`` when a faster implementation cannot load -- e.g. a Triton
import failure -- or cannot take the inputs, or a requested backend without kernels for the
tensor's device) is logged once per (op, backend, device type, reason) at WARNING on the
``sald_fast.ops`` logger. A requested backend that cannot load raises
``RuntimeError`` naming it and the reason. :func:`backend_report` / :func:`backend_line` say which
implementation each op runs.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from typing import Callable, Iterable, Iterator, NamedTuple

import torch

__all__ = ["BACKENDS", "OPS", "IMPLEMENTATIONS", "Inputs", "set_backend", "get_backend", "use_backend", "register",
           "resolve", "available_backends", "prepare", "backend_report", "backend_line", "BackendAttribute"]

logger = logging.getLogger("sald_fast.ops")

BACKENDS = ("reference", "triton", "cuda", "auto")
OPS = ("film_residual_layernorm", "temporal_attention", "skeletal_attention", "skeletal_graph_conv")
# What backend_report calls the implementation of each backend.
IMPLEMENTATIONS = {"reference": "reference", "triton": "triton", "cuda": "extension"}

_BACKEND_MODULES = {
    "triton": "sald_fast.ops.triton_backend",
    "cuda": "sald_fast.ops.extension_backend",
}
# What the fallback messages call each backend.
_LABELS = {"reference": "the reference", "triton": "Triton", "cuda": "extension"}
# For `auto`: which backends to try per op, fastest first; the reference always works. On the CPU,
# film_residual_layernorm takes the extension's fused kernel: one eager training step of the tiny
# denoiser (B=32, N'=28, 1 thread) took 0.93-0.97x the time of the all-reference step (median
# 0.94x over five interleaved runs; FiLM + residual + LayerNorm is ~9% of that step in eager
# PyTorch), the paper shape (B=4, N'=64) 0.99x; under torch.compile it is neutral (1.00x).
_AUTO_ORDER = {
    "film_residual_layernorm": {"cuda_device": ("triton",), "cpu_device": ("cuda",), "cpu_device_no_grad": ()},
    "temporal_attention": {"cuda_device": ("triton",), "cpu_device": ()},
    "skeletal_attention": {"cuda_device": ("triton",), "cpu_device": ()},
    "skeletal_graph_conv": {"cuda_device": ("cuda",), "cpu_device": ("cuda",), "cpu_device_no_grad": ()},
}
# "cpu_device_no_grad": the order on the CPU for calls that do not record autograd (sampling), where
# it differs from "cpu_device" (then used for calls with gradients, and when it is not known). The
# extension's CPU kernels win in training and lose in sampling. Interleaved A/Bs, 2 threads,
# 2026-12-01: the tiny denoiser's training step 0.982x the reference's time with the extension's
# FiLM + LayerNorm (`python -m bench.training_step_ab --reps 9`), the tiny VAE's training step
# (B=32, 112 frames) 1.22x faster with its graph convolution (a scratch A/B); but
# `python -m bench.auto_cpu_ab`, no gradients: generate one sentence 0.94-1.00x (FiLM + LayerNorm),
# decode one sentence 0.59-0.73x (graph convolution; 1.31x with one thread). Why, per op (logged
# once at INFO when a candidate is left out for that reason):
_NO_GRAD_REASONS = {
    "film_residual_layernorm": "slower than the reference in calls without gradients (sampling: "
                               "0.94-1.00x in python -m bench.auto_cpu_ab)",
    "skeletal_graph_conv": "slower than the reference in calls without gradients (decoding: 0.59-0.73x "
                           "in python -m bench.auto_cpu_ab, 2 threads)",
}


class Inputs(NamedTuple):
    """What an implementation's ``supports`` check sees of a call: the device type, the dtype, the
    number of joints J, the head dim d and whether the call records autograd (``grad``: grad mode
    on and an input requiring grad); None where the op has none or it is not known."""

    device_type: str
    dtype: torch.dtype | None = None
    num_joints: int | None = None
    head_dim: int | None = None
    grad: bool | None = None


_IMPLS: dict[str, dict[str, Callable]] = {op: {} for op in OPS}
_DEVICES: dict[tuple[str, str], tuple[str, ...]] = {}  # (op, backend) -> device types it has kernels for
# (op, backend) -> supports(Inputs) -> None, or why the implementation cannot take such inputs
_SUPPORTS: dict[tuple[str, str], Callable[[Inputs], str | None]] = {}
_load_errors: dict[str, str] = {}
_default_backend = "reference"


def register(op: str, backend: str, fn: Callable, devices: Iterable[str] | None = None,
             supports: Callable[[Inputs], str | None] | None = None) -> None:
    """Register ``fn`` as ``backend``'s implementation of ``op`` (called by backend modules).

    ``devices``: the device types (``"cpu"``, ``"cuda"``) ``fn`` has kernels for; tensors on
    other devices get the reference (logged once). None: any device. ``supports``: given the
    :class:`Inputs` of a call, None when ``fn`` can run them, else the reason (``auto`` then takes
    the next candidate; an explicitly requested backend runs ``fn``, whose own checks raise).
    """
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; ops are {OPS}")
    if backend not in ("reference", "triton", "cuda"):
        raise ValueError(f"unknown backend {backend!r}")
    _IMPLS[op][backend] = fn
    _auto_choices.clear()
    if supports is None:
        _SUPPORTS.pop((op, backend), None)
    else:
        _SUPPORTS[(op, backend)] = supports
    if devices is None:
        _DEVICES.pop((op, backend), None)
    else:
        _DEVICES[(op, backend)] = tuple(devices)


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
    return name


def set_backend(name: str) -> None:
    """Set the process-wide default backend used when an op gets ``backend=None`` (and :func:`prepare` it)."""
    global _default_backend
    _default_backend = _check_name(name)
    prepare(name)


def get_backend() -> str:
    """The process-wide default backend (``reference`` unless changed by :func:`set_backend`)."""
    return _default_backend


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Temporarily change the default backend: ``with use_backend("triton"): ...``."""
    global _default_backend
    old = _default_backend
    _default_backend = _check_name(name)
    prepare(name)
    try:
        yield
    finally:
        _default_backend = old


_loaded: set[str] = set()


_importing = False  # True while the dispatcher imports a backend (its module then leaves the logging to us)


def _import_backend(backend: str) -> bool:
    """Import (and so build) the module of ``backend``; False (and the reason kept) when it fails."""
    global _importing
    _importing = True
    try:
        importlib.import_module(_BACKEND_MODULES[backend])
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
        _load_errors[backend] = f"{type(exc).__name__}: {exc}"
        _auto_choices.clear()
        if backend == "triton" and torch.cuda.is_available():  # where auto would have used it: say so
            logger.warning("sald_fast: the Triton backend cannot be imported (%s); auto uses the other "
                           "implementations", _first_line(_load_errors[backend]))
        return False
    finally:
        _importing = False
    _loaded.add(backend)  # later calls stay import-free, so torch.compile can trace through
    _auto_choices.clear()
    return True


def _try_load(backend: str) -> bool:
    """Import the module of ``backend`` once; False (and the reason kept) when it cannot load."""
    if backend == "reference" or backend in _loaded:
        return True
    if backend in _load_errors:
        return False
    if torch.compiler.is_compiling():
        # Not prepared before tracing (see prepare): import outside the trace (one graph break)
        # rather than letting Dynamo trace the import machinery and the build.
        return torch.compiler.disable(_import_backend)(backend)
    return _import_backend(backend)


def available_backends(op: str) -> list[str]:
    """The backends that can run ``op`` in this process (loading backend modules as needed)."""
    for backend in _BACKEND_MODULES:
        _try_load(backend)
    return [b for b in ("reference", "triton", "cuda") if b in _IMPLS[op]]


_noted: set[tuple[str, str, str, str]] = set()


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else text


def _note(op: str, backend: str, device_type: str, reason: str, message: str, level: int = logging.WARNING) -> None:
    """Log ``message`` (at WARNING, or ``level``) once per (op, backend, device type, reason);
    silent while compiling."""
    if torch.compiler.is_compiling():
        return  # resolve runs at trace time: no logging there (prepare / the first eager call logs)
    key = (op, backend, device_type, reason)
    if key in _noted:
        return
    _noted.add(key)
    logger.log(level, message)


def _unusable(op: str, backend: str, device_type: str) -> str | None:
    """Why ``backend`` cannot run ``op`` on ``device_type`` tensors (loading it if needed), or None."""
    if not _try_load(backend):
        return _load_errors[backend]
    if backend not in _IMPLS[op]:
        return f"no {op} implementation"
    devices = _DEVICES.get((op, backend))
    if devices is not None and device_type not in devices:
        return f"no {device_type} kernels in this build"
    return None


def _unsupported(op: str, backend: str, inputs: Inputs) -> str | None:
    """Why ``backend``'s (loaded) implementation of ``op`` cannot take ``inputs``, or None."""
    supports = _SUPPORTS.get((op, backend))
    return None if supports is None else supports(inputs)


# auto's choice per (op, inputs): an eager sampling run resolves the same few inputs thousands of
# times (the choice ~3 us, the lookup well under 1). Emptied whenever what a choice reads changes:
# register() and every backend load (tests that patch the tables clear it themselves).
_auto_choices: dict[tuple[str, Inputs], str] = {}


def clear_auto_choices() -> None:
    """Forget ``auto``'s remembered choices (``register`` and backend loads do it themselves)."""
    _auto_choices.clear()


def _choose(op: str, name: str, device_type: str | Inputs) -> str:
    """The backend whose implementation of ``op`` runs for ``name`` on ``device_type`` tensors, or
    for the :class:`Inputs` given there (logs fallbacks once per reason)."""
    inputs = device_type if isinstance(device_type, Inputs) else Inputs(device_type)
    device_type = inputs.device_type
    if name == "reference":
        return "reference"
    if name == "auto":
        skipped, left_out = [], []  # left_out: usable here, left out for speed (calls without gradients)
        order = _AUTO_ORDER[op]
        candidates = order["cuda_device" if device_type == "cuda" else "cpu_device"]
        if device_type == "cpu" and inputs.grad is False and "cpu_device_no_grad" in order:
            for candidate in candidates:
                if candidate not in order["cpu_device_no_grad"]:
                    reason = _unusable(op, candidate, device_type)
                    if reason is None:
                        left_out.append(candidate)
                    else:
                        skipped.append((candidate, reason, "unavailable"))
            candidates = order["cpu_device_no_grad"]
        for candidate in candidates:
            reason = _unusable(op, candidate, device_type)
            if reason is None:
                reason = _unsupported(op, candidate, inputs)
                if reason is None:
                    chosen = candidate
                    break
                skipped.append((candidate, reason, "cannot take these inputs"))
            else:
                skipped.append((candidate, reason, "unavailable"))
        else:
            chosen = "reference"
        if not torch.compiler.is_compiling():  # no logging (nor message formatting) at trace time
            if left_out:  # a measured preference, not a fault: INFO, naming what actually runs
                why = _NO_GRAD_REASONS.get(op, "measured slower there")
                _note(op, "auto", device_type, why,
                      f"auto: {op} on cpu uses {_LABELS[chosen]} for calls without gradients: the "
                      f"{', '.join(_LABELS[c] for c in left_out)} is {why}", level=logging.INFO)
            for candidate, reason, what in skipped:
                _note(op, "auto", device_type, reason,
                      f"auto: {op} on {device_type} uses {_LABELS[chosen]}: {_LABELS[candidate]} {what} "
                      f"({_first_line(reason)})")
        return chosen
    if not _try_load(name):
        raise RuntimeError(f"backend {name!r} is not available: {_load_errors[name]}")
    if name not in _IMPLS[op]:
        raise RuntimeError(f"backend {name!r} has no implementation of {op}")
    reason = _unusable(op, name, device_type)
    if reason is not None:  # loaded, implemented, but no kernels for this device: the reference runs
        if not torch.compiler.is_compiling():
            _note(op, name, device_type, reason,
                  f"backend {name!r}: {op} on {device_type} uses the reference: {_LABELS[name]} has {reason}")
        return "reference"
    return name


def resolve(op: str, backend: str | None, device: torch.device, dtype: torch.dtype | None = None,
            num_joints: int | None = None, head_dim: int | None = None, grad: bool | None = None) -> Callable:
    """The implementation of ``op`` for ``backend`` (None: the default) on ``device``, for inputs
    of ``dtype`` with ``num_joints`` joints and head dim ``head_dim``, in a call that records
    autograd or not (``grad``) (None: not considered).

    ``auto`` falls back to the reference when no faster implementation can run these inputs
    (reason logged once); a requested backend that cannot load, or lacks ``op``, raises
    ``RuntimeError``. Reads only metadata: safe inside a compiled or captured step.
    """
    name = _check_name(backend) if backend is not None else _default_backend
    if name == "reference":
        return _IMPLS[op]["reference"]
    inputs = Inputs(device.type, dtype, num_joints, head_dim, grad)
    if name != "auto":
        return _IMPLS[op][_choose(op, name, inputs)]
    chosen = _auto_choices.get((op, inputs))
    if chosen is None:
        chosen = _choose(op, name, inputs)
        if not torch.compiler.is_compiling():  # (the first eager call logs the notes)
            _auto_choices[(op, inputs)] = chosen
    return _IMPLS[op][chosen]


def _device_types(device: torch.device | str | None) -> list[str]:
    if device is not None:
        return [torch.device(device).type]
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def prepare(backend: str | None = None, device: torch.device | str | None = None,
            ops: Iterable[str] | None = None) -> None:
    """Load now, outside any ``torch.compile`` trace, the backend modules ``backend`` may use.

    ``backend``: a name of :data:`BACKENDS` or None (the process default); ``device``: the device
    whose implementations to load (None: the CPU, and CUDA when available); ``ops``: the ops to
    prepare (None: all of :data:`OPS`). Imports (and for ``cuda`` JIT-builds) the modules, and
    logs any fallback once. Never raises for an unavailable backend: calling an op on it does.
    """
    name = _check_name(backend) if backend is not None else _default_backend
    names = OPS if ops is None else tuple(ops)
    for op in names:
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}; ops are {OPS}")
    if name == "reference":
        return
    for device_type in _device_types(device):
        for op in names:
            if name != "auto" and (not _try_load(name) or name not in _IMPLS[op]):
                continue  # raises when the op is called
            _choose(op, name, device_type)


class BackendAttribute:
    """Mixin for a model whose ops run on a chosen backend: ``self.backend`` (a name of
    :data:`BACKENDS`, or None for the process default). Setting it checks the name, calls
    :meth:`_backend_changed` (e.g. to pass it to submodules) and runs :func:`prepare` for the ops
    in ``BACKEND_OPS``, so nothing is imported or built inside a ``torch.compile`` trace."""

    BACKEND_OPS: tuple[str, ...] = OPS

    @property
    def backend(self) -> str | None:
        """The :mod:`sald_fast.ops` backend of this model's ops (None: the process default)."""
        return self._backend

    @backend.setter
    def backend(self, value: str | None) -> None:
        if value is not None and value not in BACKENDS:
            raise ValueError(f"unknown backend {value!r}: backend must be None (the process default) "
                             f"or one of {BACKENDS}")
        self._backend = value
        self._backend_changed(value)
        prepare(value, ops=self.BACKEND_OPS)

    def _backend_changed(self, value: str | None) -> None:
        """Called after ``backend`` is set (nothing by default)."""


def backend_report(device: torch.device | str, backend: str | None = None, *, dtype: torch.dtype | None = None,
                   num_joints: int | None = None, head_dim: int | None = None,
                   grad: bool | None = None) -> dict[str, str]:
    """Which implementation each op of :data:`OPS` runs for tensors on ``device`` with ``backend``.

    ``backend``: a name of :data:`BACKENDS` or None (the process default). ``dtype``,
    ``num_joints``, ``head_dim``, ``grad`` (whether the calls record autograd: training True,
    sampling False): describe the inputs (None: not considered), as ``auto`` chooses per call --
    e.g. ``backend_report("cuda", "auto", dtype=torch.float64)`` says ``reference`` for the Triton
    ops, and ``backend_report("cpu", "auto", grad=False)`` the reference for the extension's ops.
    Values: ``"reference"``, ``"triton"``, ``"extension"`` (the C++/CUDA extension), or ``"unavailable"`` when a requested backend cannot run the op or these inputs
    (calling it raises; the reason is logged once). Loads (and builds) the backends now.
    """
    name = _check_name(backend) if backend is not None else _default_backend
    device_type = torch.device(device).type
    report = {}
    for op in OPS:
        inputs = Inputs(device_type, dtype, num_joints, head_dim if "attention" in op else None, grad)
        try:
            chosen = _choose(op, name, inputs)
        except RuntimeError as exc:
            _note(op, name, device_type, str(exc), f"{op} on {device_type} raises: {_first_line(str(exc))}")
            report[op] = "unavailable"
            continue
        reason = _unsupported(op, chosen, inputs) if name != "auto" and chosen != "reference" else None
        if reason is not None:
            _note(op, name, device_type, reason, f"backend {name!r}: {op} on {device_type} raises: {reason}")
            report[op] = "unavailable"
        else:
            report[op] = IMPLEMENTATIONS[chosen]
    return report


def backend_line(device: torch.device | str, backend: str | None = None, **inputs) -> str:
    """One line naming the implementation of every op, as printed at start-up by ``train.full`` and the CLI:

    ``ops on cpu (backend auto): film_residual_layernorm=reference ... skeletal_graph_conv=extension``.
    ``backend`` None means the process default (shown by name); ``inputs``: ``dtype``,
    ``num_joints``, ``head_dim``, ``grad`` as for :func:`backend_report`. Loads (and builds) the backends now.
    """
    name = _check_name(backend) if backend is not None else _default_backend
    report = backend_report(device, name, **inputs)
    return f"ops on {torch.device(device)} (backend {name}): " + " ".join(f"{op}={impl}" for op, impl in report.items())
