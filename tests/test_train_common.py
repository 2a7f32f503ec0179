"""Trainer pieces that need no data: the learning-rate schedule and its config validation, and a
training step that reads nothing back from the device."""

import contextlib
import json
import math
import sys

import pytest
import torch

from sald_fast.checkpoint import load_checkpoint
from sald_fast.config import preset
from sald_fast.denoiser import Denoiser
from sald_fast.diffusion import GaussianDiffusion
from sald_fast.frames import frame_mask
from sald_fast.vae import SkeletonVAE
from test_sampling_plan import count_host_syncs
from train.common import Trainer


def _trainer(tmp_path, schedule: str) -> Trainer:
    data = [{"x": torch.randn(3)} for _ in range(40)]
    return Trainer(stage="t", run_dir=tmp_path, model=torch.nn.Linear(3, 1), loss_fn=lambda m, b: {"loss": m(b).pow(2).mean()},
                   train_set=data, val_set=None, collate=lambda items: torch.stack([i["x"] for i in items]), epochs=5,
                   batch_size=4, lr=2e-3, config=preset("tiny"), progress=False, lr_schedule=schedule)


def test_constant_schedule(tmp_path):
    t = _trainer(tmp_path, "constant")
    assert {t.lr_at(s) for s in range(t.total_steps)} == {2e-3}


def test_cosine_schedule_decays_from_lr_to_a_tenth(tmp_path):
    t = _trainer(tmp_path, "cosine")
    lrs = [t.lr_at(s) for s in range(t.total_steps)]
    assert t.total_steps == 50
    assert math.isclose(lrs[0], 2e-3) and math.isclose(lrs[-1], 2e-4)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_fit_applies_the_schedule(tmp_path):
    t = _trainer(tmp_path, "cosine")
    t.fit()
    assert t.step == 50
    assert math.isclose(t.optimizer.param_groups[0]["lr"], 2e-4)


def test_unknown_schedule_is_rejected():
    cfg = preset("tiny")
    cfg.train.lr_schedule = "linear"
    with pytest.raises(ValueError, match="lr_schedule"):
        cfg.__post_init__()


# ----------------------------------------------------------------------------- host synchronisations

@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_a_training_step_reads_nothing_back(backend):
    """The denoiser's and the VAE's loss, backward and gradient clipping convert no tensor to Python."""
    cfg = preset("tiny")
    cfg.denoiser.text_dim = 8
    torch.manual_seed(0)
    den, vae = Denoiser(cfg.denoiser, backend=backend), SkeletonVAE(cfg.vae, backend=backend)
    diffusion = GaussianDiffusion(cfg.diffusion)
    z0, text = torch.randn(3, 8, cfg.denoiser.num_atoms, cfg.denoiser.latent_dim), torch.randn(3, 5, 8)
    text_mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] + [False] * 4])
    x = vae.normalizer.normalize(torch.randn(3, 32, *vae.normalizer.mean.shape))
    mask = frame_mask(torch.tensor([32, 20, 9]), 32)
    with count_host_syncs() as counts:
        diffusion.training_loss(den, z0, text, text_mask, torch.tensor([8, 5, 3]), 0.1).backward()
        torch.nn.utils.clip_grad_norm_(den.parameters(), 1.0)
        vae.loss(x, vae(x), mask=mask)["total"].backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
    assert sum(counts.values()) == 0, dict(counts)


@contextlib.contextmanager
def count_trainer_syncs():
    """count_host_syncs without the reads torch.optim makes of its own step counters (kept on the
    host: ``state["step"]`` is a CPU tensor unless the optimiser is capturable)."""
    with count_host_syncs() as counts:
        counted = torch.Tensor.item

        def item(self):
            if "torch/optim" in sys._getframe(1).f_code.co_filename.replace("\\", "/"):
                counts["item"] -= 1
            return counted(self)

        torch.Tensor.item = item
        try:
            yield counts
        finally:
            torch.Tensor.item = counted


def _loop(tmp_path, max_steps: int, loss_fn=None, **kw) -> Trainer:
    data = [{"x": torch.randn(3)} for _ in range(80)]
    return Trainer(stage="t", run_dir=tmp_path, model=torch.nn.Linear(3, 1),
                   loss_fn=loss_fn or (lambda m, b: {"loss": m(b).pow(2).mean(), "scale": m(b).abs().mean()}),
                   train_set=data, val_set=data[:8], collate=lambda items: torch.stack([i["x"] for i in items]),
                   epochs=1, batch_size=2, lr=1e-3, config=preset("tiny"), progress=False, max_steps=max_steps, **kw)


def test_fit_reads_the_metrics_once_per_window(tmp_path):
    """20 steps read back no more often than 10 (log_every > both; validation and the checkpoint at
    the end are the same in both), and every step is still logged with its own loss."""
    runs = {}
    for steps in (10, 20):
        trainer = _loop(tmp_path / str(steps), steps, log_every=50)
        with count_trainer_syncs() as counts:
            trainer.fit()
        runs[steps] = sum(counts.values())
        records = [json.loads(line) for line in (tmp_path / str(steps) / "log.jsonl").read_text().splitlines()]
        steps_logged = [r["step"] for r in records if "loss" in r]
        assert steps_logged == list(range(1, steps + 1))
        assert all(math.isfinite(r["loss"]) and r["scale"] > 0 for r in records if "loss" in r)
    assert runs[20] == runs[10], runs


def test_a_non_finite_loss_stops_before_the_next_checkpoint(tmp_path):
    calls = []

    def loss_fn(m, b):
        calls.append(1)
        loss = m(b).pow(2).mean()
        return {"loss": loss * float("nan") if len(calls) == 5 else loss}

    trainer = _loop(tmp_path, 20, loss_fn, ckpt_every=3, log_every=10)
    with pytest.raises(FloatingPointError, match=r"t: loss is nan at step 4"):
        trainer.fit()
    _, _, meta = load_checkpoint(tmp_path / "t" / "latest")
    assert meta["step"] == 3  # the checkpoint after the bad step (at 6) was never written
    assert torch.isfinite(load_checkpoint(tmp_path / "t" / "latest")[0]["model.weight"]).all()


def test_log_every_is_validated(tmp_path):
    with pytest.raises(ValueError, match="log_every must be >= 1"):
        _loop(tmp_path, 4, log_every=0)


@pytest.mark.parametrize("capability, expect", [((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_bf16_autocast_only_where_the_gpu_has_native_bf16(tmp_path, monkeypatch, capsys, capability, expect):
    """Training asks for bf16 autocast on CUDA; a GPU older than Ampere (V100, T4) emulates bf16
    and the Triton kernels' bf16 dots need sm_80, so there the Trainer trains in float32 and says
    so (the GPU is faked here: only its capability and name are read)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    data = [{"x": torch.randn(3)} for _ in range(8)]
    t = Trainer(stage="t", run_dir=tmp_path, model=torch.nn.Linear(3, 1), loss_fn=lambda m, b: {"loss": m(b).mean()},
                train_set=data, val_set=None, collate=lambda items: torch.stack([i["x"] for i in items]), epochs=1,
                batch_size=4, lr=1e-3, config=preset("tiny"), progress=False, autocast=True,
                device=torch.device("cuda", 0))
    assert t.autocast is expect
    said = capsys.readouterr().out
    assert ("bf16 autocast off: Fake GPU has no native bf16" in said) is (not expect)
