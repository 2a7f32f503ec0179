"""Wall-clock budgets that were asserts in tests/ (flaky on a shared machine): the built-in corpus's
generation (3,000 / 200 / 200 clips, no cache; budget 10 s of CPU time) and a tiny denoiser
over-fitting one batch (loss / 10; budget 15 s). Run with ``python -m pytest bench/test_bench_data.py``.
"""

from __future__ import annotations

import time

import torch

from sald_fast.config import DenoiserConfig
from sald_fast.data.builtin import builtin_corpus
from sald_fast.denoiser import Denoiser


def test_default_corpus_generation_time(benchmark):
    """builtin_corpus(cache=False) within 10 s of process CPU time."""
    benchmark.group = "data"
    start = time.process_time()
    corpus = benchmark.pedantic(builtin_corpus, kwargs={"cache": False}, rounds=1, iterations=1)
    cpu = time.process_time() - start
    benchmark.extra_info["cpu_s"] = round(cpu, 2)
    assert [len(corpus[s]) for s in ("train", "val", "test")] == [3000, 200, 200]
    assert cpu < 10.0, f"default corpus took {cpu:.1f} s of CPU time"


def test_tiny_denoiser_overfit_time(benchmark):
    """A tiny denoiser brings one batch's loss to a tenth within 15 s (at most 400 Adam steps)."""
    benchmark.group = "data"
    torch.manual_seed(0)  # the setup of tests/test_denoiser.py::test_overfits_and_every_parameter_learns
    J, DZ, TEXT_DIM, B, N = 7, 4, 12, 4, 6
    cfg = DenoiserConfig(latent_dim=DZ, num_atoms=J, dim=32, num_layers=4, num_heads=4, ffn_mult=2, text_dim=TEXT_DIM,
                         max_latent_frames=6, skip_tau=2)
    m = Denoiser(cfg).train()
    g = torch.Generator().manual_seed(3)
    z = torch.randn(B, N, J, DZ, generator=g)
    t = torch.tensor([10, 300, 650, 990])
    text = torch.randn(B, 5, TEXT_DIM, generator=g)
    mask = torch.ones(B, 5, dtype=torch.bool)
    mask[2, 3:] = False
    lengths = torch.tensor([6, 4, 6, 3])
    drop = torch.tensor([False, True, False, True])
    target = torch.randn(B, N, J, DZ, generator=g)
    valid = (torch.arange(N)[None] < lengths[:, None]).float()[:, :, None, None]
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)

    def overfit() -> tuple[float, float]:
        first = last = None
        for _ in range(400):
            opt.zero_grad(set_to_none=True)
            loss = ((m(z, t, text, mask, lengths, drop) - target).pow(2) * valid).sum() / (valid.sum() * J * DZ)
            loss.backward()
            opt.step()
            first = float(loss) if first is None else first
            last = float(loss)
            if last < first / 20:
                break
        return first, last

    start = time.perf_counter()
    first, last = benchmark.pedantic(overfit, rounds=1, iterations=1)
    elapsed = time.perf_counter() - start
    assert last < first / 10, f"loss {first:.4f} -> {last:.4f}"
    assert elapsed < 15, f"overfit took {elapsed:.1f}s"
