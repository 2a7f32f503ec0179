"""Trainer pieces that need no data: the learning-rate schedule and its config validation."""

import math

import pytest
import torch

from sald_fast.config import preset
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
