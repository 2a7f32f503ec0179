"""On a GPU: a whole sampling run captured as one CUDA graph and replayed equals the eager run
with the same seed (DDIM and DPM-Solver++, with CFG, lengths and a padded text mask), for every
backend, and replays with new inputs follow them. Skipped without CUDA (``python -m
bench.gpu_check`` runs it on a GPU machine)."""

from __future__ import annotations

import pytest
import torch

from sald_fast.config import DenoiserConfig, DiffusionConfig, TextConfig, preset
from sald_fast.denoiser import Denoiser
from sald_fast.diffusion import GaussianDiffusion, cuda_graphs

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

# Same kernels, same order, same inputs: a replay is expected to be bit-identical to the eager run;
# the stated tolerance allows for library kernels choosing other algorithms under capture.
RTOL, ATOL = 1e-5, 1e-5


def _denoiser(backend: str) -> Denoiser:
    torch.manual_seed(0)
    cfg = DenoiserConfig(latent_dim=16, num_atoms=7, dim=64, num_layers=4, num_heads=4, ffn_mult=2, text_dim=32,
                         max_latent_frames=64, skip_tau=2)
    den = Denoiser(cfg, backend=backend).cuda().eval()
    for p in den.parameters():  # non-trivial FiLM and skips (zero at init)
        p.data.add_(0.02 * torch.randn_like(p))
    return den


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("scheduler", ["ddim", "dpm++"])
def test_graph_replay_equals_eager(backend, scheduler):
    den = _denoiser(backend)
    diffusion = GaussianDiffusion(DiffusionConfig())
    shape = (2, 16, 7, 16)
    for seed in (0, 1, 2):  # capture on the first call, replay on the next ones
        g = torch.Generator().manual_seed(seed)
        text = torch.randn(2, 6, 32, generator=g).cuda()
        mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3]).cuda()
        lengths = torch.tensor([16, 9 + seed]).cuda()
        kw = dict(steps=12, guidance=2.0, scheduler=scheduler)
        eager = diffusion.sample(den, shape, text, mask, lengths, generator=torch.Generator().manual_seed(seed), **kw)
        graphed = diffusion.sample(den, shape, text, mask, lengths, generator=torch.Generator().manual_seed(seed),
                                   cuda_graph=True, **kw)
        torch.testing.assert_close(graphed, eager, rtol=RTOL, atol=ATOL)
    assert len(cuda_graphs(den)) == 1


def test_generate_with_cuda_graph_equals_eager():
    from sald_fast.pipeline import SignSALD

    cfg = preset("tiny")
    cfg.text = TextConfig(kind="tiny", max_tokens=12, tiny_dim=32, seed=0)
    cfg.denoiser.text_dim = 32
    model = SignSALD.from_config(cfg, seed=0, backend="auto").cuda().eval()
    for seed in (0, 3):
        eager = model.generate(["where is the library?"], num_frames=64, steps=20, seed=seed)
        graphed = model.generate(["where is the library?"], num_frames=64, steps=20, seed=seed, cuda_graph=True)
        torch.testing.assert_close(graphed.positions, eager.positions, rtol=RTOL, atol=ATOL)
