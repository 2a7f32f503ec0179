"""Stage 2: train the denoiser on the frozen VAE's latents.

``python -m train.denoiser [--preset tiny] [--data builtin]`` (needs RUN/vae from ``train.vae``).

Latents (mu, logvar) of every training clip and the text features of every sentence are computed
once; each step draws z0 = (mu + sigma * eps) * latent_scale, where ``latent_scale`` (stored in the
VAE's buffer) makes the latents unit-variance for the diffusion schedule.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sald_fast.config import SALDConfig
from sald_fast.denoiser import Denoiser
from sald_fast.diffusion import GaussianDiffusion
from sald_fast.frames import frame_mask, latent_length
from sald_fast.ops import validate_lengths, validate_text_mask
from sald_fast.text import TextEncoder, build_text_encoder
from sald_fast.vae import SkeletonVAE

from .common import Dist, Trainer, config_from_args, load_stage_model, start_stage
from .data import load_split_datasets
from .vae import load_vae

__all__ = ["LatentTextDataset", "train_denoiser", "load_denoiser", "main"]


class LatentTextDataset(torch.utils.data.Dataset):
    """Pre-encoded latents with their text: items dict(mu, logvar (N',J',d), length (latent
    frames), text_index). ``text_features`` (T, L, C) and ``text_mask`` (T, L) are shared tables.

    The values the training step never reads back (lengths in [1, N'], a real token in every
    text) are validated here, once per dataset, so the steps need no host synchronisation."""

    def __init__(self, mu, logvar, lengths, text_index, text_features, text_mask):
        self.mu, self.logvar, self.lengths, self.text_index = mu, logvar, lengths, text_index
        self.text_features, self.text_mask = text_features, text_mask
        validate_lengths(torch.as_tensor(lengths), mu.shape[0], mu.shape[1], name="latent lengths")
        validate_text_mask(text_mask)
        self._tables: dict = {}

    def text_tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(text_features, text_mask) on ``device``, copied there once (a step indexes them with the
        batch's device ``text_index``: no copy back to the host)."""
        key = str(device)
        if key not in self._tables:
            self._tables[key] = (self.text_features.to(device), self.text_mask.to(device))
        return self._tables[key]

    def __getstate__(self) -> dict:  # data-loader workers get the host tables only
        return {**self.__dict__, "_tables": {}}

    def __len__(self) -> int:
        return self.mu.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"mu": self.mu[i], "logvar": self.logvar[i], "length": self.lengths[i], "text_index": self.text_index[i]}


def _collate_latents(items: list[dict]) -> dict:
    return {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in items[0]}


def _collate_latents_trimmed(items: list[dict]) -> dict:
    """Like ``_collate_latents``, with mu / logvar trimmed to the batch's longest length."""
    batch = _collate_latents(items)
    n = int(batch["length"].max())
    batch["mu"], batch["logvar"] = batch["mu"][:, :n], batch["logvar"][:, :n]
    return batch


@torch.no_grad()
def encode_dataset(vae: SkeletonVAE, dataset, text_encoder: TextEncoder, device: torch.device,
                   batch_size: int = 64, progress: bool = True) -> LatentTextDataset:
    """Encode every item of a MotionTextDataset (eval crops) into latents and text features."""
    mus, logvars, lengths, texts = [], [], [], []
    for i in tqdm(range(0, len(dataset), batch_size), desc="encode latents", disable=not progress):
        items = [dataset[j] for j in range(i, min(i + batch_size, len(dataset)))]
        x = torch.stack([it["features"] for it in items]).to(device)
        mu, logvar = vae.encode(vae.normalizer.normalize(x))
        mus.append(mu.float().cpu())
        logvars.append(logvar.float().cpu())
        lengths.extend(latent_length(it["length"]) for it in items)
        texts.extend(it["text"] for it in items)
    unique = sorted(set(texts))
    feats, masks = [], []
    for i in tqdm(range(0, len(unique), 128), desc="encode text", disable=not progress):
        f, m = text_encoder.encode(unique[i:i + 128])
        pad = text_encoder.max_tokens - f.shape[1]
        feats.append(torch.nn.functional.pad(f.float().cpu(), (0, 0, 0, pad)))
        masks.append(torch.nn.functional.pad(m.cpu(), (0, pad), value=False))
    where = {t: i for i, t in enumerate(unique)}
    return LatentTextDataset(torch.cat(mus), torch.cat(logvars), torch.tensor(lengths),
                             torch.tensor([where[t] for t in texts]), torch.cat(feats), torch.cat(masks))


def latent_scale_of(ds: LatentTextDataset) -> float:
    """1 / std of the valid latent means (so scaled latents have unit variance)."""
    mask = frame_mask(ds.lengths, ds.mu.shape[1])
    return float(1.0 / ds.mu[mask].std().clamp_min(1e-4))


def train_denoiser(cfg: SALDConfig, args: argparse.Namespace, run_dir: Path, dist_info: Dist, device: torch.device,
                   vae: SkeletonVAE | None = None, text_encoder: TextEncoder | None = None) -> Denoiser:
    """Train (or resume) the denoiser; returns the best one (eval mode). Sets ``vae.latent_scale``."""
    vae = vae if vae is not None else load_vae(run_dir, device, backend=args.backend)
    text_encoder = text_encoder if text_encoder is not None else build_text_encoder(cfg.text)
    train_items, val_items, _ = load_split_datasets(cfg, args, train_crops=False)
    progress = not args.no_progress and dist_info.main
    train_set = encode_dataset(vae, train_items, text_encoder, device, progress=progress)
    val_set = encode_dataset(vae, val_items, text_encoder, device, progress=progress)
    scale = latent_scale_of(train_set)
    vae.latent_scale.fill_(scale)
    cfg.denoiser.text_dim = text_encoder.dim
    torch.manual_seed(cfg.train.seed)  # same initial weights on every run (and every rank)
    denoiser = Denoiser(cfg.denoiser, backend=args.backend).to(device)
    diffusion = GaussianDiffusion(cfg.diffusion)

    full = tuple(train_set.mu.shape[1:])  # (N', J', d): drawn at full length, so trimming cannot change a draw

    def loss_fn(model, batch):
        mu, logvar = batch["mu"], batch["logvar"]
        rng, n = batch["rng"], mu.shape[1]  # per-sample streams keyed by (seed, step, dataset index)
        eps = rng.randn(full, device, mu.dtype)[:, :n]
        t = rng.randint(diffusion.num_train_steps, device)
        noise = rng.randn(full, device, mu.dtype)[:, :n]
        drop = rng.rand(device) < cfg.denoiser.cond_drop_prob
        z0 = (mu + eps * (0.5 * logvar).exp()) * scale
        features, masks = train_set.text_tables(device)  # device-side tables: no host copy per step
        text, mask = features[batch["text_index"]], masks[batch["text_index"]]
        loss = diffusion.training_loss(model, z0, text, mask, batch["length"], cfg.denoiser.cond_drop_prob,
                                       t=t, noise=noise, drop=drop)
        return {"loss": loss}

    def val_loss_fn(model, batch):
        mu = batch["mu"] * scale
        features, masks = val_set.text_tables(device)
        text, mask = features[batch["text_index"]], masks[batch["text_index"]]
        return {"loss": diffusion.training_loss(model, mu, text, mask, batch["length"], 0.0)}

    t = cfg.train
    collate = _collate_latents_trimmed if t.bucket_by_length else _collate_latents
    trainer = Trainer(stage="denoiser", run_dir=run_dir, model=denoiser, loss_fn=loss_fn, train_set=train_set,
                      val_set=val_set, collate=collate, epochs=t.denoiser_epochs,
                      batch_size=t.denoiser_batch, lr=t.lr, lr_schedule=t.lr_schedule, weight_decay=t.weight_decay, grad_clip=t.grad_clip,
                      max_steps=t.max_steps, ckpt_every=t.ckpt_every, seed=t.seed, config=cfg, dist_info=dist_info,
                      device=device, progress=not args.no_progress, autocast=device.type == "cuda",
                      compile=args.compile, warmup_steps=t.warmup_steps, ema_decay=t.ema_decay,
                      bucket_by_length=t.bucket_by_length,
                      time_budget_s=None if t.denoiser_budget_minutes is None else 60.0 * t.denoiser_budget_minutes,
                      extra_state=lambda: ({"latent_scale": vae.latent_scale.detach().cpu()}, {}),
                      val_loss_fn=val_loss_fn)  # validation: clean mean latents, no condition dropout
    if args.resume:
        trainer.try_resume()
    trainer.fit()
    dist_info.barrier()
    return load_denoiser(run_dir, device, backend=args.backend)


def load_denoiser(run_dir: Path, device: torch.device | str = "cpu", which: str = "best",
                  backend: str | None = None) -> Denoiser:
    """The denoiser of a run folder (RUN/denoiser/best by default), in eval mode."""
    den = load_stage_model(run_dir, "denoiser", which, lambda cfg: Denoiser(cfg.denoiser, backend=backend))
    return den.to(device).eval()


def main(argv: list[str] | None = None) -> int:
    args, dist_info, device = start_stage(__doc__, argv)
    run = Path(args.run)
    if not (run / "vae" / "best" / "config.json").exists():
        print(f"error: no trained VAE in {run}/vae/best; run `python -m train.vae --run {run}` first", file=sys.stderr)
        return 2
    cfg = SALDConfig.from_dict(json.loads((run / "config.json").read_text())) if (run / "config.json").exists() \
        else config_from_args(args)
    train_denoiser(cfg, args, run, dist_info, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
