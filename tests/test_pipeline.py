"""SignSALD: generation shapes, determinism, padding/cropping, save/load, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sald_fast.checkpoint import CheckpointError
from sald_fast.config import TextConfig, preset
from sald_fast.pipeline import GenerationOutput, SignSALD, skeleton_id

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def small_config():
    """The tiny preset, shrunk further, with the tiny text encoder (fast)."""
    cfg = preset("tiny")
    cfg.text = TextConfig(kind="tiny", max_tokens=12, tiny_dim=32, seed=0)
    cfg.denoiser.text_dim = 32
    cfg.denoiser.num_layers = 2
    cfg.train.num_frames = 16
    cfg.diffusion.sample_steps = 3
    return cfg


@pytest.fixture(scope="module")
def model() -> SignSALD:
    m = SignSALD.from_config(small_config(), seed=0)
    m.vae.latent_scale.fill_(0.7)  # non-trivial, so save/load must carry it
    return m.eval()


def _assert_rotations(r: torch.Tensor) -> None:
    eye = torch.eye(3).expand_as(r)
    torch.testing.assert_close(r.transpose(-1, -2) @ r, eye, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(r.shape[:-2]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("batch, frames", [(1, 16), (3, 10), (1, 5), (3, 1)])
def test_generate_shapes(model, batch, frames):
    texts = ["hello", "where is the library?", "thank you"][:batch]
    out = model.generate(texts, num_frames=frames, steps=2)
    assert isinstance(out, GenerationOutput) and out.texts == texts
    assert out.features.shape == (batch, frames, 44, 9) and out.features.dtype == torch.float32
    assert out.local_rotmats.shape == (batch, frames, 44, 3, 3)
    assert out.positions.shape == (batch, frames, 44, 3)
    assert torch.isfinite(out.positions).all()
    _assert_rotations(out.local_rotmats)
    shapes = {"global_orient": (3,), "body_pose": (21, 3), "left_hand_pose": (15, 3),
              "right_hand_pose": (15, 3), "transl": (3,)}
    for key, tail in shapes.items():
        assert isinstance(out.smplx[key], np.ndarray) and out.smplx[key].dtype == np.float32
        assert out.smplx[key].shape == (batch, frames, *tail), key
    assert out.lengths.tolist() == [frames] * batch


def test_default_num_frames_and_str_prompt(model):
    out = model.generate("hello", steps=1)
    assert out.features.shape == (1, 16, 44, 9) and out.texts == ["hello"]


def test_seeded_generation_bit_identical(model):
    a = model.generate(["hello", "good morning"], num_frames=12, steps=3, seed=5)
    b = model.generate(["hello", "good morning"], num_frames=12, steps=3, seed=5)
    c = model.generate(["hello", "good morning"], num_frames=12, steps=3, seed=6)
    assert torch.equal(a.features, b.features) and torch.equal(a.positions, b.positions)
    assert all(np.array_equal(a.smplx[k], b.smplx[k]) for k in a.smplx)
    assert not torch.allclose(a.features, c.features)


def test_non_multiple_of_4_is_padded_then_cropped(model):
    """10 frames run as 12 internally: the same sample as asking for 12, cropped."""
    ten = model.generate(["hello"], num_frames=10, steps=2, seed=3)
    twelve = model.generate(["hello"], num_frames=12, steps=2, seed=3)
    assert torch.equal(ten.features, twelve.features[:, :10])


def test_text_changes_the_output(model):
    a = model.generate(["hello"], num_frames=8, steps=2, seed=0, guidance=3.0)
    b = model.generate(["the weather is cold"], num_frames=8, steps=2, seed=0, guidance=3.0)
    assert not torch.allclose(a.features, b.features)


def test_text_context_reuse_matches_plain_forward(model):
    """Sampling with the text keys/values computed once equals calling forward with the text."""
    text, mask = model.encode_text(["hello", "thank you"])
    shape = (2, 3, model.config.denoiser.num_atoms, model.config.denoiser.latent_dim)
    lengths = torch.tensor([3, 2])
    runs = [model.diffusion.sample(model.denoiser, shape, text, mask, lengths, steps=3, guidance=2.5,
                                   generator=torch.Generator().manual_seed(0), reuse_text=reuse)
            for reuse in (True, False)]
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-5, atol=1e-5)


def test_schedulers_and_lengths(model):
    for name in ("dpm++", "euler"):
        out = model.generate(["hello"], num_frames=8, steps=2, scheduler=name)
        assert out.features.shape == (1, 8, 44, 9)
    out = model.generate(["hello", "thank you"], num_frames=12, steps=2, lengths=[12, 5])
    assert out.lengths.tolist() == [12, 5]


def test_generate_restores_train_mode(model):
    model.denoiser.train()
    model.generate(["hello"], num_frames=4, steps=1)
    assert model.denoiser.training and not model.vae.training
    model.eval()


@pytest.mark.parametrize("kwargs, match", [
    ({"texts": ""}, r"texts\[0\]"),
    ({"texts": ["ok", "  "]}, r"texts\[1\]"),
    ({"texts": []}, "empty"),
    ({"texts": ["ok", None]}, r"texts\[1\]"),
    ({"texts": "ok", "num_frames": 0}, "num_frames"),
    ({"texts": "ok", "num_frames": 10_000}, "num_frames"),
    ({"texts": "ok", "steps": 0}, "steps"),
    ({"texts": "ok", "scheduler": "nope"}, "unknown scheduler"),
    ({"texts": ["a", "b"], "num_frames": 8, "lengths": [8, 9]}, "lengths"),
])
def test_bad_input(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        model.generate(**kwargs)


def test_diffusion_loss_trains_denoiser_only(model):
    feats = model.generate(["hello", "thank you"], num_frames=8, steps=1).features
    model.zero_grad(set_to_none=True)
    loss = model.diffusion_loss(feats, ["hello", "thank you"], lengths=torch.tensor([8, 5]),
                                generator=torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.denoiser.parameters())
    assert all(p.grad is None for p in model.vae.parameters())
    model.zero_grad(set_to_none=True)


def test_latent_scale_is_used(model):
    """Diffusion latents are VAE latents times vae.latent_scale: decoding divides it back out."""
    z = torch.randn(1, 2, model.config.vae.num_atoms, model.config.vae.latent_dim)
    ref = model.vae.normalizer.denormalize(model.vae.decode(z / 0.7))
    torch.testing.assert_close(model.decode_latents(z), ref)
    feats = model.decode_latents(z)
    mu, _ = model.vae.encode(model.vae.normalizer.normalize(feats))
    torch.testing.assert_close(model.encode_latents(feats), mu * 0.7)


def test_save_load_same_generation(model, tmp_path):
    model.save(tmp_path / "run", meta={"step": 7})
    loaded = SignSALD.load(tmp_path / "run", backend=None)  # the ops the saved model runs: bit-identical
    assert loaded.meta["step"] == 7 and loaded.meta["skeleton_id"] == skeleton_id(7)
    assert float(loaded.vae.latent_scale) == pytest.approx(0.7)
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    x = model.generate(["where is the library?"], num_frames=8, steps=2, seed=1)
    y = loaded.generate(["where is the library?"], num_frames=8, steps=2, seed=1)
    assert torch.equal(x.features, y.features)
    # loaded with the default backend (auto: the CPU extension's fused kernels where it builds): close
    auto = SignSALD.load(tmp_path / "run")
    assert auto.denoiser.backend == "auto" and auto.vae.backend == "auto"
    z = auto.generate(["where is the library?"], num_frames=8, steps=2, seed=1)
    torch.testing.assert_close(z.features, x.features, rtol=1e-4, atol=1e-4)
    # a run folder holding the model as model/ loads too
    (tmp_path / "run2").mkdir()
    (tmp_path / "run2" / "config.json").write_text("{}")  # train.full's run config, not a checkpoint
    model.save(tmp_path / "run2" / "model")
    run_loaded = SignSALD.load(tmp_path / "run2", text_encoder=model.text_encoder, backend=None)
    assert torch.equal(run_loaded.generate(["where is the library?"], num_frames=8, steps=2, seed=1).features,
                       x.features)
    # an explicitly given text encoder is used as is
    again = SignSALD.load(tmp_path / "run", text_encoder=model.text_encoder)
    assert again.text_encoder is model.text_encoder


def test_save_unwraps_compiled_denoiser(model, tmp_path):
    wrapped = SignSALD(model.config, model.vae, torch.compile(model.denoiser), model.text_encoder)
    wrapped.save(tmp_path)
    loaded = SignSALD.load(tmp_path, text_encoder=model.text_encoder)
    assert loaded.denoiser.state_dict().keys() == model.denoiser.state_dict().keys()


def _edit_config(path, fn) -> None:
    """Edit config.json on purpose (re-sealed with its doc_sha256, else the loader calls it corrupted)."""
    from sald_fast.checkpoint import doc_sha256

    doc = json.loads((path / "config.json").read_text())
    fn(doc)
    doc["doc_sha256"] = doc_sha256(doc)
    (path / "config.json").write_text(json.dumps(doc))


def test_load_errors(model, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        SignSALD.load(tmp_path / "missing")
    ck = tmp_path / "ck"
    model.save(ck)
    data = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        SignSALD.load(ck)

    model.save(ck)
    _edit_config(ck, lambda d: d["meta"].update(skeleton_id="smplx-full55-other"))
    with pytest.raises(CheckpointError, match="skeleton"):
        SignSALD.load(ck)

    model.save(ck)
    _edit_config(ck, lambda d: d["meta"].update(kind="sald_fast.evaluator"))
    with pytest.raises(CheckpointError, match="not a SignSALD checkpoint"):
        SignSALD.load(ck)

    model.save(ck)
    _edit_config(ck, lambda d: d["config"]["denoiser"].update(dim=32))
    with pytest.raises(CheckpointError, match="does not fit the denoiser"):
        SignSALD.load(ck)

    model.save(ck)
    _edit_config(ck, lambda d: d["config"]["vae"].update(bogus=1))
    with pytest.raises(CheckpointError, match="invalid config"):
        SignSALD.load(ck)


def test_text_dim_mismatch_is_clear():
    cfg = small_config()
    cfg.denoiser.text_dim = 48
    with pytest.raises(ValueError, match="text_dim"):
        SignSALD.from_config(cfg)
