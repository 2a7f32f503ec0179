"""Clips -> fixed-length training items, clip validation, and frame-rate resampling.

A *clip* (the format of every loader in :mod:`sald_fast.data`) is a dict:
``name`` str, ``text`` str, ``fps`` float, ``global_orient`` (T, 3), ``body_pose`` (T, 21, 3),
``left_hand_pose`` (T, 15, 3), ``right_hand_pose`` (T, 15, 3), ``transl`` (T, 3), float32 numpy,
axis-angle in SMPL-X conventions. Loaders may add extra keys (e.g. ``glosses``); they are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..geometry import axis_angle_to_quaternion, quaternion_slerp, quaternion_to_axis_angle

__all__ = [
    "DataError",
    "POSE_FIELDS",
    "check_clip",
    "resample_clip",
    "MotionTextDataset",
    "collate",
]

# field -> trailing shape of one frame (after reshaping flat hand/body poses)
POSE_FIELDS: dict[str, tuple[int, ...]] = {
    "global_orient": (3,),
    "body_pose": (21, 3),
    "left_hand_pose": (15, 3),
    "right_hand_pose": (15, 3),
    "transl": (3,),
}


class DataError(ValueError):
    """A problem with a data file or clip; ``path`` and ``field`` name where it is."""

    def __init__(self, path: object, field: str, problem: str):
        self.path, self.field, self.problem = str(path), field, problem
        super().__init__(f"{self.path}: field {field!r}: {problem}")


def check_clip(clip: Mapping[str, Any], source: object = None) -> dict[str, Any]:
    """Validate a clip and return a normalised copy (float32 C-contiguous arrays, poses reshaped
    to (T, 21, 3) / (T, 15, 3), ``fps`` float, ``text``/``name`` str).

    Raises :class:`DataError` naming ``source`` (default the clip's name) and the field on a
    missing field, a non-numeric dtype, a wrong shape, mismatched frame counts, zero frames,
    NaN/inf values, a bad fps or an empty text.
    """
    if not isinstance(clip, Mapping):
        raise TypeError(f"a clip must be a dict, got {type(clip).__name__}")
    src = source if source is not None else clip.get("name", "<clip>")
    out: dict[str, Any] = {k: v for k, v in clip.items() if k not in POSE_FIELDS}
    frames = None
    for field, trailing in POSE_FIELDS.items():
        if field not in clip:
            raise DataError(src, field, "missing")
        x = np.asarray(clip[field])
        if x.dtype.kind not in "fiu":
            raise DataError(src, field, f"must be a real number array, got dtype {x.dtype}")
        n = int(np.prod(trailing))
        if x.ndim == 2 and len(trailing) == 2 and x.shape[1] == n:
            x = x.reshape(x.shape[0], *trailing)
        if x.ndim != 1 + len(trailing) or tuple(x.shape[1:]) != trailing:
            want = f"(T, {', '.join(map(str, trailing))})" + (f" or (T, {n})" if len(trailing) == 2 else "")
            raise DataError(src, field, f"must have shape {want}, got {tuple(x.shape)}")
        if frames is None:
            frames = x.shape[0]
            if frames == 0:
                raise DataError(src, field, "has zero frames")
        elif x.shape[0] != frames:
            raise DataError(src, field, f"has {x.shape[0]} frames but global_orient has {frames}")
        if not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).reshape(x.shape[0], -1).any(1).argmax())
            raise DataError(src, field, f"contains NaN or inf (first at frame {bad})")
        out[field] = np.ascontiguousarray(x, dtype=np.float32)
    fps = clip.get("fps")
    try:
        fps = float(fps)
    except (TypeError, ValueError):
        raise DataError(src, "fps", f"must be a positive number, got {fps!r}") from None
    if not (np.isfinite(fps) and fps > 0):
        raise DataError(src, "fps", f"must be a positive number, got {fps!r}")
    out["fps"] = fps
    text = clip.get("text")
    if not isinstance(text, str) or not text.strip():
        raise DataError(src, "text", f"must be a non-empty sentence, got {text!r}")
    out["text"] = text
    out["name"] = str(clip.get("name", src))
    return out


def resample_clip(clip: Mapping[str, Any], fps: float) -> dict[str, Any]:
    """Resample a clip to ``fps`` frames per second.

    Output frame k is at time ``k / fps``; frames span the clip's duration ``(T - 1) / clip_fps``
    (so 50 -> 25 fps turns T frames into ``(T - 1) // 2 + 1``). Joint rotations are slerped
    between the two nearest source frames (through unit quaternions, shorter arc); translation
    is interpolated linearly. A clip already at ``fps`` is returned as a shallow copy.
    """
    fps = float(fps)
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    src_fps = float(clip["fps"])
    out = dict(clip)
    if abs(src_fps - fps) < 1e-9:
        return out
    T = int(np.asarray(clip["global_orient"]).shape[0])
    n = int(np.floor((T - 1) * fps / src_fps + 1e-9)) + 1
    pos = np.arange(n, dtype=np.float64) * (src_fps / fps)
    i0 = np.minimum(np.floor(pos).astype(np.int64), T - 1)
    i1 = np.minimum(i0 + 1, T - 1)
    w = pos - i0
    for field in ("global_orient", "body_pose", "left_hand_pose", "right_hand_pose"):
        x = torch.from_numpy(np.asarray(clip[field], dtype=np.float64))
        shape = x.shape
        q = axis_angle_to_quaternion(x.reshape(T, -1, 3))
        qn = quaternion_slerp(q[torch.from_numpy(i0)], q[torch.from_numpy(i1)], torch.from_numpy(w)[:, None].expand(n, q.shape[1]))
        out[field] = quaternion_to_axis_angle(qn).reshape(n, *shape[1:]).numpy().astype(np.float32)
    t = np.asarray(clip["transl"], dtype=np.float64)
    out["transl"] = (t[i0] * (1 - w)[:, None] + t[i1] * w[:, None]).astype(np.float32)
    out["fps"] = fps
    return out


class MotionTextDataset(torch.utils.data.Dataset):
    """Fixed-length (pose features, sentence) items from clips.

    Each item is ``dict(features (num_frames, 44, 9) float32 tensor (unnormalised, see
    :func:`sald_fast.features.smplx_to_features`), length int (valid frames = min(T,
    num_frames)), text str, name str)``. Clips longer than ``num_frames`` are cropped: a random
    window in training (drawn from a generator seeded with ``(seed, epoch, index)``, so a resumed
    run sees the same crops; call :meth:`set_epoch` each epoch), the first frames otherwise.
    Shorter clips are padded by repeating their last frame.

    Features are computed on first access and kept (about 1.6 kB per frame of a clip).
    """

    def __init__(self, clips: Sequence[Mapping[str, Any]], num_frames: int, train: bool = True, seed: int = 0):
        if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
            raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
        self.clips = [check_clip(c, source=f"clips[{i}] ({c.get('name', '?') if isinstance(c, Mapping) else '?'})")
                      for i, c in enumerate(clips)]
        self.num_frames = int(num_frames)
        self.train = bool(train)
        self.seed = int(seed)
        self.epoch = 0
        self.feature_block = 64
        self._features: dict[int, torch.Tensor] = {}
        #: valid frames of each item: ``min(T, num_frames)``
        self.lengths = [min(int(c["global_orient"].shape[0]), self.num_frames) for c in self.clips]

    @property
    def cropped(self) -> int:
        """How many clips are longer than ``num_frames`` (and so cropped)."""
        return sum(int(c["global_orient"].shape[0]) > self.num_frames for c in self.clips)

    def __len__(self) -> int:
        return len(self.clips)

    def set_epoch(self, epoch: int) -> None:
        """Select the random crops of epoch ``epoch`` (training only)."""
        self.epoch = int(epoch)

    def features(self, index: int) -> torch.Tensor:
        """Full-length features (T, 44, 9) float32 of clip ``index`` (cached; computed for a
        block of :attr:`feature_block` clips at a time, which is several times faster)."""
        feat = self._features.get(index)
        if feat is None:
            from sald_fast.features import smplx_to_features

            lo = index - index % self.feature_block
            block = [i for i in range(lo, min(lo + self.feature_block, len(self.clips))) if i not in self._features]
            fields = ("global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "transl")
            arrays = [np.concatenate([self.clips[i][f] for i in block]) for f in fields]
            with torch.no_grad():
                all_feat = smplx_to_features(*arrays).to(torch.float32)
            sizes = [int(self.clips[i]["global_orient"].shape[0]) for i in block]
            for i, f in zip(block, torch.split(all_feat, sizes)):
                self._features[i] = f.clone()
            feat = self._features[index]
        return feat

    def crop_start(self, index: int) -> int:
        """First frame of item ``index``'s window in the current epoch."""
        T = int(self.clips[index]["global_orient"].shape[0])
        if not self.train or T <= self.num_frames:
            return 0
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return int(rng.integers(0, T - self.num_frames + 1))

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        index = index % len(self)
        feat = self.features(index)
        T = feat.shape[0]
        start = self.crop_start(index)
        window = feat[start:start + self.num_frames]
        length = window.shape[0]
        if length < self.num_frames:
            pad = window[-1:].expand(self.num_frames - length, *window.shape[1:])
            window = torch.cat([window, pad], dim=0)
        clip = self.clips[index]
        return {"features": window.clone(), "length": int(min(T, self.num_frames)),
                "text": clip["text"], "name": clip["name"]}


def collate(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch items of :class:`MotionTextDataset`: ``features`` (B, N, 44, 9), ``length`` (B,)
    int64, ``text`` list[str], ``name`` list[str]."""
    if len(items) == 0:
        raise ValueError("collate: empty batch")
    return {
        "features": torch.stack([torch.as_tensor(it["features"]) for it in items]),
        "length": torch.tensor([int(it["length"]) for it in items], dtype=torch.int64),
        "text": [str(it["text"]) for it in items],
        "name": [str(it["name"]) for it in items],
    }
