"""Frame counts and frame masks, written once for the VAE, the pipeline, diffusion, training
and evaluation.

- :data:`TEMPORAL_FACTOR`: frames per latent frame (the VAE pools time twice by 2).
- :func:`latent_length`: latent frames that cover a number of frames (ceiling division).
- :func:`frame_mask`: (B, N) bool, True on each sequence's first ``lengths[b]`` frames.
"""

from __future__ import annotations

import torch

__all__ = ["TEMPORAL_FACTOR", "latent_length", "frame_mask"]

TEMPORAL_FACTOR = 4  # frames per latent frame (two temporal poolings by 2)


def latent_length(frames):
    """Latent frames covering ``frames`` frames: ``ceil(frames / TEMPORAL_FACTOR)``; ``frames``
    is an int or an integer tensor (B,) (returned as the same type)."""
    return (frames + TEMPORAL_FACTOR - 1) // TEMPORAL_FACTOR


def frame_mask(lengths, frames: int, batch: int | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """(B, ``frames``) bool: True on the first ``lengths[b]`` frames of sequence ``b``.

    ``lengths`` is an integer tensor or sequence (B,), or None for "every frame is valid" (then
    ``batch`` gives B). The mask is on ``device`` (default: the device of ``lengths``, CPU for
    None). Lengths are not checked here: a length above ``frames`` marks every frame valid.
    """
    if lengths is None:
        if batch is None:
            raise ValueError("frame_mask needs batch= when lengths is None")
        return torch.ones(batch, frames, dtype=torch.bool, device=device)
    lengths = torch.as_tensor(lengths, device=device)
    return torch.arange(frames, device=lengths.device).view(1, frames) < lengths.reshape(-1, 1)
