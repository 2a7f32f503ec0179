"""The denoiser trainer's dataset validates lengths and text masks once (the steps read nothing back)."""

from __future__ import annotations

import pickle

import pytest
import torch

from train.denoiser import LatentTextDataset


def _dataset(lengths, mask):
    n = len(lengths)
    return LatentTextDataset(torch.zeros(n, 4, 7, 2), torch.zeros(n, 4, 7, 2), torch.tensor(lengths),
                             torch.zeros(n, dtype=torch.long), torch.randn(1, 3, 5), torch.tensor(mask))


def test_bad_lengths_and_empty_texts_are_refused_when_built():
    with pytest.raises(ValueError, match=r"latent lengths must lie in \[1, N'=4\], got min 0, max 4"):
        _dataset([4, 0], [[True, False, False]])
    with pytest.raises(ValueError, match=r"latent lengths must lie in \[1, N'=4\], got min 2, max 5"):
        _dataset([5, 2], [[True, False, False]])
    with pytest.raises(ValueError, match="no real token"):
        _dataset([4, 2], [[False, False, False]])


def test_text_tables_are_copied_once_and_not_pickled():
    ds = _dataset([4, 2], [[True, True, False]])
    a = ds.text_tables(torch.device("cpu"))
    assert ds.text_tables(torch.device("cpu"))[0] is a[0]
    idx = torch.tensor([0, 0])
    assert torch.equal(a[0][idx], ds.text_features[idx]) and torch.equal(a[1][idx], ds.text_mask[idx])
    assert pickle.loads(pickle.dumps(ds))._tables == {}
