"""``.pose`` files: a round trip through pose-format's own reader (components, point names,
limbs, fps, values, confidence), its visualiser draws them, and GenerationOutput.to_pose."""

from __future__ import annotations

import numpy as np
import pytest

from sald_fast.pose_file import PoseCamera, pose_components, read_pose, write_pose
from sald_fast.skeleton import SIGNING_SKELETON

pose_format = pytest.importorskip("pose_format")


def _motion(n: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (SIGNING_SKELETON.rest_positions()[None] + 0.05 * rng.standard_normal((n, 44, 3))
            + np.array([0.3, -0.1, 0.2])).astype(np.float32)


def test_components_cover_every_joint_once_with_the_skeleton_bones():
    comps = pose_components()
    assert [c[0] for c in comps] == ["BODY", "LEFT_HAND", "RIGHT_HAND"]
    joints = [j for _, js, _ in comps for j in js]
    assert sorted(joints) == list(range(44))
    assert [len(js) for _, js, _ in comps] == [14, 15, 15]
    edges = set(SIGNING_SKELETON.edges())
    for _, js, limbs in comps:
        for a, b in limbs:
            assert (js[a], js[b]) in edges
    assert sum(len(limbs) for _, _, limbs in comps) == 43 - 10  # all bones but the 10 wrist-to-knuckle ones


def test_round_trip_through_pose_format_reader(tmp_path):
    from pose_format import Pose

    pos = _motion()
    path = write_pose(pos, tmp_path / "clip.pose", fps=25.0)
    pose = Pose.read(path.read_bytes())  # pose-format's own reader
    assert pose.body.fps == 25.0
    assert pose.body.data.shape == (12, 1, 44, 3)
    assert pose.body.confidence.shape == (12, 1, 44) and (np.asarray(pose.body.confidence) == 1).all()
    header = pose.header
    assert [c.name for c in header.components] == ["BODY", "LEFT_HAND", "RIGHT_HAND"]
    assert header.components[0].points[:3] == ["PELVIS", "SPINE1", "SPINE2"]
    assert header.components[1].points[:3] == ["LEFT_INDEX1", "LEFT_INDEX2", "LEFT_INDEX3"]
    assert header.components[2].points[-1] == "RIGHT_THUMB3"
    assert all(c.format == "XYZC" for c in header.components)
    assert (header.dimensions.width, header.dimensions.height) == (640, 480)
    # values: the documented pixel camera, pelvis of frame 0 at (width/2, height - margin)
    cam = PoseCamera()
    data = np.asarray(pose.body.data)[:, 0]
    np.testing.assert_allclose(data[0, 0], (320, 480 - cam.margin, 0), atol=1e-4)
    lw = header.get_point_index("BODY", "LEFT_WRIST")
    expected = cam.to_pixels(pos[:, SIGNING_SKELETON.index("left_wrist")], origin=pos[0, 0])
    np.testing.assert_allclose(data[:, lw], expected, atol=1e-3)
    assert (data[:, lw, 0] > 320).mean() > 0.9  # the signer's left is on the viewer's right (front camera)
    back, fps = read_pose(path)
    assert fps == 25.0
    np.testing.assert_allclose(back, pos - pos[0, 0], atol=1e-5)


def test_pose_format_visualiser_draws_it(tmp_path):
    pytest.importorskip("cv2")
    from pose_format import Pose
    from pose_format.pose_visualizer import PoseVisualizer

    path = write_pose(_motion(4), tmp_path / "clip.pose", fps=25.0)
    frames = list(PoseVisualizer(Pose.read(path.read_bytes())).draw())
    assert len(frames) == 4 and frames[0].shape == (480, 640, 3)
    assert (frames[0] < 200).any(-1).sum() > 500  # limbs are drawn on the white background


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="end in .pose"):
        write_pose(_motion(), tmp_path / "clip.npz", fps=25.0)
    with pytest.raises(ValueError, match=r"\(N >= 1, 44, 3\)"):
        write_pose(np.zeros((3, 43, 3)), tmp_path / "clip.pose", fps=25.0)
    with pytest.raises(ValueError, match="fps"):
        write_pose(_motion(), tmp_path / "clip.pose", fps=0)
    bad = tmp_path / "bad.pose"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match="bad.pose"):
        read_pose(bad)


def test_generation_output_to_pose_writes_the_valid_frames(tmp_path):
    import torch

    from sald_fast.config import TextConfig, preset
    from sald_fast.pipeline import SignSALD

    cfg = preset("tiny")
    cfg.text = TextConfig(kind="tiny", max_tokens=12, tiny_dim=32, seed=0)
    cfg.denoiser.text_dim = 32
    cfg.denoiser.num_layers = 2
    cfg.diffusion.sample_steps = 2
    model = SignSALD.from_config(cfg, seed=0).eval()
    out = model.generate(["hello", "thank you"], num_frames=12, lengths=[12, 7], seed=0)
    path = out.to_pose(tmp_path / "thanks.pose", fps=25.0, index=1)
    back, fps = read_pose(path)
    assert back.shape == (7, 44, 3) and fps == 25.0
    ref = out.positions[1, :7].numpy()
    np.testing.assert_allclose(back, ref - ref[0, 0], atol=1e-5)
    with pytest.raises(IndexError):
        out.to_pose(tmp_path / "x.pose", fps=25.0, index=2)
    assert torch.isfinite(out.positions).all()
