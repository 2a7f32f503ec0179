"""The model uses the text: a small Sign-SALD trained for 80 VAE and 150 denoiser steps on a handful of
distinct sentences generates, for each sentence, motion closer (MPJPE) to that sentence's ground
truth than to any other sentence's.

The sentences come from the built-in grammar; each is signed four times with different signer
variations (the training set) and once more with a held-out variation (the ground truth the
generations are compared with). Everything runs on the CPU in well under a minute.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sald_fast import preset
from sald_fast.data.builtin import sentence_pool, synthesize
from sald_fast.data.dataset import MotionTextDataset, collate
from sald_fast.features import features_to_positions
from sald_fast.pipeline import SignSALD

NUM_SENTENCES = 6
RENDITIONS = 4
WINDOW = 64  # frames; every chosen sentence fits whole (36-59 frames)


def _sentences() -> list[tuple[str, tuple[str, ...], int]]:
    """Distinct two- and three-sign sentences with no sign in common (so they are tellable apart)."""
    chosen, used = [], set()
    for text, glosses, kind, _ in sentence_pool():
        if len(glosses) in (2, 3) and not used & set(glosses):
            chosen.append((text, glosses, kind))
            used |= set(glosses)
        if len(chosen) == NUM_SENTENCES:
            break
    return chosen


def _clips(seed_base: int, renditions: int) -> list[dict]:
    clips = []
    for i, (text, glosses, kind) in enumerate(_sentences()):
        for r in range(renditions):
            clips.append(synthesize(glosses, seed=seed_base + 100 * i + r, variation=0.5, kind=kind, text=text))
    return clips


def _mpjpe(a: torch.Tensor, b: torch.Tensor, n: int) -> float:
    """Root-aligned mean joint error (mm) over the first ``n`` frames of (N, 44, 3) positions."""
    a, b = a[:n] - a[:n, :1], b[:n] - b[:n, :1]
    return float((a - b).norm(dim=-1)[:, 1:].mean()) * 1000.0


@pytest.mark.slow
def test_generations_match_their_own_sentence():
    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg.text.kind = "tiny"
    cfg.denoiser.text_dim = cfg.text.tiny_dim
    cfg.denoiser.cond_drop_prob = 0.1
    model = SignSALD.from_config(cfg, seed=0)
    train = MotionTextDataset(_clips(0, RENDITIONS), WINDOW, train=False)
    assert train.cropped == 0
    batch = collate([train[i] for i in range(len(train))])
    features, lengths, texts = batch["features"], batch["length"], batch["text"]

    vae = model.vae
    vae.normalizer.fit(features, mask=torch.arange(WINDOW)[None] < lengths[:, None])
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    mask = torch.arange(WINDOW)[None] < lengths[:, None]
    for _ in range(80):
        x = vae.normalizer.normalize(features)
        loss = vae.loss(x, vae(x), mask=mask)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        mu, _ = vae.encode(vae.normalizer.normalize(features))
        vae.latent_scale.fill_(float(1.0 / mu.std()))

    den = model.denoiser
    opt = torch.optim.Adam(den.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        loss = model.diffusion_loss(features, texts, lengths, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()

    # ground truth: a held-out signing of each sentence; generate each sentence at that length
    truth = _clips(10_000, 1)
    truth_set = MotionTextDataset(truth, WINDOW, train=False)
    assert truth_set.cropped == 0
    truth_pos = features_to_positions(torch.stack([truth_set[i]["features"] for i in range(len(truth_set))])).float()
    sentences = [c["text"] for c in truth]
    out = model.generate(sentences, num_frames=WINDOW, seed=0, lengths=truth_set.lengths, steps=20)
    gen_pos = features_to_positions(out.features.float()).float()

    k = len(sentences)
    err = np.zeros((k, k))  # err[i, j]: generation for sentence i vs ground truth of sentence j
    for i in range(k):
        for j in range(k):
            n = min(truth_set.lengths[i], truth_set.lengths[j])
            err[i, j] = _mpjpe(gen_pos[i], truth_pos[j], n)
    own = np.diag(err)
    closest_own = [bool(own[i] < np.delete(err[i], i).min()) for i in range(k)]
    print(np.round(err, 1))
    assert sum(closest_own) >= k - 1, f"generations closest to their own sentence: {closest_own}\n{np.round(err, 1)}"
    # and clearly so on average
    assert own.mean() < 0.8 * err[~np.eye(k, dtype=bool)].mean(), np.round(err, 1)
