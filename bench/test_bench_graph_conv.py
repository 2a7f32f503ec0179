"""The C++/CUDA extension's skeletal graph convolution vs the eager reference vs ``torch.compile`` of it.

``out_i = W_self h_i + W_neigh mean_{j in N(i)} h_j + b`` on the 44-joint skeleton; h: (B, N, J, C_in),
w_self, w_neigh: (C_out, C_in), bias (C_out,). Sizes (B, N, J, C_in -> C_out): ``small`` (8, 64,
44, 64 -> 64), ``vae`` (128, 256, 44, 64 -> 64: the paper VAE's batch and clip length, the shape of the
extension's CPU >= 3x target) and ``large`` (128, 256, 44, 128 -> 128); bf16 on CUDA, fp32 on
the CPU. Implementations:
``extension`` (backend ``cuda``: the C++ kernels on the CPU, the CUDA kernels on a GPU),
``reference`` (eager: dense J x J aggregation, einsum, two matmuls) and ``compiled_reference``.
``forward`` and ``forward_backward`` (gradients of h, both weights and the bias).

Bytes: the forward reads h and writes out, the backward reads dout and h and writes dh (weights
are small). FLOPs: the two matmuls (4 rows C_in C_out) plus the neighbour sums, three times the
matmuls with the backward. The ``csr_mean_aggregate`` group times the aggregation alone (and its
transpose) next to a copy of the same tensor: the bandwidth yardstick.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from bench._common import CUDA, DEVICE, DTYPE, compiled, device_copy, input_pool

try:
    from sald_fast.ops import extension_backend as ext
except ImportError as exc:  # no C++ compiler: nothing to compare
    pytest.skip(f"the C++/CUDA extension is unavailable: {str(exc).splitlines()[0]}", allow_module_level=True)

from sald_fast.ops import dispatch, reference  # noqa: E402
from sald_fast.skeleton import SIGNING_SKELETON  # noqa: E402


@dataclass(frozen=True)
class Size:
    B: int
    N: int
    J: int
    C_in: int
    C_out: int

    @property
    def rows(self) -> int:
        return self.B * self.N * self.J

    def __str__(self) -> str:
        return f"B={self.B}, N={self.N}, J={self.J}, C={self.C_in}->{self.C_out}"


SIZES = {"small": Size(8, 64, 44, 64, 64), "vae": Size(128, 256, 44, 64, 64), "large": Size(128, 256, 44, 128, 128)}
TINY = Size(2, 4, 44, 16, 16)
ELEM = torch.finfo(DTYPE).bits // 8


def pytest_generate_tests(metafunc):
    if "size" in metafunc.fixturenames:
        smoke = metafunc.config.getoption("benchmark_disable", default=False)
        metafunc.parametrize("size", ["tiny"] if smoke else list(SIZES))


def _size(name: str) -> Size:
    return TINY if name == "tiny" else SIZES[name]


def _input_set(s: Size, backward: bool, seed: int):
    """(h, w_self, w_neigh, bias, indptr, indices, grad_out or None)."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(s.B, s.N, s.J, s.C_in, generator=g)
    ws = torch.randn(s.C_out, s.C_in, generator=g) / s.C_in ** 0.5
    wn = torch.randn(s.C_out, s.C_in, generator=g) / s.C_in ** 0.5
    b = torch.randn(s.C_out, generator=g)
    h, ws, wn, b = (t.to(DEVICE, DTYPE).requires_grad_(backward) for t in (h, ws, wn, b))
    indptr, indices = SIGNING_SKELETON.neighbourhood(DEVICE)
    grad_out = torch.randn(s.B, s.N, s.J, s.C_out, generator=g).to(DEVICE, DTYPE) if backward else None
    return h, ws, wn, b, indptr, indices, grad_out


def _cost(s: Size, backward: bool) -> tuple[int, int]:
    nnz = SIGNING_SKELETON.neighbourhood()[1].numel()
    matmul = 4 * s.rows * s.C_in * s.C_out
    sums = s.B * s.N * nnz * s.C_in
    fwd_bytes = s.rows * (s.C_in + s.C_out) * ELEM
    if not backward:
        return fwd_bytes, matmul + sums
    return fwd_bytes + s.rows * (s.C_out + 2 * s.C_in) * ELEM, 3 * matmul + 2 * sums


def _implementation(impl: str, backend: str):
    if impl == "extension":
        if CUDA and not ext.WITH_CUDA:
            pytest.skip("the extension was built without its CUDA kernels (no nvcc): it would run the reference")
        return dispatch.resolve("skeletal_graph_conv", "cuda", torch.device(DEVICE))
    fn = reference.skeletal_graph_conv
    return fn if impl == "reference" else compiled(fn, backend)


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("impl", ["extension", "reference", "compiled_reference"])
def test_graph_conv(timer, smoke, compile_backend, size, impl, mode):
    s = _size(size)
    backward = mode == "forward_backward"
    fn = _implementation(impl, compile_backend)

    def step(h, ws, wn, b, indptr, indices, grad_out):
        with torch.set_grad_enabled(backward):
            out = fn(h, indptr, indices, ws, wn, b)
            return torch.autograd.grad(out, (h, ws, wn, b), grad_out) if backward else (out,)

    pool = input_pool(lambda seed: _input_set(s, backward, seed), smoke)
    nbytes, flops = _cost(s, backward)
    outs = timer(step, pool, group=f"skeletal_graph_conv {size} {mode}", impl=impl, nbytes=nbytes, flops=flops,
                 warmup=1 if impl == "reference" else 2, shape=str(s), dtype=str(DTYPE))
    assert all(torch.isfinite(o).all() for o in outs)
    if smoke and impl != "reference":  # agrees with the reference (tests/ check this thoroughly)
        h, ws, wn, b, indptr, indices, _ = pool[0]
        with torch.no_grad():
            want = reference.skeletal_graph_conv(h, indptr, indices, ws, wn, b)
            torch.testing.assert_close(fn(h, indptr, indices, ws, wn, b), want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("impl", ["aggregate", "aggregate_transpose", "copy"])
def test_aggregation_bandwidth(timer, smoke, impl):
    """The CSR mean aggregation (A x, A^T x) alone vs a copy of x: read x once, write once. The
    copy is :func:`bench._common.device_copy` into a preallocated tensor, as the roofline's."""
    s = TINY if smoke else SIZES["vae"]
    indptr, indices = SIGNING_SKELETON.neighbourhood(DEVICE)

    def make_set(seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(s.B, s.N, s.J, s.C_in, generator=g).to(DEVICE, DTYPE)
        return (x, torch.empty_like(x)) if impl == "copy" else (x,)

    if impl == "copy":
        step = device_copy
    else:
        if CUDA and not ext.WITH_CUDA:
            pytest.skip("the extension was built without its CUDA kernels (no nvcc): no CUDA aggregation to time")

        def step(x):
            return ext.csr_mean_aggregate(x, indptr, indices, impl == "aggregate_transpose")

    pool = input_pool(make_set, smoke)
    x = pool[0][0]
    out = timer(step, pool, group=f"csr_mean_aggregate {'tiny' if smoke else 'vae'} vs copy", impl=impl,
                nbytes=2 * x.numel() * x.element_size(), shape=str(s), dtype=str(DTYPE))
    assert out.shape == x.shape
