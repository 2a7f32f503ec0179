"""Random streams of a training step, keyed so that runs are reproducible under any number of ranks.

* :func:`step_seed` ``(seed, step, rank)``: the seed of torch's global RNG on one rank for one
  optimiser step (dropout and anything else not keyed per sample): ranks draw different masks,
  and a resumed run redraws the same ones.
* :class:`SampleRandom` ``(seed, step, sample ids)``: one generator per sample, seeded from
  ``(seed, step, sample id)`` (the sample's dataset index). A sample's noise, timestep and
  condition dropout depend on nothing else: not on its rank, nor on the other samples of its
  batch, so a 2-process run draws for each sample what a 1-process run on the same global batch
  draws.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["step_seed", "SampleRandom"]

_MASK64 = (1 << 64) - 1


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 finaliser over each value in turn): distinct
    tuples give unrelated seeds."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h >> 1


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the global RNG on ``rank`` for optimiser step ``step`` (0-based)."""
    return _mix(1, seed, step, rank)


class SampleRandom:
    """Per-sample random draws for one optimiser step: ``(B, ...)`` tensors whose row ``b`` comes
    from the generator of sample ``sample_ids[b]``. Each call draws the next numbers of every
    sample's stream, so call the methods in the same order each step.

    Args:
        seed, step: the run's seed and the optimiser step (0-based).
        sample_ids: (B,) the batch's dataset indices (unique within a step).
        device: where the generators live and draw (the training device: on a GPU the draws are
            CUDA kernels, not a CPU loop and a copy). CPU and CUDA generators give different
            numbers for the same key; every rank of a run uses the same kind of device.
    """

    def __init__(self, seed: int, step: int, sample_ids: Sequence[int], device: torch.device | str = "cpu"):
        self.sample_ids = [int(i) for i in sample_ids]
        self.device = torch.device(device)
        self.generators = [torch.Generator(device=self.device).manual_seed(_mix(2, seed, step, i))
                           for i in self.sample_ids]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int], device: torch.device | str | None = None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(B, *shape) standard normal, drawn in float32 on the generators' device, then moved/cast
        (``device`` default: the generators')."""
        out = torch.stack([torch.randn(tuple(shape), generator=g, device=self.device) for g in self.generators])
        return out.to(device=device or self.device, dtype=dtype)

    def randint(self, high: int, device: torch.device | str | None = None) -> torch.Tensor:
        """(B,) int64 uniform in [0, high)."""
        out = torch.stack([torch.randint(0, high, (), generator=g, device=self.device) for g in self.generators])
        return out.to(device or self.device)

    def rand(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(B,) float32 uniform in [0, 1)."""
        return torch.stack([torch.rand((), generator=g, device=self.device) for g in self.generators]).to(
            device or self.device)
