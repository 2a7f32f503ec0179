"""The evaluation procedure and the paper's Table 1 (Markdown + JSON).

Rows (all on the first ``num_samples`` test clips, cropped to the evaluator's ``num_frames``):
- "Mean pose" (lower bound): the training split's mean root-aligned pose, repeated.
- "Sign-SALD": poses generated for the test sentences with the reference lengths (seed fixed).
- "VAE reconstruction": the references through the run's VAE (encoder means, no sampling).
- "Another signing, same sentence" (only with ``alternate_clips``; :func:`evaluate_run` makes
  them for the built-in corpus with :func:`sald_fast.data.builtin.alternate_renditions`): a
  second, equally correct rendition of each test sentence by the corpus generator with another
  signer variation, i.e. what a perfect generator could score. Placed just before "Ground
  truth", beside the other ceiling: its MPJPE is the floor a perfect model cannot go below
  when scored against one reference signing (different speed, amplitude, timing, signing
  space), its BLEU/ROUGE/FID what a correct but different signing gets.
- "Ground truth" (ceiling / floor): the references themselves.

Columns: back-translation BLEU-4 and ROUGE-L (0-100) against the normalised sentence
(lowercase words, :meth:`WordTokenizer.normalize`); FID of the row's motion-encoder features
against the Gaussian fit of the training split stored in the evaluator (so "Ground truth" FID is
test vs train: the floor); MPJPE in mm (root-aligned, non-root joints, valid frames) against the
reference of the same sentence and length (for "Another signing, same sentence", whose clips have
their own lengths: after linearly resampling the whole alternate rendition in time, per joint
position, to the whole reference's length, then cropping like the reference; see
:func:`time_aligned_poses`). ``eval.json`` also holds "FID (vs test)": FID against
the test references themselves. FID from few samples is biased upwards (the "Ground truth" row
shows by how much): compare FIDs of one evaluation (same ``num_samples``) only.

Whole sentences: a test clip longer than the evaluator's ``num_frames`` is cropped to its first
frames, so its metrics only see the beginning of the sentence; :func:`evaluate` warns with the
number of such clips and records it in ``settings["cropped_clips"]``.

Determinism: evaluation models in eval mode, fixed batches (``batch_size``) in test-split order,
generation seeded per batch (``seed + batch index``): two evaluations of one checkpoint give the
same numbers.
"""

from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ..checkpoint import atomic_write_bytes
from .metrics import bleu4, dtw_mje, fid, frechet_distance, gaussian_stats, mpjpe, rouge_l
from .models import PoseEvaluator, WordTokenizer

__all__ = [
    "ROWS",
    "COLUMNS",
    "ALTERNATE_ROW",
    "ALTERNATE_SEED",
    "positions_of_items",
    "reference_poses",
    "time_aligned_poses",
    "score_poses",
    "dtw_columns",
    "generate_poses",
    "vae_reconstruct",
    "reconstruction_mpjpe",
    "evaluate",
    "format_table",
    "write_results",
    "evaluate_run",
]

ALTERNATE_ROW = "Another signing, same sentence"
ALTERNATE_SEED = 1  # signer-variation seed of the built-in alternate renditions made by evaluate_run
ROWS = ("Mean pose", "Sign-SALD", "VAE reconstruction", ALTERNATE_ROW, "Ground truth")
COLUMNS = ("BLEU-4", "ROUGE-L", "FID", "MPJPE", "DTW-MJE", "PA-DTW-MJE")
_LABELS = {"Mean pose": "Mean pose (lower bound)", "Ground truth": "Ground truth (ceiling)"}
_HEADER = {"BLEU-4": "BLEU-4 ↑", "ROUGE-L": "ROUGE ↑", "FID": "FID ↓", "MPJPE": "MPJPE (mm) ↓", "DTW-MJE": "DTW-MJE (mm) ↓",
           "PA-DTW-MJE": "PA-DTW-MJE (mm) ↓"}


def _hold_last_frame(positions: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Frames past each length replaced by the last valid frame (padding may be NaN after FK)."""
    n = positions.shape[1]
    idx = torch.minimum(torch.arange(n, device=positions.device)[None], (lengths - 1).clamp_min(0)[:, None])
    return torch.gather(positions, 1, idx[:, :, None, None].expand(-1, -1, *positions.shape[2:]))


def positions_of_items(items: Sequence[dict], device: torch.device | str | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Joint positions (B, N, 44, 3) metres, lengths (B,) and texts of MotionTextDataset items.

    Frames past a length hold the last valid frame.
    """
    from sald_fast.features import features_to_positions

    feats = torch.stack([torch.as_tensor(it["features"]) for it in items]).float()
    if device is not None:
        feats = feats.to(device)
    lengths = torch.tensor([int(it["length"]) for it in items], device=feats.device)
    positions = features_to_positions(feats).float()
    return _hold_last_frame(positions, lengths), lengths, [str(it["text"]) for it in items]


def reference_poses(clips: Sequence[dict], num_frames: int, *, batch_size: int = 64, device=None,
                    progress: bool = True, desc: str = "reference poses", with_features: bool = False):
    """Evaluation crops of ``clips``: positions (M, N, 44, 3) CPU, lengths (M,), texts (and
    features (M, N, 44, 9) when ``with_features``)."""
    from sald_fast.data.dataset import MotionTextDataset

    dataset = MotionTextDataset(list(clips), num_frames, train=False)
    pos, lens, texts, feats = [], [], [], []
    for i in tqdm(range(0, len(dataset), batch_size), desc=desc, disable=not progress, leave=False):
        items = [dataset[j] for j in range(i, min(i + batch_size, len(dataset)))]
        p, length, t = positions_of_items(items, device)
        pos.append(p.cpu())
        lens.append(length.cpu())
        texts.extend(t)
        if with_features:
            feats.append(torch.stack([torch.as_tensor(it["features"]).float() for it in items]))
    out = (torch.cat(pos), torch.cat(lens), texts)
    return out + (torch.cat(feats),) if with_features else out


def _clip_frames(clip: dict) -> int:
    return int(len(clip["global_orient"]))


def _resample_time(positions: torch.Tensor, frames: int) -> torch.Tensor:
    """Positions (T, J, 3) -> (frames, J, 3): linear interpolation per joint coordinate, first and
    last frames kept (frame k of the output is at ``k (T - 1) / (frames - 1)`` of the input)."""
    T = positions.shape[0]
    if frames == T:
        return positions
    if frames == 1 or T == 1:
        return positions[:1].expand(frames, *positions.shape[1:]).clone()
    t = torch.arange(frames, dtype=torch.float64) * ((T - 1) / (frames - 1))
    i0 = t.floor().long().clamp(0, T - 1)
    i1 = (i0 + 1).clamp(max=T - 1)
    w = (t - i0).to(positions.dtype)[:, None, None]
    return positions[i0] * (1 - w) + positions[i1] * w


def time_aligned_poses(clips: Sequence[dict], target_frames: Sequence[int], num_frames: int, *,
                       progress: bool = True, desc: str = "time-aligned poses") -> torch.Tensor:
    """Positions (M, num_frames, 44, 3) CPU of ``clips`` with clip ``i`` time-normalised to
    ``target_frames[i]`` frames, then cropped like :func:`reference_poses`.

    The whole clip (all its frames, forward kinematics as for the references) is resampled
    linearly in time, per joint position, to ``target_frames[i]`` frames, so that its start and
    end meet the start and end of a reference of that length; the first ``num_frames`` frames
    are kept and shorter results hold their last frame. Used to score a second rendition of a
    sentence (other speed and timing, so another length) against its reference with MPJPE:
    only the overall tempo is removed; differences of timing within the sentence remain.
    """
    from sald_fast.data.dataset import MotionTextDataset
    from sald_fast.features import features_to_positions

    clips = list(clips)
    if len(target_frames) != len(clips):
        raise ValueError(f"time_aligned_poses: {len(clips)} clips but {len(target_frames)} target lengths")
    dataset = MotionTextDataset(clips, num_frames, train=False)
    out = []
    for i in tqdm(range(len(clips)), desc=desc, disable=not progress, leave=False):
        n = int(target_frames[i])
        if n < 1:
            raise ValueError(f"time_aligned_poses: target_frames[{i}] = {n} must be >= 1")
        with torch.no_grad():
            pos = features_to_positions(dataset.features(i)).float()  # (T, 44, 3)
        pos = _resample_time(pos, n)[:num_frames]
        if pos.shape[0] < num_frames:
            pos = torch.cat([pos, pos[-1:].expand(num_frames - pos.shape[0], *pos.shape[1:])])
        out.append(pos)
    return torch.stack(out)


@torch.no_grad()
def score_poses(evaluator: PoseEvaluator, positions: torch.Tensor, lengths: torch.Tensor, references: Sequence[str],
                reference_positions: torch.Tensor | None = None, reference_features: torch.Tensor | None = None,
                *, batch_size: int = 64, progress: bool = True, desc: str = "score",
                dtw_procrustes: bool = False) -> dict[str, Any]:
    """BLEU-4, ROUGE-L, FID (vs the evaluator's training-split fit, and vs ``reference_features``)
    and MPJPE and DTW-MJE (vs ``reference_positions``, same ``lengths``; also PA-DTW-MJE with
    ``dtw_procrustes``) of poses (M, N, 44, 3); also the translations (``"hypotheses"``) and
    FID features (``"features"`` (M, E)).

    ``references``: the sentences (normalised here with :meth:`WordTokenizer.normalize`).
    """
    if positions.shape[0] != len(references) or lengths.shape[0] != len(references):
        raise ValueError(f"score_poses: {positions.shape[0]} sequences, {lengths.shape[0]} lengths and "
                         f"{len(references)} references must agree")
    device = evaluator.input_mean.device
    hyps: list[str] = []
    feats = []
    for i in tqdm(range(0, positions.shape[0], batch_size), desc=desc, disable=not progress, leave=False):
        p = positions[i:i + batch_size].to(device)
        length = lengths[i:i + batch_size].to(device)
        hyps.extend(evaluator.translate(p, length))
        feats.append(evaluator.fid_features(p, length).double().cpu())
    features = torch.cat(feats)
    refs = [WordTokenizer.normalize(r) for r in references]
    mu, sigma = gaussian_stats(features)
    row: dict[str, Any] = {
        "BLEU-4": bleu4(hyps, refs),
        "ROUGE-L": rouge_l(hyps, refs),
        "FID": frechet_distance(mu, sigma, evaluator.real_mu.cpu().numpy(), evaluator.real_sigma.cpu().numpy()),
    }
    if reference_features is not None:
        row["FID (vs test)"] = fid(features, reference_features)
    if reference_positions is not None:
        row["MPJPE"] = mpjpe(positions, reference_positions, lengths)
        row.update(dtw_columns(positions, lengths, reference_positions, lengths, dtw_procrustes))
    return {"row": row, "hypotheses": hyps, "features": features}


def dtw_columns(positions: torch.Tensor, lengths: torch.Tensor, reference_positions: torch.Tensor,
                reference_lengths: torch.Tensor, procrustes: bool = False) -> dict[str, float]:
    """``{"DTW-MJE": mm}`` (and ``"PA-DTW-MJE"`` with ``procrustes``) of poses (M, N, J, 3) with
    ``lengths`` (M,) against references (M, N', J, 3) with ``reference_lengths`` (M,)."""
    out = {"DTW-MJE": dtw_mje(positions, reference_positions, lengths, reference_lengths)}
    if procrustes:
        out["PA-DTW-MJE"] = dtw_mje(positions, reference_positions, lengths, reference_lengths, procrustes=True)
    return out


def generate_poses(model, texts: Sequence[str], lengths: torch.Tensor, num_frames: int, *, seed: int = 0,
                   steps: int | None = None, guidance: float | None = None, batch_size: int = 32,
                   progress: bool = True) -> torch.Tensor:
    """Poses (M, num_frames, 44, 3) generated by a SignSALD for ``texts``, CPU.

    Batch ``b`` (fixed ``batch_size`` chunks in order) uses seed ``seed + b``. The reference
    lengths are passed to ``generate`` when it accepts ``lengths``; frames past a length hold the
    last valid frame either way (the metrics ignore them). Positions come from the generated
    features through the same forward kinematics as the references (default rest offsets).
    """
    params = inspect.signature(model.generate).parameters
    out = []
    for b, i in enumerate(tqdm(range(0, len(texts), batch_size), desc="generate", disable=not progress, leave=False)):
        kwargs: dict[str, Any] = {"num_frames": num_frames, "seed": seed + b}
        if steps is not None:
            kwargs["steps"] = steps
        if guidance is not None:
            kwargs["guidance"] = guidance
        if "progress" in params:
            kwargs["progress"] = False
        length = lengths[i:i + batch_size]
        if "lengths" in params:
            kwargs["lengths"] = length.tolist()
        result = model.generate(list(texts[i:i + batch_size]), **kwargs)
        feats = getattr(result, "features", None)
        if feats is not None:  # same forward kinematics (rest offsets) as the references
            from sald_fast.features import features_to_positions

            p = features_to_positions(feats.detach().float().cpu()[:, :num_frames]).float()
        else:
            p = result.positions.detach().float().cpu()[:, :num_frames]
        out.append(_hold_last_frame(p, length.cpu()))
    return torch.cat(out)


@torch.no_grad()
def vae_reconstruct(vae, features: torch.Tensor, *, batch_size: int = 32, progress: bool = True) -> torch.Tensor:
    """Joint positions (M, N, 44, 3) of VAE reconstructions (encoder means) of unnormalised
    features (M, N, 44, 9), CPU."""
    from sald_fast.features import features_to_positions

    device = next(vae.parameters()).device
    out = []
    for i in tqdm(range(0, features.shape[0], batch_size), desc="VAE reconstruction", disable=not progress, leave=False):
        x = vae.normalizer.normalize(features[i:i + batch_size].to(device))
        recon = vae.normalizer.denormalize(vae(x, sample=False)["recon"])
        out.append(features_to_positions(recon.float()).float().cpu())
    return torch.cat(out)


def reconstruction_mpjpe(vae, clips: Sequence[dict], num_frames: int, *, batch_size: int = 32,
                         device=None, progress: bool = True) -> float:
    """The VAE's reconstruction MPJPE (mm, root-aligned) on the evaluation crops of ``clips``."""
    positions, lengths, _, features = reference_poses(clips, num_frames, batch_size=batch_size, device=device,
                                                      progress=progress, with_features=True)
    recon = vae_reconstruct(vae, features, batch_size=batch_size, progress=progress)
    return mpjpe(recon, positions, lengths)


def _load_model(model, device, backend: str | None = "auto"):
    if model is None or hasattr(model, "generate"):
        return model
    from sald_fast.pipeline import SignSALD

    path = Path(model)
    if (path / "model" / "config.json").exists():
        path = path / "model"
    if device is not None:
        return SignSALD.load(path, device=device, backend=backend)
    return SignSALD.load(path, backend=backend)


def evaluate(model, evaluator: PoseEvaluator | str | Path, clips: Sequence[dict], *, num_samples: int | None = None,
             seed: int = 0, steps: int | None = None, guidance: float | None = None, batch_size: int = 32,
             device: torch.device | str | None = None, progress: bool = True, include_vae: bool = True,
             alternate_clips: Sequence[dict] | None = None, dtw_procrustes: bool = False, videos: int = 0,
             video_dir: str | Path | None = None, backend: str | None = "auto") -> dict[str, Any]:
    """Evaluate a SignSALD (or its run/model folder; ``None``: only the bounds) on test ``clips``.

    ``backend``: the :mod:`sald_fast.ops` backend a model loaded from a folder runs (default
    ``"auto"``; None: the process default).

    ``alternate_clips``: another rendition of each test sentence, in the order of ``clips``
    (same texts; cut to ``num_samples`` like ``clips``), e.g.
    :func:`sald_fast.data.builtin.alternate_renditions` of ``clips``; adds the row "Another
    signing, same sentence". Its BLEU-4 / ROUGE-L / FID come from the alternate motion at its
    own length (cropped to the evaluator's ``num_frames`` like every row); its MPJPE compares it
    with the reference of the same sentence after resampling the whole alternate rendition
    linearly in time (per joint position) to the whole reference's length
    (:func:`time_aligned_poses`), over the reference's valid frames. Linear time normalisation
    is the simplest fair alignment of two renditions of different speed: it removes the overall
    tempo, not the timing differences within the sentence (no per-frame warping such as DTW,
    which no other row gets either), so this MPJPE is the floor for a model that signs the
    sentence correctly but not exactly like the one reference.

    DTW-MJE (:func:`sald_fast.eval.metrics.dtw_mje`) matches each row's frames to the
    reference's by dynamic time warping (the alternate row at its own length); the
    Procrustes-aligned variant (PA-DTW-MJE, one similarity transform per frame pair) costs
    an SVD per frame pair and is computed only with ``dtw_procrustes=True``.

    Test clips longer than ``num_frames`` are cropped to their first frames (the metrics then
    see only the beginning of those sentences): a warning gives their number, also recorded
    in ``settings["cropped_clips"]`` (and ``settings["cropped_alternate_clips"]``).

    A model with a duration model (``model.duration``) also gets ``settings["duration_mae_frames"]``:
    the mean absolute error of its predicted lengths against the test clips' whole lengths.

    ``videos``: write side-by-side videos (ground truth | generated | VAE reconstruction, the
    sentence as the title) of the first ``videos`` test sentences to ``video_dir`` as
    ``video_00.mp4``, ...; their paths are listed in ``settings["videos"]``.

    Returns dict(rows={row: {BLEU-4, ROUGE-L, FID, FID (vs test), MPJPE, DTW-MJE[, PA-DTW-MJE]}},
    settings, examples).
    """
    if isinstance(videos, bool) or not isinstance(videos, int) or videos < 0:
        raise ValueError(f"videos must be an int >= 0, got {videos!r}")
    if videos and video_dir is None:
        raise ValueError("videos > 0 needs a video_dir to write them to")
    if isinstance(evaluator, (str, Path)):
        evaluator = PoseEvaluator.load(evaluator, device=device or "cpu")
    elif device is not None:
        evaluator = evaluator.to(device)
    evaluator.eval()
    if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1):
        raise ValueError(f"num_samples must be a positive int or None, got {num_samples!r}")
    clips = list(clips)[:num_samples] if num_samples is not None else list(clips)
    if not clips:
        raise ValueError("evaluate: clips is empty (no test clips)")
    alt_clips = None
    if alternate_clips is not None:
        alt_clips = list(alternate_clips)[:num_samples] if num_samples is not None else list(alternate_clips)
        if len(alt_clips) != len(clips):
            raise ValueError(f"evaluate: {len(alt_clips)} alternate clips for {len(clips)} test clips "
                             "(alternate_clips must hold one rendition of each test clip, in order)")
        for i, (c, a) in enumerate(zip(clips, alt_clips)):
            if WordTokenizer.normalize(str(c.get("text", ""))) != WordTokenizer.normalize(str(a.get("text", ""))):
                raise ValueError(f"evaluate: alternate_clips[{i}] signs {a.get('text')!r}, "
                                 f"but clips[{i}] is {c.get('text')!r}")
    model = _load_model(model, device, backend)
    num_frames = evaluator.config.num_frames
    dev = evaluator.input_mean.device
    ref_pos, lengths, texts, ref_feats = reference_poses(clips, num_frames, batch_size=batch_size, device=dev,
                                                         progress=progress, with_features=True)
    cropped = [_clip_frames(c) for c in clips if _clip_frames(c) > num_frames]
    if cropped:
        warnings.warn(f"evaluate: {len(cropped)} of {len(clips)} test clips are longer than the evaluator's "
                      f"num_frames={num_frames} (longest {max(cropped)} frames) and are cropped to their first "
                      f"{num_frames} frames: their metrics do not cover the whole sentence", stacklevel=2)
    common = dict(batch_size=batch_size, progress=progress, dtw_procrustes=dtw_procrustes)
    gt = score_poses(evaluator, ref_pos, lengths, texts, ref_pos, **common, desc="score ground truth")
    gt["row"]["FID (vs test)"] = 0.0
    candidates: dict[str, torch.Tensor] = {}
    mean_pose = evaluator.mean_pose.float().cpu()
    candidates["Mean pose"] = mean_pose.expand_as(ref_pos).clone()
    if model is not None:
        if hasattr(model, "eval"):
            model.eval()
        candidates["Sign-SALD"] = generate_poses(model, texts, lengths, num_frames, seed=seed, steps=steps,
                                                 guidance=guidance, batch_size=batch_size, progress=progress)
        vae = getattr(model, "vae", None)
        if include_vae and vae is not None:
            candidates["VAE reconstruction"] = vae_reconstruct(vae, ref_feats, batch_size=batch_size, progress=progress)
    scored = {name: score_poses(evaluator, pos, lengths, texts, ref_pos, gt["features"], **common,
                                desc=f"score {name}") for name, pos in candidates.items()}
    scored["Ground truth"] = gt
    alt_cropped = None
    if alt_clips is not None:
        alt_pos, alt_len, _ = reference_poses(alt_clips, num_frames, batch_size=batch_size, device=dev,
                                              progress=progress, desc="alternate poses")
        alt = score_poses(evaluator, alt_pos, alt_len, texts, None, gt["features"], **common,
                          desc="score another signing")
        aligned = time_aligned_poses(alt_clips, [_clip_frames(c) for c in clips], num_frames, progress=progress)
        alt["row"]["MPJPE"] = mpjpe(aligned, ref_pos, lengths)
        alt["row"].update(dtw_columns(alt_pos, alt_len, ref_pos, lengths, dtw_procrustes))
        scored[ALTERNATE_ROW] = alt
        alt_cropped = sum(_clip_frames(a) > num_frames for a in alt_clips)
    rows = {name: scored[name]["row"] for name in ROWS if name in scored}
    examples = [{"reference": WordTokenizer.normalize(texts[i]),
                 **{name: scored[name]["hypotheses"][i] for name in ROWS if name in scored}}
                for i in range(min(5, len(texts)))]
    diffusion = getattr(getattr(model, "config", None), "diffusion", None)  # the defaults generate() used
    if diffusion is not None:
        steps = steps if steps is not None else diffusion.sample_steps
        guidance = guidance if guidance is not None else diffusion.guidance
    settings = {"num_samples": len(clips), "num_frames": num_frames, "seed": seed, "steps": steps,
                "guidance": guidance, "batch_size": batch_size, "dataset": evaluator.meta.get("dataset"),
                "fid_reference": f"training split ({evaluator.meta.get('real_count', '?')} clips)",
                "cropped_clips": len(cropped)}
    if model is not None and getattr(model, "duration", None) is not None:
        pred = model.predict_num_frames(texts).double()
        true = torch.tensor([_clip_frames(c) for c in clips], dtype=torch.float64)
        settings["duration_mae_frames"] = float((pred - true).abs().mean())
    if videos:
        fps = float(getattr(getattr(getattr(model, "config", None), "train", None), "fps", 25.0))
        settings["videos"] = [str(p) for p in write_side_by_side_videos(ref_pos, candidates, lengths, texts, video_dir,
                                                                         videos, fps)]
    if alt_cropped is not None:
        settings["cropped_alternate_clips"] = int(alt_cropped)
        settings["alternate_mpjpe"] = "alternate resampled linearly in time to the reference's length"
    return {"rows": rows, "settings": settings, "examples": examples}


def write_side_by_side_videos(ref_pos: torch.Tensor, candidates: dict[str, torch.Tensor], lengths: torch.Tensor,
                              texts: Sequence[str], out_dir: str | Path, count: int, fps: float = 25.0) -> list[Path]:
    """Side-by-side videos ``out_dir/video_00.mp4``, ... of the first ``count`` sentences: the
    reference ``ref_pos`` (B, N, 44, 3), then ``candidates["Sign-SALD"]`` and
    ``candidates["VAE reconstruction"]`` where present, each cropped to ``lengths`` (B,)."""
    from sald_fast.render import save_side_by_side

    out_dir = Path(out_dir)
    columns = [("ground truth", ref_pos)] + [(label, candidates[name]) for name, label in
                                             (("Sign-SALD", "generated"), ("VAE reconstruction", "VAE reconstruction"))
                                             if name in candidates]
    written = []
    for i in range(min(count, len(texts))):
        n = int(lengths[i])
        seqs = [(label, pos[i, :n].detach().float().cpu().numpy()) for label, pos in columns]
        written.append(save_side_by_side(seqs, out_dir / f"video_{i:02d}.mp4", fps=fps, title=texts[i]))
    return written


def format_table(results: dict[str, Any]) -> str:
    """The paper's Table 1 (Markdown) from :func:`evaluate`'s result."""
    rows = results["rows"]
    columns = [c for c in COLUMNS if c != "PA-DTW-MJE" or any(c in r for r in rows.values())]  # PA: opt-in
    lines = ["| Methods | " + " | ".join(_HEADER[c] for c in columns) + " |",
             "| --- | " + " | ".join("---:" for _ in columns) + " |"]
    for name in ROWS:
        if name in rows:
            cells = [f"{rows[name][c]:.2f}" if c in rows[name] else "-" for c in columns]
            lines.append(f"| {_LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    s = results.get("settings", {})
    note = (f"\n{s.get('num_samples', '?')} test sentences of {s.get('dataset') or 'the dataset'}, "
            f"{s.get('num_frames', '?')} frames; back-translation BLEU-4 / ROUGE-L F1 (0-100); FID against the "
            f"{s.get('fid_reference', 'training split')}; MPJPE root-aligned; DTW-MJE: root-aligned mean joint "
            f"error along the best time warping to the reference, per reference frame. Seed {s.get('seed', 0)}"
            + (f", {s['steps']} sampling steps" if s.get("steps") else "")
            + (f", guidance {s['guidance']}" if s.get("guidance") is not None else "") + ".")
    if ALTERNATE_ROW in rows:
        note += (f" {ALTERNATE_ROW}: the corpus generator's second rendition of each test sentence (another signer "
                 "variation), what a perfect model could score; its MPJPE after linearly resampling it in time to "
                 "the reference's length.")
    if s.get("duration_mae_frames") is not None:
        note += (f" Sentence length predicted from the text (duration model): mean absolute error "
                 f"{s['duration_mae_frames']:.1f} frames (Sign-SALD rows are generated at the reference lengths).")
    if s.get("cropped_clips"):
        note += (f" {s['cropped_clips']} test clips were longer than {s.get('num_frames', '?')} frames and were "
                 "cropped (only their beginning is scored).")
    return "\n".join(lines) + "\n" + note


def write_results(results: dict[str, Any], run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``eval.json`` and ``eval.md`` into ``run_dir`` (atomically); returns both paths."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    js, md = run_dir / "eval.json", run_dir / "eval.md"
    atomic_write_bytes(js, (json.dumps(results, indent=2) + "\n").encode())
    atomic_write_bytes(md, ("# Evaluation\n\n" + format_table(results) + "\n").encode())
    return js, md


def evaluate_run(run: str | Path, *, evaluator_dir: str | Path | None = None, num_samples: int | None = None,
                 steps: int | None = None, seed: int = 0, guidance: float | None = None,
                 device: torch.device | str | None = None, progress: bool = True, clips: Sequence[dict] | None = None,
                 batch_size: int = 32, dtw_procrustes: bool = False, videos: int = 0,
                 backend: str | None = "auto") -> str:
    """Evaluate the run folder of ``python -m train.full`` (its ``model/``) with the evaluator in
    ``evaluator_dir`` (default ``RUN/evaluator``) on the test split of the evaluator's dataset (or
    ``clips``); writes ``RUN/eval.json`` and ``RUN/eval.md`` and returns the Markdown table.

    When the evaluator's dataset is ``"builtin"``, the row "Another signing, same sentence" is
    added: :func:`sald_fast.data.builtin.alternate_renditions` (seed
    :data:`ALTERNATE_SEED`) of the same test clips (skipped with a warning if some clip is not a
    sentence of the built-in grammar). Other datasets (How2Sign) have no second rendition: no row.
    ``videos``: side-by-side videos of the first ``videos`` test sentences go to ``RUN/videos/``.
    """
    run = Path(run)
    if not run.exists():
        raise FileNotFoundError(f"run folder {str(run)!r} does not exist")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    evaluator = PoseEvaluator.load(evaluator_dir or run / "evaluator", device=device)
    if clips is None:
        from sald_fast.data import load_clips

        dataset = evaluator.meta.get("dataset")
        if dataset is None:
            raise ValueError("the evaluator does not record its dataset: pass clips= (the test split)")
        root = evaluator.meta.get("data_root")
        clips = load_clips(dataset, "test", root=root) if dataset == "how2sign" else load_clips(dataset, "test")
    alternate = None
    if evaluator.meta.get("dataset") == "builtin":
        from sald_fast.data.builtin import alternate_renditions

        clips = list(clips)
        use = clips[:num_samples] if isinstance(num_samples, int) and not isinstance(num_samples, bool) \
            and num_samples > 0 else clips
        try:
            alternate = alternate_renditions(use, seed=ALTERNATE_SEED)
        except (KeyError, ValueError) as e:
            warnings.warn(f"no '{ALTERNATE_ROW}' row: {e}", stacklevel=2)
    results = evaluate(run, evaluator, clips, num_samples=num_samples, seed=seed, steps=steps, guidance=guidance,
                       batch_size=batch_size, device=device, progress=progress, alternate_clips=alternate,
                       dtw_procrustes=dtw_procrustes, videos=videos, video_dir=run / "videos",
                       backend=backend)
    if alternate is not None:
        results["settings"]["alternate_seed"] = ALTERNATE_SEED
    results["settings"]["run"] = str(run)
    results["settings"]["evaluator"] = str(evaluator_dir or run / "evaluator")
    write_results(results, run)
    return format_table(results)
