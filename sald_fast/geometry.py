"""Rotation conversions (axis-angle, matrix, continuous 6D) and batched forward kinematics.

Every function works on any leading batch dims, is differentiable, keeps the input's dtype and
device, and is numerically stable at the awkward angles (0 and pi). Conventions:

- axis-angle ``aa`` (..., 3): rotation by ``|aa|`` radians about ``aa / |aa|`` (SMPL-X poses).
- rotation matrices (..., 3, 3) act on column vectors: ``x' = R @ x``.
- 6D (..., 6): the first two COLUMNS of R concatenated, ``[R[..., :, 0], R[..., :, 1]]``
  (Zhou et al. 2019); :func:`rot6d_to_matrix` maps any 6-vector to a proper rotation by
  Gram-Schmidt.
- forward kinematics: ``global[j] = global[parent[j]] @ local[j]`` and
  ``position[j] = position[parent[j]] + global[parent[j]] @ offset[j]``; the root sits at
  ``root_translation + offsets[0]`` (offsets[0] is the root's rest position).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "axis_angle_to_matrix",
    "matrix_to_axis_angle",
    "matrix_to_quaternion",
    "quaternion_to_axis_angle",
    "axis_angle_to_quaternion",
    "quaternion_multiply",
    "quaternion_slerp",
    "rot6d_to_matrix",
    "matrix_to_rot6d",
    "forward_kinematics",
]


def _check_tensor(x: object, name: str, trailing: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor, got dtype {x.dtype}")
    n = len(trailing)
    if x.dim() < n or tuple(x.shape[x.dim() - n:]) != trailing:
        want = "(..., " + ", ".join(map(str, trailing)) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    return x


def _skew(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3, 3) cross-product matrix ``[v]_x``."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).unflatten(-1, (3, 3))


def axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """Rodrigues: axis-angle (..., 3) -> rotation matrix (..., 3, 3).

    ``R = I + a(t) K + b(t) K^2`` with ``K = [aa]_x`` (unnormalised), ``a = sin t / t`` and
    ``b = (1 - cos t) / t^2 = 2 sin^2(t/2) / t^2``; both are replaced by their Taylor series for small ``t`` so that
    values and gradients are finite and exact at ``aa = 0``.
    """
    _check_tensor(aa, "aa", (3,))
    theta2 = (aa * aa).sum(-1)
    small = theta2 < 1e-4  # |aa| < 1e-2: the series below are exact to ~1e-16
    theta2_safe = torch.where(small, torch.ones_like(theta2), theta2)  # no sqrt(0) in the graph
    theta = torch.sqrt(theta2_safe)
    half_sin = torch.sin(theta / 2)
    a = torch.where(small, 1 - theta2 / 6 + theta2 * theta2 / 120, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24 + theta2 * theta2 / 720, 2 * half_sin * half_sin / theta2_safe)
    K = _skew(aa)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device)
    return eye + a[..., None, None] * K + b[..., None, None] * (K @ K)


def _sqrt_positive(x: torch.Tensor) -> torch.Tensor:
    """sqrt(max(x, 0)) with zero (not infinite) gradient at and below 0."""
    pos = x > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, x, torch.ones_like(x))), torch.zeros_like(x))


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrix (..., 3, 3) -> unit quaternion (..., 4) as (w, x, y, z).

    Computes the four candidate quaternions (each from the largest of |w|, |x|, |y|, |z|
    diagonal combinations) and keeps the best conditioned one, so it is accurate for every
    angle including pi. The sign is not normalised (see :func:`quaternion_to_axis_angle`).
    """
    _check_tensor(R, "R", (3, 3))
    m = R.flatten(-2)
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m.unbind(-1)
    q_abs = _sqrt_positive(torch.stack([
        1 + m00 + m11 + m22,
        1 + m00 - m11 - m22,
        1 - m00 + m11 - m22,
        1 - m00 - m11 + m22,
    ], dim=-1))  # 2 |w|, 2 |x|, 2 |y|, 2 |z|
    candidates = torch.stack([
        torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], dim=-1),
        torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], dim=-1),
        torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], dim=-1),
        torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], dim=-1),
    ], dim=-2)  # (..., 4, 4): row i = quaternion * 4 * q_i
    candidates = candidates / (2 * q_abs.clamp_min(0.1))[..., None]
    best = q_abs.argmax(-1)[..., None, None].expand(*q_abs.shape[:-1], 1, 4)
    q = candidates.gather(-2, best).squeeze(-2)
    return q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)


def quaternion_to_axis_angle(q: torch.Tensor) -> torch.Tensor:
    """Quaternion (..., 4) as (w, x, y, z), need not be unit -> axis-angle (..., 3), angle in [0, pi]."""
    _check_tensor(q, "q", (4,))
    q = torch.where(q[..., :1] < 0, -q, q)  # w >= 0: angle in [0, pi]
    w, v = q[..., 0], q[..., 1:]
    s2 = (v * v).sum(-1)
    small = s2 < (1e-3 * w) ** 2  # tan(half angle) < 1e-3
    s = torch.sqrt(torch.where(small, torch.ones_like(s2), s2))
    w_safe = torch.where(small, w, torch.ones_like(w))
    x2 = s2 / (w_safe * w_safe)  # tan^2(half angle), used only where small
    factor = torch.where(small, (2 / w_safe) * (1 - x2 / 3 + x2 * x2 / 5), 2 * torch.atan2(s, w) / s)
    return v * factor[..., None]


def axis_angle_to_quaternion(aa: torch.Tensor) -> torch.Tensor:
    """Axis-angle (..., 3) -> unit quaternion (..., 4) as (w, x, y, z) (series below 1e-6 rad)."""
    _check_tensor(aa, "aa", (3,))
    theta = torch.linalg.vector_norm(aa, dim=-1, keepdim=True)
    half = 0.5 * theta
    small = theta < 1e-6
    k = torch.where(small, 0.5 - theta ** 2 / 48.0, torch.sin(half) / torch.where(small, torch.ones_like(theta), theta))
    return torch.cat([torch.cos(half), aa * k], dim=-1)


def quaternion_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product ``a * b`` of quaternions (..., 4) (the rotation ``b``, then ``a``)."""
    _check_tensor(a, "a", (4,))
    _check_tensor(b, "b", (4,))
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz,
                        aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx,
                        aw * bz + ax * by - ay * bx + az * bw], dim=-1)


def quaternion_slerp(q0: torch.Tensor, q1: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of unit quaternions (..., 4) with weights ``w`` (...) in [0, 1],
    along the shorter arc; a unit quaternion (..., 4)."""
    _check_tensor(q0, "q0", (4,))
    _check_tensor(q1, "q1", (4,))
    dot = (q0 * q1).sum(-1, keepdim=True)
    q1 = torch.where(dot < 0, -q1, q1)
    dot = dot.abs().clamp(0.0, 1.0)
    w = torch.as_tensor(w, dtype=q0.dtype, device=q0.device)[..., None]
    theta = torch.arccos(dot)
    sin = torch.sin(theta)
    near = sin < 1e-6
    safe = torch.where(near, torch.ones_like(sin), sin)
    a = torch.where(near, 1.0 - w, torch.sin((1.0 - w) * theta) / safe)
    b = torch.where(near, w, torch.sin(w * theta) / safe)
    q = a * q0 + b * q1
    return q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)


def matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrix (..., 3, 3) -> axis-angle (..., 3) with angle in [0, pi].

    Goes through the quaternion (stable near 0 and near pi). At exactly pi, ``aa`` and ``-aa``
    are the same rotation; either may be returned.
    """
    return quaternion_to_axis_angle(matrix_to_quaternion(R))


def rot6d_to_matrix(x: torch.Tensor) -> torch.Tensor:
    """6D (..., 6) -> rotation matrix (..., 3, 3) by Gram-Schmidt.

    Columns: ``b1 = normalise(x[:3])``, ``b2 = normalise(x[3:] - (b1 . x[3:]) b1)``,
    ``b3 = b1 x b2``. Any (non-degenerate) 6-vector gives a proper rotation; an all-zero input
    gives an all-zero matrix (finite, not NaN).
    """
    _check_tensor(x, "x", (6,))
    a1, a2 = x[..., :3], x[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def matrix_to_rot6d(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrix (..., 3, 3) -> 6D (..., 6): its first two columns concatenated."""
    _check_tensor(R, "R", (3, 3))
    return torch.cat([R[..., :, 0], R[..., :, 1]], dim=-1)


def _levels(parents: tuple[int, ...]) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
    """Joints grouped by tree depth: per depth d, (joint indices, position of each joint's
    parent within depth d-1's joint list). Depth 0 is the root alone."""
    depth: list[int] = []
    for j, p in enumerate(parents):
        if j == 0:
            if p != -1:
                raise ValueError(f"parents[0] must be -1 (the root), got {p}")
        elif not 0 <= p < j:
            raise ValueError(f"parents[{j}] = {p}: every non-root joint needs a parent that precedes it")
        depth.append(0 if j == 0 else depth[p] + 1)
    levels: list[list[int]] = [[] for _ in range(max(depth) + 1)]
    for j, d in enumerate(depth):
        levels[d].append(j)
    out = []
    for d, joints in enumerate(levels):
        prev = {j: i for i, j in enumerate(levels[d - 1])} if d else {}
        out.append((tuple(joints), tuple(prev[parents[j]] for j in joints) if d else ()))
    return tuple(out)


_LEVEL_INDEX_CACHE: dict[tuple[tuple[int, ...], torch.device], tuple[list, torch.Tensor]] = {}


def _level_indices(parents: tuple[int, ...], device: torch.device) -> tuple[list, torch.Tensor]:
    """Index tensors of :func:`_levels` on ``device`` and the inverse of the level order
    (memoised per tree and device; a plain dict so that torch.compile traces it quietly)."""
    key = (parents, device)
    cached = _LEVEL_INDEX_CACHE.get(key)
    if cached is None:
        levels = _levels(parents)
        order = [j for joints, _ in levels for j in joints]
        inverse = torch.as_tensor(np.argsort(np.asarray(order)), dtype=torch.long, device=device)
        idx = [(torch.tensor(joints, dtype=torch.long, device=device), torch.tensor(par, dtype=torch.long, device=device))
               for joints, par in levels]
        cached = _LEVEL_INDEX_CACHE.setdefault(key, (idx, inverse))
    return cached


def forward_kinematics(local_rotmats: torch.Tensor, offsets: torch.Tensor | np.ndarray,
                       parents: Sequence[int], root_translation: torch.Tensor | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint positions and global rotations of a kinematic tree.

    Args:
        local_rotmats: (..., J, 3, 3) rotation of each joint relative to its parent (the root's
            is its global orientation).
        offsets: (J, 3) rest offset of each joint from its parent; ``offsets[0]`` is the root's
            rest position. Tensor or ndarray; cast to ``local_rotmats``' dtype and device.
        parents: J parent indices, ``parents[0] == -1`` and ``parents[j] < j``.
        root_translation: (..., 3) added to the root position, or None (zero).

    Returns:
        positions (..., J, 3) and global rotations (..., J, 3, 3).

    The tree is processed one depth level at a time (11 levels for the 44-joint signing
    skeleton), each level with one batched matmul over all its joints. Computes in the input
    dtype with autocast disabled (pass float32 for millimetre accuracy).
    """
    _check_tensor(local_rotmats, "local_rotmats", (3, 3))
    if local_rotmats.dim() < 3:
        raise ValueError(f"local_rotmats must have shape (..., J, 3, 3), got {tuple(local_rotmats.shape)}")
    J = local_rotmats.shape[-3]
    parents = tuple(int(p) for p in (parents.tolist() if hasattr(parents, "tolist") else parents))
    if len(parents) != J:
        raise ValueError(f"parents has {len(parents)} entries but local_rotmats has J={J} joints")
    if not isinstance(offsets, (torch.Tensor, np.ndarray)):
        raise TypeError(f"offsets must be a torch.Tensor or np.ndarray, got {type(offsets).__name__}")
    if tuple(offsets.shape) != (J, 3):
        raise ValueError(f"offsets must have shape (J, 3) = ({J}, 3), got {tuple(offsets.shape)}")
    if isinstance(offsets, np.ndarray):  # copy: works for read-only arrays without a warning
        offsets = torch.tensor(offsets, dtype=local_rotmats.dtype, device=local_rotmats.device)
    else:
        offsets = offsets.to(device=local_rotmats.device, dtype=local_rotmats.dtype)
    batch = local_rotmats.shape[:-3]
    if root_translation is not None:
        _check_tensor(root_translation, "root_translation", (3,))
        if tuple(root_translation.shape[:-1]) != tuple(batch):
            raise ValueError(f"root_translation must have shape {(*batch, 3)} to match local_rotmats "
                             f"{tuple(local_rotmats.shape)}, got {tuple(root_translation.shape)}")

    levels, inverse = _level_indices(parents, local_rotmats.device)
    with _autocast_off(local_rotmats.device):
        glob = local_rotmats[..., :1, :, :]  # (..., 1, 3, 3)
        pos = offsets[:1].expand(*batch, 1, 3)
        if root_translation is not None:
            pos = pos + root_translation[..., None, :].to(local_rotmats.dtype)
        globs, poss = [glob], [pos]
        for joints, par in levels[1:]:
            parent_rot = glob.index_select(-3, par)  # (..., n, 3, 3)
            pos = pos.index_select(-2, par) + (parent_rot @ offsets.index_select(0, joints)[:, :, None]).squeeze(-1)
            glob = parent_rot @ local_rotmats.index_select(-3, joints)
            globs.append(glob)
            poss.append(pos)
        positions = torch.cat(poss, dim=-2).index_select(-2, inverse)
        global_rotmats = torch.cat(globs, dim=-3).index_select(-3, inverse)
    return positions, global_rotmats


def _autocast_off(device: torch.device):
    """Autocast disabled on ``device`` (FK runs in its inputs' dtype: bf16 matmuls would cost
    millimetres), or a no-op context on device types without autocast."""
    if device.type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()
