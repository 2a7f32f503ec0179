"""Evaluation: the paper's Table 1 (BLEU-4, ROUGE-L, FID, MPJPE) on any dataset.

- :mod:`.metrics`: MPJPE (mm, root-aligned), DTW-MJE and its Procrustes-aligned variant, FID from features, BLEU-4 (sacrebleu), ROUGE-L (rouge-score).
- :mod:`.models`: :class:`PoseEvaluator` (pose-to-text back-translator + motion encoder for FID)
  with its :class:`WordTokenizer`; trained by ``python -m train.evaluator``.
- :mod:`.evaluate`: :func:`evaluate` (rows Mean pose / Sign-SALD / VAE reconstruction / Another
  signing, same sentence (built-in corpus: a second rendition of each test sentence, the score
  of a perfect generator) / Ground truth), :func:`format_table`, :func:`evaluate_run` (writes
  ``eval.json`` + ``eval.md``), :func:`time_aligned_poses` (the row's time normalisation).
"""

from __future__ import annotations

from .evaluate import (ALTERNATE_ROW, COLUMNS, ROWS, evaluate, evaluate_run, format_table, reconstruction_mpjpe,
                       time_aligned_poses, write_results)
from .metrics import bleu4, dtw_mje, dtw_mje_per_sequence, fid, frechet_distance, gaussian_stats, mpjpe, mpjpe_per_sequence, root_align, rouge_l
from .models import EvaluatorConfig, PoseEvaluator, WordTokenizer, evaluator_config

__all__ = [
    "evaluate", "evaluate_run", "format_table", "write_results", "reconstruction_mpjpe", "ROWS", "COLUMNS",
    "ALTERNATE_ROW", "time_aligned_poses",
    "mpjpe", "mpjpe_per_sequence", "dtw_mje", "dtw_mje_per_sequence", "root_align", "fid", "frechet_distance", "gaussian_stats", "bleu4", "rouge_l",
    "PoseEvaluator", "EvaluatorConfig", "WordTokenizer", "evaluator_config",
]
