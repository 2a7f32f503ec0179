"""Sampling without host synchronisation: precomputed scheduler plans equal diffusers' steps, a
sampling run reads nothing back from the device per step, and the CUDA-graph option refuses a CPU
with a clear message."""

from __future__ import annotations

import collections
import contextlib
import copy
import gc
import weakref

import pytest
import torch

from sald_fast.config import DenoiserConfig, DiffusionConfig, TextConfig, preset
from sald_fast.denoiser import Denoiser
from sald_fast.diffusion import PLANNED_SCHEDULERS, GaussianDiffusion, cuda_graphs, make_scheduler, sampling_plan

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

SHAPE = (2, 3, 7, 4)


class LinearToy(torch.nn.Module):
    """A denoiser with the sampler's signature whose output depends on z, t, text and lengths."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(4, 4, generator=g) * 0.3)
        self.text = torch.nn.Parameter(torch.randn(8, 4, generator=g) * 0.3)

    def forward(self, z, t, text, text_mask, lengths, drop_text):
        cond = text.mean(1) @ self.text
        if drop_text is not None:
            cond = torch.where(drop_text[:, None], torch.zeros_like(cond), cond)
        out = z @ self.w + cond[:, None, None, :] + torch.cos(t.float() / 300.0).view(-1, 1, 1, 1)
        if lengths is not None:
            out = out * (lengths.float().view(-1, 1, 1, 1) / z.shape[1])
        return out


@pytest.mark.parametrize("name", PLANNED_SCHEDULERS)
@pytest.mark.parametrize("steps", [3, 10, 50])
def test_plan_equals_the_diffusers_steps(name, steps):
    """The plan (coefficients read off the diffusers scheduler) gives the diffusers loop's samples."""
    diffusion = GaussianDiffusion(DiffusionConfig())
    den = LinearToy()
    text = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([3, 2])
    kw = dict(steps=steps, guidance=2.5, generator=None)
    planned = diffusion.sample(den, SHAPE, text, None, lengths, scheduler=name,
                               **{**kw, "generator": torch.Generator().manual_seed(0)})
    stepped = diffusion.sample(den, SHAPE, text, None, lengths, scheduler=make_scheduler(DiffusionConfig(), name),
                               **{**kw, "generator": torch.Generator().manual_seed(0)})
    scale = float(stepped.abs().max())
    torch.testing.assert_close(planned, stepped, rtol=1e-4, atol=1e-4 * scale)
    plan = sampling_plan(DiffusionConfig(), name, steps)
    assert plan.num_steps == len(plan.timesteps) and plan.window <= 4


def test_unplanned_scheduler_has_no_plan():
    assert sampling_plan(DiffusionConfig(), "ddpm", 10) is None
    assert sampling_plan(DiffusionConfig(), "euler_a", 10) is None


# ----------------------------------------------------------------------------- host synchronisations

# Tensor -> Python conversions (each waits for the device when the tensor is on a GPU) and ops
# whose output shape depends on values (nonzero & co. synchronise too).
_TENSOR_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero",
                   "masked_select", "unique", "repeat_interleave")
_TORCH_FUNCTIONS = ("nonzero", "masked_select", "unique", "repeat_interleave", "is_nonzero")


@contextlib.contextmanager
def count_host_syncs():
    """Count the calls of every tensor-to-host conversion (by name) made from Python."""
    counts: collections.Counter = collections.Counter()
    saved = []

    def wrap(owner, name):
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            if not (name == "repeat_interleave" and kwargs.get("output_size") is not None):  # sized: no read
                counts[name] += 1
            return original(*args, **kwargs)

        saved.append((owner, name, original))
        setattr(owner, name, counted)

    for name in _TENSOR_METHODS:
        wrap(torch.Tensor, name)
    for name in _TORCH_FUNCTIONS:
        wrap(torch, name)
    try:
        yield counts
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


def test_the_counter_sees_conversions():
    t = torch.tensor([1, 2])
    with count_host_syncs() as counts:
        int(t[0]), bool(t[1]), t.tolist(), t.max().item(), t.nonzero(), float(t[0])
    assert counts["__int__"] == 1 and counts["__bool__"] == 1 and counts["tolist"] == 1
    assert counts["item"] == 1 and counts["nonzero"] == 1 and counts["__float__"] == 1


def _tiny_denoiser(backend: str) -> Denoiser:
    torch.manual_seed(0)
    cfg = DenoiserConfig(latent_dim=4, num_atoms=7, dim=16, num_layers=3, num_heads=2, ffn_mult=2, text_dim=8,
                         max_latent_frames=8, skip_tau=2)
    return Denoiser(cfg, backend=backend).eval()


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("scheduler", ["ddim", "dpm++"])
def test_no_host_sync_per_sampling_step(backend, scheduler):
    """A run of 20 steps reads back from the device no more often than a run of 10 (the lengths and
    text-mask checks run once per run, at the entry), and a denoiser forward reads back nothing.
    Runs eagerly: torch.compiler.is_compiling() is False, so no guard hides a check."""
    assert not torch.compiler.is_compiling()
    den = _tiny_denoiser(backend)
    diffusion = GaussianDiffusion(DiffusionConfig())
    text = torch.randn(2, 5, 8)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    lengths = torch.tensor([3, 2])
    for steps in (10, 20):
        sampling_plan(diffusion.cfg, scheduler, steps)  # built once per (scheduler, steps) on the host, cached
    runs = {}
    for steps in (10, 20):
        with count_host_syncs() as counts:
            diffusion.sample(den, (2, 3, 7, 4), text, mask, lengths, steps=steps, guidance=3.0, scheduler=scheduler,
                             generator=torch.Generator().manual_seed(0))
        runs[steps] = sum(counts.values())
    assert runs[20] <= runs[10] <= 2, runs  # once for lengths, once for the mask
    with torch.no_grad(), count_host_syncs() as counts:
        den(torch.randn(4, 3, 7, 4), torch.tensor([999, 999, 500, 500]), torch.randn(4, 5, 8),
            torch.cat([mask, mask]), torch.cat([lengths, lengths]), torch.tensor([False, False, True, True]))
    assert sum(counts.values()) == 0, dict(counts)


def test_generate_makes_no_more_syncs_for_more_steps(monkeypatch):
    """The whole pipeline (text encoding, sampling, decoding): 20 steps cost no more host reads than 10."""
    from sald_fast.pipeline import SignSALD

    cfg = preset("tiny")
    cfg.text = TextConfig(kind="tiny", max_tokens=12, tiny_dim=32, seed=0)
    cfg.denoiser.text_dim = 32
    cfg.denoiser.num_layers = 2
    model = SignSALD.from_config(cfg, seed=0, backend="reference").eval()
    for steps in (10, 20):
        sampling_plan(cfg.diffusion, "ddim", steps)
    model.generate("warm up the text cache", num_frames=8, steps=2)
    runs = {}
    for steps in (10, 20):
        with count_host_syncs() as counts:
            model.generate("where is the library", num_frames=16, steps=steps, scheduler="ddim")
        runs[steps] = dict(counts)
    assert sum(runs[20].values()) <= sum(runs[10].values()), runs


# ----------------------------------------------------------------------------- CUDA graph option

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_cuda_graph_on_cpu_fails_clearly():
    den = _tiny_denoiser("reference")
    diffusion = GaussianDiffusion(DiffusionConfig())
    with pytest.raises(ValueError, match=r"cuda_graph=True .* needs a CUDA device; the model is on cpu"):
        diffusion.sample(den, (1, 3, 7, 4), torch.randn(1, 5, 8), None, None, steps=3, cuda_graph=True)


def test_cuda_graph_needs_a_planned_scheduler():
    den = _tiny_denoiser("reference")
    diffusion = GaussianDiffusion(DiffusionConfig())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        pytest.skip("the scheduler check follows the device check")
    with pytest.raises(ValueError, match="cuda_graph=True needs one of the schedulers"):
        diffusion.sample(den.to(device), (1, 3, 7, 4), torch.randn(1, 5, 8, device=device), None, None, steps=3,
                         scheduler="ddpm", cuda_graph=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_cli_cuda_graph_on_cpu_is_one_error_line(tmp_path, capsys, monkeypatch):
    from sald_fast import cli
    from sald_fast.pipeline import SignSALD

    seen = {}

    class Model:
        config = preset("tiny")
        duration = None

        def generate(self, *args, **kwargs):
            seen.update(kwargs)
            raise ValueError("cuda_graph=True captures the sampling run as a CUDA graph and needs a CUDA device; "
                             "the model is on cpu")

    monkeypatch.setattr(SignSALD, "load", staticmethod(lambda *a, **k: Model()))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    code = cli.main(["generate", "hi", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "x.npz"),
                     "--device", "cpu", "--backend", "reference", "--cuda-graph", "--quiet", "--frames", "8"])
    assert code == 2 and seen["cuda_graph"] is True
    assert capsys.readouterr().err.startswith("error: cuda_graph=True captures the sampling run")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_generate_cuda_graph_on_cpu_fails_clearly():
    from sald_fast.pipeline import SignSALD

    cfg = preset("tiny")
    cfg.text = TextConfig(kind="tiny", max_tokens=12, tiny_dim=32, seed=0)
    cfg.denoiser.text_dim = 32
    cfg.denoiser.num_layers = 1
    model = SignSALD.from_config(cfg, seed=0, backend="reference").eval()
    with pytest.raises(ValueError, match="needs a CUDA device; the model is on cpu"):
        model.generate("hello", num_frames=8, steps=2, cuda_graph=True)


def test_graph_cache_and_static_inputs_with_a_stand_in_capture(monkeypatch):
    """The CUDA-graph bookkeeping on the CPU: a stand-in capture (replay re-runs the captured
    function into the captured output). One capture per configuration, new noise / text / lengths
    reach the static inputs, and every replay equals the eager run with the same seed."""
    import sald_fast.diffusion as diffusion_module

    captures = []

    def fake_capture(run, device):
        out = run()
        captures.append(out)
        return (lambda: out.copy_(run())), out

    monkeypatch.setattr(diffusion_module, "_capture_graph", fake_capture)
    den = _tiny_denoiser("reference")
    diffusion = GaussianDiffusion(DiffusionConfig())
    for scheduler in ("ddim", "dpm++"):
        plan = sampling_plan(diffusion.cfg, scheduler, 6)
        for seed in (0, 1, 2):
            g = torch.Generator().manual_seed(seed)
            text = torch.randn(2, 5, 8, generator=g)
            mask = torch.rand(2, 5, generator=g) < 0.7
            mask[:, 0] = True
            lengths = torch.randint(1, 4, (2,), generator=g)
            noise = torch.randn(2, 3, 7, 4, generator=g)
            graphed = diffusion._sample_graphed(den, plan, noise, text, mask, lengths, 3.0, True)
            eager = diffusion_module._run_plan(den, plan, noise, text, mask, lengths, 3.0, True, False)
            torch.testing.assert_close(graphed, eager, rtol=0, atol=0)
    assert len(captures) == 2  # once per scheduler, not per call
    assert len(cuda_graphs(den)) == 2
    # another schedule with the same scheduler and steps: its own graph, not the first one's coefficients
    other = GaussianDiffusion(DiffusionConfig(beta_end=0.03))
    plan = sampling_plan(other.cfg, "ddim", 6)
    graphed = other._sample_graphed(den, plan, noise, text, mask, lengths, 3.0, True)
    torch.testing.assert_close(graphed, diffusion_module._run_plan(den, plan, noise, text, mask, lengths, 3.0, True,
                                                                   False), rtol=0, atol=0)
    assert len(captures) == 3 and len(cuda_graphs(den)) == 3

    # the graphs live outside the module: a copy of the denoiser (compiled_denoiser deep-copies it)
    # never meets one (a CUDAGraph cannot be copied), and they go with the denoiser
    class Uncopyable:
        def __deepcopy__(self, memo):
            raise TypeError("cannot copy a CUDA graph")

    cuda_graphs(den)["stand-in"] = (Uncopyable(), {}, None)
    twin = copy.deepcopy(den)
    assert len(cuda_graphs(twin)) == 0 and len(cuda_graphs(den)) == 4
    cuda_graphs(twin)["stand-in"] = (Uncopyable(), {}, None)
    alive = weakref.ref(twin)
    n = len(diffusion_module._CUDA_GRAPHS)
    del twin
    gc.collect()
    assert alive() is None and len(diffusion_module._CUDA_GRAPHS) == n - 1


def test_the_benchmarks_cuda_graph_wrapper_samples_the_same_run(monkeypatch):
    """bench's ``_MarkStep`` (the reduce-overhead row of the sampling benchmark) passes on what the
    sampler asks a denoiser for by name, so that row samples with the per-run FiLM table and the
    shared CFG halves, as the rows it is compared with do."""
    from bench.test_bench_model import _MarkStep

    den = _tiny_denoiser("reference")
    for p in den.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    asked = []
    film_parameters = den.film_parameters
    monkeypatch.setattr(den, "film_parameters", lambda t: (asked.append(t), film_parameters(t))[1])
    diffusion = GaussianDiffusion(DiffusionConfig())
    g = torch.Generator().manual_seed(0)
    text, lengths = torch.randn(2, 5, 8, generator=g), torch.tensor([3, 2])
    kw = dict(steps=4, guidance=2.0, scheduler="ddim")
    direct = diffusion.sample(den, (2, 3, 7, 4), text, None, lengths, generator=torch.Generator().manual_seed(1), **kw)
    wrapped = diffusion.sample(_MarkStep(den), (2, 3, 7, 4), text, None, lengths,
                               generator=torch.Generator().manual_seed(1), **kw)
    assert len(asked) == 2  # once per run, through the wrapper too
    torch.testing.assert_close(wrapped, direct, rtol=0, atol=0)
