"""The whole model: each fast path next to the eager reference and ``torch.compile`` of the reference.

Groups (randomly initialised models, the ``tiny`` text encoder kind: nothing is downloaded):

- ``denoiser forward``: the paper denoiser (D=256, 8 layers, 8 heads), inference (no grad) on
  z_t (B, N'=64, J'=7, 16) as a sampling step calls it (keys/values of 32 text tokens
  precomputed, every frame valid); B=64 on CUDA, 4 on the CPU. The same (compiled) module serves
  the sampling benchmarks, compiled with ``dynamic=None``: the forward's batch compiles static,
  the sampling batches share one recompile with a symbolic batch.
- ``denoiser training step``: ``GaussianDiffusion.training_loss`` (random t, eps-MSE, condition
  dropped with p=0.1, per-sample lengths) + backward + Adam step, same shapes; on the CPU also at
  the tiny preset's training shape (D=64, 4 layers, text width 384, B=32, N'=28).
- ``vae training step``: the paper VAE (channels 96/176/352), forward + loss (features, FK
  positions, velocities, KL) + backward + Adam step on x (B, N, 44, 9): B=128, N=256 on CUDA;
  B=8, N=128 on the CPU.
- ``vae decode``: latents (B, 64, 7, 16) -> features (B, 256, 44, 9); B=64 on CUDA, 1 (one
  sentence) on the CPU.
- ``sampling``: ``SignSALD.generate`` end to end (text encoding with the prompt cache cleared,
  DDIM-50 with classifier-free guidance, VAE decode, forward kinematics, SMPL-X parameters) for
  one sentence and for a batch of 64, with the preset's clip length (tiny 112 frames, paper 256).
  CUDA: the paper preset. CPU: tiny (1 and 64 sentences) and paper (1 sentence); a batch of 64
  with the paper preset would take many minutes per call on a small CPU and is skipped, and the
  batch of 64 is timed on the reference only.

Implementations: ``reference`` (backend "reference", eager), ``compiled_reference``
(``torch.compile`` of that model, inductor), ``fast`` (backend "auto": the Triton kernels on
CUDA; the C++ extension's graph convolution, and on the CPU its fused FiLM + residual +
LayerNorm) and, on CUDA, ``compiled_fast`` and (sampling) ``compiled_fast_cudagraphs`` (mode
"reduce-overhead"); for sampling also ``fast_compiled`` (``generate(..., compile=True)``: the
sampling fast path, a compiled frozen copy of the "auto" denoiser, one sentence) and, on CUDA,
``fast_cuda_graph`` (``generate(..., cuda_graph=True)``). ``fast`` is skipped where it would run
the same code as the reference. On the
CPU the denoiser training step is the case that compares all four (reference, compiled
reference, fast, compiled fast: minutes of compilation); elsewhere on the CPU ``compiled_fast`` is
skipped (its compile time would dominate the run).
On CUDA the models run under bf16 autocast with fp32 weights, as ``train/`` does; on the CPU in
fp32. Under ``--benchmark-disable`` everything runs once on the tiny preset, shrunk further.

FLOPs are counted from shapes (``torch.utils.flop_counter``) on the reference at batch 1 and
scaled by the batch; no byte count (the roofline share is the matmul-rate one).
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from bench._common import CUDA, DEVICE, autocast, compiled, count_flops
from sald_fast import preset
from sald_fast.config import SALDConfig, TextConfig
from sald_fast.denoiser import Denoiser
from sald_fast.diffusion import GaussianDiffusion
from sald_fast.ops import dispatch
from sald_fast.pipeline import SignSALD
from sald_fast.text import build_text_encoder
from sald_fast.vae import SkeletonVAE

IMPLS = ["reference", "compiled_reference", "fast", "compiled_fast"]
DENOISER_OPS = ("film_residual_layernorm", "temporal_attention", "skeletal_attention")
VAE_OPS = ("skeletal_graph_conv",)
PRECISION = "bf16 autocast, fp32 weights" if CUDA else "fp32"


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:  # sampling: (preset, number of sentences)
        smoke = metafunc.config.getoption("benchmark_disable", default=False)
        cases = [("tiny", 2)] if smoke else [("tiny", 1), ("tiny", 64), ("paper", 1), ("paper", 64)]
        metafunc.parametrize("case", cases, ids=[f"{p}-{b}" for p, b in cases])
    if "train_shape" in metafunc.fixturenames:  # denoiser training step: (preset, B, N')
        shapes = _training_shapes(metafunc.config.getoption("benchmark_disable", default=False))
        metafunc.parametrize("train_shape", shapes, ids=[f"{p}-B{b}-N{n}" for p, b, n in shapes])


def _config(name: str, smoke: bool) -> SALDConfig:
    """The preset with the ``tiny`` text encoder kind at the denoiser's text width (shrunk further in the smoke run)."""
    cfg = preset(name)
    if smoke:
        cfg.denoiser.text_dim = 32
        cfg.denoiser.num_layers = 2
        cfg.train.num_frames = 16
    cfg.text = TextConfig(kind="tiny", max_tokens=12 if smoke else cfg.text.max_tokens,
                          tiny_dim=cfg.denoiser.text_dim, seed=0)
    return cfg


def _fast_differs(ops: tuple[str, ...], grad: bool) -> bool:
    """Whether backend "auto" runs anything but the reference for ``ops`` on this device, in calls
    that record autograd (``grad``) or not (auto's choice on the CPU depends on it)."""
    device = torch.device(DEVICE)
    return any(dispatch.resolve(op, "auto", device, grad=grad) is not dispatch.resolve(op, "reference", device)
               for op in ops)


def _check_impl(impl: str, ops: tuple[str, ...], smoke: bool, grad: bool, compiled_fast_on_cpu: bool = False) -> str:
    """The ops backend of ``impl``, for calls with gradients (``grad``: training) or without;
    skips the implementations that do not apply here."""
    if impl.startswith(("fast", "compiled_fast")) and not _fast_differs(ops, grad):
        pytest.skip(f"fast = reference on {DEVICE} in calls {'with' if grad else 'without'} gradients: "
                    f"auto runs the reference for {', '.join(ops)}")
    if impl.startswith("compiled_fast") and not CUDA and not (compiled_fast_on_cpu and impl == "compiled_fast"):
        pytest.skip("compiled fast path: CUDA only (on the CPU its compile time would dominate the run)")
    if impl == "compiled_fast_cudagraphs" and not CUDA:
        pytest.skip("CUDA graphs (reduce-overhead) need a GPU")
    return "reference" if impl.endswith("reference") else "auto"


def _callable(module: nn.Module, impl: str, compile_backend: str, dynamic: bool | None = False):
    """``module`` itself, or its compiled form for the compiled implementations."""
    if impl == "compiled_fast_cudagraphs":
        return _MarkStep(compiled(module, compile_backend, mode="reduce-overhead", dynamic=dynamic))
    return compiled(module, compile_backend, dynamic=dynamic) if impl.startswith("compiled") else module


class _MarkStep(nn.Module):
    """A compiled (reduce-overhead) denoiser that starts a new CUDA-graph step at every call; every
    other attribute is the inner denoiser's (the sampler asks for ``encode_text`` and
    ``film_parameters`` by name: without them this row would sample without the reused text, the
    per-run FiLM table and the shared CFG halves that the other rows use)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "inner":
                raise
            return getattr(self.inner, name)

    def forward(self, *args, **kwargs):
        torch.compiler.cudagraph_mark_step_begin()
        return self.inner(*args, **kwargs)


def _flops(smoke: bool, fn) -> int:
    """FLOPs of ``fn()`` counted from shapes; 0 in the smoke run (nothing is timed there)."""
    return 0 if smoke else count_flops(fn)


def _first(inputs: tuple, n: int = 1) -> tuple:
    """The first ``n`` samples of every tensor in ``inputs``."""
    return tuple(x[:n] if isinstance(x, torch.Tensor) else x for x in inputs)


@functools.lru_cache(maxsize=None)
def _model(kind: str, name: str, backend: str, smoke: bool) -> nn.Module:
    """A seeded model on the device, one per kind ("denoiser", "denoiser_train", "vae", "vae_train",
    "text"), preset and backend: the same weights for every backend. The inference models serve
    their own benchmarks and the sampling pipelines (so compiled code is shared where shapes allow)."""
    cfg = _config(name, smoke)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if kind.startswith("denoiser"):
            model = Denoiser(cfg.denoiser, backend=backend)
        elif kind.startswith("vae"):
            model = SkeletonVAE(cfg.vae, backend=backend)
        else:
            model = build_text_encoder(cfg.text)
    model = model.to(DEVICE)
    return model.train() if kind.endswith("train") else model.eval()


def _pipeline(name: str, impl: str, backend: str, smoke: bool, compile_backend: str) -> SignSALD:
    """SignSALD from the cached inference models; the compiled implementations compile its denoiser
    (dynamic=None: one recompile with a symbolic batch serves every batch size after the first)."""
    denoiser = _callable(_model("denoiser", name, backend, smoke), impl, compile_backend, dynamic=None)
    return SignSALD(_config(name, smoke), _model("vae", name, backend, smoke), denoiser,
                    _model("text", name, "reference", smoke)).eval()


def _adam_step(module: nn.Module, loss_of):
    """One training step of ``module``: ``loss_of(*inputs)`` under autocast, backward, Adam
    (lr 1e-5), gradients cleared; returns the detached loss."""
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-5)

    def step(*inputs):
        with autocast():
            loss = loss_of(*inputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def _denoiser_inputs(cfg: SALDConfig, batch: int, frames: int, seed: int = 0) -> tuple:
    """(z_t, t, text, text_mask, lengths) for the denoiser."""
    g = torch.Generator().manual_seed(seed)
    d, L = cfg.denoiser, cfg.text.max_tokens
    z = torch.randn(batch, frames, d.num_atoms, d.latent_dim, generator=g)
    t = torch.randint(0, cfg.diffusion.num_train_steps, (batch,), generator=g)
    text = torch.randn(batch, L, d.text_dim, generator=g)
    mask = torch.arange(L)[None] < torch.randint(2, L + 1, (batch, 1), generator=g)
    lengths = torch.randint(max(1, frames // 2), frames + 1, (batch,), generator=g)
    return tuple(x.to(DEVICE) for x in (z, t, text, mask, lengths))


def _denoiser_shape(smoke: bool) -> tuple[str, int, int]:
    return ("tiny", 2, 4) if smoke else ("paper", 64 if CUDA else 4, 64)


@pytest.mark.parametrize("impl", IMPLS)
def test_denoiser_forward(timer, smoke, compile_backend, impl):
    """One sampling step's call: text keys/values precomputed (``encode_text``), every frame valid."""
    name, B, frames = _denoiser_shape(smoke)
    backend = _check_impl(impl, DENOISER_OPS, smoke, grad=False)
    cfg = _config(name, smoke)
    module = _model("denoiser", name, backend, smoke)
    net = _callable(module, impl, compile_backend, dynamic=None)  # the object sampling uses too
    z, t, text, mask, _ = _denoiser_inputs(cfg, B, frames)

    def forward(model, z, t, context):
        with torch.no_grad(), autocast():
            return model(z, t, text_context=context)

    def context(model, n):
        with torch.no_grad(), autocast():
            return model.encode_text(text[:n], mask[:n])

    reference = functools.partial(_model, "denoiser", name, "reference", smoke)
    flops = B * _flops(smoke, lambda: forward(reference(), z[:1], t[:1], context(reference(), 1)))
    eps = timer(functools.partial(forward, net), [(z, t, context(module, B))],
                group=f"denoiser forward ({name}, B={B}, N'={frames})", impl=impl, flops=flops,
                warmup=2 if impl.startswith("compiled") else 1, precision=PRECISION,
                shape=f"B={B}, N'={frames}, J'={cfg.denoiser.num_atoms}, D={cfg.denoiser.dim}, "
                      f"{cfg.denoiser.num_layers} layers, {cfg.text.max_tokens} text tokens (keys/values precomputed)")
    assert eps.shape == z.shape and torch.isfinite(eps).all()


def _training_shapes(smoke: bool) -> list[tuple[str, int, int]]:
    """(preset, B, N') of the denoiser training step: the paper shape of the forward benchmark and,
    on the CPU, the tiny preset's training batch (B=32, N'=28); once at tiny sizes in the smoke run."""
    if smoke:
        return [_denoiser_shape(smoke)]
    return [_denoiser_shape(smoke)] if CUDA else [("tiny", 32, 28), _denoiser_shape(smoke)]


@pytest.mark.parametrize("impl", IMPLS)
def test_denoiser_training_step(timer, smoke, compile_backend, impl, train_shape):
    name, B, frames = train_shape
    backend = _check_impl(impl, DENOISER_OPS, smoke, grad=True, compiled_fast_on_cpu=True)
    cfg = _config(name, smoke)
    diffusion = GaussianDiffusion(cfg.diffusion).to(DEVICE)

    def make_step(module: nn.Module, net):
        return _adam_step(module, lambda z0, t, text, mask, lengths: diffusion.training_loss(
            net, z0, text, mask, lengths, cfg.denoiser.cond_drop_prob))

    module = _model("denoiser_train", name, backend, smoke)
    inputs = _denoiser_inputs(cfg, B, frames)
    reference = functools.partial(_model, "denoiser_train", name, "reference", smoke)
    flops = B * _flops(smoke, lambda: make_step(reference(), reference())(*_first(inputs)))
    loss = timer(make_step(module, _callable(module, impl, compile_backend)), [inputs],
                 group=f"denoiser training step ({name}, B={B}, N'={frames})", impl=impl, flops=flops,
                 warmup=2 if impl.startswith("compiled") else 1, precision=PRECISION,
                 shape=f"B={B}, N'={frames}, J'={cfg.denoiser.num_atoms}, D={cfg.denoiser.dim}, forward+loss+backward+Adam")
    assert torch.isfinite(loss)


def _vae_train_shape(smoke: bool) -> tuple[str, int, int]:
    return ("tiny", 2, 8) if smoke else ("paper", 128, 256) if CUDA else ("paper", 8, 128)


@pytest.mark.parametrize("impl", IMPLS)
def test_vae_training_step(timer, smoke, compile_backend, impl):
    name, B, N = _vae_train_shape(smoke)
    backend = _check_impl(impl, VAE_OPS, smoke, grad=True)
    cfg = _config(name, smoke)

    def make_step(module: nn.Module, net):
        return _adam_step(module, lambda x: module.loss(x, net(x))["total"])

    module = _model("vae_train", name, backend, smoke)
    x = torch.randn(B, N, 44, 9, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    reference = functools.partial(_model, "vae_train", name, "reference", smoke)
    flops = B * _flops(smoke, lambda: make_step(reference(), reference())(x[:1]))
    loss = timer(make_step(module, _callable(module, impl, compile_backend)), [(x,)],
                 group=f"vae training step ({name}, B={B}, N={N})", impl=impl, flops=flops,
                 warmup=2 if impl.startswith("compiled") else 1, precision=PRECISION,
                 shape=f"B={B}, N={N}, J=44, channels {cfg.vae.channels}, forward+loss+backward+Adam")
    assert torch.isfinite(loss)


@pytest.mark.parametrize("impl", IMPLS)
def test_vae_decode(timer, smoke, compile_backend, impl):
    name, B, frames = ("tiny", 1, 2) if smoke else ("paper", 64 if CUDA else 1, 64)
    backend = _check_impl(impl, VAE_OPS, smoke, grad=False)
    cfg = _config(name, smoke)
    vae = _model("vae", name, backend, smoke)
    decode = compiled(vae.decode, compile_backend) if impl.startswith("compiled") else vae.decode
    z = torch.randn(B, frames, cfg.vae.num_atoms, cfg.vae.latent_dim, generator=torch.Generator().manual_seed(0))

    def step(fn, latents):
        with torch.no_grad(), autocast():
            return fn(latents)

    flops = B * _flops(smoke, lambda: step(_model("vae", name, "reference", smoke).decode, z[:1].to(DEVICE)))
    out = timer(functools.partial(step, decode), [(z.to(DEVICE),)], group=f"vae decode ({name}, B={B}, N'={frames})",
                impl=impl, flops=flops, warmup=2 if impl.startswith("compiled") else 1, precision=PRECISION,
                shape=f"latents ({B}, {frames}, {cfg.vae.num_atoms}, {cfg.vae.latent_dim}) -> ({B}, {4 * frames}, 44, 9)")
    assert out.shape == (B, 4 * frames, 44, 9) and torch.isfinite(out).all()


SENTENCES = ["where is the library?", "thank you very much", "the weather is cold today", "good morning, my friend"]


@pytest.mark.parametrize("impl", IMPLS + ["compiled_fast_cudagraphs", "fast_cuda_graph", "fast_compiled"])
def test_sampling(timer, smoke, compile_backend, impl, case):
    name, batch = case
    if impl == "fast_compiled" and (smoke or batch > 1):
        pytest.skip("generate(compile=True): timed on one sentence (its compile time would dominate a smoke run; "
                    "tests/test_sampling_fast.py checks its output)")
    if CUDA and name == "tiny" and not smoke:
        pytest.skip("sampling with the tiny preset: timed on the CPU only (the GPU report covers the paper preset)")
    if not CUDA and not smoke and (name, batch) == ("paper", 64):
        pytest.skip("sampling 64 sentences with the paper preset on the CPU: many minutes per DDIM-50 call")
    if not CUDA and not smoke and batch > 1 and impl != "reference":
        pytest.skip("sampling a batch on the CPU: the reference only (the one-sentence cases compare implementations)")
    if impl == "fast_cuda_graph" and not CUDA:
        pytest.skip("the whole-run CUDA graph (generate(cuda_graph=True)) needs a GPU")
    backend = "auto" if impl == "fast_compiled" else _check_impl(impl, DENOISER_OPS + VAE_OPS, smoke, grad=False)
    cfg = _config(name, smoke)
    pipe = _pipeline(name, "fast" if impl in ("fast_cuda_graph", "fast_compiled") else impl, backend, smoke,
                     compile_backend)
    graph = impl == "fast_cuda_graph"
    compile_it = impl == "fast_compiled"
    steps, frames = (2, cfg.train.num_frames) if smoke else (50, cfg.train.num_frames)
    texts = [f"{SENTENCES[i % len(SENTENCES)]} ({i})" if batch > 1 else SENTENCES[0] for i in range(batch)]

    def generate(model: SignSALD, prompts: list[str], num_steps: int) -> torch.Tensor:
        model.text_encoder.clear_cache()  # the prompt's encoding is part of the latency
        with autocast():
            return model.generate(prompts, num_frames=frames, steps=num_steps, seed=0,
                                  cuda_graph=graph and model is pipe, compile=compile_it and model is pipe).positions

    reference = functools.partial(_pipeline, name, "reference", "reference", smoke, compile_backend)
    one_step, two_steps = (_flops(smoke, lambda: generate(reference(), texts[:1], n)) for n in (1, 2))
    per_step = two_steps - one_step
    flops = batch * (one_step - per_step + steps * per_step)
    positions = timer(functools.partial(generate, pipe, texts, steps), [()],
                      group=f"sampling {name}, {batch} sentence{'s' if batch > 1 else ''} (DDIM-{steps}, {frames} frames)",
                      impl=impl, flops=flops,
                      warmup=3 if impl.endswith("cudagraphs") else 2 if impl.startswith("compiled") or graph
                      or compile_it else 1,
                      precision=PRECISION, steps=steps, guidance=cfg.diffusion.guidance,
                      shape=f"{batch} x {frames} frames, DDIM-{steps}, CFG (denoiser batch {2 * batch})")
    assert positions.shape == (batch, frames, 44, 3) and torch.isfinite(positions).all()
