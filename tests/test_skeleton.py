"""The signing skeleton and its pooling hierarchy, checked against SMPL-X's own joint names and
kinematic tree (from the ``smplx`` package / the published SMPL-X kintree)."""

from collections import deque

import numpy as np
import pytest
import torch
from smplx.joint_names import JOINT_NAMES as SMPLX_JOINT_NAMES

from sald_fast.skeleton import SIGNING_SKELETON, pooling_hierarchy

# Parent of each of the 55 SMPL-X joints (the SMPL-X kintree: body 22, jaw, eyes, 2 x 15 fingers).
SMPLX_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15,
                 20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
                 21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53]

FINGERS = ("index", "middle", "pinky", "ring", "thumb")
EXPECTED_NAMES = (
    ["pelvis", "spine1", "spine2", "spine3", "neck", "left_collar", "right_collar", "head",
     "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist"]
    + [f"{side}_{f}{s}" for side in ("left", "right") for f in FINGERS for s in (1, 2, 3)]
)


def test_joint_names_and_count():
    assert SIGNING_SKELETON.num_joints == 44
    assert list(SIGNING_SKELETON.names) == EXPECTED_NAMES


def test_parents_precede_children():
    parents = SIGNING_SKELETON.parents
    assert parents[0] == -1
    assert all(0 <= p < j for j, p in enumerate(parents) if j > 0)


def test_smplx_indices_match_smplx():
    idx = SIGNING_SKELETON.smplx_indices
    assert len(set(idx)) == 44
    for name, i in zip(SIGNING_SKELETON.names, idx):
        assert SMPLX_JOINT_NAMES[i] == name
    assert idx[SIGNING_SKELETON.index("left_wrist")] == 20
    assert idx[SIGNING_SKELETON.index("left_index1")] == 25
    assert idx[SIGNING_SKELETON.index("right_thumb3")] == 54
    assert sorted(idx) == list(idx)  # SMPL-X index order
    # same kinematic tree as SMPL-X restricted to these joints
    for j, p in enumerate(SIGNING_SKELETON.parents):
        if p >= 0:
            assert SMPLX_PARENTS[idx[j]] == idx[p], SIGNING_SKELETON.names[j]


def _is_connected(nodes, adjacency) -> bool:
    nodes = list(nodes)
    seen, todo = {nodes[0]}, deque([nodes[0]])
    allowed = set(nodes)
    while todo:
        a = todo.popleft()
        for b in np.nonzero(adjacency[a])[0]:
            if int(b) in allowed and int(b) not in seen:
                seen.add(int(b))
                todo.append(int(b))
    return seen == allowed


def _check_adjacency(skeleton):
    a = skeleton.adjacency()
    J = skeleton.num_joints
    assert a.shape == (J, J) and a.dtype == bool
    assert (a == a.T).all()
    assert a.diagonal().all()
    assert (a.sum() - J) // 2 == J - 1  # a tree: J - 1 undirected edges
    assert _is_connected(range(J), a)
    indptr, indices = skeleton.neighbourhood()
    assert indptr.dtype == torch.int64 and indices.dtype == torch.int64
    assert indptr.shape == (J + 1,) and indptr[0] == 0 and indptr[-1] == indices.numel()
    dense = np.zeros((J, J), dtype=bool)
    for i in range(J):
        row = indices[indptr[i]:indptr[i + 1]].numpy()
        assert (np.diff(row) > 0).all()  # sorted, unique
        dense[i, row] = True
    assert (dense == a).all()


@pytest.mark.parametrize("num_atoms", [5, 7, 9])
def test_pooling_hierarchy(num_atoms):
    h = pooling_hierarchy(num_atoms)
    assert [s.num_joints for s in h.levels] == [44, 20, num_atoms]
    assert h.levels[0] is SIGNING_SKELETON
    for lvl, skel in enumerate(h.levels):
        _check_adjacency(skel)
        assert all(0 <= p < j for j, p in enumerate(skel.parents) if j > 0), f"level {lvl}"
    for lvl, groups in enumerate(h.groups):
        fine, coarse = h.levels[lvl], h.levels[lvl + 1]
        assert len(groups) == coarse.num_joints
        members = sorted(j for g in groups for j in g)
        assert members == list(range(fine.num_joints)), f"level {lvl}: every fine joint exactly once"
        fine_adj = fine.adjacency()
        for g in groups:
            assert _is_connected(g, fine_adj), f"level {lvl}: group {[fine.names[j] for j in g]} is not connected"
        # coarse joints are adjacent iff some fine edge joins their groups
        owner = {j: g for g, mem in enumerate(groups) for j in mem}
        expected = np.eye(coarse.num_joints, dtype=bool)
        for p, c in fine.edges():
            expected[owner[p], owner[c]] = expected[owner[c], owner[p]] = True
        assert (coarse.adjacency() == expected).all(), f"level {lvl}"
        pool = h.pool_matrix(lvl)
        assert pool.shape == (coarse.num_joints, fine.num_joints)
        torch.testing.assert_close(pool.sum(1), torch.ones(coarse.num_joints))
        unpool = h.unpool_matrix(lvl)
        assert unpool.shape == (fine.num_joints, coarse.num_joints)
        torch.testing.assert_close(unpool.sum(1), torch.ones(fine.num_joints))  # each joint copies one group
        x = torch.randn(fine.num_joints, 4)
        torch.testing.assert_close(pool @ (unpool @ (pool @ x)), pool @ x)  # pool o unpool = identity
    # composite: every one of the 44 joints lands in exactly one atom
    total = h.pool_matrix(1) @ h.pool_matrix(0)
    assert ((total > 0).sum(0) == 1).all()


def test_seven_atoms_names():
    names = pooling_hierarchy(7).levels[2].names
    assert set(names) == {"root", "spine", "head", "left_shoulder", "right_shoulder", "left_hand", "right_hand"}
    h = pooling_hierarchy(7)
    atom_of = {}
    for g, mid in enumerate(h.groups[1]):
        for m in mid:
            for j in h.groups[0][m]:
                atom_of[SIGNING_SKELETON.names[j]] = names[g]
    assert atom_of["left_thumb3"] == "left_hand" and atom_of["right_wrist"] == "right_hand"
    assert atom_of["head"] == "head" and atom_of["pelvis"] == "root"


def test_bad_num_atoms():
    with pytest.raises(ValueError, match="num_atoms"):
        pooling_hierarchy(6)


def test_rest_pose_plausible():
    s = SIGNING_SKELETON
    rest = s.rest_positions()
    assert s.offsets.dtype == np.float32 and s.offsets.shape == (44, 3)
    assert rest[s.index("left_wrist"), 0] > 0.3 and rest[s.index("right_wrist"), 0] < -0.3
    assert rest[s.index("head"), 1] > rest[s.index("pelvis"), 1] + 0.4
    span = rest[s.index("left_middle3"), 0] - rest[s.index("right_middle3"), 0]
    assert 1.4 < span < 2.0
    # bones have plausible lengths and the skeleton is left/right symmetric
    lengths = np.linalg.norm(s.offsets[1:], axis=1)
    assert (lengths > 0.01).all() and (lengths < 0.4).all()
    for j, name in enumerate(s.names):
        if name.startswith("left_"):
            r = s.index("right_" + name[5:])
            np.testing.assert_allclose(rest[r], rest[j] * np.array([-1.0, 1.0, 1.0]), atol=1e-6)
