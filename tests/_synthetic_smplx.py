"""A small synthetic model file in the SMPL-X layout (the real ones are licensed): 55 joints
with SMPL-X's parents, the signing joints at our skeleton's rest positions, an octahedron on
every bone skinned to the bone's parent joint, and one marker vertex per joint that the
J_regressor picks (so the posed markers are the posed joints)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sald_fast.skeleton import SIGNING_SKELETON
from sald_fast.smplx_mesh import SMPLX_PARENTS

_OCTA = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float64)
_OCTA_FACES = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])


def synthetic_joints() -> np.ndarray:
    """(55, 3) rest joint positions."""
    J = np.zeros((55, 3))
    rest = SIGNING_SKELETON.rest_positions()
    for k, j in enumerate(SIGNING_SKELETON.smplx_indices):
        J[j] = rest[k]
    for side, sx in ((1, 1.0), (2, -1.0)):  # hips, knees, ankles, feet
        for level, y, z in ((0, -0.08, 0.0), (1, -0.45, 0.02), (2, -0.85, -0.02), (3, -0.9, 0.1)):
            J[side + 3 * level] = (0.09 * sx, y, z)
    head = J[15]
    J[22] = head + (0.0, -0.02, 0.05)
    J[23] = head + (0.03, 0.04, 0.08)
    J[24] = head + (-0.03, 0.04, 0.08)
    return J


def synthetic_smplx_arrays(posedirs_scale: float = 1e-3, seed: int = 0) -> dict[str, np.ndarray]:
    """The fields of an SMPLX_NEUTRAL.npz, for a model of a few hundred vertices."""
    J = synthetic_joints()
    verts, faces, owner = [], [], []
    for j in range(1, 55):
        p = SMPLX_PARENTS[j]
        length = np.linalg.norm(J[j] - J[p])
        r = float(np.clip(0.3 * length, 0.006, 0.06))
        faces.append(_OCTA_FACES + len(verts))
        verts.extend((J[j] + J[p]) / 2 + r * _OCTA)
        owner.extend([p] * 6)
    n_body = len(verts)
    verts.extend(J)  # markers
    owner.extend(range(55))
    V = len(verts)
    weights = np.zeros((V, 55))
    weights[np.arange(V), owner] = 1.0
    reg = np.zeros((55, V))
    reg[np.arange(55), n_body + np.arange(55)] = 1.0
    rng = np.random.default_rng(seed)
    posedirs = posedirs_scale * rng.standard_normal((V, 3, 486))
    posedirs[n_body:] = 0.0  # the markers stay exactly on the joints
    kintree = np.stack([np.array(SMPLX_PARENTS, dtype=np.int64) % 2**32, np.arange(55)])
    return {"v_template": np.asarray(verts), "f": np.concatenate(faces).astype(np.uint32), "J_regressor": reg,
            "weights": weights, "kintree_table": kintree, "posedirs": posedirs,
            "shapedirs": np.zeros((V, 3, 20)), "hands_meanl": np.zeros(45), "hands_meanr": np.zeros(45),
            "hands_componentsl": np.eye(45), "hands_componentsr": np.eye(45)}


def write_synthetic_smplx(path: Path, **overrides) -> Path:
    """Write the synthetic model as ``path`` (.npz), fields replaced or (value None) removed by ``overrides``."""
    arrays = synthetic_smplx_arrays()
    for k, v in overrides.items():
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v
    np.savez(path, **arrays)
    return path
