"""Fused FiLM + residual + LayerNorm Triton kernel vs an fp64 oracle (Triton interpreter on the CPU).

The oracle takes the same (low-precision) inputs upcast to fp64 and rounds z' to the input dtype
with a straight-through estimator, exactly like the kernel (which stores z' in the input dtype and
normalises the stored value; its gradient treats the rounding as the identity). Tolerances per
dtype (inputs ~ N(0, 1)):

- forward, elementwise ``|a - b| <= atol + rtol * |b|``: fp32 (1e-5, 1e-5), fp16 (1e-3, 2e-3),
  bf16 (8e-3, 1.6e-2): about 2 ulp of the output dtype.
- gradients, ``max|a - b| / max(max|b|, 1)``: fp32 1e-5, fp16 2e-3, bf16 1.6e-2.

Outputs and every internal buffer are poisoned with NaN before the launch (``poison=True`` or the
``SALD_FAST_TRITON_POISON`` env var), so an element a kernel forgets to write fails the test.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from _support import triton_device_or_skip

triton = pytest.importorskip("triton")  # before the kernels: tests/conftest.py has chosen the interpreter

from kernels import TritonBackendError, check_tensor  # noqa: E402
from kernels import film_layernorm as film  # noqa: E402

DEVICE = triton_device_or_skip(film.film_ln_fwd_kernel)

pytestmark = pytest.mark.triton

FWD_TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-3, 2e-3), torch.bfloat16: (8e-3, 1.6e-2)}
GRAD_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _make_inputs(B, N, J, D, dtype, affine, transposed, seed):
    g = torch.Generator().manual_seed(seed)
    if transposed:  # z stored as (B, J, N, D) and h as (D, B, N, J): non-contiguous (B, N, J, D) views
        z = torch.randn(B, J, N, D, generator=g).to(dtype).transpose(1, 2)
        h = torch.randn(D, B, N, J, generator=g).to(dtype).permute(1, 2, 3, 0)
        gamma = torch.randn(D, B, generator=g).to(dtype).t()
    else:
        z = torch.randn(B, N, J, D, generator=g).to(dtype)
        h = torch.randn(B, N, J, D, generator=g).to(dtype)
        gamma = torch.randn(B, D, generator=g).to(dtype)
    beta = torch.randn(B, D, generator=g).to(dtype)
    weight = (1 + 0.5 * torch.randn(D, generator=g)).to(dtype) if affine else None
    bias = (0.5 * torch.randn(D, generator=g)).to(dtype) if affine else None
    to = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    return to(z), to(h), to(gamma), to(beta), to(weight), to(bias)


def _oracle(z, h, gamma, beta, weight, bias, eps, dtype):
    """fp64 z', y with z' rounded to ``dtype`` (straight-through), as the kernel stores it."""
    D = z.shape[-1]
    zf = z + gamma[:, None, None, :] * h + beta[:, None, None, :]
    z_round = zf + (zf.to(dtype).double() - zf).detach()
    return z_round, F.layer_norm(z_round, (D,), weight, bias, eps)


def _assert_close(name, actual, expected, dtype):
    atol, rtol = FWD_TOL[dtype]
    assert not torch.isnan(actual).any(), f"{name}: NaN (an unwritten poisoned element?)"
    err = (actual.double() - expected).abs()
    bound = atol + rtol * expected.abs()
    excess = (err - bound).max().item()
    assert excess <= 0, f"{name}: max err {err.max().item():.3g}, worst excess over the tolerance {excess:.3g}"


def _assert_grad(name, actual, expected, dtype):
    assert not torch.isnan(actual).any(), f"{name}: NaN (an unwritten poisoned element?)"
    scale = expected.abs().max().clamp_min(1.0)  # inputs are O(1): absolute error floor (D = 1 has ~0 grads)
    rel = ((actual.double() - expected).abs().max() / scale).item()
    assert rel <= GRAD_TOL[dtype], f"{name}: normalised max error {rel:.3g} > {GRAD_TOL[dtype]}"


CASES = [  # (B, N, J, D, dtype, affine, transposed); backward programs per batch: 1, 2 or automatic
    (2, 3, 5, 96, torch.float32, True, False),
    (2, 3, 7, 96, torch.bfloat16, False, True),
    (2, 2, 9, 200, torch.float16, True, True),
    (2, 3, 7, 200, torch.float32, False, True),
    (3, 2, 5, 256, torch.bfloat16, True, False),
    (1, 4, 7, 256, torch.float16, False, False),
    (2, 1, 5, 1024, torch.float32, True, True),
    (2, 2, 7, 1024, torch.bfloat16, True, False),
    (2, 5, 9, 7, torch.float16, True, False),
    (1, 1, 1, 1, torch.float32, True, False),
]


@pytest.mark.parametrize("B,N,J,D,dtype,affine,transposed", CASES)
def test_forward_and_backward_match_fp64_oracle(B, N, J, D, dtype, affine, transposed):
    z, h, gamma, beta, weight, bias = _make_inputs(B, N, J, D, dtype, affine, transposed, seed=D + N)
    eps = 1e-5
    z_new, y, mean, rstd = film.film_layernorm_forward(z, h, gamma, beta, weight, bias, eps, poison=True)
    assert z_new.shape == y.shape == (B, N, J, D) and z_new.is_contiguous() and y.is_contiguous()
    assert z_new.dtype == y.dtype == dtype

    leaves = [None if t is None else t.double().requires_grad_() for t in (z, h, gamma, beta, weight, bias)]
    zr, yr = _oracle(*leaves, eps, dtype)
    _assert_close("z'", z_new, zr.detach(), dtype)
    _assert_close("y", y, yr.detach(), dtype)

    g = torch.Generator().manual_seed(7)
    dz_new = torch.randn(B, N, J, D, generator=g).to(dtype).to(DEVICE)
    dy = torch.randn(D, B, N, J, generator=g).to(dtype).to(DEVICE).permute(1, 2, 3, 0)  # non-contiguous
    torch.autograd.backward([zr, yr], [dz_new.double(), dy.double()])
    chunks = (None, 1, 2)[(N + J) % 3]  # 1 or 2 programs per batch: each loops over many row tiles
    grads = film.film_layernorm_backward(dz_new, dy, h, z_new, gamma, weight, mean, rstd, bias is not None,
                                         poison=True, num_chunks=chunks)
    for name, got, leaf in zip(("dz", "dh", "dgamma", "dbeta", "dweight", "dbias"), grads, leaves):
        if leaf is None:
            assert got.numel() == 0, name
            continue
        assert got.shape == leaf.shape, name
        _assert_grad(name, got, leaf.grad, dtype)


@pytest.mark.parametrize("which", ["z_new", "y"])
def test_public_op_autograd_with_one_output_used(which, monkeypatch):
    """sald_fast.ops with backend='triton': autograd wiring, unused outputs, fp32 LN params with bf16 data."""
    from sald_fast import ops

    monkeypatch.setenv("SALD_FAST_TRITON_POISON", "1")
    dtype = torch.bfloat16
    z, h, gamma, beta, _, _ = _make_inputs(2, 3, 7, 48, dtype, False, True, seed=3)
    weight = torch.randn(48, device=DEVICE, requires_grad=True)
    bias = torch.randn(48, device=DEVICE, requires_grad=True)
    inputs = [t.detach().clone().requires_grad_() for t in (z, h, gamma, beta)]
    out = ops.film_residual_layernorm(*inputs, weight, bias, backend="triton")
    target = out[0] if which == "z_new" else out[1]
    (target.float() * torch.linspace(-1, 1, 48, device=DEVICE)).sum().backward()

    leaves = [t.detach().double().requires_grad_() for t in (z, h, gamma, beta)]
    w64, b64 = weight.detach().double().requires_grad_(), bias.detach().double().requires_grad_()
    zr, yr = _oracle(*leaves, w64, b64, 1e-5, dtype)
    ref_target = zr if which == "z_new" else yr
    (ref_target * torch.linspace(-1, 1, 48, device=DEVICE, dtype=torch.float64)).sum().backward()
    for name, got, leaf in zip(("z", "h", "gamma", "beta"), inputs, leaves):
        assert got.grad.dtype == dtype
        _assert_grad(name, got.grad, leaf.grad, dtype)
    if which == "y":
        assert weight.grad.dtype == torch.float32 and bias.grad.dtype == torch.float32
        _assert_grad("weight", weight.grad, w64.grad, dtype)
        _assert_grad("bias", bias.grad, b64.grad, dtype)
    else:
        assert weight.grad is None or float(weight.grad.abs().max()) == 0.0


def test_empty_rows():
    """N = 0: empty outputs, zero parameter gradients (no launch, no NaN)."""
    z, h, gamma, beta, weight, bias = _make_inputs(2, 0, 5, 32, torch.float32, True, False, seed=0)
    z_new, y, mean, rstd = film.film_layernorm_forward(z, h, gamma, beta, weight, bias, 1e-5, poison=True)
    assert z_new.shape == (2, 0, 5, 32)
    grads = film.film_layernorm_backward(z_new, y, h, z_new, gamma, weight, mean, rstd, True, poison=True)
    for g in grads[2:]:
        assert float(g.abs().sum()) == 0.0


def test_bad_inputs_raise_clear_errors():
    z, h, gamma, beta, weight, bias = _make_inputs(2, 2, 5, 32, torch.float32, True, False, seed=0)
    with pytest.raises(ValueError, match="D=2048"):
        big = torch.zeros(1, 1, 1, 2048, device=DEVICE)
        film.film_layernorm_forward(big, big, big[0, 0], big[0, 0], None, None, 1e-5)
    with pytest.raises(TypeError, match="float64"):
        film.film_layernorm_forward(z.double(), h.double(), gamma.double(), beta.double(), None, None, 1e-5)
    with pytest.raises(TypeError, match="h has dtype"):
        film.film_layernorm_forward(z, h.half(), gamma, beta, None, None, 1e-5)
    with pytest.raises(ValueError, match="gamma must be"):
        film.film_layernorm_forward(z, h, gamma[:1], beta, None, None, 1e-5)
    with pytest.raises(ValueError, match="weight must be"):
        film.film_layernorm_forward(z, h, gamma, beta, weight[:-1], bias, 1e-5)
    with pytest.raises(ValueError, match="on meta"):
        film.film_layernorm_forward(z, h.to("meta"), gamma, beta, None, None, 1e-5)
    z_new, y, mean, rstd = film.film_layernorm_forward(z, h, gamma, beta, weight, bias, 1e-5)
    with pytest.raises(ValueError, match="contiguous"):
        film.film_layernorm_backward(y, y, h, z_new.transpose(1, 2), gamma, weight, mean, rstd, True)
    with pytest.raises(TritonBackendError, match="TRITON_INTERPRET=1"):
        check_tensor("z", torch.zeros(2), kernel=object())  # a compiled (non-interpreted) kernel on CPU data
