"""The C++ extension's fused FiLM + residual + LayerNorm (backend ``cuda``, CPU tensors) against the reference.

``z' = z + gamma * h + beta``, ``y = LayerNorm(z') * weight + bias`` and every gradient, on fresh
random inputs. The module is skipped only when the build is impossible (no C++ compiler or no
ninja); any other build failure is an error.

Tolerances (elementwise ``|a - b| <= atol + rtol * |b|``, inputs ~ N(0, 1)):

- forward, vs the reference: fp64 (1e-12, 1e-12); fp32 (1e-5, 1e-5); bf16 (8e-3, 1.6e-2) and
  fp16 (1e-3, 2e-3), about one ulp of the output dtype (z' is bitwise equal: the same fp32 sum,
  rounded once; y differs by the last rounding at most).
- gradients, ``max|a - b| <= tol * max(max|b|, 1)``: fp64 1e-10 (vs the reference), fp32 1e-5 (vs
  the fp64 reference), bf16 2e-2 / fp16 3e-3 vs the fp64 reference on the same rounded inputs (the
  extension rounds each gradient once; the reference rounds z's LN gradient before adding the
  residual gradient too, so it is compared with the same fp64 oracle, at twice the tolerance).

Outputs are poisoned: every ``at::empty`` of the op (and of everything else) is filled with NaN
(``torch.use_deterministic_algorithms`` with ``fill_uninitialized_memory``), so an element the
kernel forgets to write, or an output it reads before writing, fails the comparisons.
"""

from __future__ import annotations

import copy

import pytest
import torch

from sald_fast import ops
from sald_fast.ops import dispatch, reference

from _support import assert_one_graph, extension_or_skip, graph_grabbing_backend

ext = extension_or_skip()

FWD_TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-5, 1e-5), torch.bfloat16: (8e-3, 1.6e-2),
           torch.float16: (1e-3, 2e-3)}
GRAD_TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 3e-3}
SHAPES = [(2, 3, 7, 64), (3, 2, 5, 7), (2, 1, 3, 1), (1, 1, 1, 200), (3, 50, 7, 64), (2, 9, 4, 200), (5, 1, 2, 7)]
GRAD_NAMES = ("dz", "dh", "dgamma", "dbeta", "dweight", "dbias")


@pytest.fixture(autouse=True)
def poisoned_memory():
    """Every uninitialised allocation is NaN for the duration of a test."""
    old = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    old_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old[0], warn_only=old[1])
        torch.utils.deterministic.fill_uninitialized_memory = old_fill


def _inputs(B, N, J, D, dtype=torch.float32, weight=True, bias=True, seed=0, affine_dtype=None):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, N, J, D, generator=g).to(dtype)
    h = torch.randn(B, N, J, D, generator=g).to(dtype)
    gamma = (1 + 0.5 * torch.randn(B, D, generator=g)).to(dtype)
    beta = (0.5 * torch.randn(B, D, generator=g)).to(dtype)
    adt = affine_dtype or dtype
    w = (1 + 0.5 * torch.randn(D, generator=g)).to(adt) if weight else None
    b = (0.5 * torch.randn(D, generator=g)).to(adt) if bias else None
    return z, h, gamma, beta, w, b


def _grad_outputs(B, N, J, D, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, N, J, D, generator=g).to(dtype), torch.randn(B, N, J, D, generator=g).to(dtype)


def _run(fn, args, grad_z, grad_y, eps=1e-5):
    """(z', y, grads of every given input) of fn on fresh leaves."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in args]
    z_new, y = fn(*leaves, eps)
    given = [t for t in leaves if t is not None]
    grads = torch.autograd.grad([z_new, y], given, [grad_z, grad_y])
    return z_new.detach(), y.detach(), list(grads)


def _ext(*args):
    return ops.film_residual_layernorm(*args[:6], eps=args[6], backend="cuda")


def _close_rel(got, want, tol, name):
    scale = max(want.abs().max().item(), 1.0) if want.numel() else 1.0
    err = (got.double() - want.double()).abs().max().item() if want.numel() else 0.0
    assert err <= tol * scale, f"{name}: max error {err:.3g} > {tol:g} * {scale:.3g}"


# --------------------------------------------------------------------------------- forward + grads

@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference(shape, dtype):
    args = _inputs(*shape, dtype=dtype, seed=sum(shape))
    gz, gy = _grad_outputs(*shape, dtype)
    zn, y, grads = _run(_ext, args, gz, gy)
    rzn, ry, rgrads = _run(reference.film_residual_layernorm, args, gz, gy)
    rtol, atol = FWD_TOL[dtype]
    torch.testing.assert_close(zn, rzn, rtol=rtol, atol=atol)
    torch.testing.assert_close(y, ry, rtol=rtol, atol=atol)
    assert zn.dtype == y.dtype == dtype and zn.is_contiguous() and y.is_contiguous()
    if dtype == torch.float32:  # the fp32 gradients against the fp64 reference
        _, _, rgrads = _run(reference.film_residual_layernorm, [t.double() for t in args], gz.double(), gy.double())
    for name, got, want in zip(GRAD_NAMES, grads, rgrads):
        assert got.dtype == dtype and got.shape == want.shape
        _close_rel(got, want, GRAD_TOL[dtype], name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2, 3, 7, 64), (3, 5, 2, 7), (1, 4, 3, 200)], ids=lambda s: "x".join(map(str, s)))
def test_low_precision(dtype, shape):
    args = _inputs(*shape, dtype=dtype, seed=3)
    gz, gy = _grad_outputs(*shape, dtype)
    zn, y, grads = _run(_ext, args, gz, gy)
    rzn, ry, rgrads = _run(reference.film_residual_layernorm, args, gz, gy)
    torch.testing.assert_close(zn, rzn, rtol=0, atol=0)  # the same fp32 sum, rounded once
    rtol, atol = FWD_TOL[dtype]
    torch.testing.assert_close(y.double(), ry.double(), rtol=rtol, atol=atol)
    _, _, oracle = _run(reference.film_residual_layernorm, [t.double() for t in args], gz.double(), gy.double())
    for name, got, ref_got, want in zip(GRAD_NAMES, grads, rgrads, oracle):
        assert got.dtype == dtype
        _close_rel(got, want, GRAD_TOL[dtype], name)
        _close_rel(ref_got, want, 2 * GRAD_TOL[dtype], "reference " + name)


def test_low_precision_stream_with_fp32_affine():
    """bf16 z, h, gamma, beta with fp32 LayerNorm parameters (the wrapper accepts any float weight)."""
    args = _inputs(2, 3, 7, 64, dtype=torch.bfloat16, affine_dtype=torch.float32, seed=4)
    gz, gy = _grad_outputs(2, 3, 7, 64, torch.bfloat16)
    zn, y, grads = _run(_ext, args, gz, gy)
    rzn, ry, _ = _run(reference.film_residual_layernorm, args, gz, gy)
    torch.testing.assert_close(zn, rzn, rtol=0, atol=0)
    torch.testing.assert_close(y.double(), ry.double(), rtol=8e-3, atol=1.6e-2)
    assert [g.dtype for g in grads] == [torch.bfloat16] * 4 + [torch.float32] * 2
    _, _, oracle = _run(reference.film_residual_layernorm, [t.double() for t in args], gz.double(), gy.double())
    for name, got, want in zip(GRAD_NAMES, grads, oracle):
        _close_rel(got, want, GRAD_TOL[torch.bfloat16], name)


@pytest.mark.parametrize("weight,bias", [(False, False), (True, False), (False, True)], ids=["none", "weight", "bias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_without_affine(weight, bias, dtype):
    args = _inputs(2, 4, 7, 64, dtype=dtype, weight=weight, bias=bias, seed=5)
    gz, gy = _grad_outputs(2, 4, 7, 64, dtype)
    zn, y, grads = _run(_ext, args, gz, gy)
    rzn, ry, rgrads = _run(reference.film_residual_layernorm, args, gz, gy)
    rtol, atol = FWD_TOL[dtype]
    torch.testing.assert_close(zn, rzn, rtol=rtol, atol=atol)
    torch.testing.assert_close(y, ry, rtol=rtol, atol=atol)
    assert len(grads) == len(rgrads) == 4 + weight + bias
    for got, want in zip(grads, rgrads):
        _close_rel(got, want, 1e-5 if dtype == torch.float32 else 1e-10, "grad")


def test_non_contiguous_inputs_and_grad_outputs():
    """z (B, J, N, D) transposed, h with a non-unit channel stride, gamma transposed, beta a slice of
    a FiLM projection, weight strided; gradient outputs expanded (stride 0) and transposed."""
    B, N, J, D = 3, 5, 7, 24
    g = torch.Generator().manual_seed(6)
    z = torch.randn(B, J, N, D, generator=g, dtype=torch.float64).transpose(1, 2)
    h = torch.randn(D, B, N, J, generator=g, dtype=torch.float64).permute(1, 2, 3, 0)
    gamma = torch.randn(D, B, generator=g, dtype=torch.float64).t()
    beta = torch.randn(B, 2 * D, generator=g, dtype=torch.float64)[:, D:]
    w = torch.randn(2 * D, generator=g, dtype=torch.float64)[::2]
    b = torch.randn(D, generator=g, dtype=torch.float64)
    assert not any(t.is_contiguous() for t in (z, h, gamma, beta, w))
    gz = torch.randn(1, 1, 1, D, generator=g, dtype=torch.float64).expand(B, N, J, D)
    gy = torch.randn(B, J, N, D, generator=g, dtype=torch.float64).transpose(1, 2)
    zn, y, grads = _run(_ext, (z, h, gamma, beta, w, b), gz, gy)
    rzn, ry, rgrads = _run(reference.film_residual_layernorm, (z, h, gamma, beta, w, b), gz, gy)
    torch.testing.assert_close(zn, rzn, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y, ry, rtol=1e-12, atol=1e-12)
    for name, got, want in zip(GRAD_NAMES, grads, rgrads):
        _close_rel(got, want, 1e-10, name)
    # loss.sum()-style gradients: both outputs' grads are expanded scalars
    leaves = [t.detach().clone().requires_grad_() for t in (z, h, gamma, beta, w, b)]
    out = ext.film_residual_layernorm(*leaves)
    (out[0].sum() + 2 * out[1].sum()).backward()
    ref_leaves = [t.detach().clone().requires_grad_() for t in (z, h, gamma, beta, w, b)]
    ref = reference.film_residual_layernorm(*ref_leaves)
    (ref[0].sum() + 2 * ref[1].sum()).backward()
    for got, want in zip(leaves, ref_leaves):
        _close_rel(got.grad, want.grad, 1e-10, "sum-grad")


def test_partial_gradients():
    """Only some inputs need gradients; the others get none (and are not computed)."""
    args = _inputs(2, 3, 5, 16, dtype=torch.float64, seed=7)
    for wanted in ((0,), (1,), (2, 3), (4, 5), (0, 5)):
        results = []
        for fn in (ext.film_residual_layernorm, reference.film_residual_layernorm):
            leaves = [t.clone().requires_grad_(i in wanted) for i, t in enumerate(args)]
            z_new, y = fn(*leaves)
            (z_new.square().sum() + (y * torch.linspace(-1, 1, 16, dtype=torch.float64)).sum()).backward()
            results.append([t.grad for t in leaves])
        for i, (got, want) in enumerate(zip(*results)):
            if i in wanted:
                _close_rel(got, want, 1e-10, f"input {i}")
            else:
                assert got is None and want is None


def test_gradcheck_fp64():
    for weight, bias in ((True, True), (False, False), (True, False)):
        args = [t if t is None else t.requires_grad_() for t in _inputs(2, 3, 2, 5, dtype=torch.float64,
                                                                           weight=weight, bias=bias, seed=8)]
        fn = lambda *a: ext.film_residual_layernorm(*a)  # noqa: E731
        assert torch.autograd.gradcheck(fn, tuple(args))
    # non-contiguous z and h
    z = torch.randn(2, 2, 3, 4, dtype=torch.float64).transpose(1, 2).requires_grad_()
    h = torch.randn(4, 2, 3, 2, dtype=torch.float64).permute(1, 2, 3, 0).requires_grad_()
    gamma, beta, w, b = (t.requires_grad_() for t in (torch.randn(2, 4, dtype=torch.float64),
                                                      torch.randn(2, 4, dtype=torch.float64),
                                                      torch.randn(4, dtype=torch.float64),
                                                      torch.randn(4, dtype=torch.float64)))
    assert torch.autograd.gradcheck(lambda *a: ext.film_residual_layernorm(*a), (z, h, gamma, beta, w, b))


def test_backward_op_directly():
    """Unwanted outputs come back as (0,); absent gradient outputs count as zero."""
    z, h, gamma, beta, w, b = _inputs(2, 3, 4, 8, dtype=torch.float64, seed=9)
    z_new, y = torch.ops.sald_fast_ext.film_layernorm(z, h, gamma, beta, w, b, 1e-5)
    op = torch.ops.sald_fast_ext.film_layernorm_backward
    gy = torch.randn_like(z)
    dz, dh, dg, dbeta, dw, db = op(None, gy, z_new, h, gamma, w, b, 1e-5, True, False, False, True)
    assert dh.numel() == dg.numel() == dbeta.numel() == 0 and dw.shape == db.shape == (8,)
    leaves = [t.clone().requires_grad_() for t in (z, h, gamma, beta, w, b)]
    _, ry = reference.film_residual_layernorm(*leaves)
    want = torch.autograd.grad(ry, leaves, gy)
    _close_rel(dz, want[0], 1e-10, "dz")
    _close_rel(dw, want[4], 1e-10, "dweight")
    _close_rel(db, want[5], 1e-10, "dbias")
    gz = torch.randn_like(z)
    out = op(gz, None, z_new, h, gamma, w, b, 1e-5, True, True, True, False)
    torch.testing.assert_close(out[0], gz)  # dz' = grad_z when y gets no gradient
    torch.testing.assert_close(out[1], gz * gamma.view(2, 1, 1, 8))
    torch.testing.assert_close(out[2], (gz * h).sum((1, 2)))
    torch.testing.assert_close(out[3], gz.sum((1, 2)))
    assert out[4].numel() == out[5].numel() == 0


def test_empty_inputs():
    for shape in ((0, 3, 4, 8), (2, 0, 4, 8), (2, 3, 0, 8)):
        args = [t.requires_grad_() for t in _inputs(*shape, seed=10)]
        z_new, y = ext.film_residual_layernorm(*args)
        assert z_new.shape == y.shape == shape
        (z_new.sum() + y.sum()).backward()
        assert args[2].grad.shape == args[2].shape and not args[2].grad.any()
        assert args[4].grad.shape == (8,) and not args[4].grad.any()


def test_threads_give_identical_results():
    """The work split depends on the shape only: 1 and 2 threads give the same bits."""
    args = _inputs(4, 40, 7, 64, seed=11)  # several chunks per sample; above the single-thread size
    gz, gy = _grad_outputs(4, 40, 7, 64, torch.float32)
    old = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            zn, y, grads = _run(_ext, args, gz, gy)
            outs.append([zn, y, *grads])
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_opcheck():
    """torch.library.opcheck: schema, fake tensor, autograd registration and AOT dispatch agree."""
    z, h, gamma, beta, w, b = _inputs(2, 3, 4, 8, seed=12)
    for args in ((z, h, gamma, beta, w, b, 1e-5), (z, h, gamma, beta, None, None, 1e-5)):
        leaves = [t.clone().requires_grad_() if isinstance(t, torch.Tensor) else t for t in args]
        torch.library.opcheck(torch.ops.sald_fast_ext.film_layernorm.default, tuple(leaves))
    gz, gy = _grad_outputs(2, 3, 4, 8, torch.float32)
    torch.library.opcheck(torch.ops.sald_fast_ext.film_layernorm_backward.default,
                          (gz, gy, z, h, gamma, w, b, 1e-5, True, True, True, True))


# --------------------------------------------------------------------------------- torch.compile

def _block(z, h, temb, film_w, w, b, film):
    gamma, beta = (temb @ film_w).chunk(2, dim=-1)
    z_new, y = film(torch.nn.functional.gelu(z), h, 1 + gamma, beta, w, b)
    return (z_new.square().mean() + (y * y.detach().sign()).mean()) / 2


def _block_inputs(seed=13):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 5, 7, 16, generator=g), torch.randn(2, 5, 7, 16, generator=g),
            torch.randn(2, 16, generator=g), 0.1 * torch.randn(16, 32, generator=g), 1 + 0.1 * torch.randn(16, generator=g),
            0.1 * torch.randn(16, generator=g))


def test_public_op_has_no_graph_breaks():
    torch._dynamo.reset()
    args = _block_inputs()

    def block(*a):
        return _block(*a, film=lambda *f: ops.film_residual_layernorm(*f, backend="cuda"))

    assert_one_graph(block, *args)


def test_compile_fullgraph_forward_backward_calls_the_ops():
    """torch.compile(fullgraph=True): forward and backward graphs hold the extension ops (no Python
    autograd.Function, no decomposition); loss and gradients match the eager reference."""
    torch._dynamo.reset()
    backend, graphs = graph_grabbing_backend()

    film = lambda *f: ops.film_residual_layernorm(*f, backend="cuda")  # noqa: E731
    fn = torch.compile(lambda *a: _block(*a, film=film), fullgraph=True, backend=backend)
    leaves = [t.clone().requires_grad_() for t in _block_inputs()]
    loss = fn(*leaves)
    loss.backward()
    assert len(graphs) == 2
    assert "sald_fast_ext.film_layernorm.default" in graphs[0]
    assert "sald_fast_ext.film_layernorm_backward.default" in graphs[1]
    ref_leaves = [t.clone().requires_grad_() for t in _block_inputs()]
    ref_loss = _block(*ref_leaves, film=reference.film_residual_layernorm)
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for got, want in zip(leaves, ref_leaves):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-5)


def test_fake_tensor_shapes_dynamic():
    torch._dynamo.reset()
    _, _, _, _, w, b = _inputs(1, 1, 1, 8, seed=14)
    fn = torch.compile(lambda z, h, g, be: ext.film_residual_layernorm(z, h, g, be, w, b), fullgraph=True,
                       dynamic=True, backend="aot_eager")
    for B, N, J in ((1, 3, 7), (2, 5, 7), (3, 2, 4)):
        z, h, g, be, _, _ = _inputs(B, N, J, 8, seed=B)
        for got, want in zip(fn(z, h, g, be), reference.film_residual_layernorm(z, h, g, be, w, b)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("patch,exc,pattern", [
    (dict(z=torch.randn(2, 3, 8)), ValueError, r"z must be \(B, N, J, D\)"),
    (dict(h=torch.randn(2, 3, 4, 9)), ValueError, r"h has shape"),
    (dict(gamma=torch.randn(2, 7)), ValueError, r"gamma must be \(B, D\)"),
    (dict(beta=torch.randn(8)), ValueError, r"beta must be \(B, D\)"),
    (dict(weight=torch.ones(4)), ValueError, r"weight must be \(D,\)"),
    (dict(bias=torch.zeros(8, 1)), ValueError, r"bias must be \(D,\)"),
    (dict(z=torch.zeros(2, 3, 4, 8, dtype=torch.long)), TypeError, r"z has dtype"),
    (dict(h=torch.randn(2, 3, 4, 8).double()), TypeError, r"h has dtype"),
    (dict(gamma=torch.randn(2, 8).half()), TypeError, r"gamma has dtype"),
    (dict(weight=torch.ones(8, dtype=torch.long)), TypeError, r"weight has dtype"),
], ids=["z-rank", "h-shape", "gamma-shape", "beta-shape", "weight-shape", "bias-shape", "z-int", "h-dtype",
        "gamma-dtype", "weight-int"])
def test_bad_inputs_raise_before_the_kernel(monkeypatch, patch, exc, pattern):
    B, N, J, D = 2, 3, 4, 8
    args = dict(z=torch.randn(B, N, J, D), h=torch.randn(B, N, J, D), gamma=torch.randn(B, D),
                beta=torch.randn(B, D), weight=torch.ones(D), bias=torch.zeros(D))
    args.update(patch)
    calls = []
    monkeypatch.setitem(dispatch._IMPLS["film_residual_layernorm"], "cuda", lambda *a: calls.append(a))
    with pytest.raises(exc, match=pattern):  # the public wrapper: nothing dispatched
        ops.film_residual_layernorm(**args, backend="cuda")
    assert not calls
    # the op itself (no wrapper in front): a clear error before any kernel runs
    with pytest.raises(exc, match=pattern):
        torch.ops.sald_fast_ext.film_layernorm(*args.values(), 1e-5)


def test_backward_op_validates():
    z, h, gamma, beta, w, b = _inputs(2, 3, 4, 8, seed=15)
    op = torch.ops.sald_fast_ext.film_layernorm_backward
    with pytest.raises(ValueError, match=r"grad_y has shape \[2, 3, 4, 7\] but z_new has \[2, 3, 4, 8\]"):
        op(None, torch.ones(2, 3, 4, 7), z, h, gamma, w, b, 1e-5, True, True, True, True)
    with pytest.raises(TypeError, match=r"grad_z has dtype Double but z_new has Float"):
        op(torch.ones(2, 3, 4, 8).double(), None, z, h, gamma, w, b, 1e-5, True, True, True, True)
    with pytest.raises(ValueError, match=r"gamma must be \(B, D\) = \(2, 8\)"):
        op(None, torch.ones_like(z), z, h, gamma[:1], w, b, 1e-5, True, True, True, True)


# --------------------------------------------------------------------------------- dispatch, model

def test_dispatch():
    assert "cuda" in ops.available_backends("film_residual_layernorm")
    cpu = torch.device("cpu")
    assert dispatch.resolve("film_residual_layernorm", "cuda", cpu) is ext.film_residual_layernorm
    # auto takes it on the CPU (it makes the denoiser's training step faster there; see dispatch._AUTO_ORDER)
    assert dispatch.resolve("film_residual_layernorm", "auto", cpu) is ext.film_residual_layernorm
    assert ops.backend_report("cpu", "auto")["film_residual_layernorm"] == "extension"
    assert ops.backend_report("cpu", "cuda")["film_residual_layernorm"] == "extension"


def _small_denoiser_config():
    from sald_fast.config import DenoiserConfig

    return DenoiserConfig(latent_dim=4, num_atoms=7, dim=24, num_layers=3, num_heads=2, ffn_mult=2, text_dim=12,
                          max_latent_frames=16, skip_tau=2)


def _denoiser_step(model, seed=16):
    g = torch.Generator().manual_seed(seed)
    B, N = 3, 6
    z = torch.randn(B, N, 7, 4, generator=g)
    t = torch.tensor([5, 300, 999])
    text = torch.randn(B, 5, 12, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]]).bool()
    lengths = torch.tensor([6, 4, 1])
    eps = model(z, t, text, mask, lengths, torch.tensor([False, True, False]))
    loss = (eps - z).square().mean()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return eps.detach(), dict(zip([n for n, _ in model.named_parameters()], grads))


def test_denoiser_with_the_extension_matches_reference(monkeypatch):
    """The denoiser with its FiLM + residual + LayerNorm on backend "cuda" (the extension; the
    attention ops stay on the reference: the extension has no attention kernels, so a whole
    Denoiser(backend="cuda") raises for them), and Denoiser(backend="auto"), equal the reference
    Denoiser with the same weights: outputs and every parameter gradient."""
    from sald_fast.denoiser import Denoiser

    torch.manual_seed(0)
    ref_model = Denoiser(_small_denoiser_config(), backend="reference")
    for p in ref_model.parameters():  # FiLM and skip projections start at zero: make every path count
        p.data.add_(0.05 * torch.randn_like(p))
    ref_eps, ref_grads = _denoiser_step(ref_model)

    real = ops.film_residual_layernorm
    calls = []

    def film_on_extension(*args, backend=None, **kwargs):
        calls.append(backend)
        return real(*args, backend="cuda", **kwargs)

    model = copy.deepcopy(ref_model)
    monkeypatch.setattr(ops, "film_residual_layernorm", film_on_extension)
    eps, grads = _denoiser_step(model)
    monkeypatch.setattr(ops, "film_residual_layernorm", real)
    assert len(calls) == 4 * 3 and set(calls) == {"reference"}
    auto_model = copy.deepcopy(ref_model)
    auto_model.backend = "auto"
    auto_eps, auto_grads = _denoiser_step(auto_model)
    for got_eps, got_grads in ((eps, grads), (auto_eps, auto_grads)):
        torch.testing.assert_close(got_eps, ref_eps, rtol=1e-4, atol=1e-5)
        for name, want in ref_grads.items():
            _close_rel(got_grads[name], want, 1e-4, name)
