"""Datasets for the training stages (thin glue over ``sald_fast.data``)."""

from __future__ import annotations

import argparse
from functools import lru_cache

import torch

from sald_fast.config import SALDConfig
from sald_fast.data import load_clips
from sald_fast.data.dataset import MotionTextDataset, collate

__all__ = ["load_split_datasets", "load_split_clips", "padding_mask"]


@lru_cache(maxsize=4)
def load_split_clips(data: str, root: str | None, skip_bad: bool, split: str):
    """Clips of one split (cached per process: stages of one run share them)."""
    kwargs = {"root": root} if data == "how2sign" else {}
    if data == "how2sign":
        kwargs["skip_bad"] = skip_bad
    return load_clips(data, split, **kwargs)


def load_split_datasets(cfg: SALDConfig, args: argparse.Namespace, train_crops: bool = True):
    """(train_set, val_set, collate) for the run's dataset and crop length."""
    tr = load_split_clips(args.data, args.data_root, args.skip_bad, "train")
    va = load_split_clips(args.data, args.data_root, args.skip_bad, "val")
    n = cfg.train.num_frames
    train_set = MotionTextDataset(tr, n, train=train_crops, seed=cfg.train.seed)
    val_set = MotionTextDataset(va, n, train=False, seed=cfg.train.seed)
    return train_set, val_set, collate


def padding_mask(lengths: torch.Tensor, n: int) -> torch.Tensor:
    """(B, n) bool, True on valid frames."""
    lengths = torch.as_tensor(lengths)
    return torch.arange(n, device=lengths.device).view(1, n) < lengths.view(-1, 1)
