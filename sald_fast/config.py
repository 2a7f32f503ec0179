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
    "VARIANTS",
    "VARIANT_LABELS",
    "apply_variant",
    "variant_fields",
    "variant_name",
    "variant_difference",
]


@dataclass
class VAEConfig:
    """Skeleton-aware VAE (docs/DESIGN.md, "Data flow and shapes").

    Features per joint: 6D rotation relative to the parent + root translation (zeros on the
    other joints) = ``in_features`` (9). Levels: J=44 joints -> intermediate (20) -> ``num_atoms``.

    ``latent_layout``: "skeletal" (the paper's ST-Latent: one ``latent_dim`` vector per atomic
    joint and latent frame, (B, N', J', d_z)) or "frame" (Table 3's "w/o ST-Latent": the atomic
    level's features are flattened into one vector per latent frame, (B, N', 1, J' * d_z), the
    same number of latent channels with no joint axis).
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
    latent_layout: str = "skeletal"  # "skeletal" (the paper) or "frame" (w/o ST-Latent)

    @property
    def latent_tokens(self) -> int:
        """Tokens per latent frame: J' for the skeletal layout, 1 for the frame layout."""
        return self.num_atoms if self.latent_layout == "skeletal" else 1

    @property
    def latent_channels(self) -> int:
        """Channels per latent token: d_z (skeletal) or J' * d_z (frame)."""
        return self.latent_dim if self.latent_layout == "skeletal" else self.num_atoms * self.latent_dim

    def __post_init__(self) -> None:
        if self.latent_layout not in ("skeletal", "frame"):
            raise ValueError(f"VAEConfig.latent_layout must be 'skeletal' or 'frame', got {self.latent_layout!r}")
        self.channels = tuple(int(c) for c in self.channels)
        if len(self.channels) != 3:
            raise ValueError(f"VAEConfig.channels needs 3 entries (one per level), got {self.channels}")
        if self.num_atoms not in (5, 7, 9):
            raise ValueError(f"VAEConfig.num_atoms must be 5, 7 or 9, got {self.num_atoms}")
        if self.temporal_kernel % 2 != 1:
            raise ValueError(f"VAEConfig.temporal_kernel must be odd, got {self.temporal_kernel}")


@dataclass
class DenoiserConfig:
    """Sequential-attention denoiser (TempAttn -> SkelAttn -> CrossAttn -> FFN per layer).

    ``num_atoms`` / ``latent_dim``: tokens per latent frame and channels per token, equal to the
    VAE's ``latent_tokens`` / ``latent_channels`` (1 and J' * d_z for the "frame" latent).
    The Table 3 switches: ``temporal_attention`` / ``skeletal_attention`` False remove that
    sub-block (with its LayerNorm and FiLM) from every layer; ``text_conditioning`` "concat"
    replaces cross-attention by ``Linear([token, sentence feature])`` back to ``dim``, the
    sentence feature being the mean of the text token features (w/o CrossAttn).
    """

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
    temporal_attention: bool = True  # False: w/o TempAttn
    skeletal_attention: bool = True  # False: w/o SkelAttn
    text_conditioning: str = "cross_attention"  # or "concat" (w/o CrossAttn)

    def __post_init__(self) -> None:
        if self.text_conditioning not in ("cross_attention", "concat"):
            raise ValueError(f"DenoiserConfig.text_conditioning must be 'cross_attention' or 'concat', "
                             f"got {self.text_conditioning!r}")
        if self.num_atoms < 1 or self.latent_dim < 1:
            raise ValueError(f"DenoiserConfig needs num_atoms >= 1 and latent_dim >= 1, got {self.num_atoms}, "
                             f"{self.latent_dim}")
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
    # wall-clock budgets (train.ablation): the stage stops after the optimiser steps that fit in this
    # many minutes at the step time measured on its first batches (None: epochs decide)
    vae_budget_minutes: float | None = None
    denoiser_budget_minutes: float | None = None
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
        v, d = self.vae, self.denoiser
        if (v.latent_tokens, v.latent_channels) != (d.num_atoms, d.latent_dim):
            raise ValueError(
                f"the VAE's latent ({v.latent_layout} layout: {v.latent_tokens} token(s) x {v.latent_channels} channels "
                f"per latent frame, from vae.num_atoms={v.num_atoms}, vae.latent_dim={v.latent_dim}) does not match "
                f"denoiser.num_atoms={d.num_atoms} x denoiser.latent_dim={d.latent_dim}"
            )
        for name in ("vae_budget_minutes", "denoiser_budget_minutes"):
            value = getattr(self.train, name)
            if value is not None and not value > 0:
                raise ValueError(f"train.{name} must be None or > 0, got {value}")
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

# The paper's Table 3: each variant as the fields it sets ("section.field": value) on a preset.
VARIANTS: dict[str, dict[str, Any]] = {
    "full": {},
    "no_st_latent": {"vae.latent_layout": "frame", "denoiser.skeletal_attention": False},
    "no_cross_attn": {"denoiser.text_conditioning": "concat"},
    "no_temporal_attn": {"denoiser.temporal_attention": False},
    "no_skeletal_attn": {"denoiser.skeletal_attention": False},
    "atoms5": {"vae.num_atoms": 5},
    "atoms9": {"vae.num_atoms": 9},
    "no_st_latent_cross_attn": {"vae.latent_layout": "frame", "denoiser.skeletal_attention": False,
                                "denoiser.text_conditioning": "concat"},
}
VARIANT_LABELS = {"full": "Full model", "no_st_latent": "w/o ST-Latent", "no_cross_attn": "w/o CrossAttn",
                  "no_temporal_attn": "w/o TempAttn", "no_skeletal_attn": "w/o SkelAttn", "atoms5": "J'=5",
                  "atoms9": "J'=9", "no_st_latent_cross_attn": "w/o ST-Latent+CrossAttn"}
_VARIANT_FIELDS = ("vae.latent_layout", "vae.num_atoms", "denoiser.temporal_attention", "denoiser.skeletal_attention",
                   "denoiser.text_conditioning")


def variant_fields(cfg: SALDConfig) -> dict[str, Any]:
    """The architecture switches of Table 3 in ``cfg``: ``{"vae.latent_layout": ..., "vae.num_atoms": ...,
    "denoiser.temporal_attention": ..., "denoiser.skeletal_attention": ..., "denoiser.text_conditioning": ...}``."""
    out = {}
    for key in _VARIANT_FIELDS:
        section, name = key.split(".")
        out[key] = getattr(getattr(cfg, section), name)
    return out


def apply_variant(cfg: SALDConfig, name: str) -> SALDConfig:
    """A copy of ``cfg`` (a full model) turned into Table 3's variant ``name`` (a key of
    :data:`VARIANTS`); the denoiser's token shape follows the VAE's latent. The config's ``name``
    gets the suffix ``+name`` (not for "full")."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {list(VARIANTS)}")
    if variant_name(cfg) != "full":
        raise ValueError(f"apply_variant needs a full-model config, got variant {variant_name(cfg)!r}")
    d = cfg.to_dict()
    for key, value in VARIANTS[name].items():
        section, field_name = key.split(".")
        d[section][field_name] = value
    vae = VAEConfig(**d["vae"])
    d["denoiser"]["num_atoms"], d["denoiser"]["latent_dim"] = vae.latent_tokens, vae.latent_channels
    if name != "full":
        d["name"] = f"{cfg.name}+{name}"
    return SALDConfig.from_dict(d)


def variant_name(cfg: SALDConfig) -> str:
    """The key of :data:`VARIANTS` whose switches ``cfg`` has (J'=7 with everything on is "full"),
    or "custom" for a combination Table 3 does not have."""
    have = variant_fields(cfg)
    base = {"vae.latent_layout": "skeletal", "vae.num_atoms": 7, "denoiser.temporal_attention": True,
            "denoiser.skeletal_attention": True, "denoiser.text_conditioning": "cross_attention"}
    for name, changes in VARIANTS.items():
        if {**base, **changes} == have:
            return name
    return "custom"


def variant_difference(a: dict[str, Any] | SALDConfig, b: dict[str, Any] | SALDConfig) -> str:
    """The switches in which variant ``a`` differs from ``b`` (configs or :func:`variant_fields`
    dicts), as ``"denoiser.text_conditioning: 'concat' vs 'cross_attention'"``; "" when equal."""
    fa = variant_fields(a) if isinstance(a, SALDConfig) else dict(a)
    fb = variant_fields(b) if isinstance(b, SALDConfig) else dict(b)
    return ", ".join(f"{k}: {fa.get(k)!r} vs {fb.get(k)!r}" for k in _VARIANT_FIELDS if fa.get(k) != fb.get(k))


def preset(name: str) -> SALDConfig:
    """A fresh config for preset ``name`` ("tiny" or "paper")."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
