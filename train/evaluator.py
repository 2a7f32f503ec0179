"""Train the evaluation models (pose-to-text back-translator + FID motion encoder) on a dataset's
training split, once per dataset; every compared run is then scored with the same folder.

    python -m train.evaluator --data builtin --out runs/evaluator-builtin
    python -m train.evaluator --data how2sign --data-root DIR --out runs/evaluator-how2sign --preset paper

``python -m train.full`` calls :func:`train_evaluator` to write ``RUN/evaluator``; to score runs
with a shared folder use ``sald_fast.eval.evaluate_run(RUN, evaluator_dir=DIR)``.

Training: AdamW, linear warm-up then cosine decay, gradient clipping 1.0, on the evaluation crops
(the first ``num_frames`` frames of each clip, like the denoiser's training and the evaluation);
the data order of epoch ``e`` is a permutation seeded by ``(seed, e)`` and torch is reseeded every
step (dropout), so a training run is reproducible; the weights with the best validation
cross-entropy are kept. Afterwards the training split's mean pose and the Gaussian fit of its FID
features are stored with the weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from sald_fast.eval.evaluate import positions_of_items, reference_poses
from sald_fast.eval.metrics import bleu4, rouge_l
from sald_fast.eval.models import EVALUATOR_PRESETS, EvaluatorConfig, PoseEvaluator, WordTokenizer, evaluator_config

__all__ = ["fit_evaluator", "train_evaluator", "main"]


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _evenly(n: int, k: int) -> list[int]:
    """At most ``k`` indices spread evenly over range(n) (all of them when n <= k)."""
    if n <= k:
        return list(range(n))
    return [int(i * n / k) for i in range(k)]


@torch.no_grad()
def _validate(model: PoseEvaluator, positions, lengths, texts, batch_size: int, device) -> dict[str, float]:
    model.eval()
    torch.manual_seed(0)
    total = {"ce": 0.0, "acc": 0.0}
    count = 0
    for i in range(0, positions.shape[0], batch_size):
        out = model.loss(positions[i:i + batch_size].to(device), lengths[i:i + batch_size].to(device),
                         texts[i:i + batch_size])
        n = min(batch_size, positions.shape[0] - i)
        total["ce"] += float(out["ce"]) * n
        total["acc"] += float(out["acc"]) * n
        count += n
    model.train()
    return {k: v / max(count, 1) for k, v in total.items()}


@torch.no_grad()
def _translation_scores(model: PoseEvaluator, positions, lengths, texts, batch_size: int, device) -> dict[str, float]:
    model.eval()
    hyps: list[str] = []
    for i in range(0, positions.shape[0], batch_size):
        hyps.extend(model.translate(positions[i:i + batch_size].to(device), lengths[i:i + batch_size].to(device)))
    refs = [WordTokenizer.normalize(t) for t in texts]
    return {"bleu4": bleu4(hyps, refs), "rouge_l": rouge_l(hyps, refs)}


def fit_evaluator(train_clips: Sequence[dict], val_clips: Sequence[dict] | None, config: EvaluatorConfig, *,
                  epochs: int, batch_size: int, max_steps: int | None = None, seed: int = 0,
                  device: torch.device | str = "cpu", progress: bool = True, log_path: str | Path | None = None,
                  stats_clips: int = 2000, real_clips: int = 10000, val_translate: int = 256,
                  random_crops: bool = False, bucket_by_length: bool = False) -> PoseEvaluator:
    """Train a :class:`PoseEvaluator` on ``train_clips`` (clip dicts of ``sald_fast.data``).

    Args:
        config: sizes; ``config.num_frames`` is the crop length. Training uses the evaluation
            crops (the first ``num_frames`` frames, as the denoiser's training and the evaluation
            do) unless ``random_crops`` (random windows of long clips, redrawn every epoch).
        epochs, batch_size, max_steps: schedule (``max_steps`` caps optimiser steps).
        stats_clips / real_clips: training clips (evenly spaced) used for the input normalisation /
            for the stored FID statistics of the training split.
        val_translate: validation clips back-translated at the end (BLEU/ROUGE in ``model.meta``).
        bucket_by_length: batch clips of similar length (chunks of 16 batches sorted by length,
            batch order shuffled) and trim each batch to its longest clip.
    Returns the model with the best validation cross-entropy, in eval mode, on ``device``.
    """
    from sald_fast.data.dataset import MotionTextDataset

    if not train_clips:
        raise ValueError("fit_evaluator: train_clips is empty")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"fit_evaluator: epochs ({epochs}) and batch_size ({batch_size}) must be >= 1")
    device = torch.device(device)
    start = time.time()
    torch.manual_seed(seed)
    tokenizer = WordTokenizer.build([c["text"] for c in train_clips], config.max_vocab, config.min_count)
    model = PoseEvaluator(config, tokenizer.words).to(device)
    n = config.num_frames
    stat_pos, stat_len, _ = reference_poses([train_clips[i] for i in _evenly(len(train_clips), stats_clips)], n,
                                            device=device, progress=progress, desc="pose statistics")
    model.fit_statistics(stat_pos.to(device), stat_len.to(device))
    del stat_pos
    val = None
    if val_clips:
        val = reference_poses(list(val_clips), n, device=device, progress=progress, desc="validation poses")

    train_set = MotionTextDataset(list(train_clips), n, train=random_crops, seed=seed)
    batch_size = min(batch_size, len(train_set))
    steps_per_epoch = max(1, len(train_set) // batch_size)
    total = steps_per_epoch * epochs
    total = min(total, max_steps) if max_steps else total
    warmup = max(1, min(200, total // 10))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    log = open(log_path, "a") if log_path else None
    best_ce, best_state, history = float("inf"), None, []
    step = 0
    bar = tqdm(total=total, desc="evaluator", disable=not progress, dynamic_ncols=True)
    model.train()
    for epoch in range(epochs):
        if step >= total:
            break
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch)
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        perm = torch.randperm(len(train_set), generator=g).tolist()
        batches = [perm[b * batch_size:(b + 1) * batch_size] for b in range(steps_per_epoch)]
        if bucket_by_length:
            from .data import length_buckets

            batches = length_buckets(batches, train_set.lengths, g)
        for b in range(steps_per_epoch):
            if step >= total:
                break
            torch.manual_seed(seed * 1_000_003 + step)
            items = [train_set[i] for i in batches[b]]
            positions, lengths, texts = positions_of_items(items, device)
            if bucket_by_length:
                positions = positions[:, :-(-int(lengths.max()) // config.patch) * config.patch]
            for g in optimizer.param_groups:
                g["lr"] = config.lr * _lr_factor(step, total, warmup)
            out = model.loss(positions, lengths, texts)
            if not torch.isfinite(out["loss"]):
                raise FloatingPointError(f"evaluator: loss is {float(out['loss'])} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            record = {k: round(float(v.detach()), 5) for k, v in out.items()}
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['acc']:.2f}")
            if log:
                log.write(json.dumps({"stage": "evaluator", "step": step, "epoch": epoch, **record}) + "\n")
        if val is not None:
            v = _validate(model, *val, batch_size, device)
            history.append({"epoch": epoch, "step": step, "val_ce": v["ce"], "val_acc": v["acc"]})
            if log:
                log.write(json.dumps({"stage": "evaluator", "step": step, "epoch": epoch, "val_loss": v["ce"],
                                      "val_acc": v["acc"]}) + "\n")
            if v["ce"] < best_ce:
                best_ce, best_state = v["ce"], copy.deepcopy(model.state_dict())
    bar.close()
    if log:
        log.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()

    real_pos, real_len, _ = reference_poses([train_clips[i] for i in _evenly(len(train_clips), real_clips)], n,
                                            device=device, progress=progress, desc="training-split FID statistics")
    with torch.no_grad():
        feats = torch.cat([model.fid_features(real_pos[i:i + 64].to(device), real_len[i:i + 64].to(device)).double().cpu()
                           for i in range(0, real_pos.shape[0], 64)])
    model.set_real_statistics(feats)
    meta: dict[str, Any] = {"real_count": int(feats.shape[0]), "train_clips": len(train_clips), "steps": step,
                            "epochs": epochs, "batch_size": batch_size, "seed": seed, "history": history,
                            "seconds": round(time.time() - start, 1)}
    if val is not None:
        k = min(val_translate, val[0].shape[0])
        meta["val"] = {"ce": best_ce, "clips": k,
                       **_translation_scores(model, val[0][:k], val[1][:k], val[2][:k], 64, device)}
    model.meta = meta
    return model


def _config_for(cfg, preset: str | None) -> EvaluatorConfig:
    name = preset or (cfg.name if cfg.name in EVALUATOR_PRESETS else "tiny")
    return evaluator_config(name, cfg.train.num_frames)


def train_evaluator(cfg, args: argparse.Namespace, out_dir: str | Path, device: torch.device | str | None = None,
                    progress: bool = True) -> PoseEvaluator:
    """Train the evaluation models for a run (``cfg``: its SALDConfig; ``args``: the training
    arguments with ``data``, ``data_root``, ``skip_bad``) and save them to ``out_dir``.

    Epochs / batch size / step cap / seed come from ``cfg.train`` (``evaluator_epochs``,
    ``evaluator_batch``, ``max_steps``, ``seed``) unless ``args`` has ``epochs`` / ``batch_size``.
    """
    from .data import load_split_clips

    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data, root, skip_bad = args.data, getattr(args, "data_root", None), bool(getattr(args, "skip_bad", False))
    train_clips = load_split_clips(data, root, skip_bad, "train")
    val_clips = load_split_clips(data, root, skip_bad, "val")
    config = _config_for(cfg, getattr(args, "evaluator_preset", None))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = fit_evaluator(train_clips, val_clips, config,
                          epochs=getattr(args, "epochs", None) or cfg.train.evaluator_epochs,
                          batch_size=getattr(args, "batch_size", None) or cfg.train.evaluator_batch,
                          max_steps=getattr(args, "max_steps", None) or cfg.train.max_steps, seed=cfg.train.seed,
                          device=device, progress=progress, log_path=out_dir / "log.jsonl",
                          bucket_by_length=cfg.train.bucket_by_length)
    model.meta.update({"dataset": data, "data_root": str(Path(root).resolve()) if root else None, "preset": cfg.name})
    model.save(out_dir, model.meta)
    if "val" in model.meta:
        v = model.meta["val"]
        print(f"evaluator: validation back-translation BLEU-4 {v['bleu4']:.2f}, ROUGE-L {v['rouge_l']:.2f} "
              f"({v['clips']} clips); written to {out_dir}")
    return model


def main(argv: list[str] | None = None) -> int:
    from sald_fast.config import preset

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="builtin", choices=["builtin", "how2sign"], help="dataset")
    p.add_argument("--data-root", default=None, help="How2Sign SMPL-X root folder")
    p.add_argument("--out", default=None, help="output folder (default runs/evaluator-<data>)")
    p.add_argument("--preset", default="tiny", choices=["tiny", "paper"], help="sizes and crop length")
    p.add_argument("--epochs", type=int, default=None, help="default: the preset's evaluator_epochs")
    p.add_argument("--batch-size", type=int, default=None, help="default: the preset's evaluator_batch")
    p.add_argument("--max-steps", type=int, default=None, help="cap on optimiser steps")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--skip-bad", action="store_true", help="skip bad data files (logged and counted)")
    p.add_argument("--no-progress", action="store_true", help="disable progress bars")
    args = p.parse_args(argv)
    if args.data == "how2sign" and not args.data_root:
        p.error("--data how2sign needs --data-root DIR")
    for name in ("epochs", "batch_size", "max_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    cfg = preset(args.preset)
    if args.seed is not None:
        cfg.train.seed = args.seed
    out = Path(args.out or f"runs/evaluator-{args.data}")
    train_evaluator(cfg, args, out, device=args.device, progress=not args.no_progress)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
