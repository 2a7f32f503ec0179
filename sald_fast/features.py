"""Pose features: SMPL-X parameters <-> per-joint 6D rotations + root translation, and their
z-normalisation.

A feature frame is (44, FEATURE_DIM=9) over :data:`~sald_fast.skeleton.SIGNING_SKELETON`'s
joints: channels 0:6 the joint's rotation relative to its parent in 6D (first two columns of
the matrix; the root's is the global orientation), channels 6:9 the root translation on the
root joint (joint 0) and zeros on every other joint. SMPL-X body joints outside the signing
skeleton (hips, knees, ankles, feet, jaw, eyes) are dropped, and written back as zeros.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from .geometry import axis_angle_to_matrix, forward_kinematics, matrix_to_axis_angle, matrix_to_rot6d, rot6d_to_matrix
from .skeleton import SIGNING_SKELETON

__all__ = [
    "FEATURE_DIM",
    "NUM_JOINTS",
    "smplx_to_features",
    "features_to_rotmats",
    "features_to_positions",
    "features_to_smplx",
    "FeatureNormalizer",
]

FEATURE_DIM = 9
NUM_JOINTS = SIGNING_SKELETON.num_joints  # 44
# SMPL-X parameter field -> (number of joints, first SMPL-X joint index it holds)
_FIELDS = {"global_orient": (1, 0), "body_pose": (21, 1), "left_hand_pose": (15, 25), "right_hand_pose": (15, 40)}


def _as_float_tensor(x: object, name: str, like: torch.Tensor | None = None) -> torch.Tensor:
    """Tensor or ndarray -> floating tensor (dtype/device of ``like`` when given)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or np.ndarray, got {type(x).__name__}")
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name} must be a real floating point (or integer) array, got dtype {x.dtype}")
    if like is not None:
        return x.to(device=like.device, dtype=like.dtype)
    return x if x.is_floating_point() else x.float()


def _check_finite(x: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf values (shape {tuple(x.shape)})")


def _check_features(feat: object, name: str = "features") -> torch.Tensor:
    feat = _as_float_tensor(feat, name)
    if feat.dim() < 2 or tuple(feat.shape[-2:]) != (NUM_JOINTS, FEATURE_DIM):
        raise ValueError(f"{name} must have shape (..., {NUM_JOINTS}, {FEATURE_DIM}), got {tuple(feat.shape)}")
    return feat


def smplx_to_features(global_orient, body_pose, left_hand_pose, right_hand_pose, transl) -> torch.Tensor:
    """SMPL-X axis-angle parameters -> features (..., T, 44, 9).

    Args (torch tensors or numpy arrays, same leading dims ``(..., T)``):
        global_orient: (..., T, 3); body_pose: (..., T, 21, 3) or (..., T, 63);
        left_hand_pose, right_hand_pose: (..., T, 15, 3) or (..., T, 45) (full axis-angle, not
        PCA); transl: (..., T, 3).

    Returns a tensor with ``global_orient``'s floating dtype (float32 for integer input) and
    device. Raises ValueError naming the field on a wrong shape or NaN/inf values.
    """
    values = {"global_orient": global_orient, "body_pose": body_pose, "left_hand_pose": left_hand_pose,
              "right_hand_pose": right_hand_pose}
    ref = _as_float_tensor(global_orient, "global_orient")
    if ref.dim() < 2 or ref.shape[-1] != 3:
        raise ValueError(f"global_orient must have shape (..., T, 3), got {tuple(ref.shape)}")
    lead = tuple(ref.shape[:-1])
    parts = []
    for name, (n, _) in _FIELDS.items():
        x = _as_float_tensor(values[name], name, like=ref)
        if name == "global_orient":
            x = x[..., None, :]
        elif tuple(x.shape) == (*lead, 3 * n):
            x = x.unflatten(-1, (n, 3))
        if tuple(x.shape) != (*lead, n, 3):
            want = f"(..., T, {n}, 3) or (..., T, {3 * n})"
            raise ValueError(f"{name} must have shape {want} with leading dims {lead} (from global_orient), "
                             f"got {tuple(values[name].shape)}")
        _check_finite(x, name)
        parts.append(x)
    t = _as_float_tensor(transl, "transl", like=ref)
    if tuple(t.shape) != (*lead, 3):
        raise ValueError(f"transl must have shape {(*lead, 3)} (leading dims from global_orient), got {tuple(t.shape)}")
    _check_finite(t, "transl")
    jaw_eyes = ref.new_zeros(*lead, 3, 3)  # SMPL-X joints 22-24, not in the skeleton
    all_aa = torch.cat([parts[0], parts[1], jaw_eyes, parts[2], parts[3]], dim=-2)  # (..., T, 55, 3)
    index = torch.tensor(SIGNING_SKELETON.smplx_indices, dtype=torch.long, device=ref.device)
    rot6d = matrix_to_rot6d(axis_angle_to_matrix(all_aa.index_select(-2, index)))  # (..., T, 44, 6)
    trans = ref.new_zeros(*lead, NUM_JOINTS, 3)
    trans[..., 0, :] = t
    return torch.cat([rot6d, trans], dim=-1)


def features_to_rotmats(features) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (..., 44, 9) -> (local rotation matrices (..., 44, 3, 3), root translation (..., 3)).

    The 6D channels need not be orthonormal (model output): Gram-Schmidt makes proper rotations.
    Translation channels of non-root joints are ignored.
    """
    feat = _check_features(features)
    return rot6d_to_matrix(feat[..., :6]), feat[..., 0, 6:9]


def features_to_positions(features, offsets: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """Features (..., 44, 9) -> joint positions (..., 44, 3) in metres by forward kinematics.

    ``offsets`` (44, 3): rest offsets from the parent (``offsets[0]`` is the root's rest
    position); default the generic :data:`SIGNING_SKELETON` offsets. Differentiable.
    """
    rotmats, transl = features_to_rotmats(features)
    offsets = SIGNING_SKELETON.offsets if offsets is None else offsets
    positions, _ = forward_kinematics(rotmats, offsets, SIGNING_SKELETON.parents, transl)
    return positions


def features_to_smplx(features) -> dict[str, np.ndarray]:
    """Features (..., T, 44, 9) -> SMPL-X parameters as float32 numpy axis-angle.

    Returns dict(global_orient (..., T, 3), body_pose (..., T, 21, 3), left_hand_pose
    (..., T, 15, 3), right_hand_pose (..., T, 15, 3), transl (..., T, 3)); body joints that are
    not in the skeleton (legs, feet) are zeros.
    """
    rotmats, transl = features_to_rotmats(features)
    aa = matrix_to_axis_angle(rotmats.detach().double()).cpu()  # (..., 44, 3)
    lead = aa.shape[:-2]
    full = aa.new_zeros(*lead, 55, 3)
    full[..., list(SIGNING_SKELETON.smplx_indices), :] = aa
    out = {name: full[..., start:start + n, :] for name, (n, start) in _FIELDS.items()}
    out["global_orient"] = out["global_orient"][..., 0, :]
    out["transl"] = transl.detach().cpu()
    return {k: v.to(torch.float32).numpy() for k, v in out.items()}


class FeatureNormalizer(nn.Module):
    """Per joint and channel z-normalisation of features; statistics live in the buffers
    ``mean`` and ``std`` (44, 9), so they are saved in the ``state_dict`` with the model.

    Channels whose standard deviation is below ``min_std`` (constant channels, e.g. the zero
    translation channels of non-root joints) get std 1, so a channel that is identically 0
    stays 0 after :meth:`normalize`.
    """

    def __init__(self, num_joints: int = NUM_JOINTS, feature_dim: int = FEATURE_DIM, min_std: float = 1e-6):
        super().__init__()
        self.min_std = float(min_std)
        self.register_buffer("mean", torch.zeros(num_joints, feature_dim))
        self.register_buffer("std", torch.ones(num_joints, feature_dim))

    def _check(self, x: object, name: str) -> torch.Tensor:
        x = _as_float_tensor(x, name)
        if x.dim() < 2 or tuple(x.shape[-2:]) != tuple(self.mean.shape):
            raise ValueError(f"{name} must have shape (..., {self.mean.shape[0]}, {self.mean.shape[1]}), "
                             f"got {tuple(x.shape)}")
        return x

    @torch.no_grad()
    def fit(self, features, mask=None) -> FeatureNormalizer:
        """Set ``mean``/``std`` from features (M, 44, 9) or (B, T, 44, 9) (any leading dims).

        ``mask`` (the leading dims, bool): True for valid frames; padded frames (False) are
        ignored. ``features`` may also be an iterable of tensors or ``(features, mask)`` pairs
        (e.g. a DataLoader), accumulated in float64 without holding them all in memory.
        Returns ``self``.
        """
        single = isinstance(features, (torch.Tensor, np.ndarray))
        if single:
            chunks: Iterable = [(features, mask)]
        elif mask is not None:
            raise ValueError("mask must be None when features is an iterable; pass (features, mask) pairs")
        elif isinstance(features, (str, bytes, dict)) or not isinstance(features, Iterable):
            raise TypeError(f"features must be a tensor, an ndarray or an iterable of them, got {type(features).__name__}")
        else:
            chunks = features
        count, mean, m2 = 0, None, None
        for i, chunk in enumerate(chunks):
            x, m = chunk if isinstance(chunk, (tuple, list)) else (chunk, None)
            name = "features" if single else f"features[{i}]"
            x = self._check(x, name).detach().to("cpu", torch.float64)
            lead = tuple(x.shape[:-2])
            x = x.reshape(-1, *x.shape[-2:])
            if m is not None:
                m = torch.as_tensor(m, device="cpu")
                if m.dtype != torch.bool:
                    raise TypeError(f"mask of {name} must be bool (True = valid frame), got dtype {m.dtype}")
                if tuple(m.shape) != lead:
                    raise ValueError(f"mask of {name} must have shape {lead} (features' leading dims), got {tuple(m.shape)}")
                x = x[m.reshape(-1)]
            if x.shape[0] == 0:
                continue
            _check_finite(x, f"{name} (valid frames)")
            n, mu = x.shape[0], x.mean(0)
            sq = ((x - mu) ** 2).sum(0)
            if mean is None:
                count, mean, m2 = n, mu, sq
            else:  # Chan et al. parallel variance
                delta = mu - mean
                total = count + n
                mean = mean + delta * (n / total)
                m2 = m2 + sq + delta * delta * (count * n / total)
                count = total
        if mean is None:
            raise ValueError("FeatureNormalizer.fit: no valid frames (empty features or all-False mask)")
        std = (m2 / count).sqrt()
        constant = std < self.min_std
        std = torch.where(constant, torch.ones_like(std), std)
        self.mean.copy_(mean.to(self.mean.dtype))
        self.std.copy_(std.to(self.std.dtype))
        return self

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std, broadcast over the leading dims of x (..., 44, 9); keeps x's dtype."""
        x = self._check(x, "x")
        return (x - self.mean.to(x.device, x.dtype)) / self.std.to(x.device, x.dtype)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """x * std + mean (the inverse of :meth:`normalize`); x (..., 44, 9)."""
        x = self._check(x, "x")
        return x * self.std.to(x.device, x.dtype) + self.mean.to(x.device, x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`normalize`."""
        return self.normalize(x)
