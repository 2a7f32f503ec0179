"""Skeleton animations: a readable body (head, torso outline, hand close-ups in finger colours),
fixed cameras, side-by-side panels with labels and the sentence as title, files that play."""

from __future__ import annotations

import numpy as np
import pytest

from sald_fast.render import render_frames, render_panel, render_side_by_side, save_animation, save_side_by_side
from sald_fast.skeleton import SIGNING_SKELETON

SIZE = 160


def _motion(n: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = SIGNING_SKELETON.rest_positions()
    wave = 0.05 * np.sin(np.linspace(0, 3, n))[:, None, None]
    return base[None] + wave + 0.005 * rng.standard_normal((n, 44, 3))


def _has_colour(img: np.ndarray, rgb: tuple[int, int, int], tol: int = 40) -> bool:
    return bool((np.abs(img.astype(int) - rgb).max(-1) < tol).any())


def test_panel_draws_head_torso_arms_and_hands():
    frames = render_panel(_motion(), "front", "label", size=SIZE)
    assert frames.shape == (6, SIZE * 3 // 2, SIZE, 3) and frames.dtype == np.uint8
    body, hands = frames[0, :SIZE], frames[0, SIZE:]
    assert _has_colour(body, (240, 220, 200), 12)   # the head
    assert _has_colour(body, (225, 225, 225), 6)    # the torso outline's fill
    assert _has_colour(body, (214, 39, 40)) and _has_colour(body, (31, 119, 180))  # right and left arm
    for rgb in ((230, 120, 0), (0, 150, 60), (30, 90, 220), (150, 60, 190), (200, 30, 120)):
        assert _has_colour(hands[:, : SIZE // 2], rgb, 60) and _has_colour(hands[:, SIZE // 2:], rgb, 60)  # 5 fingers


def test_body_camera_is_fixed_and_hand_camera_follows_the_wrist():
    pos = _motion()
    frames = render_panel(pos, "front", size=SIZE)
    np.testing.assert_array_equal(render_panel(pos + (0.2, -0.1, 0.3), "front", size=SIZE), frames)  # whole clip moved
    later = pos.copy()
    later[1:] += (0.2, 0.0, 0.0)  # frames after the first move right: the body camera stays
    moved = render_panel(later, "front", size=SIZE)
    np.testing.assert_array_equal(moved[0], frames[0])
    assert not np.array_equal(moved[1, :SIZE], frames[1, :SIZE])
    # the hand close-ups follow the wrists, so they hardly change
    assert np.abs(moved[1, SIZE:].astype(int) - frames[1, SIZE:]).mean() < 1.0


def test_front_and_side_views_differ():
    pos = _motion()
    front = render_panel(pos, "front", size=SIZE)
    side = render_panel(pos, "side", size=SIZE)
    assert not np.array_equal(front[0, :SIZE], side[0, :SIZE])
    with pytest.raises(ValueError, match="unknown view"):
        render_panel(pos, "top", size=SIZE)


def test_side_by_side_layout_title_and_hold():
    a, b = _motion(6), _motion(4, seed=1)
    frames = render_side_by_side([("ground truth", a), ("generated", b), ("VAE reconstruction", a)],
                                 title="where is the library?", size=SIZE)
    assert frames.shape == (6, 28 + SIZE * 3 // 2, 3 * SIZE + 2 * 2, 3)
    assert (frames[0, :28] < 100).any()  # title text
    mid = frames[:, 28:, SIZE + 2: 2 * SIZE + 2]
    np.testing.assert_array_equal(mid[4], mid[3])  # the shorter sequence holds its last frame
    assert not np.array_equal(frames[4, 28:, :SIZE], frames[3, 28:, :SIZE])
    with pytest.raises(ValueError, match="at least one"):
        render_side_by_side([])
    with pytest.raises(ValueError, match=r"\(N >= 1, 44, 3\)"):
        render_side_by_side([("x", np.zeros((3, 10, 3)))])


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_files_play_back(tmp_path, suffix):
    import imageio.v3 as iio

    pos = _motion(5)
    p = save_side_by_side([("ground truth", pos), ("generated", pos)], tmp_path / f"s{suffix}", fps=25.0, title="hi")
    frames = iio.imread(p, index=None)
    assert frames.shape[0] == 5 and frames.std() > 0
    single = save_animation(pos, tmp_path / f"a{suffix}", fps=25.0, title="hi")
    assert iio.imread(single, index=None).shape[0] == 5
    assert render_frames(pos, title="hi").shape[2] == 2 * 320  # front and side panels
    with pytest.raises(ValueError, match=".mp4 or .gif"):
        save_side_by_side([("x", pos)], tmp_path / "s.avi")


def test_evaluation_videos_have_the_three_columns(tmp_path):
    import imageio.v3 as iio
    import torch

    from sald_fast.eval.evaluate import write_side_by_side_videos

    ref = torch.as_tensor(np.stack([_motion(8), _motion(8, seed=2)]), dtype=torch.float32)
    cands = {"Mean pose": ref * 0, "Sign-SALD": ref + 0.01, "VAE reconstruction": ref - 0.01}
    paths = write_side_by_side_videos(ref, cands, torch.tensor([8, 5]), ["a", "b"], tmp_path, count=5, fps=25.0)
    assert [p.name for p in paths] == ["video_00.mp4", "video_01.mp4"]
    frames = iio.imread(paths[1], index=None)
    assert frames.shape[0] == 5 and frames.shape[2] == 3 * 320 + 2 * 2  # cropped to its length; 3 columns
