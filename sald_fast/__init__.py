"""sald_fast: Sign-SALD (skeleton-aware latent diffusion for text-to-sign poses), made fast.

Public names: :class:`Denoiser`, :class:`SkeletonVAE`, :class:`SignSALD`, the config dataclasses
(:class:`SALDConfig` and its parts, :func:`preset`), and the submodules ``ops``, ``skeleton``,
``geometry``, ``features``, ``text``, ``diffusion``, ``data``, ``eval``, ``render``.
"""

from __future__ import annotations

from .config import DenoiserConfig, DiffusionConfig, SALDConfig, TextConfig, TrainConfig, VAEConfig, preset

__version__ = "0.1.0"

__all__ = [
    "Denoiser",
    "SkeletonVAE",
    "SignSALD",
    "SALDConfig",
    "VAEConfig",
    "DenoiserConfig",
    "DiffusionConfig",
    "TextConfig",
    "TrainConfig",
    "preset",
    "__version__",
]

_LAZY = {"Denoiser": ".denoiser", "SkeletonVAE": ".vae", "SignSALD": ".pipeline"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'sald_fast' has no attribute {name!r}")
