"""Configuration dataclasses and the ``tiny`` / ``paper`` presets.

Every model is built from one of these; a checkpoint stores ``SALDConfig.to_dict()`` as JSON
next to its safetensors weights, and ``SALDConfig.from_dict`` rebuilds it (unknown keys are an
error naming the key, so a config from another version never loads silently wrong).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .frames import TEMPORAL_FACTOR

__all__ = [
    "VAEConfig",
    "DenoiserConfig",
    "DiffusionConfig",
    "TextConfig",
    "TrainConfig",
    "SALDConfig",
    "preset",
    "PRESETS",
]


@dataclass
class VAEConfig:
    """Skeleton-aware VAE (docs/DESIGN.md, "Data flow and shapes").

    Features per joint: 6D rotation relative to the parent + root translation (zeros on the
    other joints) = ``in_features`` (9). Levels: J=44 joints -> intermediate (20) -> ``num_atoms``.
    """

    num_atoms: int = 7
    in_features: int = 9
    channels: tuple[int, int, int] = (64, 96, 128)  # per level: fine, intermediate, atoms
    blocks_per_level: int = 1
    latent_dim: int = 16  # d_z per atomic joint and latent frame
    temporal_kernel: int = 3
    w_pos: float = 1.0  # lambda_pos, on positions in metres
    w_vel: float = 1.0  # lambda_vel
    w_kl: float = 1e-4  # lambda_KL

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if len(self.channels) != 3:
            raise ValueError(f"VAEConfig.channels needs 3 entries (one per level), got {self.channels}")
        if self.num_atoms not in (5, 7, 9):
            raise ValueError(f"VAEConfig.num_atoms must be 5, 7 or 9, got {self.num_atoms}")
        if self.temporal_kernel % 2 != 1:
            raise ValueError(f"VAEConfig.temporal_kernel must be odd, got {self.temporal_kernel}")


@dataclass
class DenoiserConfig:
    """Sequential-attention denoiser (TempAttn -> SkelAttn -> CrossAttn -> FFN per layer)."""

    latent_dim: int = 16
    num_atoms: int = 7
    dim: int = 256
    num_layers: int = 8
    num_heads: int = 8
    ffn_mult: int = 4
    text_dim: int = 384
    max_latent_frames: int = 128
    skip_tau: int = 2  # long skip l -> l + tau; 0 disables
    pos_embedding: str = "learned"  # "learned" or "sinusoidal"
    dropout: float = 0.0
    cond_drop_prob: float = 0.1

    def __post_init__(self) -> None:
        if self.dim % self.num_heads != 0:
            raise ValueError(f"DenoiserConfig.dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        if self.skip_tau == 1 or self.skip_tau < 0:
            raise ValueError(f"DenoiserConfig.skip_tau must be 0 (off) or > 1, got {self.skip_tau}")
        if self.pos_embedding not in ("learned", "sinusoidal"):
            raise ValueError(f"DenoiserConfig.pos_embedding must be 'learned' or 'sinusoidal', got {self.pos_embedding!r}")


@dataclass
class DiffusionConfig:
    num_train_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    scheduler: str = "ddim"  # any name in sald_fast.diffusion.SCHEDULERS
    sample_steps: int = 50
    guidance: float = 2.5
    # what the denoiser predicts: "epsilon" (the paper), "sample" (the clean latent z0) or
    # "v_prediction" (v = sqrt(a) eps - sqrt(1 - a) z0)
    prediction_type: str = "epsilon"
    # per-timestep weight of the training loss: "uniform" (the paper) or "min_snr" (Hang et al.
    # 2023: min(SNR(t), gamma) relative to the prediction target's own weighting)
    loss_weighting: str = "uniform"
    min_snr_gamma: float = 5.0

    def __post_init__(self) -> None:
        if self.prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(f"DiffusionConfig.prediction_type must be 'epsilon', 'sample' or 'v_prediction', "
                             f"got {self.prediction_type!r}")
        if self.loss_weighting not in ("uniform", "min_snr"):
            raise ValueError(f"DiffusionConfig.loss_weighting must be 'uniform' or 'min_snr', got {self.loss_weighting!r}")
        if not self.min_snr_gamma > 0:
            raise ValueError(f"DiffusionConfig.min_snr_gamma must be > 0, got {self.min_snr_gamma}")


@dataclass
class TextConfig:
    """Frozen text encoder. ``kind``: "minilm" (offline default), "clip" (local folder), "tiny"."""

    kind: str = "minilm"
    path: str | None = None  # model folder for "clip" (or to override "minilm")
    max_tokens: int = 32
    tiny_dim: int = 64  # only for kind="tiny"
    tiny_layers: int = 1
    tiny_vocab: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("minilm", "clip", "tiny"):
            raise ValueError(f"TextConfig.kind must be 'minilm', 'clip' or 'tiny', got {self.kind!r}")
        if self.max_tokens < 2:
            raise ValueError(f"TextConfig.max_tokens must be >= 2, got {self.max_tokens}")


@dataclass
class TrainConfig:
    vae_epochs: int = 50
    vae_batch: int = 128
    denoiser_epochs: int = 500
    denoiser_batch: int = 64
    evaluator_epochs: int = 30
    evaluator_batch: int = 64
    lr: float = 1e-3
    vae_lr: float | None = None  # the VAE stage's learning rate (None: ``lr``)
    lr_schedule: str = "constant"  # "constant" (the paper) or "cosine" (decay to 10% over the stage)
    vae_lr_schedule: str | None = None  # the VAE stage's schedule (None: ``lr_schedule``)
    warmup_steps: int = 0  # linear learning-rate warm-up over the first steps of a stage (0: none, the paper)
    ema_decay: float = 0.0  # EMA of the denoiser's weights used for validation and sampling (0: off, the paper)
    bucket_by_length: bool = False  # batches of similar-length clips, trimmed to their longest (False: the paper)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    num_frames: int = 64  # training window in frames (multiple of 4); longer clips are cropped
    fps: float = 25.0
    max_steps: int | None = None  # cap on optimiser steps per stage (None: epochs decide)
    ckpt_every: int = 200  # optimiser steps between checkpoints
    duration_model: bool = True  # fit the text -> number-of-frames regressor (sald_fast.duration) in train.full
    num_workers: int = 0
    seed: int = 0


@dataclass
class SALDConfig:
    vae: VAEConfig = field(default_factory=VAEConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = "custom"

    def __post_init__(self) -> None:
        if self.vae.num_atoms != self.denoiser.num_atoms:
            raise ValueError(
                f"vae.num_atoms ({self.vae.num_atoms}) != denoiser.num_atoms ({self.denoiser.num_atoms})"
            )
        if self.vae.latent_dim != self.denoiser.latent_dim:
            raise ValueError(
                f"vae.latent_dim ({self.vae.latent_dim}) != denoiser.latent_dim ({self.denoiser.latent_dim})"
            )
        if self.train.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"train.lr_schedule must be 'constant' or 'cosine', got {self.train.lr_schedule!r}")
        if self.train.vae_lr_schedule not in (None, "constant", "cosine"):
            raise ValueError(f"train.vae_lr_schedule must be None, 'constant' or 'cosine', got {self.train.vae_lr_schedule!r}")
        if self.train.warmup_steps < 0:
            raise ValueError(f"train.warmup_steps must be >= 0, got {self.train.warmup_steps}")
        if not 0.0 <= self.train.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must lie in [0, 1), got {self.train.ema_decay}")
        if self.train.num_frames % TEMPORAL_FACTOR != 0:
            raise ValueError(f"train.num_frames must be a multiple of {TEMPORAL_FACTOR} (the VAE's temporal factor), "
                             f"got {self.train.num_frames}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SALDConfig":
        parts = {"vae": VAEConfig, "denoiser": DenoiserConfig, "diffusion": DiffusionConfig,
                 "text": TextConfig, "train": TrainConfig}
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key in parts:
                known = {f.name for f in dataclasses.fields(parts[key])}
                unknown = set(value) - known
                if unknown:
                    raise ValueError(f"config section {key!r} has unknown field(s) {sorted(unknown)}")
                kwargs[key] = parts[key](**value)
            elif key == "name":
                kwargs[key] = value
            else:
                raise ValueError(f"config has unknown section {key!r}")
        return cls(**kwargs)


def _tiny() -> SALDConfig:
    """Minutes on a laptop CPU, built-in corpus (the README run). Differs from the paper's recipe
    where the README's measurements showed it helps in this budget: the denoiser predicts the
    clean latent and samples with an EMA of its weights, the VAE trains at 2e-3 with a cosine
    decay, batches hold whole sentences of similar length, sampling takes 10 DDIM steps (as good
    as 20 or 50 on validation at this size)."""
    return SALDConfig(
        name="tiny",
        vae=VAEConfig(channels=(32, 48, 64), latent_dim=16),
        denoiser=DenoiserConfig(latent_dim=16, dim=64, num_layers=4, num_heads=4, ffn_mult=2,
                                max_latent_frames=64),
        diffusion=DiffusionConfig(sample_steps=10, guidance=1.5, prediction_type="sample"),
        text=TextConfig(kind="minilm", max_tokens=24),
        train=TrainConfig(vae_epochs=7, vae_batch=32, denoiser_epochs=13, denoiser_batch=32,
                          evaluator_epochs=10, evaluator_batch=32, num_frames=112, ckpt_every=100,
                          vae_lr=2e-3, vae_lr_schedule="cosine", warmup_steps=50, ema_decay=0.999,
                          bucket_by_length=True),
    )


def _paper() -> SALDConfig:
    return SALDConfig(
        name="paper",
        vae=VAEConfig(channels=(96, 176, 352), latent_dim=16),
        denoiser=DenoiserConfig(latent_dim=16, dim=256, num_layers=8, num_heads=8, ffn_mult=4,
                                max_latent_frames=128),
        diffusion=DiffusionConfig(sample_steps=50),
        text=TextConfig(kind="minilm", max_tokens=32),
        train=TrainConfig(vae_epochs=50, vae_batch=128, denoiser_epochs=500, denoiser_batch=64,
                          lr=1e-3, num_frames=256),
    )


PRESETS = {"tiny": _tiny, "paper": _paper}


def preset(name: str) -> SALDConfig:
    """A fresh config for preset ``name`` ("tiny" or "paper")."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
