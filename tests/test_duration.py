"""Sentence duration from the text: the regressor learns on the built-in corpus, is stored in
the checkpoint, and drives generate(num_frames=None) and `sald-fast generate` without --frames."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from sald_fast.config import TextConfig, preset
from sald_fast.data import load_clips
from sald_fast.duration import DurationModel
from sald_fast.pipeline import SignSALD
from sald_fast.text import build_text_encoder

SHORT = "hello"
LONG = "where is the library? my teacher and my friend want to go to the big school tomorrow"


def _frames(clips):
    return [len(c["global_orient"]) for c in clips]


def test_duration_model_learns_on_the_builtin_corpus():
    """Fit on 1000 training sentences, score the 200 test sentences (minilm, the tiny preset's
    encoder): Pearson r 0.79, mean absolute error 7.1 frames vs 11.8 for predicting the mean
    length (fitted on all 3000 training sentences, as train.full does: r 0.82, 6.6 frames)."""
    train, test = load_clips("builtin", "train")[:1000], load_clips("builtin", "test")
    enc = build_text_encoder(preset("tiny").text)
    model = DurationModel.fit(enc, [c["text"] for c in train], _frames(train))
    pred = model.predict(enc, [c["text"] for c in test]).double().numpy()
    true = np.array(_frames(test), dtype=np.float64)
    r = np.corrcoef(pred, true)[0, 1]
    assert r > 0.7, r
    assert np.abs(pred - true).mean() < 0.75 * np.abs(true - true.mean()).mean()  # 7.1 vs 11.8
    short, long = model.predict(enc, [SHORT, LONG]).tolist()
    assert long > short + 10
    assert model.predict(enc, [LONG], max_frames=20).item() == 20


def _small_model():
    cfg = preset("tiny")
    cfg.text = TextConfig(kind="tiny", max_tokens=24, tiny_dim=32, seed=0)
    cfg.denoiser.text_dim, cfg.denoiser.num_layers = 32, 2
    cfg.train.num_frames = 16
    cfg.diffusion.sample_steps = 2
    model = SignSALD.from_config(cfg, seed=0)
    # a duration model that counts words: 6 frames per word (fitted on made-up sentences)
    texts = [" ".join(["word"] * n) for n in range(1, 15)]
    model.duration = DurationModel.fit(model.text_encoder, texts, [6 * n for n in range(1, 15)], ridge=1e-3)
    return model


def test_generate_uses_predicted_lengths_and_checkpoint_round_trip(tmp_path, caplog):
    model = _small_model()
    n_short, n_long = model.predict_num_frames([SHORT, LONG]).tolist()
    assert n_long > n_short
    out = model.generate([SHORT, LONG], seed=0)                       # one padded batch of two lengths
    assert out.lengths.tolist() == [n_short, n_long] and out.positions.shape[1] == n_long
    alone = model.generate([SHORT], seed=0)
    assert alone.positions.shape[1] == n_short
    assert model.generate([SHORT], num_frames=16).positions.shape[1] == 16  # num_frames overrides
    model.save(tmp_path / "m")
    loaded = SignSALD.load(tmp_path / "m")
    assert loaded.duration is not None
    assert loaded.predict_num_frames([SHORT, LONG]).tolist() == [n_short, n_long]
    torch.testing.assert_close(loaded.generate([SHORT, LONG], seed=0).positions, out.positions)
    # a checkpoint from before the duration model: loads, falls back to config.train.num_frames with a note
    model.duration = None
    model.save(tmp_path / "old")
    old = SignSALD.load(tmp_path / "old")
    assert old.duration is None
    with caplog.at_level(logging.INFO, logger="sald_fast.pipeline"):
        assert old.generate([SHORT]).positions.shape[1] == old.config.train.num_frames
    assert "no duration model" in caplog.text
    with pytest.raises(ValueError, match="no duration model"):
        old.predict_num_frames([SHORT])


def test_cli_generate_without_frames(tmp_path, capsys):
    from sald_fast.cli import main

    model = _small_model()
    model.save(tmp_path / "m")
    n = int(model.predict_num_frames([LONG])[0])
    assert main(["generate", LONG, "--checkpoint", str(tmp_path / "m"), "--out", str(tmp_path / "a.npz"),
                 "--quiet", "--steps", "2"]) == 0
    with np.load(tmp_path / "a.npz") as z:
        assert z["joint_positions"].shape[0] == n
    model.duration = None
    model.save(tmp_path / "old")
    assert main(["generate", SHORT, "--checkpoint", str(tmp_path / "old"), "--out", str(tmp_path / "b.npz"),
                 "--quiet", "--steps", "2"]) == 0
    assert "no duration model" in capsys.readouterr().err
