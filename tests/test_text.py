"""Text encoders: offline MiniLM, tiny seeded BERT, CLIP from a local folder; cache and input checks."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from sald_fast.config import TextConfig
from sald_fast.text import (CLIPTextEncoder, MiniLMEncoder, TextEncoder, TinyTextEncoder, build_text_encoder,
                            minilm_path)


@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    return build_text_encoder(TextConfig(kind="minilm", max_tokens=12))


@pytest.fixture(scope="module")
def tiny() -> TinyTextEncoder:
    return build_text_encoder(TextConfig(kind="tiny", max_tokens=10, tiny_dim=32, seed=3))


def test_minilm_encodes_offline(minilm):
    feats, mask = minilm.encode(["hello world", "where is the library?"])
    assert feats.shape == (2, 12, 384) and feats.dtype == torch.float32
    assert mask.shape == (2, 12) and mask.dtype == torch.bool
    # [CLS] hello world [SEP] = 4 tokens; [CLS] where is the library ? [SEP] = 7 tokens
    assert mask.sum(1).tolist() == [4, 7]
    assert torch.all(feats[~mask] == 0)
    assert torch.isfinite(feats).all()
    assert not torch.allclose(feats[0, 1], feats[1, 1])  # different words, different features


def test_minilm_matches_transformers_directly(minilm):
    """Oracle: the package's model run by hand through transformers."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
    model = AutoModel.from_pretrained(str(minilm_path()), local_files_only=True).eval()
    batch = tok(["sign language"], return_tensors="pt")
    with torch.no_grad():
        ref = model(**batch).last_hidden_state[0]
    feats, mask = minilm.encode("sign language")
    torch.testing.assert_close(feats[0, : ref.shape[0]], ref, rtol=1e-5, atol=1e-5)
    assert int(mask.sum()) == ref.shape[0]


def test_frozen_and_eval(minilm):
    assert all(not p.requires_grad for p in minilm.parameters())
    minilm.train()
    assert not minilm.training and not minilm.model.training


def test_cache_hit_skips_model(minilm, monkeypatch):
    first = minilm.encode_one("thank you very much")
    calls = minilm.model_calls

    def boom(ids):
        raise AssertionError("model ran on a cached prompt")

    monkeypatch.setattr(minilm, "_forward", boom)
    again = minilm.encode_one("thank you very much")
    assert again is first
    feats, mask = minilm.encode(["thank you very much", "thank you very much"])
    assert minilm.model_calls == calls
    assert torch.equal(feats[0, : first.shape[0]], first) and torch.equal(feats[0], feats[1])


def test_cache_is_lru_bounded(tiny):
    enc = TinyTextEncoder(TextConfig(kind="tiny", max_tokens=10, tiny_dim=32), cache_size=2)
    for t in ("one", "two", "three"):
        enc.encode_one(t)
    assert list(enc._cache) == ["two", "three"] and enc.model_calls == 3
    enc.encode_one("two")  # hit, becomes most recent
    enc.encode_one("four")  # evicts "three"
    assert list(enc._cache) == ["two", "four"] and enc.model_calls == 4


def test_features_do_not_depend_on_batch(minilm):
    alone, _ = minilm.encode(["good morning"])
    minilm.clear_cache()
    calls = minilm.model_calls
    together, mask = minilm.encode(["a much longer sentence comes first here", "good morning", "good evening",
                                    "good morning"])
    assert minilm.model_calls == calls + 3  # distinct prompts only
    torch.testing.assert_close(together[1], alone[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(together[1], together[3])
    assert not torch.allclose(together[1], together[2])


def test_batched_equals_one_by_one(tiny):
    texts = ["one two three", "four five six", "seven", "eight nine ten eleven"]
    one_by_one = torch.stack([tiny.encode([t])[0][0] for t in texts])
    tiny.clear_cache()
    tiny.batch_size = 2
    batched, _ = tiny.encode(texts)
    tiny.batch_size = 64
    torch.testing.assert_close(batched, one_by_one, rtol=1e-5, atol=1e-5)


def test_truncation_warns_and_keeps_end_token(minilm):
    long = "the quick brown fox jumps over the lazy dog again and again and again"
    with pytest.warns(UserWarning, match="quick brown fox"):
        feats, mask = minilm.encode([long, "short"])
    assert mask[0].all() and mask.shape[1] == 12
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        minilm.encode(["short"])  # no warning for a short one


@pytest.mark.parametrize("bad, match", [
    ([""], r"texts\[0\]"),
    (["ok", "   "], r"texts\[1\]"),
    (["ok", 3], r"texts\[1\]"),
    ([], "empty"),
    (42, "str or a list"),
    (None, "str or a list"),
])
def test_bad_inputs_raise(tiny, bad, match):
    with pytest.raises(ValueError, match=match):
        tiny.encode(bad)


def test_bare_string_is_batch_of_one(tiny):
    feats, mask = tiny.encode("hello")
    assert feats.shape == (1, 10, 32) and mask.shape == (1, 10)


def test_tiny_deterministic_for_seed():
    cfg = TextConfig(kind="tiny", max_tokens=10, tiny_dim=32, tiny_layers=2, seed=7)
    a, b = TinyTextEncoder(cfg), TinyTextEncoder(cfg)
    c = TinyTextEncoder(TextConfig(kind="tiny", max_tokens=10, tiny_dim=32, tiny_layers=2, seed=8))
    fa, ma = a.encode(["where is the library?"])
    fb, mb = b.encode(["where is the library?"])
    fc, _ = c.encode(["where is the library?"])
    assert torch.equal(fa, fb) and torch.equal(ma, mb)
    assert not torch.allclose(fa, fc)
    assert isinstance(a, TextEncoder) and a.dim == 32


def test_tiny_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    TinyTextEncoder(TextConfig(kind="tiny", tiny_dim=16))
    assert torch.equal(torch.rand(3), expected)


def _tiny_clip_folder(path) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for ch in "abcdefghijklmnopqrstuvwxyz?":
            vocab[ch + suffix] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    try:
        tok = CLIPTokenizer(vocab=vocab, merges=[])
    except TypeError:  # transformers 4.x
        (path / "vocab.json").write_text(json.dumps(vocab))
        (path / "merges.txt").write_text("#version: 0.2\n")
        tok = CLIPTokenizer(vocab_file=str(path / "vocab.json"), merges_file=str(path / "merges.txt"))
    tok.save_pretrained(str(path))
    cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16,
                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                         pad_token_id=vocab["<|endoftext|>"])
    torch.manual_seed(0)
    CLIPTextModel(cfg).save_pretrained(str(path))


def test_clip_from_local_folder(tmp_path):
    _tiny_clip_folder(tmp_path)
    enc = build_text_encoder(TextConfig(kind="clip", path=str(tmp_path), max_tokens=8))
    assert isinstance(enc, CLIPTextEncoder) and enc.dim == 32
    feats, mask = enc.encode(["hi", "where?"])
    assert feats.shape == (2, 8, 32)
    assert mask.sum(1).tolist() == [4, 8]  # <bos> h i</w> <eos>; w h e r e ?</w> -> 8 with bos/eos
    with pytest.warns(UserWarning, match="abcdefghij"):
        enc.encode(["abcdefghij"])


def test_clip_missing_folder_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CLIPTextEncoder(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="TextConfig.path"):
        build_text_encoder(TextConfig(kind="clip", path=None))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="cannot load a CLIP"):
        CLIPTextEncoder(str(tmp_path / "empty"))
