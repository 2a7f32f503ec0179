"""torch.compile proof for the Triton ops: no graph breaks, forward and backward.

Two registrations exist (see ``sald_fast.ops.triton_backend``):

- Interpreter (this CPU process, ``TRITON_INTERPRET=1``): the ops are ``custom_op`` s with fake
  implementations. ``torch.compile(fullgraph=True, backend="aot_eager")`` of a function calling
  all three ops compiles forward and backward and gives the eager results; ``torch._dynamo.explain``
  of the public ``sald_fast.ops`` wrappers reports zero graph breaks.
- Compiled kernels (a GPU machine): the ops are ``triton_op`` s whose kernels launch through
  ``wrap_triton``. Without a GPU the kernels cannot run, but the trace can: a subprocess without
  the interpreter sets a stub Triton driver that reports an sm_90 target (used only for the
  TTIR mutation analysis of ``wrap_triton``), compiles the same function with ``fullgraph=True``
  and AOTAutograd on ``meta`` tensors, and checks that the forward and backward graphs contain
  every kernel as a ``triton_kernel_wrapper_functional`` node.

A subprocess without the interpreter also checks that the triton backend refuses CPU tensors with
an error naming TRITON_INTERPRET=1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any Triton kernel is defined

import pytest  # noqa: E402

triton = pytest.importorskip("triton")

from kernels import interpreter_defect, is_interpreted  # noqa: E402
from kernels import film_layernorm as film  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_DEFECT = interpreter_defect() if DEVICE == "cpu" else None
needs_kernels = pytest.mark.skipif(
    (DEVICE == "cpu" and not is_interpreted(film.film_ln_fwd_kernel)) or _DEFECT is not None,
    reason=_DEFECT or "kernels were imported before TRITON_INTERPRET=1 was set and there is no GPU")
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.triton

B, N, J, H, d = 2, 6, 5, 2, 16
D = H * d


def _inputs(requires_grad: bool = True, device: str = DEVICE):
    g = torch.Generator().manual_seed(0)
    shapes = [(B, N, J, 3, H, d), (B, N, J, D), (B, D), (B, D), (D,), (D,)]
    tensors = [torch.randn(s, generator=g).to(device).requires_grad_(requires_grad) for s in shapes]
    return tensors + [torch.tensor([4, N], device=device)]


def _block(qkv, z, gamma, beta, weight, bias, lengths, backend="triton"):
    """Temporal -> skeletal attention -> FiLM + LayerNorm, all through the public ops."""
    from sald_fast import ops

    q, k, v = qkv.unbind(3)
    o = ops.temporal_attention(q, k, v, lengths, backend=backend)
    o = ops.skeletal_attention(o, k, v, backend=backend)
    z_new, y = ops.film_residual_layernorm(z, o.reshape(B, N, J, D), gamma, beta, weight, bias, backend=backend)
    return z_new, y


def _direct_block(qkv, z, gamma, beta, weight, bias, lengths):
    """The same through the backend functions, bypassing the dispatcher."""
    from sald_fast.ops import triton_backend as tb

    q, k, v = qkv.unbind(3)
    o = tb.temporal_attention(q, k, v, lengths)
    o = tb.skeletal_attention(o, k, v)
    return tb.film_residual_layernorm(z, o.reshape(B, N, J, D), gamma, beta, weight, bias)


def _loss(out):
    z_new, y = out
    return z_new.sum() + (y * y).sum()


@needs_kernels
def test_fullgraph_compile_forward_backward_matches_eager():
    args = _inputs()
    eager = _direct_block(*args)
    _loss(eager).backward()
    eager_grads = [a.grad.clone() for a in args[:6]]
    for a in args[:6]:
        a.grad = None
    compiled = torch.compile(_direct_block, backend="aot_eager", fullgraph=True)
    out = compiled(*args)
    _loss(out).backward()
    for e, c in zip(eager, out):
        torch.testing.assert_close(c, e, rtol=0, atol=0)
    for a, g in zip(args[:6], eager_grads):
        torch.testing.assert_close(a.grad, g, rtol=0, atol=0)


@needs_kernels
def test_public_ops_have_no_graph_breaks():
    torch._dynamo.reset()
    args = _inputs()
    _block(*args)  # loads the backend module outside of tracing
    explanation = torch._dynamo.explain(_block)(*args)
    reasons = [str(r.reason) for r in explanation.break_reasons]
    assert explanation.graph_break_count == 0, reasons
    assert explanation.graph_count == 1


_TRITON_OP_TRACE = textwrap.dedent(
    """
    import json, torch, triton
    from triton.backends.compiler import GPUTarget

    class StubDriver:  # only get_current_target is used, by wrap_triton's TTIR mutation analysis
        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)
        def get_active_torch_device(self):
            return torch.device("meta")

    triton.runtime.driver.set_active(StubDriver())
    from torch._dynamo.backends.common import aot_autograd
    from sald_fast.ops import triton_backend as tb
    assert not tb.INTERPRETED
    B, N, J, H, d = 2, 70, 5, 2, 16
    D = H * d

    def block(qkv, z, gamma, beta, weight, bias, lengths):
        q, k, v = qkv.unbind(3)
        o = tb.temporal_attention(q, k, v, lengths)
        o = tb.skeletal_attention(o, k, v)
        z_new, y = tb.film_residual_layernorm(z, o.reshape(B, N, J, D), gamma, beta, weight, bias)
        return z_new.sum() + (y * y).sum()

    graphs = []
    def grab(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    shapes = [(B, N, J, 3, H, d), (B, N, J, D), (B, D), (B, D), (D,), (D,)]
    args = [torch.empty(s, device="meta", dtype=torch.bfloat16, requires_grad=True) for s in shapes]
    args.append(torch.empty(B, dtype=torch.int64, device="meta"))
    explanation = torch._dynamo.explain(block)(*args)
    torch._dynamo.reset()
    compiled = torch.compile(block, backend=aot_autograd(fw_compiler=grab, bw_compiler=grab), fullgraph=True)
    compiled(*args).backward()
    kernels = [[str(n.kwargs["kernel_idx"]) for n in g.graph.nodes
                if n.op == "call_function" and "triton_kernel_wrapper" in str(n.target)] for g in graphs]
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
    names = [[kernel_side_table.get_kernel(int(i)).fn.__name__ for i in ks] for ks in kernels]
    print(json.dumps({"graph_breaks": explanation.graph_break_count, "graphs": explanation.graph_count,
                      "kernels": names, "grad_shape": list(args[0].grad.shape)}))
    """
)


def _run_without_interpreter(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_triton_op_path_traces_fullgraph_with_kernels_in_both_graphs():
    res = _run_without_interpreter(_TRITON_OP_TRACE)
    assert res.returncode == 0, res.stderr[-4000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["graph_breaks"] == 0 and info["graphs"] == 1
    forward, backward = info["kernels"]
    assert forward == ["temporal_attn_fwd_kernel", "skeletal_attn_fwd_kernel", "film_ln_fwd_kernel"]
    # N = 70 > 64 frames: the temporal backward needs the separate dq kernel
    assert sorted(backward) == sorted(["film_ln_bwd_kernel", "skeletal_attn_bwd_kernel",
                                       "temporal_attn_bwd_dkdv_kernel", "temporal_attn_bwd_dq_kernel"])
    assert info["grad_shape"] == [2, 70, 5, 3, 2, 16]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-without-interpreter error")
def test_cpu_tensors_without_interpreter_raise_a_clear_error():
    code = textwrap.dedent(
        """
        import torch
        from sald_fast import ops
        q = torch.randn(1, 2, 3, 1, 16)
        z = torch.randn(1, 2, 3, 16)
        calls = [lambda: ops.temporal_attention(q, q, q, backend="triton"),
                 lambda: ops.skeletal_attention(q, q, q, backend="triton"),
                 lambda: ops.film_residual_layernorm(z, z, z[:, 0, 0], z[:, 0, 0], backend="triton")]
        for call in calls:
            try:
                call()
            except RuntimeError as exc:
                assert "TRITON_INTERPRET=1" in str(exc), exc
                print("raised:", type(exc).__name__)
            else:
                raise SystemExit("no error")
        assert ops.resolve("temporal_attention", "auto", q.device).__module__ == "sald_fast.ops.reference"
        """
    )
    res = _run_without_interpreter(code)
    assert res.returncode == 0, res.stderr[-4000:]
    assert res.stdout.count("raised: TritonBackendError") == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU interpreter's probe")
def test_an_interpreter_that_cannot_run_the_kernels_gives_its_reason(monkeypatch):
    """A defective interpreter (Triton 3.6 with NumPy >= 2.4) makes the launchers refuse CPU tensors
    with the probe's reason, not fail inside a kernel; where the probe runs clean, it says None."""
    import kernels

    if is_interpreted(film.film_ln_fwd_kernel):
        assert kernels.interpreter_defect() in (None, _DEFECT) and _DEFECT == kernels.interpreter_defect()
    monkeypatch.setattr(kernels, "interpreter_defect", lambda: "Triton X's interpreter cannot run these kernels")
    z = torch.randn(1, 2, 3, 16)
    with pytest.raises(kernels.TritonBackendError, match="cannot run CPU tensor z here: Triton X's interpreter"):
        kernels.check_tensor("z", z, film.film_ln_fwd_kernel)


# ----------------------------------------------------------------------------- the whole Denoiser

def _tiny_denoisers():
    """A reference and a triton Denoiser with the same weights (small config), and their inputs."""
    from sald_fast import denoiser
    from sald_fast.config import DenoiserConfig

    cfg = DenoiserConfig(latent_dim=8, num_atoms=7, dim=32, num_layers=2, num_heads=2, ffn_mult=2,
                         text_dim=16, max_latent_frames=16, skip_tau=0, dropout=0.0)
    torch.manual_seed(0)
    ref = denoiser.Denoiser(cfg, backend="reference").to(DEVICE)
    tri = denoiser.Denoiser(cfg, backend="triton").to(DEVICE)
    tri.load_state_dict(ref.state_dict())
    assert tri.backend == "triton" and ref.backend == "reference"
    g = torch.Generator().manual_seed(1)
    B, Np = 2, 5
    inputs = dict(
        z_t=torch.randn(B, Np, 7, 8, generator=g).to(DEVICE),
        t=torch.tensor([3, 700], device=DEVICE),
        text=torch.randn(B, 4, 16, generator=g).to(DEVICE),
        text_mask=torch.tensor([[True, True, True, False], [True, True, False, False]], device=DEVICE),
        lengths=torch.tensor([Np, 2], device=DEVICE),
    )
    return ref, tri, inputs


@needs_kernels
def test_denoiser_triton_matches_reference_outputs_and_gradients(monkeypatch):
    """Denoiser(backend="triton") with the reference's weights: same eps and gradients (fp32)."""
    monkeypatch.setenv("SALD_FAST_TRITON_POISON", "1")
    ref, tri, inputs = _tiny_denoisers()
    outs, grads = {}, {}
    for name, model in (("reference", ref), ("triton", tri)):
        z_t = inputs["z_t"].clone().requires_grad_()
        eps = model(z_t, inputs["t"], inputs["text"], inputs["text_mask"], inputs["lengths"], None)
        (eps * torch.linspace(-1, 1, eps.shape[-1], device=DEVICE)).sum().backward()
        outs[name] = eps.detach()
        grads[name] = {"z_t": z_t.grad, **{n: p.grad for n, p in model.named_parameters() if p.grad is not None}}
    torch.testing.assert_close(outs["triton"], outs["reference"], rtol=1e-4, atol=1e-5)
    assert grads["triton"].keys() == grads["reference"].keys()
    for n, g_ref in grads["reference"].items():
        torch.testing.assert_close(grads["triton"][n], g_ref, rtol=1e-4, atol=1e-5, msg=lambda m: f"{n}: {m}")


@needs_kernels
def test_denoiser_triton_compiles_without_graph_breaks():
    """torch.compile(fullgraph=True) of the whole Denoiser (any graph break raises), forward + backward:
    the compiled output and every gradient (input and parameters) equal eager's."""
    _, tri, inputs = _tiny_denoisers()
    rest = (inputs["t"], inputs["text"], inputs["text_mask"], inputs["lengths"], None)

    def run(model):
        tri.zero_grad(set_to_none=True)
        z_t = inputs["z_t"].clone().requires_grad_()
        out = model(z_t, *rest)
        (out * torch.linspace(-1, 1, out.shape[-1], device=DEVICE)).sum().backward()
        return out.detach(), {"z_t": z_t.grad, **{n: p.grad.clone() for n, p in tri.named_parameters() if p.grad is not None}}

    eager_out, eager_grads = run(tri)  # also loads the backend outside of tracing
    torch._dynamo.reset()
    out, grads = run(torch.compile(tri, backend="aot_eager", fullgraph=True))
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-6)
    assert grads.keys() == eager_grads.keys() and len(grads) > 10
    for n, g in eager_grads.items():
        torch.testing.assert_close(grads[n], g, rtol=1e-4, atol=1e-5, msg=lambda m: f"{n}: {m}")


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="Inductor around the compiled Triton kernels: a GPU machine (python -m bench.gpu_check)")
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_denoiser_triton_under_inductor_at_several_batch_sizes(mode):
    """What the benchmarks' compiled rows run: Inductor (not aot_eager) around the triton_ops, by
    default and with CUDA graphs (reduce-overhead), ``dynamic=None`` so that the second batch size
    recompiles with a symbolic batch; every call's output equals eager's."""
    _, tri, inputs = _tiny_denoisers()
    tri.eval()
    names = ("z_t", "t", "text", "text_mask", "lengths")
    doubled = {k: torch.cat([inputs[k], inputs[k].flip(0)]) for k in names}  # B = 4
    batches = [{k: inputs[k] for k in names}, doubled, {k: v[:3] for k, v in doubled.items()}]
    torch._dynamo.reset()
    compiled = torch.compile(tri, mode=mode, dynamic=None)
    with torch.no_grad():
        for batch in batches:
            args = [batch[k] for k in names]
            want = tri(*args)
            for _ in range(3):  # reduce-overhead warms up, records, then replays
                torch.compiler.cudagraph_mark_step_begin()
                got = compiled(*args).clone()
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
