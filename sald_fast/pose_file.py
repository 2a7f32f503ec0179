"""``.pose`` files (the ``pose-format`` package of the sign-language tool chain).

The 44 joints of :data:`~sald_fast.skeleton.SIGNING_SKELETON` are written as three components,
in skeleton order: ``BODY`` (pelvis .. wrists, 14 points), ``LEFT_HAND`` and ``RIGHT_HAND``
(the 15 finger joints of each hand). Limbs are the skeleton's bones inside a component (a
hand's knuckles hang off the wrist in ``BODY``, so the wrist-to-knuckle bones are not limbs).

Coordinates are pixels of a virtual front camera, as ``pose-format``'s tools expect: for a
position (x, y, z) in metres (SMPL-X axes: y up, x to the signer's left, z forwards)

    px = width / 2 + scale * x,  py = height - margin - scale * y,  pz = -scale * z

(image x right, y down, depth away from the viewer), with ``scale`` pixels per metre; the
pelvis of the first frame is put at ``(width / 2, height - margin)``. :func:`read_pose` undoes it.
Confidence is 1 for every written frame (the frames past a prompt's valid length are not written).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .skeleton import SIGNING_SKELETON, Skeleton

__all__ = ["PoseCamera", "pose_components", "positions_to_pose", "write_pose", "read_pose"]

_COMPONENT_COLOURS = {"BODY": (90, 90, 90), "LEFT_HAND": (31, 119, 180), "RIGHT_HAND": (214, 39, 40)}


@dataclass(frozen=True)
class PoseCamera:
    """The virtual front camera of a ``.pose`` file: image ``width`` x ``height`` pixels,
    ``scale`` pixels per metre, the first frame's pelvis ``margin`` pixels above the bottom."""

    width: int = 640
    height: int = 480
    scale: float = 400.0
    margin: float = 60.0

    def to_pixels(self, positions: np.ndarray, origin: np.ndarray) -> np.ndarray:
        """(..., 3) metres -> (..., 3) pixels (x right, y down, z away from the viewer)."""
        p = np.asarray(positions, dtype=np.float64) - origin
        return np.stack([self.width / 2 + self.scale * p[..., 0],
                         self.height - self.margin - self.scale * p[..., 1],
                         -self.scale * p[..., 2]], axis=-1)

    def to_metres(self, pixels: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_pixels` (with the origin at 0)."""
        q = np.asarray(pixels, dtype=np.float64)
        return np.stack([(q[..., 0] - self.width / 2) / self.scale,
                         (self.height - self.margin - q[..., 1]) / self.scale,
                         -q[..., 2] / self.scale], axis=-1)


def pose_components(skeleton: Skeleton = SIGNING_SKELETON) -> list[tuple[str, list[int], list[tuple[int, int]]]]:
    """(component name, joint indices into ``skeleton``, limbs as pairs of indices into the
    component) for BODY, LEFT_HAND and RIGHT_HAND; together they cover every joint once."""
    hands = {side: [j for j, n in enumerate(skeleton.names) if n.startswith(side + "_")
                    and not n.endswith(("collar", "shoulder", "elbow", "wrist"))] for side in ("left", "right")}
    in_hand = set(hands["left"]) | set(hands["right"])
    body = [j for j in range(skeleton.num_joints) if j not in in_hand]
    out = []
    for name, joints in (("BODY", body), ("LEFT_HAND", hands["left"]), ("RIGHT_HAND", hands["right"])):
        local = {j: k for k, j in enumerate(joints)}
        limbs = [(local[p], local[c]) for p, c in skeleton.edges() if p in local and c in local]
        out.append((name, joints, limbs))
    return out


def positions_to_pose(positions: np.ndarray, fps: float, camera: PoseCamera = PoseCamera(),
                      skeleton: Skeleton = SIGNING_SKELETON):
    """A ``pose_format.Pose`` of one signer from joint positions (N, J, 3) in metres."""
    from pose_format import Pose
    from pose_format.numpy.pose_body import NumPyPoseBody
    from pose_format.pose_header import PoseHeader, PoseHeaderComponent, PoseHeaderDimensions

    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 3 or pos.shape[1:] != (skeleton.num_joints, 3) or pos.shape[0] < 1:
        raise ValueError(f"positions must be (N >= 1, {skeleton.num_joints}, 3), got {pos.shape}")
    if not np.isfinite(pos).all():
        raise ValueError("positions contain NaN or inf")
    if not (isinstance(fps, (int, float)) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    comps = pose_components(skeleton)
    order = [j for _, joints, _ in comps for j in joints]
    header_comps = [PoseHeaderComponent(name=name, points=[skeleton.names[j].upper() for j in joints],
                                        limbs=limbs, colors=[_COMPONENT_COLOURS[name]] * max(len(limbs), 1),
                                        point_format="XYZC")
                    for name, joints, limbs in comps]
    header = PoseHeader(version=0.2, dimensions=PoseHeaderDimensions(width=camera.width, height=camera.height, depth=0),
                        components=header_comps)
    pixels = camera.to_pixels(pos[:, order], origin=pos[0, 0]).astype(np.float32)
    data = pixels[:, None]  # (frames, people=1, points, 3)
    confidence = np.ones(data.shape[:3], dtype=np.float32)
    return Pose(header, NumPyPoseBody(fps=float(fps), data=data, confidence=confidence))


def write_pose(positions: np.ndarray, path: str | os.PathLike, fps: float, camera: PoseCamera = PoseCamera(),
               skeleton: Skeleton = SIGNING_SKELETON) -> Path:
    """Write joint positions (N, J, 3) in metres to the ``.pose`` file ``path``, atomically."""
    path = Path(path)
    if path.suffix.lower() != ".pose":
        raise ValueError(f"pose file path must end in .pose, got {path.name!r}")
    pose = positions_to_pose(positions, fps, camera, skeleton)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.pose")
    with open(tmp, "wb") as fh:
        pose.write(fh)
    os.replace(tmp, path)
    return path


def read_pose(path: str | os.PathLike, camera: PoseCamera = PoseCamera(),
              skeleton: Skeleton = SIGNING_SKELETON) -> tuple[np.ndarray, float]:
    """A ``.pose`` file written by :func:`write_pose` -> (positions (N, J, 3) in metres relative
    to the first frame's pelvis, fps). Read with ``pose-format``'s own reader."""
    from pose_format import Pose

    path = Path(path)
    try:
        pose = Pose.read(path.read_bytes())
    except OSError:
        raise
    except Exception as exc:  # pose-format raises struct/index errors on a damaged file
        raise ValueError(f"{str(path)!r} is not a readable .pose file: {exc}") from exc
    comps = pose_components(skeleton)
    names = [(c.name, [p for p in c.points]) for c in pose.header.components]
    expected = [(name, [skeleton.names[j].upper() for j in joints]) for name, joints, _ in comps]
    if names != expected:
        raise ValueError(f"{str(path)!r} holds components {[n for n, _ in names]} with other points than "
                         f"this skeleton's {[n for n, _ in expected]}")
    order = [j for _, joints, _ in comps for j in joints]
    pixels = np.asarray(pose.body.data.filled(np.nan))[:, 0]
    out = np.empty_like(pixels, dtype=np.float64)
    out[:, order] = camera.to_metres(pixels)
    return out.astype(np.float32), float(pose.body.fps)
