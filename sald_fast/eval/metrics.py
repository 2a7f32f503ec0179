"""The paper's Table 1 metrics: MPJPE, FID (from features), BLEU-4 and ROUGE-L.

- MPJPE: mean Euclidean distance (millimetres) between corresponding joints after root
  alignment (every frame's pelvis moved to the origin), averaged over the non-root joints and
  the valid frames of all sequences (each valid frame weighs the same).
- FID: Frechet distance between Gaussian fits of two feature sets,
  ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)``, computed in float64 with
  symmetric eigen-decompositions (no complex square roots; stable for few samples).
- BLEU-4: ``sacrebleu.corpus_bleu`` (13a tokenisation, 0-100).
- ROUGE-L: mean sentence F1 of ``rouge_score``'s ``rougeL`` (0-100).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..frames import frame_mask

__all__ = [
    "root_align",
    "mpjpe",
    "mpjpe_per_sequence",
    "dtw_mje",
    "dtw_mje_per_sequence",
    "procrustes_align",
    "dtw_cost",
    "gaussian_stats",
    "frechet_distance",
    "fid",
    "bleu4",
    "rouge_l",
]


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if not (x.is_floating_point()):
        raise TypeError(f"{name} must be floating point, got dtype {x.dtype}")
    return x


def root_align(positions: torch.Tensor, root_index: int = 0) -> torch.Tensor:
    """Joint positions relative to the root joint of the same frame: (..., J, 3) -> (..., J, 3)."""
    positions = _as_tensor(positions, "positions")
    if positions.ndim < 2 or positions.shape[-1] != 3:
        raise ValueError(f"positions must have shape (..., J, 3), got {tuple(positions.shape)}")
    return positions - positions[..., root_index:root_index + 1, :]


def _frame_mask(lengths, batch: int, frames: int, device: torch.device) -> torch.Tensor:
    if lengths is None:
        return frame_mask(None, frames, batch=batch, device=device)
    lengths = torch.as_tensor(lengths, device=device)
    if lengths.shape != (batch,) or lengths.is_floating_point():
        raise ValueError(f"lengths must be an integer tensor of shape ({batch},), got {tuple(lengths.shape)} "
                         f"dtype {lengths.dtype}")
    if bool((lengths < 0).any()) or bool((lengths > frames).any()):
        raise ValueError(f"lengths must lie in [0, {frames}], got min {int(lengths.min())} max {int(lengths.max())}")
    return frame_mask(lengths, frames)


def _joint_errors(pred, target, lengths, root_index: int, align: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame summed joint errors (B, N) in metres and the valid-frame mask (B, N)."""
    pred = _as_tensor(pred, "pred")
    target = _as_tensor(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if pred.ndim == 3:
        pred, target = pred[None], target[None]
        if lengths is not None:
            lengths = torch.as_tensor(lengths).reshape(1)
    if pred.ndim != 4 or pred.shape[-1] != 3 or pred.shape[-2] < 2:
        raise ValueError(f"pred/target must have shape (B, N, J, 3) or (N, J, 3) with J >= 2, got {tuple(pred.shape)}")
    pred, target = pred.double(), target.to(pred.device).double()
    if align:
        pred, target = root_align(pred, root_index), root_align(target, root_index)
    keep = torch.ones(pred.shape[-2], dtype=torch.bool, device=pred.device)
    keep[root_index] = False  # the root is 0 after alignment: it would only dilute the mean
    err = (pred - target).norm(dim=-1)[..., keep].sum(-1)  # (B, N)
    mask = _frame_mask(lengths, pred.shape[0], pred.shape[1], pred.device)
    return err * mask, mask


def mpjpe_per_sequence(pred, target, lengths=None, *, root_index: int = 0, align: bool = True) -> torch.Tensor:
    """MPJPE of each sequence in millimetres: (B,) float64 (NaN for a sequence of length 0).

    Args:
        pred, target: joint positions in metres, (B, N, J, 3).
        lengths: (B,) int valid frames per sequence (default: all N).
        root_index: the root joint; with ``align`` both are moved so it is at the origin.
    """
    err, mask = _joint_errors(pred, target, lengths, root_index, align)
    joints = _as_tensor(pred, "pred").shape[-2] - 1
    return 1000.0 * err.sum(1) / (mask.sum(1) * joints)


def mpjpe(pred, target, lengths=None, *, root_index: int = 0, align: bool = True) -> float:
    """Mean per-joint position error in millimetres, root-aligned.

    Args:
        pred, target: joint positions in metres, (B, N, J, 3) or (N, J, 3).
        lengths: (B,) int valid frames per sequence (default: all N). Frames past a sequence's
            length are ignored; the mean is over all valid (frame, non-root joint) pairs.
        root_index: the root joint (0: pelvis); excluded from the mean.
        align: subtract each frame's root position first (default True).
    """
    err, mask = _joint_errors(pred, target, lengths, root_index, align)
    count = int(mask.sum()) * (_as_tensor(pred, "pred").shape[-2] - 1)
    if count == 0:
        raise ValueError("mpjpe: no valid frames (all lengths are 0)")
    return float(1000.0 * err.sum() / count)


def _seq_batch(x, lengths, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, J, 3) float64 and (B,) int lengths from (B, N, J, 3) / (N, J, 3) and lengths/None."""
    x = _as_tensor(x, name).double()
    if x.ndim == 3:
        x = x[None]
        if lengths is not None:
            lengths = torch.as_tensor(lengths).reshape(1)
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[-2] < 2:
        raise ValueError(f"{name} must have shape (B, N, J, 3) or (N, J, 3) with J >= 2, got {tuple(x.shape)}")
    mask = _frame_mask(lengths, x.shape[0], x.shape[1], x.device)
    n = mask.sum(1)
    if bool((n == 0).any()):
        raise ValueError(f"{name}: a sequence of length 0 (DTW needs at least one frame on each side)")
    return x, n


def procrustes_align(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``source`` moved onto ``target`` by the best similarity transform (rotation, uniform scale,
    translation; least squares over joints): (..., J, 3), (..., J, 3) -> (..., J, 3)."""
    mu_s, mu_t = source.mean(-2, keepdim=True), target.mean(-2, keepdim=True)
    xs, xt = source - mu_s, target - mu_t
    u, sv, vh = torch.linalg.svd(xs.transpose(-1, -2) @ xt)  # H = Xs^T Xt (..., 3, 3)
    d = torch.sign(torch.linalg.det(u @ vh))
    d = torch.where(d == 0, torch.ones_like(d), d)
    sv = torch.cat([sv[..., :2], sv[..., 2:] * d[..., None]], -1)
    u = torch.cat([u[..., :2], u[..., 2:] * d[..., None, None]], -1)
    rot = u @ vh                                           # row-vector form: x -> x @ rot
    scale = sv.sum(-1) / xs.pow(2).sum((-1, -2)).clamp_min(1e-12)
    return scale[..., None, None] * (xs @ rot) + mu_t


def dtw_cost(cost) -> np.ndarray:
    """Accumulated DTW cost table D (B, N, M) of frame-pair costs (B, N, M): D[i, j] is the least
    total cost of a monotone path from (0, 0) to (i, j) with steps (1, 0), (0, 1), (1, 1).

    Row by row: ``D[i, j] = c[i, j] + min(a[j], D[i, j-1])`` with ``a[j] = min(D[i-1, j-1],
    D[i-1, j])`` unrolls to ``S[j] + min_{k<=j}(a[k] - S[k-1])`` (S the prefix sums of row i),
    one running minimum per row.
    """
    c = np.asarray(cost, dtype=np.float64)
    D = np.empty_like(c)
    D[:, 0] = np.cumsum(c[:, 0], axis=-1)
    inf = np.full(c.shape[:1] + (1,), np.inf)
    for i in range(1, c.shape[1]):
        prev = D[:, i - 1]
        a = np.minimum(np.concatenate([inf, prev[:, :-1]], -1), prev)
        S = np.cumsum(c[:, i], axis=-1)
        D[:, i] = S + np.minimum.accumulate(a - (S - c[:, i]), axis=-1)
    return D


def dtw_mje_per_sequence(pred, target, pred_lengths=None, target_lengths=None, *, root_index: int = 0,
                         procrustes: bool = False) -> torch.Tensor:
    """DTW mean joint error of each sequence pair in millimetres: (B,) float64.

    The frames of ``pred`` and ``target`` (lengths may differ) are matched by dynamic time
    warping (:func:`dtw_cost`) on the per-frame-pair cost "mean joint distance"; the result is
    the least total cost of a warping path divided by the target's length (the normalisation of
    the sign-production literature's DTW-MJE, e.g. Progressive Transformers' evaluation).
    Without ``procrustes`` both are root-aligned per frame and the root is left out of the mean
    (as in :func:`mpjpe`); with ``procrustes`` each ``pred`` frame is first moved onto each
    ``target`` frame by the best similarity transform (:func:`procrustes_align`) and all
    joints count (the PA variant: it ignores global rotation, scale and position).

    Args:
        pred: (B, N, J, 3) or (N, J, 3) joint positions in metres; target: (B, M, J, 3).
        pred_lengths, target_lengths: (B,) valid frames (default all).
    """
    x, n = _seq_batch(pred, pred_lengths, "pred")
    y, m = _seq_batch(target, target_lengths, "target")
    y = y.to(x.device)
    if x.shape[0] != y.shape[0] or x.shape[-2] != y.shape[-2]:
        raise ValueError(f"pred {tuple(x.shape)} and target {tuple(y.shape)} need the same batch size and joints")
    if procrustes:
        costs = []
        for xb, yb in zip(x, y):  # one pair at a time: (N, M, J, 3) intermediates
            src = xb[:, None].expand(-1, yb.shape[0], -1, -1)
            dst = yb[None].expand(xb.shape[0], -1, -1, -1)
            costs.append((procrustes_align(src, dst) - dst).norm(dim=-1).mean(-1))
        cost = torch.stack(costs)
    else:
        keep = torch.ones(x.shape[-2], dtype=torch.bool, device=x.device)
        keep[root_index] = False
        xa = root_align(x, root_index)[:, :, keep].transpose(1, 2)  # (B, J-1, N, 3)
        ya = root_align(y, root_index)[:, :, keep].transpose(1, 2)
        cost = torch.cat([torch.cdist(xa[i:i + 16], ya[i:i + 16], compute_mode="donot_use_mm_for_euclid_dist").mean(1)
                          for i in range(0, x.shape[0], 16)])  # (B, N, M)
    D = dtw_cost(cost.cpu().numpy())
    b = np.arange(D.shape[0])
    n, m = n.cpu().numpy(), m.cpu().numpy()
    return torch.from_numpy(1000.0 * D[b, n - 1, m - 1] / m)


def dtw_mje(pred, target, pred_lengths=None, target_lengths=None, *, root_index: int = 0,
            procrustes: bool = False) -> float:
    """Mean over sequence pairs of :func:`dtw_mje_per_sequence` (mm); same arguments."""
    return float(dtw_mje_per_sequence(pred, target, pred_lengths, target_lengths, root_index=root_index,
                                      procrustes=procrustes).mean())


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and covariance (d, d) of ``features`` (n, d), float64 (covariance 0 for n = 1)."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().double().numpy()
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"features must have shape (n, d) with n >= 1, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or inf")
    mu = x.mean(0)
    sigma = np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1]) if x.shape[0] > 1 \
        else np.zeros((x.shape[1], x.shape[1]))
    return mu, sigma


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2); ``eps`` is added to both
    diagonals (keeps rank-deficient fits from few samples stable)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"frechet_distance: need mu (d,) and sigma (d, d) for both; got {mu1.shape}, {s1.shape}, "
                         f"{mu2.shape}, {s2.shape}")
    s1 = s1 + eps * np.eye(d)
    s2 = s2 + eps * np.eye(d)
    r1 = _psd_sqrt(s1)
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0.0, None)).sum()
    value = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(value, 0.0)


def fid(features_a, features_b, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussian fits of two feature sets (n, d) and (m, d)."""
    mu_a, s_a = gaussian_stats(features_a)
    mu_b, s_b = gaussian_stats(features_b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"fid: feature dimensions differ: {mu_a.shape[0]} and {mu_b.shape[0]}")
    return frechet_distance(mu_a, s_a, mu_b, s_b, eps)


def _check_texts(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise TypeError("hypotheses and references must be lists of strings, not a single string")
    if len(hypotheses) != len(references) or len(references) == 0:
        raise ValueError(f"need as many hypotheses as references (> 0), got {len(hypotheses)} and {len(references)}")
    for name, seq in (("hypotheses", hypotheses), ("references", references)):
        bad = [i for i, s in enumerate(seq) if not isinstance(s, str)]
        if bad:
            raise TypeError(f"{name}[{bad[0]}] is {type(seq[bad[0]]).__name__}, not str")


def bleu4(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 (0-100) of ``hypotheses`` against one reference each (sacrebleu, 13a)."""
    import sacrebleu

    _check_texts(hypotheses, references)
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 (0-100) over sentence pairs (rouge_score, no stemming)."""
    from rouge_score import rouge_scorer

    _check_texts(hypotheses, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    scores = [scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hypotheses, references)]
    return float(100.0 * np.mean(scores))
