"""``SignSALD``: text in, sign-language poses out (VAE + denoiser + text encoder + diffusion).

    model = SignSALD.load("runs/tiny/model")
    out = model.generate(["where is the library?"], num_frames=64, seed=0)
    out.positions  # (1, 64, 44, 3) joint positions in metres

Generation: text features (cached per prompt) -> reverse diffusion in the scaled latent space
(B, N/4, J', d_z) with classifier-free guidance -> ``z / vae.latent_scale`` -> VAE decoder ->
feature de-normalisation -> rotations, FK positions and SMPL-X parameters. ``num_frames`` that
is not a multiple of 4 is padded up internally and the output cropped back.

A checkpoint is one folder (:mod:`sald_fast.checkpoint`): the VAE (with its feature
normaliser and latent scale) and the denoiser under the prefixes ``vae.`` and ``denoiser.``;
the config; and a skeleton id, so a checkpoint made for another skeleton (or pooling
hierarchy) is refused. The text encoder is frozen and not saved;
it is rebuilt from ``config.text``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .checkpoint import CheckpointError, check_state_dict, load_checkpoint, save_checkpoint, strip_prefix
from .config import VARIANTS, SALDConfig, apply_variant, variant_difference, variant_fields, variant_name
from .diffusion import SCHEDULERS, GaussianDiffusion
from .frames import TEMPORAL_FACTOR
from .skeleton import SIGNING_SKELETON, pooling_hierarchy
from .text import TextEncoder, build_text_encoder, validate_texts

__all__ = ["SignSALD", "GenerationOutput", "skeleton_id", "compile_bucket", "CHECKPOINT_KIND"]

CHECKPOINT_KIND = "sald_fast.SignSALD"


def skeleton_id(num_atoms: int = 7) -> str:
    """A short id of the skeleton (joint names, parents) and its pooling hierarchy to
    ``num_atoms`` atoms; models trained for a different one cannot be loaded."""
    h = pooling_hierarchy(num_atoms)
    desc = repr((SIGNING_SKELETON.names, SIGNING_SKELETON.parents, [lvl.names for lvl in h.levels], h.groups))
    digest = hashlib.sha256(desc.encode("utf-8")).hexdigest()[:16]
    return f"smplx-upper{SIGNING_SKELETON.num_joints}-atoms{num_atoms}-{digest}"


@dataclass
class GenerationOutput:
    """What :meth:`SignSALD.generate` returns (CPU float32 tensors, B prompts, N frames).

    features: (B, N, 44, 9) unnormalised pose features (6D rotations + root translation).
    local_rotmats: (B, N, 44, 3, 3) rotation of each joint relative to its parent.
    positions: (B, N, 44, 3) joint positions in metres (forward kinematics).
    smplx: SMPL-X parameters as float32 numpy arrays with leading (B, N): global_orient (3,),
        body_pose (21, 3), left_hand_pose (15, 3), right_hand_pose (15, 3), transl (3,).
    texts: the prompts. lengths: (B,) valid frames per prompt (frames past it are unconstrained).
    """

    features: torch.Tensor
    local_rotmats: torch.Tensor
    positions: torch.Tensor
    smplx: dict[str, np.ndarray]
    texts: list[str]
    lengths: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def valid_positions(self, index: int = 0) -> np.ndarray:
        """(n, 44, 3) float32 joint positions of prompt ``index``, cropped to its valid length."""
        if not 0 <= index < self.positions.shape[0]:
            raise IndexError(f"index {index} out of range for {self.positions.shape[0]} prompts")
        n = int(self.lengths[index]) if self.lengths.numel() > index else self.positions.shape[1]
        return self.positions[index, :n].detach().cpu().numpy().astype(np.float32)

    def to_pose(self, path: str | os.PathLike, fps: float, index: int = 0) -> Path:
        """Write prompt ``index`` (its valid frames) as a ``pose-format`` ``.pose`` file at
        ``path`` (see :mod:`sald_fast.pose_file` for the components and the pixel camera)."""
        from .pose_file import write_pose

        return write_pose(self.valid_positions(index), path, fps=fps)


def _int_arg(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside ``torch.compile`` (``_orig_mod``) and DDP (``module``) wrappers."""
    while True:
        if isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod
        elif isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        else:
            return module


_BUCKETS = (8, 12, 16, 20, 24, 28, 32, 48, 64, 96, 128, 192, 256)


def compile_bucket(num_latent_frames: int) -> int:
    """The latent length a compiled denoiser samples ``num_latent_frames`` at: the next of 8, 12,
    16, 20, 24, 28, 32, 48, 64, 96, 128, 192, 256 (then multiples of 128), so lengths share few
    compiled shapes. Steps of 4 up to 32: a short clip's step is cheap enough that padding shows
    (the tiny preset's 112-frame clip, 28 latent frames, took 116 instead of 130 ms for 50 guided
    steps unpadded, docs/DESIGN.md)."""
    n = int(num_latent_frames)
    if n < 1:
        raise ValueError(f"num_latent_frames must be >= 1, got {num_latent_frames!r}")
    for b in _BUCKETS:
        if n <= b:
            return b
    return -(-n // 128) * 128


def _weights_key(module: nn.Module) -> tuple:
    """What a compiled copy of ``module`` depends on: every parameter's and buffer's address,
    version (bumped by in-place updates) and device, and the ops backend."""
    tensors = list(module.parameters()) + list(module.buffers())
    return tuple((p.data_ptr(), p._version, p.device) for p in tensors), getattr(module, "backend", None)


def _pad_tokens(text: torch.Tensor, mask: torch.Tensor | None, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Text features (B, L, C) and mask (B, L) padded with masked tokens to ``length`` (one shape
    for every prompt: the masked keys get zero attention, so the result is unchanged)."""
    B, L, _ = text.shape
    if mask is None:
        mask = torch.ones(B, L, dtype=torch.bool, device=text.device)
    if L >= length:
        return text, mask
    text = torch.cat([text, text.new_zeros(B, length - L, text.shape[2])], dim=1)
    return text, torch.cat([mask, mask.new_zeros(B, length - L)], dim=1)


class SignSALD(nn.Module):
    """Text-to-sign-pose pipeline: ``vae`` (SkeletonVAE), ``denoiser`` (Denoiser),
    ``text_encoder`` (frozen TextEncoder) and the diffusion process of ``config.diffusion``.

    The diffusion runs on ``z * vae.latent_scale`` (a buffer of the VAE set by the denoiser's
    training so that latents have unit variance; 1 when the VAE has none)."""

    def __init__(self, config: SALDConfig, vae: nn.Module, denoiser: nn.Module, text_encoder: TextEncoder) -> None:
        super().__init__()
        if not isinstance(config, SALDConfig):
            raise TypeError(f"config must be a SALDConfig, got {type(config).__name__}")
        if not isinstance(text_encoder, TextEncoder):
            raise TypeError(f"text_encoder must be a sald_fast.text.TextEncoder, got {type(text_encoder).__name__}")
        if text_encoder.dim != config.denoiser.text_dim:
            raise ValueError(f"the text encoder gives {text_encoder.dim}-dim features but config.denoiser.text_dim "
                             f"is {config.denoiser.text_dim} (text kind {config.text.kind!r})")
        self.config = config
        self.vae = vae
        self.denoiser = denoiser
        self.text_encoder = text_encoder
        self.diffusion = GaussianDiffusion(config.diffusion)
        self.meta: dict[str, Any] = {}
        self.duration = None  # a sald_fast.duration.DurationModel once fitted (train.full) or loaded

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: SALDConfig, text_encoder: TextEncoder | None = None, backend: str | None = None,
                    seed: int | None = None) -> "SignSALD":
        """Fresh (randomly initialised) VAE and denoiser for ``config``; the text encoder is
        built from ``config.text`` unless given. ``seed`` makes the initialisation repeatable."""
        from .denoiser import Denoiser
        from .vae import SkeletonVAE

        if text_encoder is None:
            text_encoder = build_text_encoder(config.text)
        rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
        with rng:
            if seed is not None:
                torch.manual_seed(seed)
            vae = SkeletonVAE(config.vae, backend=backend)
            denoiser = Denoiser(config.denoiser, backend=backend)
        return cls(config, vae, denoiser, text_encoder)

    @property
    def device(self) -> torch.device:
        """Device of the denoiser's weights."""
        for p in self.denoiser.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def skeleton_id(self) -> str:
        """Id of the skeleton and pooling hierarchy this model was built for."""
        return skeleton_id(self.config.vae.num_atoms)

    # -- pieces used by training and generation ------------------------------------------------
    def encode_text(self, texts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (B, L, text_dim), mask (B, L)) on :attr:`device`; cached per prompt."""
        feats, mask = self.text_encoder.encode(texts)
        return feats.to(self.device), mask.to(self.device)

    def latent_scale(self) -> torch.Tensor | float:
        """The VAE's ``latent_scale`` buffer (1.0 when it has none)."""
        scale = getattr(_unwrap(self.vae), "latent_scale", None)
        return scale if isinstance(scale, torch.Tensor) else 1.0

    def encode_latents(self, features: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """Unnormalised pose features (B, N, 44, 9), N a multiple of 4 -> diffusion latents
        (B, N/4, J', d_z): encoder mean (or a posterior sample) times :meth:`latent_scale`."""
        if features.dim() != 4 or features.shape[-2:] != (SIGNING_SKELETON.num_joints, 9):
            raise ValueError(f"features must be (B, N, 44, 9), got {tuple(features.shape)}")
        if features.shape[1] % TEMPORAL_FACTOR:
            raise ValueError(f"features need a multiple of {TEMPORAL_FACTOR} frames, got {features.shape[1]}")
        mu, logvar = self.vae.encode(self.vae.normalizer.normalize(features))
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
        return z * self.latent_scale()

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Diffusion latents (B, N', J', d_z) -> unnormalised features (B, 4N', 44, 9)."""
        x = self.vae.decode(z / self.latent_scale())
        return self.vae.normalizer.denormalize(x)

    def diffusion_loss(self, features: torch.Tensor, texts: Sequence[str], lengths: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Denoiser training loss on a batch: features (B, N, 44, 9) unnormalised (N a multiple
        of 4), their prompts, and valid frames per sample ``lengths`` (B,) (None: all). The
        VAE is used frozen (no gradient)."""
        with torch.no_grad():
            z0 = self.encode_latents(features)
        text, mask = self.encode_text(list(texts))
        latent_lengths = None
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=z0.device)
            latent_lengths = ((lengths + TEMPORAL_FACTOR - 1) // TEMPORAL_FACTOR).long()
        return self.diffusion.training_loss(self.denoiser, z0, text, mask, latent_lengths,
                                            self.config.denoiser.cond_drop_prob, generator)

    # -- generation ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        # only the modules with a submodule in training mode are switched (and restored): a
        # recursive eval()/train() of an eval-mode model cost ~2.5 ms a call (a one-off profile)
        modes = [(m, m.training) for m in (self.vae, self.denoiser) if any(s.training for s in m.modules())]
        try:
            for m, _ in modes:
                m.eval()
            yield
        finally:
            for m, mode in modes:
                m.train(mode)

    @torch.no_grad()
    def generate(self, texts: str | Sequence[str], num_frames: int | None = None, steps: int | None = None,
                 guidance: float | None = None, seed: int = 0, scheduler: str | None = None,
                 progress: bool = False, lengths: Sequence[int] | torch.Tensor | None = None,
                 cuda_graph: bool = False, compile: bool = False) -> GenerationOutput:
        """Poses for each prompt in ``texts`` (a str is a batch of one).

        num_frames: frames to generate (any N >= 1, padded to a multiple of 4 internally).
        Default: each prompt's length predicted from its text by :attr:`duration` (the batch
        padded to the longest, ``lengths`` set to the predictions; see
        :meth:`predict_num_frames`), or ``config.train.num_frames`` for a model without a
        duration model (``lengths`` given) or a checkpoint from before it (a note is logged). steps / guidance / scheduler: default to
        ``config.diffusion``'s. lengths: optional valid frames per prompt (<= num_frames), given
        to the denoiser as a padding mask. Same arguments and seed -> bit-identical output.
        cuda_graph: capture the whole sampling run as one CUDA graph (once per batch, frames,
        steps, scheduler and guidance) and replay it (:meth:`GaussianDiffusion.sample`); needs the
        model on a CUDA device and a planned scheduler (ddim, dpm++, ...), else ``ValueError``.
        compile: sample with :meth:`compiled_denoiser` (on the CPU: AOTInductor; elsewhere:
        ``torch.compile``; of a frozen copy of the denoiser), the latent frames padded up to
        :func:`compile_bucket` so that one compiled library serves every length in a bucket, and
        the text padded to ``config.text.max_tokens``. The first call per (batch, bucket) on a
        machine compiles (one to two minutes on a 2-core CPU; kept on disk for later processes
        and checkpoints), later ones run 2.4-3x faster than eager on a CPU at the tiny preset
        (README, Benchmarks). Same seed -> the same output as without it, to float rounding.
        """
        texts = validate_texts(texts)
        B = len(texts)
        if num_frames is None and lengths is None and self.duration is not None:
            lengths = self.predict_num_frames(texts)
            num_frames = int(lengths.max())
        elif num_frames is None and lengths is None and not getattr(self, "_duration_noted", False):
            self._duration_noted = True
            logging.getLogger(__name__).info(
                "this model has no duration model (a checkpoint from before it): generating "
                "config.train.num_frames=%d frames per prompt", self.config.train.num_frames)
        num_frames = self.config.train.num_frames if num_frames is None else num_frames
        num_frames = _int_arg("num_frames", num_frames)
        seed = _int_arg("seed", seed, minimum=0)
        if steps is not None:
            steps = _int_arg("steps", steps)
        if scheduler is not None and scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS.keys())}")
        n_latent = -(-num_frames // TEMPORAL_FACTOR)
        max_latent = self.config.denoiser.max_latent_frames
        if n_latent > max_latent:
            raise ValueError(f"num_frames={num_frames} needs {n_latent} latent frames but the denoiser supports at "
                             f"most {max_latent} (num_frames <= {max_latent * TEMPORAL_FACTOR})")
        device = self.device
        frame_lengths = torch.full((B,), num_frames, dtype=torch.long)
        latent_lengths = None
        if lengths is not None:
            frame_lengths = torch.as_tensor(lengths).reshape(-1).long().cpu()
            if frame_lengths.shape != (B,) or bool((frame_lengths < 1).any()) or bool((frame_lengths > num_frames).any()):
                raise ValueError(f"lengths must hold {B} ints in [1, num_frames={num_frames}], got {frame_lengths.tolist()}")
            latent_lengths = ((frame_lengths + TEMPORAL_FACTOR - 1) // TEMPORAL_FACTOR).to(device)

        text, mask = self.encode_text(texts)
        shape = (B, n_latent, self.config.denoiser.num_atoms, self.config.denoiser.latent_dim)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        with self._eval_mode():
            denoiser, pad_to = self.denoiser, None
            if compile:
                denoiser = self.compiled_denoiser()
                if not getattr(denoiser, "dynamic_frames", False):  # static shapes: a library per bucket
                    pad_to = min(compile_bucket(n_latent), max_latent)
                text, mask = _pad_tokens(text, mask, max(self.config.text.max_tokens, text.shape[1]))
            z0 = self.diffusion.sample(denoiser, shape, text, mask, latent_lengths, steps=steps,
                                       guidance=guidance, scheduler=scheduler, generator=generator,
                                       progress=progress, device=device, cuda_graph=bool(cuda_graph),
                                       pad_frames_to=pad_to)
            decode = (self.compiled_decoder() if compile else None) or self.decode_latents
            features = decode(z0)[:, :num_frames].float().cpu()
        return self.poses_from_features(features, texts, frame_lengths)

    def compiled_denoiser(self) -> nn.Module:
        """A compiled, frozen, eval-mode copy of :attr:`denoiser`, for sampling (no grad).

        On the CPU an :class:`~sald_fast.aot.AOTDenoiser`: the sampler's call compiled
        ahead of time by AOTInductor, one library per input shape, kept on disk
        (:func:`~sald_fast.aot.cache_dir`) and shared by every checkpoint of the config (for a
        width >= 128 the weights are baked in: one library per checkpoint, :func:`~sald_fast.aot.default_freeze`);
        a step is one C++ call (no Dynamo guard or wrapper per step). Elsewhere ``torch.compile``
        of the copy (Inductor defaults; static shapes, see :func:`compile_bucket`).

        Made on first use and again whenever a parameter of the denoiser has changed (moved or
        updated in place) or its backend was switched, so it never runs stale weights. On the
        CPU the copy runs the reference ops, which Inductor fuses (the extension's kernels would
        be opaque calls in its graph). ``python -m bench.sampling_ab --compiled`` measures it
        against the eager reference and ``torch.compile`` of the reference.
        """
        def make(den: nn.Module):
            if next(den.parameters()).device.type == "cpu":
                from .aot import AOTDenoiser

                return AOTDenoiser(den)
            snapshot = copy.deepcopy(den).eval().requires_grad_(False)
            if hasattr(den, "backend"):
                from .ops import prepare

                prepare(den.backend, next(den.parameters()).device)  # no import inside the trace
            compiled = torch.compile(snapshot, dynamic=False)
            compiled.sald_steady_steps = True  # the sampler may skip re-checking guards within a run
            return compiled

        return self._compiled_copy("_compiled_denoiser", _unwrap(self.denoiser), make)

    def _compiled_copy(self, slot: str, module: nn.Module, make: Callable[[nn.Module], Any]) -> Any:
        """``make(module)``, remembered in ``self.__dict__[slot]`` (not a submodule: never in the
        state_dict) until :func:`_weights_key` of ``module`` changes."""
        key = _weights_key(module)
        cached = self.__dict__.get(slot)
        if cached is None or cached[0] != key:
            cached = self.__dict__[slot] = (key, make(module))
            logging.getLogger(__name__).info("made %s (%s) for sampling; the first run of each shape compiles it",
                                             slot.lstrip("_"), type(cached[1]).__name__)
        return cached[1]

    def compiled_decoder(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """:meth:`decode_latents` compiled on the CPU: an :class:`~sald_fast.aot.AOTDecoder` of a
        frozen copy of the VAE (one library for every length, kept on disk like
        :meth:`compiled_denoiser`'s), made again when a VAE weight changes. None off the CPU (the
        decode is a small share of sampling there)."""
        vae = _unwrap(self.vae)
        if next(vae.parameters()).device.type != "cpu":
            return None
        from .aot import AOTDecoder

        return self._compiled_copy("_compiled_decoder", vae, AOTDecoder)

    def predict_num_frames(self, texts: str | Sequence[str]) -> torch.Tensor:
        """(B,) int64 frames per prompt predicted by :attr:`duration` (at most what the denoiser
        supports). Raises ValueError for a model without a duration model."""
        if self.duration is None:
            raise ValueError("this model has no duration model (train it with train.full, or pass num_frames)")
        cap = self.config.denoiser.max_latent_frames * TEMPORAL_FACTOR
        return self.duration.predict(self.text_encoder, validate_texts(texts), max_frames=cap)

    def poses_from_features(self, features: torch.Tensor, texts: Sequence[str],
                            lengths: torch.Tensor | None = None) -> GenerationOutput:
        """Unnormalised features (B, N, 44, 9) -> :class:`GenerationOutput` (rotations, FK
        positions with the VAE's rest offsets, SMPL-X parameters)."""
        from .features import features_to_positions, features_to_rotmats, features_to_smplx

        features = features.detach().float().cpu()
        rotmats, _ = features_to_rotmats(features)
        offsets = getattr(self.vae, "offsets", None)
        if isinstance(offsets, torch.Tensor):
            offsets = offsets.detach().float().cpu()
        positions = features_to_positions(features, offsets)
        smplx = {k: np.asarray(v, dtype=np.float32) for k, v in features_to_smplx(features).items()}
        if lengths is None:
            lengths = torch.full((features.shape[0],), features.shape[1], dtype=torch.long)
        return GenerationOutput(features=features, local_rotmats=rotmats.float(), positions=positions.float(),
                                smplx=smplx, texts=list(texts), lengths=lengths)

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
        """Write the VAE, denoiser, config and skeleton id to folder ``path``
        (atomically, safetensors + JSON); ``meta`` (JSON-serialisable) is stored beside."""
        from . import __version__

        tensors = {"vae": _unwrap(self.vae).state_dict(), "denoiser": _unwrap(self.denoiser).state_dict()}
        if self.duration is not None:
            tensors["duration"] = self.duration.state_dict()
        full_meta = {**(meta or {}), "kind": CHECKPOINT_KIND, "skeleton_id": self.skeleton_id,
                     "variant": variant_name(self.config), "variant_fields": variant_fields(self.config),
                     "num_joints": SIGNING_SKELETON.num_joints, "sald_fast_version": __version__}
        return save_checkpoint(path, tensors, self.config.to_dict(), full_meta)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu", text_encoder: TextEncoder | None = None,
             backend: str | None = "auto", variant: str | None = None) -> "SignSALD":
        """A model written by :meth:`save` (its folder, or a run folder holding it as ``model/``),
        on ``device``, in eval mode (``.meta`` holds the saved meta). ``backend``: the
        :mod:`sald_fast.ops` backend of its modules, default ``"auto"`` (per call the fastest
        implementation that can run the inputs; None: the process default). ``variant``: the
        Table 3 variant expected (a key of :data:`sald_fast.config.VARIANTS`; None: any). Raises
        :class:`~sald_fast.checkpoint.CheckpointError` for a missing or corrupted checkpoint,
        another kind of checkpoint, another skeleton, or another variant than ``variant`` (naming
        the switches that differ)."""
        from .denoiser import Denoiser
        from .vae import SkeletonVAE

        path = Path(path)
        if (path / "model" / "config.json").is_file():  # a run folder of train.full
            path = path / "model"
        tensors, config_dict, meta = load_checkpoint(path)
        kind = meta.get("kind")
        if kind != CHECKPOINT_KIND:
            raise CheckpointError(f"checkpoint {str(path)!r} is not a SignSALD checkpoint (kind {kind!r})")
        try:
            config = SALDConfig.from_dict(config_dict)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {str(path / 'config.json')!r} holds an invalid config: {exc}") from exc
        if variant is not None:
            if variant not in VARIANTS:
                raise ValueError(f"unknown variant {variant!r}; choose from {list(VARIANTS)}")
            have = variant_name(config)
            if have != variant:
                want = apply_variant(SALDConfig(), variant)
                raise CheckpointError(f"checkpoint {str(path)!r} holds the variant {have!r}, not {variant!r}: "
                                      f"{variant_difference(config, want)} (checkpoint vs {variant!r})")
        expected = skeleton_id(config.vae.num_atoms)
        if meta.get("skeleton_id") != expected:
            raise CheckpointError(f"checkpoint {str(path)!r} was made for skeleton {meta.get('skeleton_id')!r}, "
                                  f"but this sald_fast uses {expected!r}")
        if text_encoder is None:
            text_encoder = build_text_encoder(config.text)
        vae = SkeletonVAE(config.vae, backend=backend)
        denoiser = Denoiser(config.denoiser, backend=backend)
        try:
            model = cls(config, vae, denoiser, text_encoder)
        except ValueError as exc:
            raise CheckpointError(f"checkpoint {str(path)!r}: {exc}") from exc
        known = ("vae", "denoiser")
        if any(k.startswith("duration.") for k in tensors):  # absent in checkpoints from before it
            from .duration import DurationModel

            model.duration = DurationModel(int(tensors.get("duration.mean", torch.zeros(0)).numel()))
            known = ("vae", "denoiser", "duration")
        stray = sorted({k.split(".", 1)[0] for k in tensors} - set(known))
        if stray:
            raise CheckpointError(f"checkpoint {str(path / 'model.safetensors')!r} holds unexpected tensor "
                                  f"group(s) {stray}")
        for name in known:
            module = getattr(model, name)
            try:
                if hasattr(module, "check_variant"):
                    module.check_variant(strip_prefix(tensors, name))
            except ValueError as exc:
                raise CheckpointError(f"checkpoint {str(path / 'model.safetensors')!r} does not fit the {name} "
                                      f"built from its config: {exc}") from exc
            try:
                check_state_dict(strip_prefix(tensors, name), module, path / "model.safetensors", f"the {name}")
                module.load_state_dict(strip_prefix(tensors, name), strict=True)
            except RuntimeError as exc:
                detail = " ".join(str(exc).split())
                raise CheckpointError(f"checkpoint {str(path / 'model.safetensors')!r} does not fit the "
                                      f"{name} built from its config: {detail[:400]}") from exc
        model.meta = {k: v for k, v in meta.items() if k not in ("kind",)}
        return model.to(device).eval()
