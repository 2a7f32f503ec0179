"""From controls to joint rotations: two-bone arm IK with a swivel angle (wrist target ->
shoulder and elbow), handshape + wrist angles -> wrist and finger axis-angles, the left/right
mirror, and the row of each joint in a (52, 3) SMPL-X pose frame."""

from __future__ import annotations

import numpy as np
import torch

from sald_fast.geometry import (axis_angle_to_quaternion, matrix_to_axis_angle, quaternion_multiply,
                                 quaternion_to_axis_angle)
from sald_fast.skeleton import SIGNING_SKELETON


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


_SK = SIGNING_SKELETON
_L1 = float(np.linalg.norm(_SK.offsets[_SK.index("left_elbow")]))
_L2 = float(np.linalg.norm(_SK.offsets[_SK.index("left_wrist")]))
_REST_POS = _SK.rest_positions()
_LEFT_SHOULDER = _REST_POS[_SK.index("left_shoulder")]
_ELBOW_HINT = _normalize(np.array([0.45, -0.75, -0.35]))  # elbows out, down and back
_REST_FRAME = np.stack([np.array([1.0, 0, 0]), np.array([0, -1.0, 0]), np.array([0, 0, -1.0])], axis=-1)
_THUMB_DIR = _normalize(np.asarray(_SK.offsets[_SK.index("left_thumb1")], dtype=np.float64))
_THUMB_AXIS = _normalize(np.cross(_THUMB_DIR, _normalize(np.array([0.1, -0.7, -0.7]))))


def _two_bone_ik(target: np.ndarray, swivel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left-arm IK. ``target`` (F, 3): wrist position relative to the shoulder, in the collar's
    frame; ``swivel`` (F,) radians about the shoulder-wrist axis. Returns the local rotation
    matrices (F, 3, 3) of the shoulder and the elbow (a hinge about the rest frame's -y)."""
    dist = np.linalg.norm(target, axis=-1, keepdims=True)
    n = target / np.maximum(dist, 1e-9)
    dist = np.clip(dist, 0.12, 0.96 * (_L1 + _L2))
    a = (_L1 ** 2 - _L2 ** 2 + dist ** 2) / (2 * dist)
    r = np.sqrt(np.maximum(_L1 ** 2 - a ** 2, 1e-8))
    u0 = _normalize(_ELBOW_HINT - (n @ _ELBOW_HINT)[:, None] * n)
    v0 = np.cross(n, u0)
    u = np.cos(swivel)[:, None] * u0 + np.sin(swivel)[:, None] * v0
    elbow = a * n + r * u
    b1 = elbow / _L1
    fore = _normalize(dist * n - elbow)
    hinge = _normalize(np.cross(b1, fore))
    upper = np.stack([b1, hinge, np.cross(b1, hinge)], axis=-1)   # columns
    lower = np.stack([fore, hinge, np.cross(fore, hinge)], axis=-1)
    shoulder = upper @ _REST_FRAME.T
    elbow_rot = _REST_FRAME @ np.swapaxes(upper, -1, -2) @ lower @ _REST_FRAME.T
    return shoulder, elbow_rot


def _axis_rot(axis: np.ndarray, angle: np.ndarray) -> torch.Tensor:
    """Quaternions (F, 4) float64 of rotations by ``angle`` (F,) about the unit ``axis`` (3,)."""
    return axis_angle_to_quaternion(torch.from_numpy(angle[:, None] * np.asarray(axis, dtype=np.float64)[None]))


def _hand_pose(hs: np.ndarray, palm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left-hand canonical wrist axis-angle (F, 3) and finger axis-angles (F, 15, 3) in SMPL-X
    order (index, middle, pinky, ring, thumb; three joints each)."""
    F = hs.shape[0]
    ex, ey, ez = np.eye(3)
    wrist = quaternion_multiply(quaternion_multiply(_axis_rot(ex, -palm[:, 0]), _axis_rot(ez, -palm[:, 1])),
                                _axis_rot(ey, -palm[:, 2]))
    fingers = np.zeros((F, 15, 3))
    spread = hs[:, 10] * 0.22
    # SMPL-X order index, middle, pinky, ring, thumb; our handshape order thumb, index, middle, ring, pinky
    for slot, (k, spread_sign) in enumerate(((1, -1.0), (2, 0.0), (4, 1.3), (3, 0.6))):
        base = quaternion_multiply(_axis_rot(ey, spread_sign * spread), _axis_rot(ez, -1.45 * hs[:, k]))
        fingers[:, 3 * slot] = quaternion_to_axis_angle(base).numpy()
        fingers[:, 3 * slot + 1] = -1.6 * hs[:, 5 + k, None] * ez
        fingers[:, 3 * slot + 2] = -1.1 * hs[:, 5 + k, None] * ez
    fingers[:, 12] = 1.0 * hs[:, 0, None] * _THUMB_AXIS
    fingers[:, 13] = 0.8 * hs[:, 5, None] * _THUMB_AXIS
    fingers[:, 14] = 0.8 * hs[:, 5, None] * _THUMB_AXIS
    return quaternion_to_axis_angle(wrist).numpy(), fingers


def _mirror_aa(aa: np.ndarray) -> np.ndarray:
    """Axis-angle of the left/right mirror image (reflection x -> -x): (x, -y, -z)."""
    return aa * np.array([1.0, -1.0, -1.0])


def _arm_pose(wrist_target: np.ndarray, swivel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shoulder and elbow axis-angles (F, 3) of the left arm for wrist targets in the pelvis rest
    frame (actual coordinates, left side)."""
    rel = wrist_target - _LEFT_SHOULDER  # collar and spine rotations move the whole frame with them
    sh, el = _two_bone_ik(rel, swivel)
    return matrix_to_axis_angle(torch.from_numpy(sh)).numpy(), matrix_to_axis_angle(torch.from_numpy(el)).numpy()


def _joint_slots() -> dict[str, int]:
    """Joint name -> row in a (52, 3) frame [global_orient, body_pose 21, left hand 15, right hand 15]."""
    return {name: idx if idx < 22 else idx - 3 for name, idx in zip(_SK.names, _SK.smplx_indices)}


_SLOTS = _joint_slots()
