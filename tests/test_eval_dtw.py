"""DTW-MJE and its Procrustes-aligned variant: a hand-computed example, the DP against brute
force, and the invariances (identical -> 0, time-stretched -> ~0, similarity transform -> PA 0)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from sald_fast.eval.metrics import dtw_cost, dtw_mje, dtw_mje_per_sequence, mpjpe, procrustes_align


def _two_joint(xs):
    """(T, 2, 3): root at the origin, joint 1 at (x, 0, 0)."""
    p = torch.zeros(len(xs), 2, 3, dtype=torch.float64)
    p[:, 1, 0] = torch.tensor(xs, dtype=torch.float64)
    return p


def test_hand_computed_example():
    # joint 1 at x = [0, 2] vs [0, 1, 2] (metres). Frame-pair costs |a_i - b_j|:
    #   [[0, 1, 2], [2, 1, 0]]; best path (0,0) (0,1)|(1,1) (1,2): 0 + 1 + 0 = 1 m;
    #   divided by the target's 3 frames: 333.33 mm.
    a, b = _two_joint([0.0, 2.0]), _two_joint([0.0, 1.0, 2.0])
    assert dtw_mje(a, b) == pytest.approx(1000 / 3)
    assert dtw_mje(a.numpy(), b.numpy()) == pytest.approx(1000 / 3)  # numpy in
    # the other way round: costs [[0, 2], [1, 1], [2, 0]]: path 0 + 1 + 0 over 2 target frames
    assert dtw_mje(b, a) == pytest.approx(1000 / 2)


def _brute_force_min(c):
    """Least total cost of a monotone path over c (N, M), by recursion with memo."""
    N, M = c.shape
    memo = {}
    def best(i, j):
        if (i, j) not in memo:
            if i == 0 and j == 0:
                memo[i, j] = c[0, 0]
            else:
                prev = [best(p, q) for p, q in ((i - 1, j - 1), (i - 1, j), (i, j - 1)) if p >= 0 and q >= 0]
                memo[i, j] = c[i, j] + min(prev)
        return memo[i, j]
    return np.array([[best(i, j) for j in range(M)] for i in range(N)])


def test_dp_matches_brute_force():
    rng = np.random.default_rng(0)
    for n, m in itertools.product((1, 2, 5), (1, 3, 7)):
        c = rng.random((2, n, m))
        D = dtw_cost(c)
        for b in range(2):
            np.testing.assert_allclose(D[b], _brute_force_min(c[b]), rtol=1e-12)


def _motion(T, seed=0, J=6):
    t = torch.linspace(0, 1, T, dtype=torch.float64)[:, None, None]
    g = torch.Generator().manual_seed(seed)
    a, w, ph = torch.randn(3, 1, J, 3, generator=g, dtype=torch.float64)
    return 0.2 * a * torch.sin(3 * t * (1 + w.abs()) + ph)


def _stretch(x, T):
    """x (N, J, 3) resampled linearly in time to T frames."""
    src = torch.linspace(0, x.shape[0] - 1, T, dtype=torch.float64)
    lo = src.floor().long().clamp(max=x.shape[0] - 2)
    w = (src - lo)[:, None, None]
    return (1 - w) * x[lo] + w * x[lo + 1]


def test_invariances_and_padding():
    x = _motion(40)
    assert dtw_mje(x, x) == 0.0 and dtw_mje(x, x, procrustes=True) == pytest.approx(0.0, abs=1e-9)
    assert dtw_mje(x.repeat_interleave(2, 0), x) == 0.0 and dtw_mje(x, x.repeat_interleave(3, 0)) == 0.0
    slow = _stretch(x, 70)                       # the same signing, 1.75x slower (new in-between frames)
    step = 1000 * (x[1:] - x[:-1]).norm(dim=-1).mean()  # mm the joints move per frame (37 here)
    assert dtw_mje(slow, x) < step               # only the in-between frames' distance is left (28.7)
    assert dtw_mje(slow, x) < 0.1 * dtw_mje(_motion(40, seed=1), x)  # vs another motion: 444
    assert mpjpe(slow[:40], x) > 10 * dtw_mje(slow, x)  # frame-by-frame comparison fails (490)
    x2 = _motion(120)                            # sampled 3x finer: the residual shrinks with the step
    assert dtw_mje(_stretch(x2, 210), x2) < 10.0
    other = _motion(40, seed=1)
    assert dtw_mje(other, x) > 50
    # batches with padding: frames past a length do not count
    batch = torch.zeros(2, 70, 6, 3, dtype=torch.float64)
    batch[0], batch[1, :40] = slow, other
    batch[1, 40:] = 99.0
    ref = torch.stack([x, x])
    per = dtw_mje_per_sequence(batch, ref, torch.tensor([70, 40]), torch.tensor([40, 40]))
    assert per[0] == pytest.approx(dtw_mje(slow, x)) and per[1] == pytest.approx(dtw_mje(other, x))
    with pytest.raises(ValueError, match="length 0"):
        dtw_mje(batch, ref, torch.tensor([0, 40]))


def test_procrustes_variant_ignores_rotation_scale_translation():
    x = _motion(30, J=8)
    ang = 0.7
    R = torch.tensor([[math.cos(ang), -math.sin(ang), 0], [math.sin(ang), math.cos(ang), 0], [0, 0, 1]],
                     dtype=torch.float64)
    moved = 1.3 * x @ R.T + torch.tensor([0.5, -0.2, 1.0], dtype=torch.float64)
    assert dtw_mje(moved, x) > 10
    assert dtw_mje(moved, x, procrustes=True) == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(procrustes_align(moved, x).numpy(), x.numpy(), atol=1e-9)
    # a reflection is not a rotation: it is not undone
    assert dtw_mje(x * torch.tensor([-1.0, 1, 1], dtype=torch.float64), x, procrustes=True) > 1
