"""The training options added for the README run (each a config field whose default is the
paper's behaviour): prediction target, min-SNR weighting, warm-up, EMA, length buckets."""

from __future__ import annotations

import math

import pytest
import torch

from sald_fast.checkpoint import load_checkpoint
from sald_fast.config import DiffusionConfig, SALDConfig, TrainConfig, preset
from sald_fast.diffusion import GaussianDiffusion
from train.common import Trainer
from train.data import trimmed


def test_paper_preset_keeps_the_paper_recipe():
    p = preset("paper")
    assert p.diffusion.prediction_type == "epsilon" and p.diffusion.loss_weighting == "uniform"
    assert p.train.ema_decay == 0.0 and p.train.warmup_steps == 0 and p.train.lr_schedule == "constant"
    assert not p.train.bucket_by_length and p.train.vae_lr is None


@pytest.mark.parametrize("field, value", [("prediction_type", "x0"), ("loss_weighting", "snr"), ("min_snr_gamma", 0.0)])
def test_bad_diffusion_options_are_named(field, value):
    with pytest.raises(ValueError, match=field):
        DiffusionConfig(**{field: value})


@pytest.mark.parametrize("field, value", [("ema_decay", 1.0), ("ema_decay", -0.1), ("warmup_steps", -1),
                                          ("vae_lr_schedule", "linear")])
def test_bad_train_options_are_named(field, value):
    with pytest.raises(ValueError, match=field):
        SALDConfig(train=TrainConfig(**{field: value}))


@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction"])
def test_targets_and_oracle_sampling(kind):
    """An oracle that predicts the exact target of ``kind`` makes DDIM recover z0."""
    diff = GaussianDiffusion(DiffusionConfig(prediction_type=kind, sample_steps=10))
    torch.manual_seed(0)
    z0 = torch.randn(3, 5, 7, 4)
    t = torch.tensor([0, 500, 999])
    noise = torch.randn_like(z0)
    a = diff.alphas_cumprod[t].view(-1, 1, 1, 1)
    want = {"epsilon": noise, "sample": z0, "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * z0}[kind]
    torch.testing.assert_close(diff.target(z0, noise, t), want)

    def oracle(z_t, t_in, *args, **kwargs):
        a_t = diff.alphas_cumprod[t_in.long()].view(-1, 1, 1, 1)
        eps = (z_t - a_t.sqrt() * z0) / (1 - a_t).sqrt()
        return diff.target(z0, eps, t_in)

    out = diff.sample(oracle, tuple(z0.shape), None, None, None, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, z0, atol=1e-3, rtol=1e-3)


def test_min_snr_weights():
    t = torch.tensor([10, 300, 999])
    for kind in ("epsilon", "sample", "v_prediction"):
        diff = GaussianDiffusion(DiffusionConfig(prediction_type=kind, loss_weighting="min_snr", min_snr_gamma=5.0))
        a = diff.alphas_cumprod[t].double()
        snr = a / (1 - a)
        base = snr.clamp(max=5.0)
        want = {"epsilon": base / snr, "sample": base, "v_prediction": base / (snr + 1)}[kind]
        torch.testing.assert_close(diff.loss_weight(t), want.float())
        assert diff.loss_weight(t).shape == (3,)
    uniform = GaussianDiffusion(DiffusionConfig())
    assert torch.equal(uniform.loss_weight(t), torch.ones(3))


def _trainer(tmp_path, **kw) -> Trainer:
    torch.manual_seed(0)
    data = [{"x": torch.randn(3)} for _ in range(40)]
    return Trainer(stage="t", run_dir=tmp_path, model=torch.nn.Linear(3, 1),
                   loss_fn=lambda m, b: {"loss": (m(b["x"]) - 1).pow(2).mean()}, train_set=data, val_set=data[:8],
                   collate=lambda items: {"x": torch.stack([i["x"] for i in items])}, epochs=5, batch_size=4, lr=1e-2,
                   config=preset("tiny"), progress=False, **kw)


def test_warmup_then_cosine(tmp_path):
    t = _trainer(tmp_path, warmup_steps=10, lr_schedule="cosine")
    lrs = [t.lr_at(s) for s in range(t.total_steps)]
    assert math.isclose(lrs[0], 1e-3) and math.isclose(lrs[9], 1e-2)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and math.isclose(lrs[-1], 1e-3)


def test_ema_is_validated_saved_and_resumed(tmp_path):
    t = _trainer(tmp_path, ema_decay=0.9)
    t.fit()
    raw, ema = t.model.weight.detach(), t.ema.weight.detach()
    assert not torch.allclose(raw, ema)
    best, _, meta = load_checkpoint(tmp_path / "t" / "best")
    torch.testing.assert_close(best["model.weight"], ema)  # sampling uses the average
    latest, _, _ = load_checkpoint(tmp_path / "t" / "latest")
    torch.testing.assert_close(latest["model.weight"], raw)
    torch.testing.assert_close(latest["ema.weight"], ema)
    t2 = _trainer(tmp_path, ema_decay=0.9)
    assert t2.try_resume()
    torch.testing.assert_close(t2.ema.weight.detach(), ema)


class _Lengths(list):
    """A list dataset with per-item lengths (like MotionTextDataset)."""

    def __init__(self, items, lengths):
        super().__init__(items)
        self.lengths = lengths


def test_length_buckets_keep_every_item_once(tmp_path):
    torch.manual_seed(0)
    lengths = torch.randint(10, 100, (256,)).tolist()
    data = _Lengths([{"x": torch.randn(3)} for _ in range(256)], lengths)
    kw = dict(stage="t", run_dir=tmp_path, model=torch.nn.Linear(3, 1), loss_fn=None, train_set=data, val_set=None,
              collate=None, epochs=1, batch_size=8, lr=1e-3, config=preset("tiny"), progress=False)
    plain = Trainer(**kw)._epoch_batches(0)
    bucketed = Trainer(**kw, bucket_by_length=True)._epoch_batches(0)
    assert sorted(i for b in plain for i in b) == sorted(i for b in bucketed for i in b)
    assert all(len(b) == 8 for b in bucketed)
    spread = lambda batches: sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    assert spread(bucketed) < 0.3 * spread(plain)
    assert bucketed == Trainer(**kw, bucket_by_length=True)._epoch_batches(0)  # reproducible


def test_trimmed_collate():
    items = [{"features": torch.randn(112, 2), "length": n} for n in (33, 47)]
    collate = trimmed(lambda its: {"features": torch.stack([i["features"] for i in its]),
                                   "length": torch.tensor([i["length"] for i in its])}, multiple=16)
    batch = collate(items)
    assert batch["features"].shape == (2, 48, 2)
    torch.testing.assert_close(batch["features"], torch.stack([i["features"][:48] for i in items]))
