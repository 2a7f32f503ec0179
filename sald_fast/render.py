"""Skeleton animations, single or side by side, written as .mp4 or .gif (drawn with Pillow).

A *panel* shows one pose sequence from one camera: the body on top (head with a nose mark for
the facing direction, shoulders, a filled torso outline, thick arms, thin fingers; the signer's
left in blue, right in red) and, below it, close-ups of the right and left hand (fingers in
five colours, the palm filled) so handshapes can be read. The body camera is fixed for the
whole clip (a 1.2 m square around the first frame's pelvis); a hand camera keeps its scale and
direction and follows its wrist. Views: ``front`` (as seen by the addressee) and ``side``
(from the signer's right).

:func:`save_animation` writes one sequence (front and side panels); :func:`save_side_by_side`
writes several sequences (e.g. ground truth | generated | VAE reconstruction) as front panels
next to each other, with the sentence as the title.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .skeleton import SIGNING_SKELETON, Skeleton

__all__ = ["render_frames", "render_panel", "render_side_by_side", "save_animation", "save_side_by_side",
           "save_frames", "add_title"]

_SIDE_RGB = {"left": (31, 119, 180), "right": (214, 39, 40), "centre": (80, 80, 80)}
_FINGER_RGB = {"thumb": (230, 120, 0), "index": (0, 150, 60), "middle": (30, 90, 220), "ring": (150, 60, 190),
               "pinky": (200, 30, 120)}
# view -> (world axis, sign) for image x, image y-up, and depth (larger = nearer the camera)
_VIEWS = {"front": ((0, 1.0), (1, 1.0), (2, 1.0)), "side": ((2, 1.0), (1, 1.0), (0, -1.0))}
_BODY_HALF = 0.6  # metres: half-width of the body camera's square
_HAND_HALF = 0.13  # metres: half-width of a hand camera's square
_SS = 2  # supersampling factor (drawn at 2x, then averaged down)


def _side(name: str) -> str:
    return "left" if name.startswith("left") else "right" if name.startswith("right") else "centre"


def _finger(name: str) -> str | None:
    for f in _FINGER_RGB:
        if f in name:
            return f
    return None


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


class _Projector:
    """Orthographic camera of a view: metres -> pixel (x, y) and depth."""

    def __init__(self, view: str, centre: np.ndarray, half: float, size: int, offset: tuple[int, int] = (0, 0)) -> None:
        if view not in _VIEWS:
            raise ValueError(f"unknown view {view!r}; choose from {sorted(_VIEWS)}")
        (self.ax, self.sx), (self.ay, self.sy), (self.az, self.sz) = _VIEWS[view]
        self.centre, self.scale = centre, 0.5 * size / half
        self.origin = (offset[0] + size / 2, offset[1] + size / 2)

    def __call__(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = p - self.centre
        xy = np.stack([self.origin[0] + self.sx * d[..., self.ax] * self.scale,
                       self.origin[1] - self.sy * d[..., self.ay] * self.scale], -1)
        return xy, self.sz * p[..., self.az]


class _Drawer:
    """Draws one frame of one skeleton (joint positions (J, 3)) on a Pillow image."""

    def __init__(self, skeleton: Skeleton) -> None:
        n = skeleton.names
        self.skeleton = skeleton
        self.idx = {name: i for i, name in enumerate(n)}
        self.bones = []  # (parent, child, kind, rgb)
        for p, c in skeleton.edges():
            f = _finger(n[c])
            if f is not None:
                self.bones.append((p, c, "finger", _FINGER_RGB[f]))
            elif n[c] in ("neck", "head") or n[c].startswith("spine") or n[c].endswith("collar"):
                continue  # the torso outline and the head stand for the spine and collar bones
            else:
                self.bones.append((p, c, "arm", _SIDE_RGB[_side(n[c])]))
        self.fingertips = [(j, _FINGER_RGB[_finger(name)]) for j, name in enumerate(n) if name.endswith("3") and _finger(name)]

    def body(self, draw, pos: np.ndarray, proj: _Projector) -> None:
        i = self.idx
        xy, depth = proj(pos)
        px = proj.scale  # pixels per metre
        ls, rs, pelvis = pos[i["left_shoulder"]], pos[i["right_shoulder"]], pos[i["pelvis"]]
        across = ls - rs
        across /= np.linalg.norm(across) + 1e-9
        hips = [pelvis + 0.12 * across, pelvis - 0.12 * across]
        outline = np.stack([ls, rs, hips[1], hips[0]])
        oxy, _ = proj(outline)
        items = [(float(depth[i["spine3"]]) - 0.05, "torso", oxy)]
        neck, head = pos[i["neck"]], pos[i["head"]]
        up = head - neck
        centre = head + 0.6 * up
        forward = np.cross(across, up)
        forward /= np.linalg.norm(forward) + 1e-9
        cxy, cdepth = proj(np.stack([centre, centre + 0.1 * forward - 0.02 * up / (np.linalg.norm(up) + 1e-9), neck]))
        items.append((float(cdepth[0]), "head", cxy))
        for p, c, kind, rgb in self.bones:
            items.append((float(depth[p] + depth[c]) / 2, kind, (xy[p], xy[c], rgb)))
        items.sort(key=lambda t: t[0])  # far first
        for _, kind, data in items:
            if kind == "torso":
                draw.polygon([tuple(q) for q in data], fill=(225, 225, 225), outline=(90, 90, 90), width=max(1, int(0.008 * px)))
            elif kind == "head":
                (cx, cy), nose, nk = data
                r = 0.1 * px
                draw.line([tuple(nk), (cx, cy)], fill=(90, 90, 90), width=max(1, int(0.04 * px)))
                draw.ellipse([cx - r, cy - r * 1.2, cx + r, cy + r * 1.2], fill=(240, 220, 200), outline=(90, 90, 90),
                             width=max(1, int(0.008 * px)))
                draw.ellipse([nose[0] - 0.015 * px, nose[1] - 0.015 * px, nose[0] + 0.015 * px, nose[1] + 0.015 * px],
                             fill=(90, 90, 90))
            else:
                a, b, rgb = data
                w = 0.035 if kind == "arm" else 0.01
                draw.line([tuple(a), tuple(b)], fill=rgb, width=max(1, int(w * px)))
        for j in (i["left_shoulder"], i["right_shoulder"], i["left_elbow"], i["right_elbow"]):
            r = 0.02 * px
            draw.ellipse([xy[j, 0] - r, xy[j, 1] - r, xy[j, 0] + r, xy[j, 1] + r], fill=(60, 60, 60))

    def hand(self, draw, pos: np.ndarray, proj: _Projector, side: str) -> None:
        i = self.idx
        xy, depth = proj(pos)
        px = proj.scale
        wrist = i[f"{side}_wrist"]
        palm = [wrist, i[f"{side}_index1"], i[f"{side}_middle1"], i[f"{side}_ring1"], i[f"{side}_pinky1"]]
        draw.polygon([tuple(xy[j]) for j in palm], fill=(245, 225, 205), outline=_SIDE_RGB[side], width=max(1, int(0.004 * px)))
        bones = [(p, c, rgb) for p, c, kind, rgb in self.bones if kind == "finger" and self.skeleton.names[c].startswith(side)]
        bones.sort(key=lambda t: float(depth[t[0]] + depth[t[1]]))
        for p, c, rgb in bones:
            draw.line([tuple(xy[p]), tuple(xy[c])], fill=rgb, width=max(1, int(0.012 * px)))
        r = 0.008 * px
        for j, rgb in self.fingertips:
            if self.skeleton.names[j].startswith(side):
                draw.ellipse([xy[j, 0] - r, xy[j, 1] - r, xy[j, 0] + r, xy[j, 1] + r], fill=rgb)


def _check_positions(positions: np.ndarray, skeleton: Skeleton, name: str = "positions") -> np.ndarray:
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 3 or pos.shape[1:] != (skeleton.num_joints, 3) or pos.shape[0] < 1:
        raise ValueError(f"{name} must be (N >= 1, {skeleton.num_joints}, 3), got {pos.shape}")
    if not np.isfinite(pos).all():
        raise ValueError(f"{name} contain NaN or inf")
    return pos


def render_panel(positions: np.ndarray, view: str = "front", label: str | None = None, size: int = 320,
                 skeleton: Skeleton = SIGNING_SKELETON) -> np.ndarray:
    """Frames (N, size * 3 // 2, size, 3) uint8 of one sequence ``positions`` (N, J, 3) in metres
    from ``view``: the body (size x size) over the right and left hand close-ups (size/2 each)."""
    from PIL import Image, ImageDraw

    pos = _check_positions(positions, skeleton)
    S, H = size * _SS, size * _SS // 2
    body_cam = _Projector(view, pos[0, 0] + np.array([0.0, 0.32, 0.0]), _BODY_HALF, S)
    drawer = _Drawer(skeleton)
    hands = ("right", "left") if view == "front" else ("left", "right")
    template = Image.new("RGB", (S, S + H), (255, 255, 255))  # background, hand boxes and labels, drawn once
    draw = ImageDraw.Draw(template)
    small = _font(10 * _SS)
    for k, side in enumerate(hands):
        draw.rectangle([k * H, S, (k + 1) * H - 1, S + H - 1], fill=(248, 248, 248), outline=(200, 200, 200), width=_SS)
        draw.text((k * H + 4 * _SS, S + 2 * _SS), f"{side} hand", fill=(120, 120, 120), font=small)
    if label:
        draw.text((6 * _SS, 4 * _SS), label, fill=(40, 40, 40), font=_font(12 * _SS))
    boxes = [template.crop((k * H, S, (k + 1) * H, S + H)) for k in range(2)]
    frames = []
    for t in range(pos.shape[0]):
        img = template.copy()
        draw = ImageDraw.Draw(img)
        drawer.body(draw, pos[t], body_cam)
        for k, side in enumerate(hands):  # each hand on its own box image, so it cannot spill over
            centre = pos[t, drawer.idx[f"{side}_wrist"]] + 0.06 * _hand_out(pos[t], drawer, side)
            box = boxes[k].copy()
            drawer.hand(ImageDraw.Draw(box), pos[t], _Projector(view, centre, _HAND_HALF, H), side)
            img.paste(box, (k * H, S))
        frames.append(np.asarray(img.reduce(_SS)))
    return np.stack(frames)


def _hand_out(pos: np.ndarray, drawer: _Drawer, side: str) -> np.ndarray:
    """Unit vector from the wrist towards the middle knuckle (to centre a hand close-up)."""
    d = pos[drawer.idx[f"{side}_middle1"]] - pos[drawer.idx[f"{side}_wrist"]]
    return d / (np.linalg.norm(d) + 1e-9)


def add_title(frames: np.ndarray, title: str, height: int = 28) -> np.ndarray:
    """Frames (N, H, W, 3) uint8 with a white bar of ``height`` pixels holding ``title`` on top."""
    from PIL import Image, ImageDraw

    N, _, W, _ = frames.shape
    bar = Image.new("RGB", (W, height), (255, 255, 255))
    draw = ImageDraw.Draw(bar)
    font = _font(15)
    text = title if len(title) <= W // 8 else title[: W // 8 - 1] + "\u2026"
    draw.text((8, (height - 15) // 2), text, fill=(0, 0, 0), font=font)
    bar_arr = np.broadcast_to(np.asarray(bar)[None], (N, height, W, 3))
    return np.concatenate([bar_arr, frames], axis=1)


def _hold_last(frames: np.ndarray, n: int) -> np.ndarray:
    return frames if frames.shape[0] >= n else np.concatenate([frames, np.repeat(frames[-1:], n - frames.shape[0], 0)])


def render_side_by_side(sequences: Sequence[tuple[str, np.ndarray]], title: str | None = None, size: int = 320,
                        skeleton: Skeleton = SIGNING_SKELETON) -> np.ndarray:
    """Front panels of several labelled sequences ``[(label, positions (N_i, J, 3)), ...]`` next
    to each other (a shorter one holds its last frame), ``title`` above: (max N_i, H, W, 3) uint8."""
    if not sequences:
        raise ValueError("render_side_by_side needs at least one sequence")
    panels = [render_panel(pos, "front", label, size, skeleton) for label, pos in sequences]
    n = max(p.shape[0] for p in panels)
    sep = np.full((n, panels[0].shape[1], 2, 3), 200, dtype=np.uint8)
    row = []
    for k, p in enumerate(panels):
        row += ([sep] if k else []) + [_hold_last(p, n)]
    frames = np.concatenate(row, axis=2)
    return add_title(frames, title) if title else frames


def render_frames(positions: np.ndarray, skeleton: Skeleton = SIGNING_SKELETON, title: str | None = None,
                  size: int = 320) -> np.ndarray:
    """Frames (N, H, W, 3) uint8 of ``positions`` (N, J, 3) in metres: front and side panels
    (see :func:`render_panel`) side by side, ``title`` above."""
    pos = _check_positions(positions, skeleton)
    frames = np.concatenate([render_panel(pos, "front", "front", size, skeleton),
                             render_panel(pos, "side", "side (from the right)", size, skeleton)], axis=2)
    return add_title(frames, title) if title else frames


def save_frames(frames: np.ndarray, path: str | os.PathLike, fps: float = 25.0) -> Path:
    """Write frames (N, H, W, 3) uint8 to ``path`` (.mp4 or .gif), atomically."""
    import imageio.v2 as imageio

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".mp4", ".gif"):
        raise ValueError(f"animation path must end in .mp4 or .gif, got {path.name!r}")
    tmp = path.with_name(f".{path.stem}.tmp{suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".gif":
        imageio.mimsave(tmp, list(frames), duration=1000.0 / fps, loop=0)
    else:
        # x264's "veryfast" preset: half the encoding CPU of the default at the same file size here
        imageio.mimwrite(tmp, list(frames), fps=fps, codec="libx264", macro_block_size=1, quality=7,
                         ffmpeg_params=["-preset", "veryfast"])
    os.replace(tmp, path)
    return path


def save_animation(positions: np.ndarray, path: str | os.PathLike, fps: float = 25.0, title: str | None = None,
                   skeleton: Skeleton = SIGNING_SKELETON) -> Path:
    """Write an animation of ``positions`` (N, J, 3) (front and side panels) to ``path`` (.mp4 or .gif)."""
    path = Path(path)
    if path.suffix.lower() not in (".mp4", ".gif"):
        raise ValueError(f"animation path must end in .mp4 or .gif, got {path.name!r}")
    return save_frames(render_frames(positions, skeleton, title), path, fps)


def save_side_by_side(sequences: Sequence[tuple[str, np.ndarray]], path: str | os.PathLike, fps: float = 25.0,
                      title: str | None = None, skeleton: Skeleton = SIGNING_SKELETON) -> Path:
    """Write :func:`render_side_by_side` of ``sequences`` to ``path`` (.mp4 or .gif)."""
    path = Path(path)
    if path.suffix.lower() not in (".mp4", ".gif"):
        raise ValueError(f"animation path must end in .mp4 or .gif, got {path.name!r}")
    return save_frames(render_side_by_side(sequences, title, skeleton=skeleton), path, fps)
