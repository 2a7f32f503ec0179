"""Skeleton animations (matplotlib, front and side views) written as .mp4 or .gif."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .skeleton import SIGNING_SKELETON, Skeleton

__all__ = ["render_frames", "save_animation"]

_COLOURS = {"left": "#1f77b4", "right": "#d62728", "centre": "#444444"}


def _side(name: str) -> str:
    return "left" if name.startswith("left") else "right" if name.startswith("right") else "centre"


def render_frames(positions: np.ndarray, skeleton: Skeleton = SIGNING_SKELETON, title: str | None = None,
                  size: tuple[int, int] = (640, 360)) -> np.ndarray:
    """Draw every frame of ``positions`` (N, J, 3) in metres; returns (N, H, W, 3) uint8.

    Left: front view (x right, y up, as seen by the addressee); right: side view from the
    signer's right (z right, y up). Fingers are drawn thin, arms thick; left side blue, right red.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos = np.asarray(positions, dtype=np.float32)
    if pos.ndim != 3 or pos.shape[1:] != (skeleton.num_joints, 3):
        raise ValueError(f"positions must be (N, {skeleton.num_joints}, 3), got {pos.shape}")
    if not np.isfinite(pos).all():
        raise ValueError("positions contain NaN or inf")
    pos = pos - pos[:1, :1]  # centre on the first frame's root
    w, h = size
    fig, axes = plt.subplots(1, 2, figsize=(w / 100, h / 100), dpi=100)
    lines = []
    span = max(float(np.abs(pos).max()), 0.5) * 1.05
    for ax, (a, b), label in zip(axes, ((0, 1), (2, 1)), ("front", "side")):
        ax.set_xlim(-span, span)
        ax.set_ylim(-0.25 * span, 1.2 * span)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(label, fontsize=8)
        for p, c in skeleton.edges():
            name = skeleton.names[c]
            finger = any(f in name for f in ("index", "middle", "ring", "pinky", "thumb"))
            (ln,) = ax.plot([], [], "-", color=_COLOURS[_side(name)], lw=1.0 if finger else 2.5)
            lines.append((ln, p, c, a, b))
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    frames = []
    for t in range(pos.shape[0]):
        for ln, p, c, a, b in lines:
            ln.set_data([pos[t, p, a], pos[t, c, a]], [pos[t, p, b], pos[t, c, b]])
        fig.canvas.draw()
        frames.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    return np.stack(frames)


def save_animation(positions: np.ndarray, path: str | os.PathLike, fps: float = 25.0, title: str | None = None,
                   skeleton: Skeleton = SIGNING_SKELETON) -> Path:
    """Write an animation of ``positions`` (N, J, 3) to ``path`` (.mp4 or .gif), atomically."""
    import imageio.v2 as imageio

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".mp4", ".gif"):
        raise ValueError(f"animation path must end in .mp4 or .gif, got {path.name!r}")
    frames = render_frames(positions, skeleton, title)
    tmp = path.with_name(f".{path.stem}.tmp{suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".gif":
        imageio.mimsave(tmp, list(frames), duration=1000.0 / fps, loop=0)
    else:
        imageio.mimwrite(tmp, list(frames), fps=fps, codec="libx264", macro_block_size=1, quality=7)
    os.replace(tmp, path)
    return path
