"""``python -m bench.training_step_ab``: one denoiser training step per implementation, interleaved.

The pytest benchmarks time each implementation in turn; on a shared machine a load change between
them moves their ratio by more than the difference measured. This script runs the implementations
round-robin in one process (each rep starts with a different one), so they see the same load, and
prints their medians and ratios. It is the measurement behind ``auto``'s CPU choice for
``film_residual_layernorm`` (``sald_fast.ops.dispatch._AUTO_ORDER``)::

    OMP_NUM_THREADS=1 python -m bench.training_step_ab                      # tiny, B=32, N'=28
    OMP_NUM_THREADS=1 python -m bench.training_step_ab --preset paper -B 4 -N 64 --reps 8
    OMP_NUM_THREADS=1 python -m bench.training_step_ab --compiled           # + torch.compile (inductor) of both
    OMP_NUM_THREADS=1 python -m bench.training_step_ab --film-share         # FiLM + LN's share of the eager step

A step: ``GaussianDiffusion.training_loss`` (random t, condition dropped with p=0.1, lengths in
[N'/2, N']) + backward + Adam, fp32, randomly initialised weights (the same for every
implementation). ``reference``: backend "reference"; ``fast``: backend "auto" (on the CPU the
extension's fused FiLM + residual + LayerNorm; the attention ops have no CPU fast path).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from sald_fast import preset
from sald_fast.denoiser import Denoiser
from sald_fast.diffusion import GaussianDiffusion
from sald_fast.ops import backend_line, reference


def _inputs(cfg, B: int, N: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    L = cfg.text.max_tokens
    z0 = torch.randn(B, N, cfg.denoiser.num_atoms, cfg.denoiser.latent_dim, generator=g)
    text = torch.randn(B, L, cfg.denoiser.text_dim, generator=g)
    mask = torch.arange(L)[None] < torch.randint(2, L + 1, (B, 1), generator=g)
    lengths = torch.randint(max(1, N // 2), N + 1, (B,), generator=g)
    return z0, text, mask, lengths


def film_share(cfg, B: int, N: int, step_s: float, reps: int = 50) -> float:
    """Seconds of the reference FiLM + residual + LayerNorm (forward + backward, all 6 gradients) per
    step: 4 calls per layer at (B, N, J', D), timed on their own."""
    d = cfg.denoiser
    g = torch.Generator().manual_seed(1)
    shape = (B, N, d.num_atoms, d.dim)
    leaves = [torch.randn(*s, generator=g).requires_grad_() for s in (shape, shape, (B, d.dim), (B, d.dim),
                                                                       (d.dim,), (d.dim,))]
    grads = [torch.randn(shape, generator=g), torch.randn(shape, generator=g)]

    def call():
        torch.autograd.backward(list(reference.film_residual_layernorm(*leaves)), grads)

    for _ in range(5):
        call()
    start = time.perf_counter()
    for _ in range(reps):
        call()
    per_call = (time.perf_counter() - start) / reps
    calls = 4 * d.num_layers
    print(f"reference film_residual_layernorm forward+backward: {per_call * 1e3:.3f} ms x {calls} calls = "
          f"{per_call * calls * 1e3:.1f} ms = {100 * per_call * calls / step_s:.1f}% of the eager reference step")
    return per_call * calls


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("-B", type=int, default=32)
    p.add_argument("-N", type=int, default=28, help="latent frames N'")
    p.add_argument("--reps", type=int, default=16)
    p.add_argument("--compiled", action="store_true", help="also torch.compile (inductor) both models")
    p.add_argument("--film-share", action="store_true", help="also time the reference FiLM + LN on its own")
    args = p.parse_args(argv)

    cfg = preset(args.preset)
    diffusion = GaussianDiffusion(cfg.diffusion)
    z0, text, mask, lengths = _inputs(cfg, args.B, args.N)
    torch.manual_seed(0)
    base = Denoiser(cfg.denoiser, backend="reference").train()
    print(backend_line("cpu", "auto", grad=True), f"| threads {torch.get_num_threads()}")
    names = ["reference", "fast"] + (["compiled_reference", "compiled_fast"] if args.compiled else [])
    impls = {}
    for name in names:
        model = copy.deepcopy(base)
        model.backend = "auto" if name.endswith("fast") else "reference"
        net = torch.compile(model) if name.startswith("compiled") else model
        impls[name] = (net, torch.optim.Adam(model.parameters(), lr=1e-5))

    def step(name: str) -> None:
        net, optimizer = impls[name]
        loss = diffusion.training_loss(net, z0, text, mask, lengths, cfg.denoiser.cond_drop_prob)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for name in names:  # warm-up (and compilation)
        for _ in range(2):
            step(name)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(args.reps):
        for name in names[i % len(names):] + names[:i % len(names)]:
            start = time.perf_counter()
            step(name)
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"denoiser training step ({args.preset}, B={args.B}, N'={args.N}), {args.reps} interleaved reps:")
    for name in names:
        print(f"  {name:<20} median {med[name] * 1e3:9.1f} ms   min {min(times[name]) * 1e3:9.1f} ms")
    ratios = [f"fast/reference {med['fast'] / med['reference']:.3f}"]
    if args.compiled:
        ratios += [f"fast/compiled_reference {med['fast'] / med['compiled_reference']:.3f}",
                   f"compiled_fast/compiled_reference {med['compiled_fast'] / med['compiled_reference']:.3f}"]
    print("  " + "   ".join(ratios))
    if args.film_share:
        film_share(cfg, args.B, args.N, med["reference"])


if __name__ == "__main__":
    main()
