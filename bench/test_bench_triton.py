"""Triton kernels vs the eager reference vs ``torch.compile`` of the reference.

Ops: ``film_residual_layernorm`` (z, h: (B, N', J', D); gamma, beta: (B, D); weight, bias: (D,)),
``temporal_attention`` (q, k, v: (B, N', J', H, d) views of one fused (B, N', J', 3, H, d)
projection, per-sample ``lengths`` in [N'/2, N']) and ``skeletal_attention`` (same q, k, v);
``forward`` and ``forward_backward`` (gradients of every input). Sizes (B, N', J', H x d):
``small`` (8, 32, 7, 8 x 32), ``paper`` (64, 64, 7, 8 x 32: the paper's D = 256) and ``large``
(128, 128, 7, 8 x 32), bf16 on CUDA. Implementations: ``triton`` (the backend function itself,
without the public wrapper's checks), ``reference`` (eager PyTorch, with the permute copies it
makes around its matmuls) and ``compiled_reference`` (``torch.compile`` of the reference op).

Bytes are the ideal one-pass traffic: FiLM+LN forward reads z, h and writes z', y (4
activations), its backward reads dz', dy, h, z' and writes dz, dh (6 more); attention forward
reads q, k, v and writes o (4), its backward reads q, k, v, o, do and writes dq, dk, dv (8 more).
FLOPs: 4 P L^2 d for the forward over P = problems of length L, 3.5x that with the backward.

On the CPU these are skipped when timing (the report says "Triton: needs a GPU") unless the user
set ``TRITON_INTERPRET``; under ``--benchmark-disable`` they run once through the interpreter on
a tiny shape (fp32, ``aot_eager``) so that the harness cannot rot.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from bench._common import CUDA, DEVICE, DTYPE, TRITON_INTERPRET_FROM_USER, TRITON_INTERPRETED, compiled, input_pool

pytest.importorskip("triton")
pytestmark = pytest.mark.triton

from sald_fast.ops import dispatch, reference  # noqa: E402

OPS = ("film_residual_layernorm", "temporal_attention", "skeletal_attention")


@dataclass(frozen=True)
class Shape:
    B: int
    N: int
    J: int
    H: int
    d: int

    @property
    def D(self) -> int:
        return self.H * self.d

    def __str__(self) -> str:
        return f"B={self.B}, N'={self.N}, J'={self.J}, H={self.H}, d={self.d} (D={self.D})"


SIZES = {"small": Shape(8, 32, 7, 8, 32), "paper": Shape(64, 64, 7, 8, 32), "large": Shape(128, 128, 7, 8, 32)}
TINY = Shape(2, 8, 7, 2, 16)


def pytest_generate_tests(metafunc):
    if "size" in metafunc.fixturenames:
        tiny = metafunc.config.getoption("benchmark_disable", default=False) or not CUDA
        metafunc.parametrize("size", ["tiny"] if tiny else list(SIZES))


@pytest.fixture(scope="module", autouse=True)
def triton_runs_here(smoke):
    if not CUDA and not smoke and not TRITON_INTERPRET_FROM_USER:
        pytest.skip("Triton: needs a GPU (on the CPU only the interpreter runs, and its timings mean nothing; "
                    "set TRITON_INTERPRET=1 to time it anyway)")
    if not CUDA and not TRITON_INTERPRETED:
        pytest.skip("Triton: needs a GPU or TRITON_INTERPRET=1")
    if not CUDA:
        from kernels import interpreter_defect

        if interpreter_defect() is not None:
            pytest.skip(interpreter_defect())


def _input_set(op: str, s: Shape, backward: bool, seed: int):
    """(args, leaves, output grads): args for the op; leaves get gradients when ``backward``."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*size):
        return torch.randn(*size, generator=g).to(device=DEVICE, dtype=DTYPE).requires_grad_(backward)

    if op == "film_residual_layernorm":
        leaves = [rnd(s.B, s.N, s.J, s.D), rnd(s.B, s.N, s.J, s.D), rnd(s.B, s.D), rnd(s.B, s.D), rnd(s.D), rnd(s.D)]
        grads = [rnd(s.B, s.N, s.J, s.D).detach(), rnd(s.B, s.N, s.J, s.D).detach()] if backward else []
        return tuple(leaves), leaves, grads
    qkv = rnd(s.B, s.N, s.J, 3, s.H, s.d)
    extra = (torch.randint(s.N // 2, s.N + 1, (s.B,), generator=g).to(DEVICE),) if op == "temporal_attention" else ()
    grads = [rnd(s.B, s.N, s.J, s.H, s.d).detach()] if backward else []
    return (qkv, *extra), [qkv], grads


def _cost(op: str, s: Shape, backward: bool) -> tuple[int, int]:
    """(bytes, FLOPs) of one call, from the shape."""
    act = s.B * s.N * s.J * s.D * (torch.finfo(DTYPE).bits // 8)
    if op == "film_residual_layernorm":
        return act * (10 if backward else 4), 0
    problems, length = (s.B * s.J * s.H, s.N) if op == "temporal_attention" else (s.B * s.N * s.H, s.J)
    flops = 4 * problems * length * length * s.d
    return act * (12 if backward else 4), int(flops * (3.5 if backward else 1.0))


def _implementation(op: str, impl: str, backend: str):
    if impl == "triton":
        try:
            return dispatch.resolve(op, "triton", torch.device(DEVICE))
        except RuntimeError as exc:
            pytest.skip(f"Triton backend unavailable: {exc}")
    fn = getattr(reference, op)
    return fn if impl == "reference" else compiled(fn, backend)


def _step(fn, op: str, backward: bool):
    """One call: the op on (views of) the inputs, then the gradients of every leaf when ``backward``."""

    def step(args, leaves, grads):
        with torch.set_grad_enabled(backward):
            if op == "film_residual_layernorm":
                outs = list(fn(*args))
            else:
                q, k, v = args[0].unbind(3)
                outs = [fn(q, k, v, *args[1:])]
            if backward:
                return torch.autograd.grad(outs, leaves, grads)
            return outs

    return step


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("impl", ["triton", "reference", "compiled_reference"])
@pytest.mark.parametrize("op", OPS)
def test_op(timer, smoke, compile_backend, op, impl, mode, size):
    shape = TINY if size == "tiny" else SIZES[size]
    backward = mode == "forward_backward"
    backend = compile_backend if CUDA else "aot_eager"  # CPU: an interpreter run, tiny shapes; no inductor compile
    fn = _implementation(op, impl, backend)
    pool = input_pool(lambda seed: _input_set(op, shape, backward, seed), smoke)
    nbytes, flops = _cost(op, shape, backward)
    outs = timer(_step(fn, op, backward), pool, group=f"{op} {size} {mode}", impl=impl, nbytes=nbytes, flops=flops,
                 warmup=1 if impl == "reference" else 2, shape=str(shape), dtype=str(DTYPE))
    assert all(torch.isfinite(o).all() for o in outs)
    if smoke and impl != "reference":  # agrees with the reference (the tests check this thoroughly)
        args = pool[0][0]
        want = _step(getattr(reference, op), op, False)(args, [], [])
        got = _step(fn, op, False)(args, [], [])
        for a, b in zip(got, want):
            torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2)
