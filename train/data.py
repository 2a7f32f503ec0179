"""Datasets for the training stages (thin glue over ``sald_fast.data``)."""

from __future__ import annotations

import argparse
from functools import lru_cache

import torch

from sald_fast.config import SALDConfig
from sald_fast.data import load_clips
from sald_fast.data.dataset import MotionTextDataset, collate

__all__ = ["load_split_datasets", "load_split_clips", "trimmed", "length_buckets", "TRIM_MULTIPLE"]

TRIM_MULTIPLE = 16  # batches trimmed to their longest clip are rounded up to this many frames


@lru_cache(maxsize=4)
def load_split_clips(data: str, root: str | None, skip_bad: bool, split: str):
    """Clips of one split (cached per process: stages of one run share them)."""
    kwargs = {"root": root} if data == "how2sign" else {}
    if data == "how2sign":
        kwargs["skip_bad"] = skip_bad
    return load_clips(data, split, **kwargs)


def length_buckets(batches: list[list[int]], lengths, generator: torch.Generator, chunk_batches: int = 16
                   ) -> list[list[int]]:
    """The same items in batches of similar length: ``batches`` (one epoch's random batches) are
    cut into chunks of ``chunk_batches`` batches whose items are sorted by ``lengths[i]`` and
    re-batched; the batch order is then shuffled with ``generator``."""
    if not batches:
        return []
    size = len(batches[0])
    used = [i for b in batches for i in b]
    out: list[list[int]] = []
    for c in range(0, len(used), chunk_batches * size):
        part = sorted(used[c:c + chunk_batches * size], key=lambda i: int(lengths[i]))
        out += [part[j:j + size] for j in range(0, len(part), size)]
    return [out[i] for i in torch.randperm(len(out), generator=generator).tolist()]


def trimmed(collate_fn, multiple: int = TRIM_MULTIPLE, keys: tuple[str, ...] = ("features",),
            length_key: str = "length"):
    """A collate that trims the time axis (dim 1) of ``keys`` to the batch's longest ``length``,
    rounded up to ``multiple`` (never beyond the stored length)."""
    def collate_trimmed(items):
        batch = collate_fn(items)
        longest = int(batch[length_key].max())
        for key in keys:
            n = batch[key].shape[1]
            batch[key] = batch[key][:, :min(n, -(-longest // multiple) * multiple)]
        return batch
    return collate_trimmed


def load_split_datasets(cfg: SALDConfig, args: argparse.Namespace, train_crops: bool = True):
    """(train_set, val_set, collate) for the run's dataset and window length.

    With ``cfg.train.bucket_by_length`` the collate trims each batch to its longest clip
    (see :func:`trimmed`). Clips longer than the window are cropped; their count is printed.
    """
    tr = load_split_clips(args.data, args.data_root, args.skip_bad, "train")
    va = load_split_clips(args.data, args.data_root, args.skip_bad, "val")
    n = cfg.train.num_frames
    train_set = MotionTextDataset(tr, n, train=train_crops, seed=cfg.train.seed)
    val_set = MotionTextDataset(va, n, train=False, seed=cfg.train.seed)
    for name, ds in (("train", train_set), ("val", val_set)):
        if ds.cropped:
            print(f"note: {ds.cropped} of {len(ds)} {name} clips are longer than the {n}-frame window and are cropped "
                  f"(their text may name signs the window does not show)")
    return train_set, val_set, (trimmed(collate) if cfg.train.bucket_by_length else collate)


