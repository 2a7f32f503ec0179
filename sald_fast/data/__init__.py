"""Data: the built-in procedural signing corpus, the How2Sign SMPL-X loader, and the dataset.

A *clip* is a dict: ``name`` str, ``text`` str, ``fps`` float, ``global_orient`` (T, 3),
``body_pose`` (T, 21, 3), ``left_hand_pose`` (T, 15, 3), ``right_hand_pose`` (T, 15, 3),
``transl`` (T, 3), float32 numpy axis-angle in SMPL-X conventions (built-in clips also carry
``glosses``). :func:`load_clips` returns a list of clips; :class:`MotionTextDataset` turns them
into fixed-length feature items.
"""

from __future__ import annotations

import os
from typing import Any

from .dataset import DataError, MotionTextDataset, check_clip, collate, resample_clip

__all__ = ["load_clips", "DataError", "MotionTextDataset", "collate", "check_clip", "resample_clip", "DATASETS"]

DATASETS = ("builtin", "how2sign")


def load_clips(dataset: str, split: str, root: str | os.PathLike | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """Clips of ``split`` ("train" | "val" | "test") of ``dataset``.

    - ``"builtin"``: :func:`sald_fast.data.builtin.builtin_corpus` (keyword arguments: ``seed``,
      ``num_train``, ``num_val``, ``num_test``, ``variation``, ``cache``, ``fps``); ``root``, if
      given, is the cache folder (``cache_dir``). Clips at 25 fps, resampled when ``fps`` differs.
    - ``"how2sign"``: :func:`sald_fast.data.how2sign.load_how2sign` from ``root`` (required;
      keyword arguments ``fps`` (default 25), ``skip_bad``, ``source_fps``).
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    if dataset == "builtin":
        from .builtin import FPS, builtin_corpus

        fps = float(kwargs.pop("fps", FPS))
        if root is not None:
            kwargs["cache_dir"] = root
        clips = builtin_corpus(splits=(split,), **kwargs)[split]
        return clips if fps == FPS else [resample_clip(c, fps) for c in clips]
    if dataset == "how2sign":
        if root is None:
            raise ValueError("load_clips('how2sign', ...) needs root= (the How2Sign SMPL-X folder; "
                             "see sald_fast.data.how2sign for the layout)")
        from .how2sign import load_how2sign

        return load_how2sign(split, root, **kwargs)
    raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")

