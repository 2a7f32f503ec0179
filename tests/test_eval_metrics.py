"""Metrics on constructed cases with known answers, and the text metrics against the libraries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sald_fast.eval.metrics import bleu4, fid, frechet_distance, gaussian_stats, mpjpe, mpjpe_per_sequence, rouge_l
from sald_fast.eval.models import WordTokenizer


def _poses(b=3, n=10, j=44, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, j, 3, generator=g, dtype=torch.float64) * 0.2


def test_mpjpe_identical_is_zero():
    p = _poses()
    assert mpjpe(p, p.clone()) == 0.0
    assert mpjpe(p[0], p[0]) == 0.0  # (N, J, 3) input


def test_mpjpe_constant_offset_on_non_root_joints():
    p = _poses()
    direction = torch.tensor([1.0, 2.0, -2.0]) / 3.0  # unit vector
    q = p.clone()
    q[:, :, 1:] += 0.010 * direction  # 10 mm on every non-root joint
    assert mpjpe(q, p) == pytest.approx(10.0, abs=1e-6)
    assert mpjpe(q.float(), p.float()) == pytest.approx(10.0, abs=1e-3)  # float32 input
    # a global translation (root included) is removed by root alignment
    assert mpjpe(p + torch.tensor([0.3, -0.1, 0.5]), p) == pytest.approx(0.0, abs=1e-6)
    # ... but counts without it: every joint moved by 0.5 m -> 500 mm
    assert mpjpe(p + torch.tensor([0.0, 0.5, 0.0]), p, align=False) == pytest.approx(500.0, abs=1e-6)


def test_mpjpe_ignores_frames_past_lengths():
    p = _poses(b=2, n=8)
    q = p.clone()
    q[0, 5:, 1:] += 1.0  # garbage past length 5
    q[1, :, 1:] += torch.tensor([0.0, 0.0, 0.02])  # 20 mm everywhere on sequence 1
    lengths = torch.tensor([5, 8])
    per_seq = mpjpe_per_sequence(q, p, lengths)
    assert per_seq[0].item() == pytest.approx(0.0, abs=1e-9)
    assert per_seq[1].item() == pytest.approx(20.0, abs=1e-6)
    # frame-weighted mean: 5 frames at 0 mm, 8 frames at 20 mm
    assert mpjpe(q, p, lengths) == pytest.approx(20.0 * 8 / 13, abs=1e-6)


def test_mpjpe_bad_input():
    p = _poses()
    with pytest.raises(ValueError, match="same shape"):
        mpjpe(p, p[:, :5])
    with pytest.raises(ValueError, match="lengths"):
        mpjpe(p, p, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="lengths"):
        mpjpe(p, p, torch.tensor([1, 2, 11]))
    with pytest.raises(TypeError, match="floating"):
        mpjpe(p.long(), p.long())


def test_fid_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(200, 8))
    assert fid(x, x.copy()) == pytest.approx(0.0, abs=1e-6)
    # few samples (rank-deficient covariance) stays finite and ~0
    assert fid(x[:3], x[:3]) == pytest.approx(0.0, abs=1e-5)


def test_fid_shifted_gaussian_matches_closed_form():
    rng = np.random.default_rng(1)
    d, n = 6, 200_000
    shift = np.array([1.0, -0.5, 0.0, 2.0, 0.0, 0.3])
    a = rng.normal(size=(n, d))
    b = rng.normal(size=(n, d)) + shift
    assert fid(a, b) == pytest.approx(float(shift @ shift), abs=0.03)
    # scaled covariance: FID = |mu1 - mu2|^2 + d (s1 - s2)^2 for isotropic N(mu, s^2 I)
    c = rng.normal(size=(n, d)) * 2.0 + shift
    assert fid(a, c) == pytest.approx(float(shift @ shift) + d * (1.0 - 2.0) ** 2, rel=0.02)


def test_frechet_distance_matches_scipy_formula():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(2)
    d = 5
    a1, a2 = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a1 @ a1.T + 0.1 * np.eye(d), a2 @ a2.T + 0.1 * np.eye(d)
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    covmean = scipy_linalg.sqrtm(s1 @ s2).real
    expected = float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    assert frechet_distance(m1, s1, m2, s2, eps=0.0) == pytest.approx(expected, rel=1e-8)
    mu, sigma = gaussian_stats(rng.normal(size=(50, d)))
    assert mu.shape == (d,) and sigma.shape == (d, d)


def test_fid_bad_input():
    with pytest.raises(ValueError, match="dimensions"):
        fid(np.zeros((4, 3)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="NaN"):
        fid(np.full((4, 3), np.nan), np.zeros((4, 3)))


HYPS = ["where is the library", "i like green tea", "", "the cat sat on the mat today"]
REFS = ["where is the big library", "i like tea", "hello friend", "the cat sat on the mat"]


def test_bleu4_equals_sacrebleu():
    import sacrebleu

    assert bleu4(HYPS, REFS) == sacrebleu.corpus_bleu(HYPS, [REFS]).score
    assert bleu4(REFS, REFS) == pytest.approx(100.0)


def test_rouge_l_equals_rouge_score():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    expected = 100 * np.mean([scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(HYPS, REFS)])
    assert rouge_l(HYPS, REFS) == pytest.approx(expected, abs=1e-12)
    assert rouge_l(REFS, REFS) == pytest.approx(100.0)


def test_text_metric_bad_input():
    with pytest.raises(ValueError, match="as many"):
        bleu4(["a"], ["a", "b"])
    with pytest.raises(TypeError, match="single string"):
        rouge_l("abc", "abc")


def test_word_tokenizer_round_trip():
    tok = WordTokenizer.build(["Where is the library?", "Is it the LIBRARY, or not?", "don't go"])
    assert tok.words == ["is", "library", "the", "don't", "go", "it", "not", "or", "where"]  # count, then a-z
    assert WordTokenizer.normalize("Where's the  Library?!") == "where's the library"
    ids = tok.encode("where is the zebra library", max_tokens=32)
    assert ids[0] == WordTokenizer.BOS and ids[-1] == WordTokenizer.EOS and WordTokenizer.UNK in ids
    assert tok.decode(ids[1:]) == "where is the library"  # <unk> dropped
    assert len(tok.encode("a b c d e f", max_tokens=4)) == 4
