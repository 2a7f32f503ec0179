"""SMPL-X meshes from a user's model file: safe loading (npz without pickle, pkl with an
arrays-only unpickler), clear errors for a missing/wrong/unreadable file, linear blend skinning
that agrees with our own forward kinematics, and CPU rendering whose frames follow the motion."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from _synthetic_smplx import synthetic_joints, synthetic_smplx_arrays, write_synthetic_smplx
from sald_fast.features import features_to_positions, smplx_to_features
from sald_fast.skeleton import SIGNING_SKELETON
from sald_fast.smplx_mesh import load_smplx_model, pose_vertices, render_mesh_frames


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return write_synthetic_smplx(tmp_path_factory.mktemp("smplx") / "SMPLX_NEUTRAL.npz")


def _params(n: int, seed: int = 0, scale: float = 0.4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"global_orient": scale * rng.standard_normal((n, 3)), "body_pose": scale * rng.standard_normal((n, 21, 3)),
            "left_hand_pose": scale * rng.standard_normal((n, 15, 3)),
            "right_hand_pose": scale * rng.standard_normal((n, 15, 3)), "transl": 0.1 * rng.standard_normal((n, 3))}


def test_zero_pose_is_the_template_moved_by_transl(model_file):
    model = load_smplx_model(model_file)
    p = {k: np.zeros_like(v) for k, v in _params(2).items()}
    p["transl"][1] = (0.1, -0.2, 0.3)
    v = pose_vertices(model, p)
    np.testing.assert_allclose(v[0], model.v_template, atol=1e-12)
    np.testing.assert_allclose(v[1], model.v_template + (0.1, -0.2, 0.3), atol=1e-12)


def test_posed_joints_match_our_forward_kinematics(model_file):
    """The markers (one vertex per joint, picked by J_regressor) move like the joints of
    sald_fast's own FK with the model's rest offsets: same kinematic tree, same rotations."""
    model = load_smplx_model(model_file)
    params = _params(3)
    verts = pose_vertices(model, params)
    posed_joints = verts[:, -55:]
    feats = smplx_to_features(*(torch.as_tensor(params[k]) for k in
                                ("global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "transl")))
    J = synthetic_joints()[list(SIGNING_SKELETON.smplx_indices)]
    offsets = np.stack([J[i] - (J[p] if p >= 0 else 0.0) for i, p in enumerate(SIGNING_SKELETON.parents)])
    ours = features_to_positions(feats.double(), torch.as_tensor(offsets)).numpy()
    theirs = posed_joints[:, list(SIGNING_SKELETON.smplx_indices)]
    np.testing.assert_allclose(theirs - theirs[:, :1], ours - ours[:, :1], atol=1e-6)


def test_pkl_and_npz_load_the_same(model_file, tmp_path):
    arrays = synthetic_smplx_arrays()
    pkl = tmp_path / "SMPLX_NEUTRAL.pkl"
    pkl.write_bytes(pickle.dumps(arrays, protocol=2))
    a, b = load_smplx_model(model_file), load_smplx_model(pkl)
    for field in ("v_template", "faces", "J_regressor", "weights", "parents", "posedirs"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_pkl_with_code_is_refused_without_running_it(tmp_path):
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps({"v_template": _Exploit()}))
    with pytest.raises(ValueError, match=r"evil\.pkl.*refusing to load posix\.system|evil\.pkl.*refusing"):
        load_smplx_model(bad)


@pytest.mark.parametrize("overrides, needle", [
    ({"posedirs": None}, "no field 'posedirs'"),
    ({"weights": np.zeros((5, 55))}, "field 'weights' has shape (5, 55)"),
    ({"J_regressor": np.zeros((24, 379))}, "has 24 joints"),
    ({"v_template": np.full((379, 3), np.nan)}, "field 'v_template' holds NaN"),
    ({"f": np.full((3, 3), 10**6)}, "field 'f' indexes vertices"),
    ({"kintree_table": np.zeros((2, 55), dtype=np.int64)}, "field 'kintree_table' is not the SMPL-X"),
])
def test_wrong_model_file_names_the_field(tmp_path, overrides, needle):
    path = write_synthetic_smplx(tmp_path / "m.npz", **overrides)
    with pytest.raises(ValueError) as err:
        load_smplx_model(path)
    assert needle in str(err.value) and "m.npz" in str(err.value)


def test_missing_unreadable_and_pickled_npz_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        load_smplx_model(tmp_path / "nowhere.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="garbage.npz.*not a readable .npz"):
        load_smplx_model(garbage)
    objs = tmp_path / "objects.npz"
    np.savez(objs, v_template=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="objects.npz.*pickled objects"):
        load_smplx_model(objs)
    with pytest.raises(ValueError, match=r"\.npz or \.pkl"):
        load_smplx_model(garbage.rename(tmp_path / "model.obj"))


def test_rendered_frames_follow_the_motion(model_file):
    model = load_smplx_model(model_file)
    n = 3
    p = {k: np.zeros_like(v) for k, v in _params(n).items()}
    p["body_pose"][1, 18] = (0.0, 0.0, 1.2)   # right elbow (SMPL-X joint 19 = body_pose 18)
    p["body_pose"][2, 15] = (0.0, 0.0, -1.0)  # left shoulder (joint 16)
    frames = render_mesh_frames(model, p, title="a test", size=96)
    assert frames.dtype == np.uint8 and frames.shape[0] == n and frames.shape[-1] == 3
    assert frames.shape[2] == 2 * 96  # front and side
    body = frames[:, 28:]  # below the title bar
    drawn = (body < 250).any(-1).mean(axis=(1, 2))
    assert (drawn > 0.01).all()  # the mesh is visible in every frame
    assert (frames[0, :28] < 128).any()  # the title is drawn
    changed_1 = (np.abs(body[1].astype(int) - body[0]) > 30).any(-1).mean()
    changed_2 = (np.abs(body[2].astype(int) - body[0]) > 30).any(-1).mean()
    assert changed_1 > 0.002 and changed_2 > 0.002  # the moved arms show
    again = render_mesh_frames(model, p, title="a test", size=96)
    np.testing.assert_array_equal(again, frames)
    # the camera is fixed on the first frame's pelvis: moving the whole clip changes nothing,
    # moving later frames against the first does
    p2 = {k: v.copy() for k, v in p.items()}
    p2["transl"][:] = (0.0, 0.3, 0.0)
    moved = render_mesh_frames(model, p2, size=96)
    np.testing.assert_array_equal(moved[0], render_mesh_frames(model, p, size=96)[0])  # camera follows frame 0's pelvis
    p2["transl"][1:] = (0.0, 0.3 + 0.2, 0.0)
    assert not np.array_equal(render_mesh_frames(model, p2, size=96)[1], moved[1])
