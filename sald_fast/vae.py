"""The skeleton-aware VAE of Sign-SALD (paper section 2.1; docs/DESIGN.md, "Data flow and shapes").

    vae = SkeletonVAE(preset("tiny").vae)
    x = vae.normalizer.normalize(features)      # (B, N, 44, 9), N a multiple of 4
    out = vae(x)                                # recon (B, N, 44, 9), mu/logvar/z (B, N/4, J', d_z)
    losses = vae.loss(x, out, mask=valid)       # dict(total, feat, pos, vel, kl)

Encoder: per-joint MLP (44 joints, each its own weights) lifting the 9 feature channels to
``channels[0]``; then per level [residual pre-activation STConv blocks -> STPool]: 44 joints ->
20 -> ``num_atoms`` and N -> N/2 -> N/4 frames; at the atomic level, blocks and a per-atom
linear head giving (mu, logvar) (or, with ``latent_layout="frame"``, one linear head on the
flattened atoms giving a vector per latent frame). The decoder mirrors it with STUnpool. STConv(h) =
F_skel(h) + F_temp(h): a graph convolution over the level's skeleton (through
:func:`sald_fast.ops.skeletal_graph_conv`, so the C++/CUDA kernel can replace it) plus a 1-D
convolution over frames shared by all joints.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .checkpoint import VariantCheckedLoad
from .config import VAEConfig
from .features import FEATURE_DIM, FeatureNormalizer, features_to_positions
from .frames import TEMPORAL_FACTOR
from .ops.dispatch import BackendAttribute
from .profiling import nvtx_range
from .skeleton import SIGNING_SKELETON, Skeleton, pooling_hierarchy

__all__ = ["SkeletonVAE", "JointLinear", "JointMLP", "STConv", "STBlock", "STPool", "STUnpool",
           "TEMPORAL_FACTOR", "upsample_time_linear"]

_LOGVAR_RANGE = (-30.0, 20.0)  # clamp, as diffusers' DiagonalGaussianDistribution


def _uniform_(t: torch.Tensor, fan_in: int) -> None:
    """nn.Linear's default initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    nn.init.uniform_(t, -bound, bound)


class JointLinear(nn.Module):
    """Per-joint linear map: joint j has its own ``weight[j]`` (C_in, C_out) and ``bias[j]``.

    (..., J, C_in) -> (..., J, C_out).
    """

    def __init__(self, num_joints: int, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.num_joints, self.in_features, self.out_features = num_joints, in_features, out_features
        self.weight = nn.Parameter(torch.empty(num_joints, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(num_joints, out_features)) if bias else None
        _uniform_(self.weight, in_features)
        if self.bias is not None:
            _uniform_(self.bias, in_features)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = torch.einsum("...jc,jcd->...jd", h, self.weight)
        return out + self.bias if self.bias is not None else out

    def extra_repr(self) -> str:
        return f"joints={self.num_joints}, in={self.in_features}, out={self.out_features}"


class JointMLP(nn.Module):
    """Two-layer per-joint MLP: JointLinear -> SiLU -> JointLinear. (..., J, C_in) -> (..., J, C_out)."""

    def __init__(self, num_joints: int, in_features: int, hidden: int, out_features: int) -> None:
        super().__init__()
        self.fc1 = JointLinear(num_joints, in_features, hidden)
        self.fc2 = JointLinear(num_joints, hidden, out_features)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(h)))


class STConv(nn.Module):
    """Skeletal-temporal convolution ``F_skel(h) + F_temp(h)`` on (B, N, J, C) -> (B, N, J, C_out).

    F_skel: ``W_self h_i + W_neigh mean_{j in N(i)} h_j + b`` over ``skeleton``'s one-hop
    neighbourhoods with self loops (:func:`sald_fast.ops.skeletal_graph_conv`, run with
    ``self.backend``). F_temp: 1-D convolution over frames (odd ``temporal_kernel``, zero "same"
    padding, no bias), shared by all joints.
    """

    def __init__(self, skeleton: Skeleton, in_channels: int, out_channels: int, temporal_kernel: int = 3,
                 backend: str | None = None) -> None:
        super().__init__()
        indptr, indices = skeleton.neighbourhood()
        ops.validate_csr(indptr, indices, skeleton.num_joints)  # once here: the op checks only metadata
        self.register_buffer("indptr", indptr, persistent=False)
        self.register_buffer("indices", indices, persistent=False)
        self.w_self = nn.Parameter(torch.empty(out_channels, in_channels))
        self.w_neigh = nn.Parameter(torch.empty(out_channels, in_channels))
        self.bias = nn.Parameter(torch.empty(out_channels))
        for p in (self.w_self, self.w_neigh, self.bias):
            _uniform_(p, 2 * in_channels)
        self.temporal = nn.Conv1d(in_channels, out_channels, temporal_kernel, padding=temporal_kernel // 2, bias=False)
        self.backend = backend

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, N, J, C = h.shape
        dt = h.dtype  # under autocast h may be half precision: the op wants one dtype
        skel = ops.skeletal_graph_conv(h, self.indptr, self.indices, self.w_self.to(dt), self.w_neigh.to(dt),
                                       self.bias.to(dt), backend=self.backend)
        # F_temp as a (K, 1) convolution over (frames, joints) of the channels-last view of h:
        # no layout copy in or out (1.5-2x faster on the CPU than Conv1d on a (B*J, C, N) copy)
        k = self.temporal.kernel_size[0]
        t = F.conv2d(h.permute(0, 3, 1, 2), self.temporal.weight.to(dt).unsqueeze(-1), padding=(k // 2, 0))
        return skel + t.permute(0, 2, 3, 1)


class STBlock(nn.Module):
    """Residual pre-activation block: ``h + STConv(SiLU(LayerNorm(h)))``; (B, N, J, C) -> same."""

    def __init__(self, skeleton: Skeleton, channels: int, temporal_kernel: int = 3, backend: str | None = None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.conv = STConv(skeleton, channels, channels, temporal_kernel, backend)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.conv(F.silu(self.norm(h)))


class STPool(nn.Module):
    """Skeletal mean pooling (``pool_matrix`` (J_out, J_in)), temporal average pooling by 2,
    then a linear channel change shared by all joints: (B, N, J_in, C_in) -> (B, N/2, J_out, C_out)."""

    def __init__(self, pool_matrix: torch.Tensor, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.register_buffer("pool", pool_matrix.clone(), persistent=False)
        self.proj = nn.Linear(in_channels, out_channels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, N, J, C = h.shape
        h = torch.einsum("ij,bnjc->bnic", self.pool.to(h.dtype), h)
        h = h.view(B, N // 2, 2, h.shape[2], C).mean(2)
        return self.proj(h)


def upsample_time_linear(h: torch.Tensor) -> torch.Tensor:
    """Linear upsampling by 2 along dim 1, edge-clamped (``F.interpolate(mode="linear",
    scale_factor=2, align_corners=False)`` over frames): (B, N, ...) -> (B, 2N, ...)."""
    prev = torch.cat([h[:, :1], h[:, :-1]], dim=1)
    nxt = torch.cat([h[:, 1:], h[:, -1:]], dim=1)
    even = 0.75 * h + 0.25 * prev
    odd = 0.75 * h + 0.25 * nxt
    return torch.stack([even, odd], dim=2).flatten(1, 2)


class STUnpool(nn.Module):
    """Linear channel change, skeletal unpooling (``unpool_matrix`` (J_out, J_in) copies each
    coarse joint to its members), linear temporal upsampling by 2, plus a learned per-joint
    embedding (J_out, C_out) so that joints copied from one coarse joint can differ:
    (B, N, J_in, C_in) -> (B, 2N, J_out, C_out)."""

    def __init__(self, unpool_matrix: torch.Tensor, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.register_buffer("unpool", unpool_matrix.clone(), persistent=False)
        self.proj = nn.Linear(in_channels, out_channels)
        self.joint_embedding = nn.Parameter(0.02 * torch.randn(unpool_matrix.shape[0], out_channels))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.proj(h)
        h = torch.einsum("ij,bnjc->bnic", self.unpool.to(h.dtype), h)
        return upsample_time_linear(h) + self.joint_embedding.to(h.dtype)


def _as_offsets(offsets: object) -> torch.Tensor:
    J = SIGNING_SKELETON.num_joints
    if offsets is None:
        return torch.tensor(SIGNING_SKELETON.offsets, dtype=torch.float32)
    if isinstance(offsets, np.ndarray):
        offsets = torch.from_numpy(np.ascontiguousarray(offsets))
    if not isinstance(offsets, torch.Tensor):
        raise TypeError(f"offsets must be a torch.Tensor or np.ndarray of shape ({J}, 3), got {type(offsets).__name__}")
    if not (offsets.is_floating_point() or offsets.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"offsets must be a real float array of shape ({J}, 3), got dtype {offsets.dtype}")
    if tuple(offsets.shape) != (J, 3):
        raise ValueError(f"offsets must have shape ({J}, 3) (rest offset of each joint from its parent, metres), "
                         f"got {tuple(offsets.shape)}")
    offsets = offsets.detach().to("cpu", torch.float32).clone()
    if not bool(torch.isfinite(offsets).all()):
        raise ValueError("offsets contain NaN or inf values")
    return offsets


class SkeletonVAE(BackendAttribute, VariantCheckedLoad, nn.Module):
    """Skeleton-aware VAE on normalised pose features.

    Args:
        config: :class:`~sald_fast.config.VAEConfig` (channels per level, blocks per level,
            latent size, number of atomic joints, loss weights).
        offsets: (44, 3) rest offsets (metres) used by the position and velocity losses;
            default the generic :data:`~sald_fast.skeleton.SIGNING_SKELETON` offsets. Stored in
            the buffer ``offsets`` (saved in the ``state_dict``).
        backend: the :mod:`sald_fast.ops` backend of the graph convolutions ("reference",
            "triton", "cuda", "auto", or None for the process default); the attribute
            ``backend`` can be changed later, so the same weights run on any backend.

    Submodules and buffers: ``normalizer`` (:class:`~sald_fast.features.FeatureNormalizer`, its
    ``mean``/``std`` in the ``state_dict``), ``offsets`` (44, 3), ``latent_scale`` (scalar,
    1.0 until the denoiser's training sets it; used by the pipeline, not by this module).

    Shapes: x (B, N, 44, 9) normalised features, N a multiple of 4; latents (B, N/4, J', d_z)
    with J' = ``config.num_atoms`` and d_z = ``config.latent_dim``. Inputs of another floating
    dtype are cast to the parameters' dtype.
    """

    BACKEND_OPS = ("skeletal_graph_conv",)

    def __init__(self, config: VAEConfig, offsets: torch.Tensor | np.ndarray | None = None,
                 backend: str | None = None) -> None:
        super().__init__()
        if not isinstance(config, VAEConfig):
            raise TypeError(f"config must be a VAEConfig, got {type(config).__name__}")
        if config.in_features != FEATURE_DIM:
            raise ValueError(f"VAEConfig.in_features must be {FEATURE_DIM} (6D rotation + root translation), "
                             f"got {config.in_features}")
        if config.blocks_per_level < 0 or config.latent_dim < 1 or min(config.channels) < 1:
            raise ValueError(f"VAEConfig needs blocks_per_level >= 0, latent_dim >= 1 and positive channels, got "
                             f"blocks_per_level={config.blocks_per_level}, latent_dim={config.latent_dim}, "
                             f"channels={config.channels}")
        self.config = config
        self.hierarchy = pooling_hierarchy(config.num_atoms)
        skeletons = self.hierarchy.levels
        J = [s.num_joints for s in skeletons]
        C = config.channels
        K = config.temporal_kernel
        d_z = config.latent_dim

        self.normalizer = FeatureNormalizer()
        self.register_buffer("offsets", _as_offsets(offsets))
        self.register_buffer("latent_scale", torch.tensor(1.0))

        def level(l: int) -> nn.Sequential:
            return nn.Sequential(*[STBlock(skeletons[l], C[l], K, backend) for _ in range(config.blocks_per_level)])

        # encoder
        self.enc_in = JointMLP(J[0], FEATURE_DIM, C[0], C[0])
        self.enc_levels = nn.ModuleList([level(l) for l in range(3)])
        self.enc_pools = nn.ModuleList([STPool(self.hierarchy.pool_matrix(l), C[l], C[l + 1]) for l in range(2)])
        self.enc_out_norm = nn.LayerNorm(C[2])
        if config.latent_layout == "skeletal":
            self.latent_head = JointLinear(J[2], C[2], 2 * d_z)
            self.dec_in = JointLinear(J[2], d_z, C[2])
        else:  # one vector per latent frame (w/o ST-Latent): J' * C -> 2 * J' * d_z and back
            self.frame_latent_head = nn.Linear(J[2] * C[2], 2 * config.latent_channels)
            self.frame_dec_in = nn.Linear(config.latent_channels, J[2] * C[2])
        # decoder (dec_levels[l] / dec_unpools[l] work at level l, applied from l = 2 down to 0)
        self.dec_levels = nn.ModuleList([level(l) for l in range(3)])
        self.dec_unpools = nn.ModuleList([STUnpool(self.hierarchy.unpool_matrix(l), C[l + 1], C[l]) for l in range(2)])
        self.dec_out_norm = nn.LayerNorm(C[0])
        self.dec_out = JointMLP(J[0], C[0], C[0], FEATURE_DIM)

        self.backend = backend

    # -- backend ---------------------------------------------------------------------------
    def _backend_changed(self, value: str | None) -> None:
        """Every graph convolution runs on ``value`` (see :class:`~sald_fast.ops.dispatch.BackendAttribute`)."""
        for m in self.modules():
            if isinstance(m, STConv):
                m.backend = value

    # -- helpers ---------------------------------------------------------------------------
    @property
    def num_atoms(self) -> int:
        """J', the number of atomic joints of the latent."""
        return self.config.num_atoms

    @property
    def latent_dim(self) -> int:
        """d_z, channels per atomic joint and latent frame."""
        return self.config.latent_dim

    @property
    def latent_shape(self) -> tuple[int, int]:
        """(tokens, channels) of one latent frame: (J', d_z), or (1, J' * d_z) for the "frame" layout."""
        return self.config.latent_tokens, self.config.latent_channels

    def _own_variant(self) -> dict:
        return {"latent_layout": self.config.latent_layout, "num_atoms": self.config.num_atoms}

    def _state_dict_variant(self, state_dict) -> dict:
        if "frame_latent_head.weight" in state_dict:
            return {"latent_layout": "frame",
                    "num_atoms": int(state_dict["frame_latent_head.weight"].shape[1]) // self.config.channels[2]}
        if "latent_head.weight" in state_dict:
            return {"latent_layout": "skeletal", "num_atoms": int(state_dict["latent_head.weight"].shape[0])}
        return {}

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameter elements (buffers such as the normaliser's statistics excluded)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def _param(self) -> torch.Tensor:
        return self.enc_in.fc1.weight

    def _check_tensor(self, t: object, name: str, layout: str, trailing: tuple[int, ...]) -> torch.Tensor:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating point tensor {layout}, got dtype {t.dtype}")
        if t.dim() != 2 + len(trailing) or tuple(t.shape[2:]) != trailing:
            raise ValueError(f"{name} must have shape {layout} = (B, N, {', '.join(map(str, trailing))}), "
                             f"got {tuple(t.shape)}")
        if t.shape[0] == 0 or t.shape[1] == 0:
            raise ValueError(f"{name} must have at least one sample and one frame, got shape {tuple(t.shape)}")
        p = self._param()
        if t.device != p.device:
            raise ValueError(f"{name} is on {t.device} but the VAE is on {p.device}")
        return t.to(p.dtype)

    def _check_features(self, x: object, name: str = "x") -> torch.Tensor:
        x = self._check_tensor(x, name, "(B, N, 44, 9)", (SIGNING_SKELETON.num_joints, FEATURE_DIM))
        N = x.shape[1]
        if N % TEMPORAL_FACTOR:
            lower = N // TEMPORAL_FACTOR * TEMPORAL_FACTOR
            upper = lower + TEMPORAL_FACTOR
            near = f"{lower} or {upper}" if lower > 0 else f"{upper}"
            raise ValueError(f"{name} has N={N} frames, which is not a multiple of {TEMPORAL_FACTOR} (the VAE pools "
                             f"time by {TEMPORAL_FACTOR}); nearest valid lengths: {near} (pad or crop the sequence)")
        return x

    # -- model -----------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised features x (B, N, 44, 9), N a multiple of 4 -> (mu, logvar), each
        (B, N/4, J', d_z) (the "frame" layout: (B, N/4, 1, J' d_z)); logvar is clamped to [-30, 20]."""
        x = self._check_features(x)
        with nvtx_range("vae.encode"):
            h = self.enc_in(x)
            for l in range(2):
                h = self.enc_pools[l](self.enc_levels[l](h))
            h = F.silu(self.enc_out_norm(self.enc_levels[2](h)))
            if self.config.latent_layout == "skeletal":
                h = self.latent_head(h)
            else:
                h = self.frame_latent_head(h.flatten(2)).unsqueeze(2)  # (B, N', 1, 2 J' d_z)
            mu, logvar = h.chunk(2, dim=-1)
            return mu.contiguous(), logvar.clamp(*_LOGVAR_RANGE).contiguous()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents z (B, N', J', d_z) (the "frame" layout: (B, N', 1, J' d_z)) -> normalised
        features (B, 4 N', 44, 9)."""
        tokens, channels = self.latent_shape
        layout = (f"(B, N', J'={tokens}, d_z={channels})" if self.config.latent_layout == "skeletal"
                  else f"(B, N', 1, J' d_z={channels}) (frame latent)")
        z = self._check_tensor(z, "z", layout, (tokens, channels))
        with nvtx_range("vae.decode"):
            if self.config.latent_layout == "skeletal":
                h = self.dec_in(z)
            else:
                B, N = z.shape[:2]
                h = self.frame_dec_in(z[:, :, 0]).view(B, N, self.num_atoms, -1)
            h = self.dec_levels[2](h)
            for l in (1, 0):
                h = self.dec_levels[l](self.dec_unpools[l](h))
            return self.dec_out(F.silu(self.dec_out_norm(h)))

    def forward(self, x: torch.Tensor, sample: bool = True, noise: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        """Encode, draw z, decode. x (B, N, 44, 9) normalised, N a multiple of 4.

        z = mu + exp(logvar / 2) * eps when ``sample`` is True and the module is in training
        mode, else z = mu (eval mode is deterministic). ``noise`` (B, N/4, *latent_shape), when given,
        is that eps (e.g. drawn per sample) instead of a fresh draw. Returns dict(recon
        (B, N, 44, 9), mu, logvar, z (B, N/4, J', d_z)).
        """
        mu, logvar = self.encode(x)
        if noise is not None and noise.shape != mu.shape:
            raise ValueError(f"noise must have the latent shape {tuple(mu.shape)}, got {tuple(noise.shape)}")
        if sample and self.training:
            eps = torch.randn_like(mu) if noise is None else noise.to(device=mu.device, dtype=mu.dtype)
            z = mu + eps * torch.exp(0.5 * logvar)
        else:
            z = mu
        return {"recon": self.decode(z), "mu": mu, "logvar": logvar, "z": z}

    # -- loss ------------------------------------------------------------------------------
    def loss(self, x: torch.Tensor, out: dict[str, torch.Tensor], mask: torch.Tensor | None = None
             ) -> dict[str, torch.Tensor]:
        """Training objective ``feat + w_pos * pos + w_vel * vel + w_kl * kl`` (float32 scalars).

        x: (B, N, 44, 9) normalised target features; out: :meth:`forward`'s dict;
        mask: (B, N) bool, True for valid frames, or None (all valid). Padded frames take no
        part in any term (their content, even NaN, does not matter):
        - feat: L1 between ``recon`` and ``x`` (normalised units), mean over valid elements;
        - pos: L1 between FK joint positions (metres, this model's ``offsets``) of the
          denormalised recon and target;
        - vel: L1 between their frame-to-frame position differences (pairs of valid frames);
        - kl: KL(N(mu, exp(logvar)) || N(0, I)), mean over the elements of latent frames that
          hold at least one valid frame.
        """
        x = self._check_features(x)
        if not isinstance(out, dict) or not {"recon", "mu", "logvar"} <= set(out):
            raise TypeError("out must be the dict returned by SkeletonVAE.forward (keys recon, mu, logvar)")
        recon, mu, logvar = out["recon"], out["mu"], out["logvar"]
        if tuple(recon.shape) != tuple(x.shape):
            raise ValueError(f"out['recon'] has shape {tuple(recon.shape)} but x has {tuple(x.shape)}")
        B, N = x.shape[:2]
        latent_shape = (B, N // TEMPORAL_FACTOR, *self.latent_shape)
        for name, t in (("mu", mu), ("logvar", logvar)):
            if tuple(t.shape) != latent_shape:
                raise ValueError(f"out[{name!r}] must have shape {latent_shape} for x of shape {tuple(x.shape)}, "
                                 f"got {tuple(t.shape)}")
        if mask is not None:
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                raise TypeError(f"mask must be a bool tensor (B, N) (True = valid frame), got "
                                f"{mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__}")
            if tuple(mask.shape) != (B, N):
                raise ValueError(f"mask must have shape (B, N) = {(B, N)}, got {tuple(mask.shape)}")
            mask = mask.to(x.device)

        with nvtx_range("vae.loss"):
            recon32, x32 = recon.float(), x.float()
            if mask is not None:  # replace padded frames first, so nothing there (even NaN) reaches a gradient
                keep = mask[:, :, None, None]
                recon32 = torch.where(keep, recon32, torch.zeros((), device=x.device))
                x32 = torch.where(keep, x32, torch.zeros((), device=x.device))
            feat = _masked_mean((recon32 - x32).abs(), mask)
            offsets = self.offsets.float()
            pos_recon = features_to_positions(self.normalizer.denormalize(recon32), offsets)
            with torch.no_grad():
                pos_target = features_to_positions(self.normalizer.denormalize(x32), offsets)
            pos = _masked_mean((pos_recon - pos_target).abs(), mask)
            vel_recon = pos_recon[:, 1:] - pos_recon[:, :-1]
            vel_target = pos_target[:, 1:] - pos_target[:, :-1]
            vel_mask = None if mask is None else mask[:, 1:] & mask[:, :-1]
            vel = _masked_mean((vel_recon - vel_target).abs(), vel_mask) if N > 1 else pos.new_zeros(())
            mu32, logvar32 = mu.float(), logvar.float()
            kl_elem = 0.5 * (mu32.square() + logvar32.exp() - 1.0 - logvar32)
            latent_mask = None if mask is None else mask.view(B, -1, TEMPORAL_FACTOR).any(-1)
            kl = _masked_mean(kl_elem, latent_mask)
            c = self.config
            total = feat + c.w_pos * pos + c.w_vel * vel + c.w_kl * kl
        return {"total": total, "feat": feat, "pos": pos, "vel": vel, "kl": kl}


def _masked_mean(err: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of err (B, T, ...) over the entries whose frame is valid in mask (B, T) (all if
    None); masked entries are replaced (not multiplied) so NaN there cannot leak. 0 when no
    frame is valid."""
    if mask is None:
        return err.mean()
    m = mask.view(*mask.shape, *([1] * (err.dim() - 2)))
    total = torch.where(m, err, torch.zeros((), dtype=err.dtype, device=err.device)).sum()
    count = mask.sum() * math.prod(err.shape[2:])
    return total / count.clamp_min(1).to(err.dtype)
