"""Checkpoints: safetensors + JSON round trip, atomic writes, corruption detection, no pickle."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from safetensors import safe_open

from sald_fast.checkpoint import (CheckpointError, atomic_write_bytes, load_checkpoint, prefix_state_dict,
                                  save_checkpoint, split_state_dicts, strip_prefix)


def _tensors() -> dict:
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 4)
    return {
        "net": lin.state_dict(),
        "steps": torch.arange(5),
        "half": torch.randn(2, 3).to(torch.bfloat16),
        "flags": torch.tensor([True, False]),
        "strided": torch.randn(4, 6)[:, ::2],  # non-contiguous
    }


def test_round_trip_equal(tmp_path):
    tensors = _tensors()
    config = {"vae": {"channels": [32, 48, 64]}, "name": "tiny"}
    meta = {"step": 12, "words": ["a", "b"]}
    save_checkpoint(tmp_path / "ck", tensors, config, meta)
    loaded, cfg, m = load_checkpoint(tmp_path / "ck")
    assert cfg == config and m == meta
    assert set(loaded) == {"net.weight", "net.bias", "steps", "half", "flags", "strided"}
    assert torch.equal(loaded["net.weight"], tensors["net"]["weight"])
    for k in ("steps", "half", "flags", "strided"):
        assert loaded[k].dtype == tensors[k].dtype and torch.equal(loaded[k], tensors[k])


def test_shared_storage_is_saved(tmp_path):
    w = torch.randn(3, 3)
    save_checkpoint(tmp_path, {"a": w, "b": w, "c": w[0]}, {})
    loaded, _, _ = load_checkpoint(tmp_path)
    assert torch.equal(loaded["a"], w) and torch.equal(loaded["b"], w) and torch.equal(loaded["c"], w[0])


def test_atomic_write_leaves_no_temp_files(tmp_path):
    save_checkpoint(tmp_path, _tensors(), {"x": 1})
    save_checkpoint(tmp_path, _tensors(), {"x": 2})  # overwrite in place
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    assert load_checkpoint(tmp_path)[1] == {"x": 2}


def test_failed_write_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, {"a": torch.ones(2)}, {"v": 1})

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(tmp_path / "config.json", b"{}")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    assert load_checkpoint(tmp_path)[1] == {"v": 1}


def test_not_json_serialisable_config_fails_before_writing(tmp_path):
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(tmp_path / "ck", {"a": torch.ones(1)}, {"bad": object()})
    assert not (tmp_path / "ck" / "model.safetensors").exists()


@pytest.mark.parametrize("cut", [3, 30, -5])
def test_truncated_weights(tmp_path, cut):
    save_checkpoint(tmp_path, _tensors(), {})
    f = tmp_path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match="model.safetensors.*(corrupted|truncated)") as info:
        load_checkpoint(tmp_path)
    assert "\n" not in str(info.value)


def test_flipped_byte_detected(tmp_path):
    save_checkpoint(tmp_path, _tensors(), {})
    f = tmp_path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0x10  # inside tensor data: a valid safetensors file, wrong numbers
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(tmp_path)


def test_truncated_or_foreign_config(tmp_path):
    save_checkpoint(tmp_path, _tensors(), {"a": 1})
    cfg = tmp_path / "config.json"
    text = cfg.read_text()
    cfg.write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match="config.json.*not valid JSON"):
        load_checkpoint(tmp_path)
    cfg.write_text(json.dumps({"hello": 1}))
    with pytest.raises(CheckpointError, match="not a sald_fast checkpoint"):
        load_checkpoint(tmp_path)


def test_edited_config_is_corruption_until_resealed(tmp_path):
    from sald_fast.checkpoint import doc_sha256

    save_checkpoint(tmp_path, {"x": torch.ones(2)}, {"words": ["hello", "world"]})
    cfg = tmp_path / "config.json"
    doc = json.loads(cfg.read_text())
    doc["config"]["words"][1] = "wordl"  # still valid JSON, a different vocabulary
    cfg.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="config.json.*doc_sha256"):
        load_checkpoint(tmp_path)
    doc["doc_sha256"] = doc_sha256(doc)
    cfg.write_text(json.dumps(doc))
    assert load_checkpoint(tmp_path)[1] == {"words": ["hello", "wordl"]}
    doc["version"] = 1  # version 1 files have no doc_sha256 and are still read
    del doc["doc_sha256"]
    cfg.write_text(json.dumps(doc))
    assert load_checkpoint(tmp_path)[1] == {"words": ["hello", "wordl"]}


def test_nan_tensor_refused(tmp_path):
    save_checkpoint(tmp_path, {"w": torch.tensor([1.0, float("nan")]), "i": torch.arange(3)}, {})
    with pytest.raises(CheckpointError, match="model.safetensors.*'w'.*NaN"):
        load_checkpoint(tmp_path)


def test_files_from_different_saves(tmp_path):
    save_checkpoint(tmp_path / "a", {"x": torch.ones(2)}, {})
    save_checkpoint(tmp_path / "b", {"x": torch.ones(2)}, {})
    (tmp_path / "a" / "config.json").write_bytes((tmp_path / "b" / "config.json").read_bytes())
    with pytest.raises(CheckpointError, match="different saves"):
        load_checkpoint(tmp_path / "a")


def test_missing_things(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    save_checkpoint(tmp_path, {"x": torch.ones(1)}, {})
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors.*missing"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="is a file"):
        load_checkpoint(tmp_path / "config.json")
    assert issubclass(CheckpointError, ValueError)


def test_no_pickle(tmp_path, monkeypatch):
    """The weights file is plain safetensors; loading never unpickles."""
    save_checkpoint(tmp_path, _tensors(), {"k": "v"})
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        assert "net.weight" in set(f.keys())
    json.loads((tmp_path / "config.json").read_text())

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle/torch.load used")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    loaded, cfg, _ = load_checkpoint(tmp_path)
    assert cfg == {"k": "v"} and "steps" in loaded


def test_prefix_helpers():
    sd = {"w": torch.ones(1), "b.c": torch.zeros(1)}
    flat = {**prefix_state_dict(sd, "vae"), **prefix_state_dict({"w": torch.ones(2)}, "denoiser.")}
    assert set(flat) == {"vae.w", "vae.b.c", "denoiser.w"}
    assert set(strip_prefix(flat, "vae")) == {"w", "b.c"}
    assert strip_prefix(flat, "vae.")["w"] is sd["w"]
    groups = split_state_dicts(flat)
    assert set(groups) == {"vae", "denoiser"} and set(groups["vae"]) == {"w", "b.c"}
    with pytest.raises(ValueError, match="prefix"):
        split_state_dicts({"loose": torch.ones(1)})
