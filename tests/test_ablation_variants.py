"""The paper's Table 3 variants (``sald_fast.config.VARIANTS``): every one builds, trains a few
steps with a finite falling loss, saves, loads and generates; its state_dict has exactly its
parts; a checkpoint records its variant and loading another variant's weights names the
difference; the time budget of the trainer; ``train.ablation`` end to end (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sald_fast.checkpoint import CheckpointError
from sald_fast.config import (VARIANTS, SALDConfig, TextConfig, apply_variant, preset, variant_difference,
                              variant_fields, variant_name)
from sald_fast.denoiser import Denoiser, TextConcat
from sald_fast.diffusion import GaussianDiffusion
from sald_fast.pipeline import SignSALD
from sald_fast.vae import SkeletonVAE

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
REPO = Path(__file__).resolve().parents[1]


def small_config() -> SALDConfig:
    """The tiny preset, shrunk, with the tiny text encoder (a full model)."""
    cfg = preset("tiny")
    cfg.text = TextConfig(kind="tiny", max_tokens=12, tiny_dim=32, seed=0)
    cfg.vae.channels = (16, 24, 32)
    cfg.denoiser.text_dim = 32
    cfg.denoiser.dim = 32
    cfg.denoiser.num_layers = 2
    cfg.train.num_frames = 16
    cfg.diffusion.sample_steps = 3
    return cfg


def test_variants_map_to_their_switches_and_back():
    base = small_config()
    assert variant_name(base) == "full"
    for name in VARIANTS:
        cfg = apply_variant(base, name)
        assert variant_name(cfg) == name
        assert (cfg.denoiser.num_atoms, cfg.denoiser.latent_dim) == (cfg.vae.latent_tokens, cfg.vae.latent_channels)
    frame = apply_variant(base, "no_st_latent")
    assert (frame.denoiser.num_atoms, frame.denoiser.latent_dim) == (1, 7 * base.vae.latent_dim)
    assert not frame.denoiser.skeletal_attention
    assert variant_difference(apply_variant(base, "no_cross_attn"), base) == \
        "denoiser.text_conditioning: 'concat' vs 'cross_attention'"
    with pytest.raises(ValueError, match="unknown variant 'no_ffn'"):
        apply_variant(base, "no_ffn")
    with pytest.raises(ValueError, match="needs a full-model config"):
        apply_variant(apply_variant(base, "atoms5"), "no_cross_attn")
    # the presets stay the full model
    assert variant_name(preset("tiny")) == variant_name(preset("paper")) == "full"


def test_inconsistent_latent_shapes_are_a_named_error():
    d = small_config().to_dict()
    d["vae"]["latent_layout"] = "frame"
    with pytest.raises(ValueError, match=r"frame layout: 1 token\(s\) x 112 channels .* denoiser.num_atoms=7"):
        SALDConfig.from_dict(d)
    d = small_config().to_dict()
    d["denoiser"]["text_conditioning"] = "pooled"
    with pytest.raises(ValueError, match="text_conditioning must be 'cross_attention' or 'concat'"):
        SALDConfig.from_dict(d)


def _parts(module: torch.nn.Module) -> set[str]:
    """Second-level module names of a state_dict (``layers.0.cross`` -> ``cross``)."""
    out = set()
    for k in module.state_dict():
        parts = k.split(".")
        out.add(parts[2] if parts[0] == "layers" else parts[0])
    return out


@pytest.mark.parametrize("name", list(VARIANTS))
def test_state_dict_has_exactly_the_variants_parts(name):
    cfg = apply_variant(small_config(), name)
    den, vae = Denoiser(cfg.denoiser), SkeletonVAE(cfg.vae)
    parts = _parts(den)
    d = cfg.denoiser
    assert ("temporal" in parts) == d.temporal_attention
    assert ("skeletal" in parts) == d.skeletal_attention
    assert ("cross" in parts) == (d.text_conditioning == "cross_attention")
    assert ("text_concat" in parts) == (d.text_conditioning == "concat")
    assert {"ffn", "norms", "film", "input_proj", "joint_embedding", "out_proj"} <= parts
    blocks = d.temporal_attention + d.skeletal_attention + 2
    for layer in den.layers:
        assert len(layer.norms) == len(layer.film) == len(layer.sub_block_names) == blocks
    assert den.joint_embedding.shape == (cfg.vae.latent_tokens, d.dim)
    assert den.input_proj.weight.shape == (d.dim, cfg.vae.latent_channels)
    vparts = _parts(vae)
    frame = cfg.vae.latent_layout == "frame"
    assert ({"frame_latent_head", "frame_dec_in"} <= vparts) == frame
    assert ({"latent_head", "dec_in"} & vparts) == (set() if frame else {"latent_head", "dec_in"})
    if not frame:
        assert vae.latent_head.weight.shape[0] == cfg.vae.num_atoms


def _batch(cfg: SALDConfig, B: int = 3, frames: int = 16):
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(B, frames, 44, 9, generator=g)
    text = torch.randn(B, 5, cfg.denoiser.text_dim, generator=g)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False], [True] * 3 + [False] * 2])
    return feats, text, mask


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_trains_saves_loads_and_generates(name, tmp_path):
    cfg = apply_variant(small_config(), name)
    torch.manual_seed(0)
    model = SignSALD.from_config(cfg, seed=0, backend="reference")
    vae, den = model.vae.train(), model.denoiser.train()
    feats, text, mask = _batch(cfg)
    vae.normalizer.fit(feats)
    x = vae.normalizer.normalize(feats)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    vae_losses = []
    for _ in range(12):
        loss = vae.loss(x, vae(x))["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        vae_losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(vae_losses))) and vae_losses[-1] < vae_losses[0]
    diffusion = GaussianDiffusion(cfg.diffusion)
    with torch.no_grad():
        z0 = vae.encode(x)[0]
    assert z0.shape == (3, 4, cfg.vae.latent_tokens, cfg.vae.latent_channels)
    lengths = torch.tensor([4, 3, 2])
    t, noise = torch.tensor([100, 400, 800]), torch.randn(z0.shape, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(den.parameters(), lr=3e-3)
    den_losses = []
    for _ in range(12):
        loss = diffusion.training_loss(den, z0, text, mask, lengths, 0.0, t=t, noise=noise,
                                       drop=torch.tensor([False, True, False]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        den_losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(den_losses))) and den_losses[-1] < den_losses[0]
    model.eval()
    model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())["meta"]
    assert meta["variant"] == name and meta["variant_fields"] == variant_fields(cfg)
    loaded = SignSALD.load(tmp_path / "m", backend="reference", variant=name)
    for key, value in model.denoiser.state_dict().items():
        torch.testing.assert_close(loaded.denoiser.state_dict()[key], value, rtol=0, atol=0)
    out = loaded.generate(["hello world", "where is the library"], num_frames=12, seed=0)
    assert out.positions.shape == (2, 12, 44, 3) and torch.isfinite(out.positions).all()
    again = model.generate(["hello world", "where is the library"], num_frames=12, seed=0)
    torch.testing.assert_close(out.positions, again.positions, rtol=0, atol=1e-5)


def test_loading_another_variant_names_the_difference(tmp_path):
    base = small_config()
    full = SignSALD.from_config(base, seed=0, backend="reference")
    cases = [  # (a model of another variant, the full model's part it loads, the message)
        (Denoiser(apply_variant(base, "no_cross_attn").denoiser), full.denoiser,
         r"text_conditioning: 'cross_attention' \(state_dict\) vs 'concat' \(this model\)"),
        (Denoiser(apply_variant(base, "no_temporal_attn").denoiser), full.denoiser,
         r"temporal_attention: True \(state_dict\) vs False"),
        (SkeletonVAE(apply_variant(base, "atoms9").vae), full.vae, r"num_atoms: 7 \(state_dict\) vs 9 \(this model\)"),
        (SkeletonVAE(apply_variant(base, "no_st_latent").vae), full.vae,
         r"latent_layout: 'skeletal' \(state_dict\) vs 'frame'"),
    ]
    for other, source, message in cases:
        with pytest.raises(ValueError, match=message):
            other.load_state_dict(source.state_dict())
    full.vae.load_state_dict(full.vae.state_dict())  # the same variant still loads
    full.save(tmp_path / "full")
    with pytest.raises(CheckpointError, match=r"holds the variant 'full', not 'no_cross_attn': "
                                              r"denoiser.text_conditioning: 'cross_attention' vs 'concat'"):
        SignSALD.load(tmp_path / "full", variant="no_cross_attn")
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        SignSALD.load(tmp_path / "full", variant="nope")
    # a checkpoint whose config says one variant but whose weights are another's
    doc = json.loads((tmp_path / "full" / "config.json").read_text())
    doc["config"]["denoiser"]["text_conditioning"] = "concat"
    from sald_fast.checkpoint import doc_sha256

    doc["doc_sha256"] = doc_sha256(doc)
    (tmp_path / "full" / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="does not fit the denoiser built from its config: .*text_conditioning"):
        SignSALD.load(tmp_path / "full")


def test_text_concat_is_a_linear_map_of_token_and_sentence():
    torch.manual_seed(0)
    block = TextConcat(8, 5)
    y, s = torch.randn(2, 3, 4, 8), torch.randn(2, 5)
    want = block.proj(torch.cat([y, s[:, None, None, :].expand(2, 3, 4, 5)], dim=-1))
    torch.testing.assert_close(block(y, block.text_term(s)), want, rtol=1e-5, atol=1e-6)


def test_concat_sentence_feature_ignores_padded_tokens_and_uses_null_when_dropped():
    cfg = apply_variant(small_config(), "no_cross_attn")
    den = Denoiser(cfg.denoiser).eval()
    torch.nn.init.normal_(den.null_text)
    _, text, mask = _batch(cfg)
    z = torch.randn(3, 4, 7, cfg.denoiser.latent_dim)
    t = torch.tensor([10, 500, 900])
    with torch.no_grad():
        for layer in den.layers:  # open the FiLM gates so the text reaches the output
            torch.nn.init.normal_(layer.film[2].weight, std=0.1)
        ref = den(z, t, text, mask)
        changed = text.clone()
        changed[~mask] = 100.0  # padded tokens
        torch.testing.assert_close(den(z, t, changed, mask), ref)
        other = text.clone()
        other[0, 0] += 1.0  # a real token
        assert not torch.allclose(den(z, t, other, mask)[0], ref[0])
        drop = torch.tensor([True, False, False])
        dropped = den(z, t, text, mask, drop_text=drop)
        none = den(z, t, None)
        torch.testing.assert_close(dropped[0], none[0], rtol=1e-5, atol=1e-6)


def test_time_budget_cuts_the_stage_and_survives_resume(tmp_path, monkeypatch):
    import train.common as common

    current = {}
    monkeypatch.setattr(common, "_clock", lambda: 0.5 * current["trainer"].step)  # 0.5 s per step

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, i):
            return {"x": torch.full((3,), float(i % 7))}

    def make(budget):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        current["trainer"] = common.Trainer(stage="toy", run_dir=tmp_path, model=model,
                              loss_fn=lambda m, b: {"loss": m(b["x"]).square().mean()}, train_set=Data(),
                              val_set=None, collate=lambda items: {"x": torch.stack([it["x"] for it in items])},
                              epochs=100, batch_size=4, lr=1e-2, ckpt_every=5, config=small_config(),
                              progress=False, time_budget_s=budget)
        return current["trainer"]

    trainer = make(10.0)  # 10 s at 0.5 s per step: 20 steps instead of 1600
    assert trainer.total_steps == 1600
    trainer.fit()
    assert trainer.step == trainer.total_steps == trainer.budget_steps == 20
    resumed = make(10.0)
    assert resumed.try_resume() and resumed.total_steps == 20 and resumed.step == 20
    with pytest.raises(ValueError, match="time_budget_s must be > 0"):
        make(0.0)

    # with length buckets the speed is measured per padded frame (batch size x longest clip)
    class Bucketed(Data):
        lengths = torch.arange(64) % 8 + 1

    bucketed = common.Trainer(stage="toy2", run_dir=tmp_path, model=torch.nn.Linear(3, 1),
                              loss_fn=lambda m, b: {"loss": m(b["x"]).square().mean()}, train_set=Bucketed(),
                              val_set=None, collate=lambda items: {"x": torch.stack([it["x"] for it in items])},
                              epochs=1, batch_size=4, lr=1e-2, config=small_config(), progress=False,
                              bucket_by_length=True, time_budget_s=10.0)
    assert bucketed._batch_work([0, 1, 7]) == 3 * 8 and bucketed._batch_work([8, 9]) == 2 * 2
    batches = bucketed._epoch_batches(0)
    mean = sum(4 * max(int(Bucketed.lengths[i]) for i in b) for b in batches) / len(batches)
    assert bucketed._mean_batch_work() == pytest.approx(mean)


@pytest.mark.slow
def test_ablation_command_trains_scores_resumes_and_refuses_another_variant(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    run = tmp_path / "abl"
    cmd = [sys.executable, "-m", "train.ablation", "--preset", "tiny", "--data", "builtin", "--text-encoder", "tiny",
           "--device", "cpu", "--no-progress", "--run", str(run), "--max-steps", "3", "--num-samples", "4",
           "--variants", "no_cross_attn,full"]

    def run_it(args):
        return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)

    proc = run_it(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = json.loads((run / "table3.json").read_text())
    assert [r["variant"] for r in table["rows"]] == ["no_cross_attn", "full"]
    for r in table["rows"]:
        assert set(r["sign_sald"]) >= {"BLEU-4", "ROUGE-L", "FID", "MPJPE"}
        assert r["parameters"]["denoiser"] > 0 and r["sampling_seconds"] > 0 and r["denoiser_steps"] == 3
    rows = {r["variant"]: r for r in table["rows"]}
    assert rows["no_cross_attn"]["vae_from"] == "full"  # same VAE: trained once
    assert rows["no_cross_attn"]["parameters"]["vae"] == rows["full"]["parameters"]["vae"]
    assert "| w/o CrossAttn |" in (run / "table3.md").read_text()
    logs = {n: (run / n / "log.jsonl").read_text() for n in ("full", "no_cross_attn")}
    proc = run_it(cmd)  # finished variants are not trained again
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {n: (run / n / "log.jsonl").read_text() for n in logs} == logs
    # a folder of one variant is not reused for another
    (run / "no_skeletal_attn").mkdir()
    (run / "no_skeletal_attn" / "config.json").write_text((run / "full" / "config.json").read_text())
    proc = run_it([*cmd[:-1], "no_skeletal_attn"])
    assert proc.returncode != 0
    assert "holds another variant than 'no_skeletal_attn' (denoiser.skeletal_attention: True vs False" in proc.stderr
