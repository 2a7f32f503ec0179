"""Stage 1: train the skeleton-aware VAE. ``python -m train.vae [--preset tiny] [--data builtin]``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from sald_fast.config import SALDConfig
from sald_fast.frames import frame_mask, latent_length
from sald_fast.vae import SkeletonVAE

from .common import Dist, Trainer, config_from_args, load_stage_model, start_stage
from .data import load_split_datasets

__all__ = ["train_vae", "load_vae", "main"]


def _fit_normalizer(vae: SkeletonVAE, train_set, max_items: int = 2000) -> None:
    n = min(len(train_set), max_items)
    step = max(1, len(train_set) // n)
    items = [train_set[i] for i in range(0, len(train_set), step)][:n]
    feats = torch.stack([it["features"] for it in items])
    lengths = torch.tensor([it["length"] for it in items])
    vae.normalizer.fit(feats, mask=frame_mask(lengths, feats.shape[1]))


def train_vae(cfg: SALDConfig, args: argparse.Namespace, run_dir: Path, dist_info: Dist, device: torch.device) -> SkeletonVAE:
    """Train (or resume) the VAE; returns the best VAE (eval mode, frozen)."""
    train_set, val_set, collate = load_split_datasets(cfg, args)
    torch.manual_seed(cfg.train.seed)  # same initial weights on every run (and every rank)
    vae = SkeletonVAE(cfg.vae, backend=args.backend).to(device)

    def loss_fn(model, batch):
        x = vae.normalizer.normalize(batch["features"])
        mask = frame_mask(batch["length"], x.shape[1])
        # training: eps per sample, keyed by (seed, step, dataset index), the same on any rank / world size;
        # validation batches carry no "rng" (eval mode draws nothing)
        rng = batch.get("rng")
        noise = None if rng is None else rng.randn((latent_length(x.shape[1]), *vae.latent_shape),
                                                   x.device, x.dtype)
        out = model(x, noise=noise)
        losses = vae.loss(x, out, mask=mask)
        losses["loss"] = losses["total"]
        return losses

    t = cfg.train
    # --compile compiles the VAE on CUDA only: on the CPU its eager step is faster than the
    # compiled one (2 cores, tiny preset, batch 32 x 76 frames: 430-470 ms eager vs 566 ms
    # compiled), and Dynamo specialises it on the number of frames, so each length bucket
    # (up to 7 at 16-frame steps) costs another ~60 s compile
    compile_vae = bool(args.compile) and device.type == "cuda"
    if args.compile and not compile_vae and dist_info.main:
        print("train.vae: --compile leaves the VAE eager on the CPU (its eager step is faster there)")
    trainer = Trainer(stage="vae", run_dir=run_dir, model=vae, loss_fn=loss_fn, train_set=train_set,
                      val_set=val_set, collate=collate, epochs=t.vae_epochs, batch_size=t.vae_batch, lr=t.vae_lr or t.lr,
                      lr_schedule=t.vae_lr_schedule or t.lr_schedule,
                      weight_decay=t.weight_decay, grad_clip=t.grad_clip, max_steps=t.max_steps,
                      ckpt_every=t.ckpt_every, seed=t.seed, config=cfg, dist_info=dist_info, device=device,
                      progress=not args.no_progress, autocast=device.type == "cuda", compile=compile_vae,
                      warmup_steps=t.warmup_steps, bucket_by_length=t.bucket_by_length,
                      time_budget_s=None if t.vae_budget_minutes is None else 60.0 * t.vae_budget_minutes)
    if not (args.resume and trainer.try_resume()):
        _fit_normalizer(vae, train_set)
    trainer.fit()
    dist_info.barrier()
    return load_vae(run_dir, device, backend=args.backend)


def load_vae(run_dir: Path, device: torch.device | str = "cpu", which: str = "best", backend: str | None = None) -> SkeletonVAE:
    """The VAE of a run folder (RUN/vae/best by default), frozen and in eval mode."""
    vae = load_stage_model(run_dir, "vae", which, lambda cfg: SkeletonVAE(cfg.vae, backend=backend))
    vae.requires_grad_(False)
    return vae.to(device).eval()


def main(argv: list[str] | None = None) -> int:
    args, dist_info, device = start_stage(__doc__, argv)
    cfg = config_from_args(args)
    run = Path(args.run)
    if dist_info.main:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    train_vae(cfg, args, run, dist_info, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
