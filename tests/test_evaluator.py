"""Evaluation models and procedure: a tiny evaluator trained on a handful of built-in corpus
clips; training and evaluation determinism, save/load round trip, the table, and bad input."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from sald_fast.eval import evaluate, format_table, write_results
from sald_fast.eval.evaluate import reference_poses
from sald_fast.eval.models import PoseEvaluator, evaluator_config

NUM_FRAMES = 32
# every test clip is longer than NUM_FRAMES: evaluate() warns that it crops them (tested in test_eval_alternate)
pytestmark = pytest.mark.filterwarnings("ignore:evaluate. [0-9]+ of [0-9]+ test clips are longer:UserWarning")


def _tiny_config():
    return evaluator_config("tiny", NUM_FRAMES, dim=32, num_heads=2, encoder_layers=1, decoder_layers=1,
                            embed_dim=8, max_tokens=8, dropout=0.1)


@pytest.fixture(scope="module")
def data() -> dict[str, list[dict]]:
    """A handful of clips of the built-in corpus (generated, not cached)."""
    from sald_fast.data.builtin import builtin_corpus

    return builtin_corpus(seed=0, num_train=24, num_val=6, num_test=6, cache=False)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> PoseEvaluator:
    from train.evaluator import fit_evaluator

    log = tmp_path_factory.mktemp("evaluator") / "log.jsonl"
    model = fit_evaluator(data["train"], data["val"], _tiny_config(), epochs=3, batch_size=8, seed=0, progress=False,
                          log_path=log)
    model.train_log = [json.loads(line) for line in log.read_text().splitlines()]
    return model


@dataclass
class _Output:
    positions: torch.Tensor


class _FakeSignSALD:
    """Stands in for SignSALD: deterministic poses from the seed; an identity 'VAE'."""

    def __init__(self, offsets_from: torch.Tensor):
        self.template = offsets_from  # (44, 3)
        self.vae = _IdentityVAE()
        self.calls: list[dict] = []

    def generate(self, texts, num_frames=None, seed=0, lengths=None, progress=False):
        self.calls.append({"n": len(texts), "seed": seed, "lengths": lengths})
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(len(texts), num_frames, 44, 3, generator=g) * 0.05
        return _Output(positions=self.template + noise)


class _IdentityVAE(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.normalizer = self

    def normalize(self, x):
        return x

    def denormalize(self, x):
        return x

    def forward(self, x, sample=True):
        return {"recon": x}


def test_training_learns_and_stores_statistics(trained, data):
    assert trained.meta["steps"] == 9  # 3 epochs of 24 // 8 batches
    assert np.isfinite(trained.meta["val"]["ce"])
    assert torch.all(trained.input_std > 0)
    assert trained.real_sigma.shape == (8, 8) and torch.isfinite(trained.real_sigma).all()
    assert trained.real_mu.abs().sum() > 0
    # the loss really falls: validation CE drops every epoch, and the last steps' training loss is below the first ones'
    val_ce = [h["val_ce"] for h in trained.meta["history"]]
    assert len(val_ce) == 3 and all(b < a for a, b in zip(val_ce, val_ce[1:])), val_ce
    assert val_ce[-1] < val_ce[0] - 0.01, val_ce
    train_loss = [r["loss"] for r in trained.train_log if "loss" in r]
    assert len(train_loss) == 9
    assert sum(train_loss[-3:]) / 3 < sum(train_loss[:3]) / 3 - 0.1, train_loss


def test_training_is_reproducible(trained, data):
    from train.evaluator import fit_evaluator

    again = fit_evaluator(data["train"], data["val"], _tiny_config(), epochs=3, batch_size=8, seed=0, progress=False)
    for (k, a), (_, b) in zip(trained.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def test_max_steps_stops_mid_epoch_and_saves(data, tmp_path):
    from train.evaluator import fit_evaluator

    model = fit_evaluator(data["train"], data["val"], _tiny_config(), epochs=3, batch_size=8, max_steps=2,
                          progress=False, log_path=tmp_path / "log.jsonl")
    assert model.meta["steps"] == 2 and np.isfinite(model.meta["val"]["ce"])
    model.save(tmp_path / "ev", model.meta)  # meta is valid JSON (no inf)
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2] and any("val_loss" in r for r in lines)


def test_evaluation_is_deterministic_and_complete(trained, data):
    template = trained.mean_pose.clone()
    r1 = evaluate(_FakeSignSALD(template), trained, data["test"], batch_size=4, progress=False)
    model = _FakeSignSALD(template)
    r2 = evaluate(model, trained, data["test"], batch_size=4, progress=False)
    assert r1["rows"] == r2["rows"]
    assert r1["examples"] == r2["examples"]
    rows = r1["rows"]
    assert list(rows) == ["Mean pose", "Sign-SALD", "VAE reconstruction", "Ground truth"]
    for row in rows.values():
        assert set(row) == {"BLEU-4", "ROUGE-L", "FID", "FID (vs test)", "MPJPE", "DTW-MJE"}
        assert all(np.isfinite(v) for v in row.values())
    assert rows["Ground truth"]["MPJPE"] == 0.0 and rows["Ground truth"]["DTW-MJE"] == 0.0
    assert 0 < rows["Mean pose"]["DTW-MJE"] <= rows["Mean pose"]["MPJPE"] + 1e-9  # DTW can only match better
    # the identity VAE reproduces the references exactly
    assert rows["VAE reconstruction"]["MPJPE"] == pytest.approx(0.0, abs=1e-6)
    assert rows["VAE reconstruction"]["BLEU-4"] == rows["Ground truth"]["BLEU-4"]
    assert rows["VAE reconstruction"]["FID"] == pytest.approx(rows["Ground truth"]["FID"], abs=1e-6)
    assert rows["Mean pose"]["MPJPE"] > 0
    # fixed batches, seeds seed + b, reference lengths passed on
    assert [c["seed"] for c in model.calls] == [0, 1]
    _, lengths, _ = reference_poses(data["test"], NUM_FRAMES, progress=False)
    assert sum((c["lengths"] for c in model.calls), []) == lengths.tolist()
    # the mean pose is one input per length: sequences of one length get one translation
    pos, lengths, _ = reference_poses(data["test"], NUM_FRAMES, progress=False)
    mean = trained.mean_pose.expand(len(lengths), NUM_FRAMES, 44, 3)
    hyps = trained.translate(mean, torch.full_like(lengths, NUM_FRAMES))
    assert len(set(hyps)) == 1


def test_reconstruction_mpjpe(data):
    from sald_fast.eval import reconstruction_mpjpe

    assert reconstruction_mpjpe(_IdentityVAE(), data["test"], NUM_FRAMES, progress=False) == pytest.approx(0.0, abs=1e-6)

    class _Shift(_IdentityVAE):  # moves the root translation channels: removed by root alignment
        def forward(self, x, sample=True):
            y = x.clone()
            y[..., 0, 6:9] += 0.1
            return {"recon": y}

    assert reconstruction_mpjpe(_Shift(), data["test"], NUM_FRAMES, progress=False) == pytest.approx(0.0, abs=1e-4)


def test_save_load_round_trip(trained, data, tmp_path):
    trained.save(tmp_path / "ev", {**trained.meta, "dataset": "synthetic"})
    loaded = PoseEvaluator.load(tmp_path / "ev")
    assert loaded.meta["dataset"] == "synthetic"
    assert loaded.tokenizer.words == trained.tokenizer.words
    for (k, a), (_, b) in zip(trained.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    pos, lengths, _ = reference_poses(data["test"], NUM_FRAMES, progress=False)
    trained.eval()
    assert loaded.translate(pos, lengths) == trained.translate(pos, lengths)
    assert torch.equal(loaded.fid_features(pos, lengths), trained.fid_features(pos, lengths))
    r_mem = evaluate(None, trained, data["test"], progress=False)
    r_disk = evaluate(None, tmp_path / "ev", data["test"], progress=False)
    assert r_mem["rows"] == r_disk["rows"]
    assert list(r_disk["rows"]) == ["Mean pose", "Ground truth"]


def test_table_and_files(trained, data, tmp_path):
    results = evaluate(_FakeSignSALD(trained.mean_pose.clone()), trained, data["test"], progress=False)
    table = format_table(results)
    lines = table.splitlines()
    assert lines[0].startswith("| Methods | BLEU-4")
    for label in ("Mean pose (lower bound)", "Sign-SALD", "VAE reconstruction", "Ground truth (ceiling)"):
        assert any(line.startswith(f"| {label} |") for line in lines), label
    gt_line = next(line for line in lines if line.startswith("| Ground truth"))
    assert f"{results['rows']['Ground truth']['BLEU-4']:.2f}" in gt_line
    js, md = write_results(results, tmp_path / "run")
    assert json.loads(js.read_text())["rows"] == results["rows"]
    assert table in md.read_text()


def test_bad_input(trained, tmp_path):
    with pytest.raises(ValueError, match="positions must have shape"):
        trained.translate(torch.zeros(2, NUM_FRAMES + 4, 44, 3))
    with pytest.raises(ValueError, match="lengths"):
        trained.fid_features(torch.zeros(2, 8, 44, 3), torch.tensor([0, 8]))
    with pytest.raises(TypeError, match="floating-point"):
        trained.translate(torch.zeros(2, 8, 44, 3, dtype=torch.long))
    with pytest.raises(FileNotFoundError, match="train.evaluator"):
        PoseEvaluator.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="no test clips"):
        evaluate(None, trained, [], progress=False)
    with pytest.raises(ValueError, match="num_samples"):
        evaluate(None, trained, [{}], num_samples=0, progress=False)


@pytest.mark.slow
def test_evaluate_run_with_a_real_signsald(trained, data, tmp_path):
    """evaluate_run on a run folder: SignSALD.load, generation with the reference lengths,
    VAE reconstruction, eval.json / eval.md; a second evaluation gives the same file."""
    from sald_fast.config import preset
    from sald_fast.eval import evaluate_run
    from sald_fast.pipeline import SignSALD

    cfg = preset("tiny")
    cfg.text.kind = "tiny"
    cfg.text.tiny_dim = 32
    cfg.denoiser.text_dim = 32
    cfg.train.num_frames = NUM_FRAMES
    SignSALD.from_config(cfg, seed=0).save(tmp_path / "run" / "model")
    trained.save(tmp_path / "run" / "evaluator", {**trained.meta, "dataset": "synthetic"})
    table = evaluate_run(tmp_path / "run", clips=data["test"], num_samples=4, steps=2, device="cpu", progress=False,
                         batch_size=2)
    first = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert list(first["rows"]) == ["Mean pose", "Sign-SALD", "VAE reconstruction", "Ground truth"]
    assert first["settings"]["num_samples"] == 4 and first["settings"]["steps"] == 2
    assert table in (tmp_path / "run" / "eval.md").read_text()
    assert "| Sign-SALD |" in table
    evaluate_run(tmp_path / "run", clips=data["test"], num_samples=4, steps=2, device="cpu", progress=False,
                 batch_size=2)
    assert json.loads((tmp_path / "run" / "eval.json").read_text()) == first
    # --videos N: side-by-side videos ground truth | generated | VAE reconstruction of the first N sentences
    import imageio.v3 as iio

    evaluate_run(tmp_path / "run", clips=data["test"], num_samples=4, steps=2, device="cpu", progress=False,
                 batch_size=2, videos=2)
    videos = json.loads((tmp_path / "run" / "eval.json").read_text())["settings"]["videos"]
    assert [Path(v).name for v in videos] == ["video_00.mp4", "video_01.mp4"]
    frames = iio.imread(videos[0], index=None)
    assert frames.shape[2] == 3 * 320 + 2 * 2 and frames.std() > 0
