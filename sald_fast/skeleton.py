"""The SMPL-X upper-body signing skeleton, as data, and its skeletal pooling hierarchy.

Joint order follows the SMPL-X joint indices (so parents always come before children). Axes
follow SMPL-X: y up, x towards the signer's left, z forwards; rest pose is SMPL-X's T-pose
(arms along +-x, palms down). Rest offsets are our own generic neutral skeleton (anthropometric
bone lengths in metres), unless an SMPL-X model file is given to :func:`rest_offsets`.

Pooling: level 0 is the 44-joint skeleton, level 1 an intermediate 20-joint skeleton, level 2 the
atomic joints (5, 7 or 9). Each coarse joint is a connected group of finer joints; each coarse
skeleton gets its own parents (the group holding the parent of the group's top joint) and so its
own adjacency.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

__all__ = [
    "Skeleton",
    "PoolingHierarchy",
    "SIGNING_SKELETON",
    "SMPLX_BODY_JOINTS",
    "signing_skeleton",
    "pooling_hierarchy",
    "rest_offsets",
    "ATOM_SETS",
]

# (name, SMPL-X joint index, parent name, generic rest offset from the parent in metres)
_FINGERS = (  # name, base offset from the wrist (left hand), two further segment lengths
    ("index", (0.085, 0.000, 0.025), (0.037, 0.025)),
    ("middle", (0.090, 0.000, 0.005), (0.040, 0.027)),
    ("pinky", (0.075, -0.005, -0.040), (0.025, 0.018)),
    ("ring", (0.085, -0.002, -0.018), (0.035, 0.025)),
    ("thumb", (0.025, -0.010, 0.030), (0.036, 0.029)),
)


def _joint_table() -> list[tuple[str, int, str | None, tuple[float, float, float]]]:
    t: list[tuple[str, int, str | None, tuple[float, float, float]]] = [
        ("pelvis", 0, None, (0.0, 0.0, 0.0)),
        ("spine1", 3, "pelvis", (0.0, 0.110, -0.010)),
        ("spine2", 6, "spine1", (0.0, 0.130, 0.000)),
        ("spine3", 9, "spine2", (0.0, 0.055, 0.000)),
        ("neck", 12, "spine3", (0.0, 0.210, -0.020)),
        ("left_collar", 13, "spine3", (0.075, 0.115, 0.000)),
        ("right_collar", 14, "spine3", (-0.075, 0.115, 0.000)),
        ("head", 15, "neck", (0.0, 0.090, 0.040)),
        ("left_shoulder", 16, "left_collar", (0.110, 0.030, -0.010)),
        ("right_shoulder", 17, "right_collar", (-0.110, 0.030, -0.010)),
        ("left_elbow", 18, "left_shoulder", (0.260, 0.000, 0.000)),
        ("right_elbow", 19, "right_shoulder", (-0.260, 0.000, 0.000)),
        ("left_wrist", 20, "left_elbow", (0.250, 0.000, 0.000)),
        ("right_wrist", 21, "right_elbow", (-0.250, 0.000, 0.000)),
    ]
    for side, base_index, mirror in (("left", 25, 1.0), ("right", 40, -1.0)):
        for f, (finger, base, (l2, l3)) in enumerate(_FINGERS):
            idx = base_index + 3 * f
            direction = np.array(base) / np.linalg.norm(base)
            direction[1] = 0.0 if finger != "thumb" else direction[1]
            direction /= np.linalg.norm(direction)
            segs = [tuple(base), tuple(direction * l2), tuple(direction * l3)]
            parent = f"{side}_wrist"
            for s in range(3):
                name = f"{side}_{finger}{s + 1}"
                off = segs[s]
                t.append((name, idx + s, parent, (mirror * off[0], off[1], off[2])))
                parent = name
    return t


@dataclass(frozen=True, eq=False)
class Skeleton:
    """A kinematic tree: joint names, parent indices (-1 for the root; parents precede
    children), optional SMPL-X joint indices, and rest offsets from the parent (J, 3) in metres
    (the root's offset is its rest position)."""

    names: tuple[str, ...]
    parents: tuple[int, ...]
    offsets: np.ndarray
    smplx_indices: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        offsets = np.array(self.offsets, dtype=np.float32)  # own read-only copy: the skeleton is a value
        offsets.flags.writeable = False
        object.__setattr__(self, "offsets", offsets)
        J = len(self.names)
        if len(self.parents) != J:
            raise ValueError(f"Skeleton: {J} names but {len(self.parents)} parents")
        if self.offsets.shape != (J, 3):
            raise ValueError(f"Skeleton: offsets must be ({J}, 3), got {self.offsets.shape}")
        for i, p in enumerate(self.parents):
            if (i == 0) != (p == -1) or p >= i:
                raise ValueError(f"Skeleton: joint {i} ({self.names[i]}) has parent {p}; "
                                 "joint 0 must be the only root and parents must precede children")

    @property
    def num_joints(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"no joint named {name!r} in this skeleton") from None

    def edges(self) -> list[tuple[int, int]]:
        """(parent, child) pairs."""
        return [(p, c) for c, p in enumerate(self.parents) if p >= 0]

    def adjacency(self) -> np.ndarray:
        """(J, J) bool: one-hop tree neighbours plus self loops, symmetric."""
        J = self.num_joints
        a = np.eye(J, dtype=bool)
        for p, c in self.edges():
            a[p, c] = a[c, p] = True
        return a

    def neighbourhood(self, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """CSR (indptr (J+1,), indices (nnz,)) int64 of :meth:`adjacency`, rows sorted."""
        a = self.adjacency()
        indptr = np.concatenate([[0], np.cumsum(a.sum(1))])
        indices = np.ascontiguousarray(np.nonzero(a)[1])
        return (torch.as_tensor(indptr, dtype=torch.int64, device=device),
                torch.as_tensor(indices, dtype=torch.int64, device=device))

    def rest_positions(self) -> np.ndarray:
        """(J, 3) joint positions of the rest pose."""
        pos = np.zeros((self.num_joints, 3), dtype=np.float64)
        for j, p in enumerate(self.parents):
            pos[j] = self.offsets[j] + (pos[p] if p >= 0 else 0.0)
        return pos


def signing_skeleton(offsets: np.ndarray | None = None) -> Skeleton:
    """The 44-joint SMPL-X upper-body signing skeleton (generic offsets unless given)."""
    table = _joint_table()
    names = tuple(r[0] for r in table)
    parents = tuple(-1 if r[2] is None else names.index(r[2]) for r in table)
    off = np.array([r[3] for r in table], dtype=np.float32) if offsets is None else np.asarray(offsets, np.float32)
    return Skeleton(names=names, parents=parents, offsets=off, smplx_indices=tuple(r[1] for r in table))


SIGNING_SKELETON = signing_skeleton()
SMPLX_BODY_JOINTS = 55  # joints of the full SMPL-X model (body 22 + jaw + eyes 2 + hands 30)


def rest_offsets(model_path: str | None = None, gender: str = "neutral", betas: np.ndarray | None = None) -> np.ndarray:
    """(44, 3) rest offsets: from an SMPL-X model file via ``smplx`` when ``model_path`` is
    given, else our generic neutral offsets."""
    if model_path is None:
        return SIGNING_SKELETON.offsets.copy()
    import smplx  # local: only needed with a user's model file

    model = smplx.create(model_path, model_type="smplx", gender=gender, use_pca=False)
    b = torch.zeros(1, model.num_betas) if betas is None else torch.as_tensor(betas, dtype=torch.float32).view(1, -1)
    with torch.no_grad():
        verts = model.v_template + smplx.lbs.blend_shapes(b, model.shapedirs)[0]
        joints = model.J_regressor @ verts  # (55, 3)
    idx = list(SIGNING_SKELETON.smplx_indices)
    j = joints[idx].numpy()
    parents = SIGNING_SKELETON.parents
    off = np.stack([j[i] - (j[p] if p >= 0 else 0.0) for i, p in enumerate(parents)])
    return off.astype(np.float32)


# Level 1 (20 joints): groups of level-0 joint names. Parents are derived from the tree.
_INTERMEDIATE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pelvis", ("pelvis",)),
    ("lower_spine", ("spine1", "spine2")),
    ("upper_spine", ("spine3",)),
    ("head", ("neck", "head")),
) + tuple(
    item
    for side in ("left", "right")
    for item in (
        (f"{side}_shoulder", (f"{side}_collar", f"{side}_shoulder")),
        (f"{side}_elbow", (f"{side}_elbow",)),
        (f"{side}_wrist", (f"{side}_wrist",)),
    ) + tuple((f"{side}_{f}", tuple(f"{side}_{f}{s}" for s in (1, 2, 3))) for f, _, _ in _FINGERS)
)

_HAND = lambda side: (f"{side}_wrist",) + tuple(f"{side}_{f}" for f, _, _ in _FINGERS)  # noqa: E731

# Level 2: groups of level-1 names, per number of atomic joints.
ATOM_SETS: dict[int, tuple[tuple[str, tuple[str, ...]], ...]] = {
    7: (
        ("root", ("pelvis",)),
        ("spine", ("lower_spine", "upper_spine")),
        ("head", ("head",)),
        ("left_shoulder", ("left_shoulder", "left_elbow")),
        ("right_shoulder", ("right_shoulder", "right_elbow")),
        ("left_hand", _HAND("left")),
        ("right_hand", _HAND("right")),
    ),
    5: (
        ("torso", ("pelvis", "lower_spine", "upper_spine", "head")),
        ("left_arm", ("left_shoulder", "left_elbow")),
        ("right_arm", ("right_shoulder", "right_elbow")),
        ("left_hand", _HAND("left")),
        ("right_hand", _HAND("right")),
    ),
    9: (
        ("root", ("pelvis",)),
        ("spine", ("lower_spine", "upper_spine")),
        ("head", ("head",)),
        ("left_shoulder", ("left_shoulder",)),
        ("right_shoulder", ("right_shoulder",)),
        ("left_elbow", ("left_elbow",)),
        ("right_elbow", ("right_elbow",)),
        ("left_hand", _HAND("left")),
        ("right_hand", _HAND("right")),
    ),
}


def _coarsen(fine: Skeleton, groups: tuple[tuple[str, tuple[str, ...]], ...]) -> tuple[Skeleton, tuple[tuple[int, ...], ...]]:
    """Pool ``fine`` by named ``groups``; returns the coarse skeleton and member indices."""
    members = tuple(tuple(fine.index(n) for n in names) for _, names in groups)
    owner = {j: g for g, mem in enumerate(members) for j in mem}
    missing = set(range(fine.num_joints)) - set(owner)
    if missing:
        raise ValueError(f"pooling leaves joints uncovered: {[fine.names[j] for j in sorted(missing)]}")
    parents = []
    offsets = []
    rest = fine.rest_positions()
    centre = [rest[list(m)].mean(0) for m in members]
    for g, mem in enumerate(members):
        top = min(mem)  # parents precede children, so the smallest index is the group's top joint
        p = fine.parents[top]
        pg = -1 if p < 0 else owner[p]
        parents.append(pg)
        offsets.append(centre[g] - (centre[pg] if pg >= 0 else 0.0))
    coarse = Skeleton(names=tuple(n for n, _ in groups), parents=tuple(parents),
                      offsets=np.asarray(offsets, dtype=np.float32))
    return coarse, members


@dataclass(frozen=True)
class PoolingHierarchy:
    """Skeletons per level (0: 44 joints, 1: 20, 2: atoms) and, per pooling step l -> l+1,
    ``groups[l][g]``: the level-l joint indices pooled into level-(l+1) joint g."""

    levels: tuple[Skeleton, ...]
    groups: tuple[tuple[tuple[int, ...], ...], ...]

    def pool_matrix(self, level: int) -> torch.Tensor:
        """(J_{l+1}, J_l) float32: mean over each group (rows sum to 1)."""
        groups = self.groups[level]
        m = torch.zeros(len(groups), self.levels[level].num_joints)
        for g, mem in enumerate(groups):
            m[g, list(mem)] = 1.0 / len(mem)
        return m

    def unpool_matrix(self, level: int) -> torch.Tensor:
        """(J_l, J_{l+1}) float32: copies each group's feature to its members."""
        return (self.pool_matrix(level) > 0).float().t().contiguous()


@lru_cache(maxsize=None)
def pooling_hierarchy(num_atoms: int = 7) -> PoolingHierarchy:
    """The two-level pooling hierarchy 44 -> 20 -> ``num_atoms`` (5, 7 or 9)."""
    if num_atoms not in ATOM_SETS:
        raise ValueError(f"num_atoms must be one of {sorted(ATOM_SETS)}, got {num_atoms}")
    mid, g0 = _coarsen(SIGNING_SKELETON, _INTERMEDIATE)
    atoms, g1 = _coarsen(mid, ATOM_SETS[num_atoms])
    return PoolingHierarchy(levels=(SIGNING_SKELETON, mid, atoms), groups=(g0, g1))
