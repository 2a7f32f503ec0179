"""The "Another signing, same sentence" row: alternate renditions of built-in sentences (what a
perfect generator could produce) and their scoring; the warning for cropped test clips."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from sald_fast.data.builtin import alternate_renditions, builtin_corpus
from sald_fast.eval import ALTERNATE_ROW, evaluate, format_table, time_aligned_poses, write_results
from sald_fast.eval.evaluate import _resample_time, reference_poses
from sald_fast.eval.metrics import mpjpe, mpjpe_per_sequence
from sald_fast.eval.models import evaluator_config

NUM_FRAMES = 32
_FIELDS = ("global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "transl")


@pytest.fixture(scope="module")
def data() -> dict[str, list[dict]]:
    return builtin_corpus(seed=0, num_train=24, num_val=6, num_test=6, cache=False)


@pytest.fixture(scope="module")
def alternates(data) -> list[dict]:
    return alternate_renditions(data["test"])


@pytest.fixture(scope="module")
def trained(data):
    from train.evaluator import fit_evaluator

    cfg = evaluator_config("tiny", NUM_FRAMES, dim=32, num_heads=2, encoder_layers=1, decoder_layers=1,
                           embed_dim=8, max_tokens=8, dropout=0.1)
    return fit_evaluator(data["train"], data["val"], cfg, epochs=1, batch_size=8, seed=0, progress=False)


def _same(a: dict, b: dict) -> bool:
    return all(np.array_equal(a[f], b[f]) for f in _FIELDS)


def test_alternate_renditions_same_sentence_other_signing(data, alternates):
    test = data["test"]
    assert len(alternates) == len(test)
    again = alternate_renditions(test)
    assert all(_same(a, b) for a, b in zip(alternates, again))  # deterministic
    # each rendition depends only on its sentence: a subset in another order gives the same clips
    sub = alternate_renditions(test[3:0:-1])
    assert all(_same(a, b) for a, b in zip(alternates[3:0:-1], sub))
    for clip, alt in zip(test, alternates):
        assert alt["text"] == clip["text"] and alt["glosses"] == clip["glosses"]
        assert alt["name"] == clip["name"] + "_alt" and alt["fps"] == clip["fps"]
        assert all(alt[f].dtype == np.float32 and np.isfinite(alt[f]).all() for f in _FIELDS)
    # another signer: other lengths (speed, timing) and, time-aligned, other poses
    assert any(len(a["global_orient"]) != len(c["global_orient"]) for a, c in zip(alternates, test))
    ref, lengths, _ = reference_poses(test, NUM_FRAMES, progress=False)
    aligned = time_aligned_poses(alternates, [len(c["global_orient"]) for c in test], NUM_FRAMES, progress=False)
    per_seq = mpjpe_per_sequence(aligned, ref, lengths)
    assert torch.all(per_seq > 1.0) and torch.all(per_seq < 300.0)  # mm: different, yet the same signs
    other = alternate_renditions(test[:2], seed=2)
    assert not _same(other[0], alternates[0])
    assert not _same(alternate_renditions(test[:1], seed=0)[0], test[0])  # not the corpus' own stream


def test_alternate_renditions_inputs(data):
    from sald_fast.data import resample_clip

    clip = data["test"][0]
    at50 = alternate_renditions([resample_clip(clip, 50.0)])[0]
    assert at50["fps"] == 50.0 and _same(at50, resample_clip(alternate_renditions([clip])[0], 50.0))
    no_glosses = {k: v for k, v in clip.items() if k != "glosses"}  # glosses from the grammar
    assert _same(alternate_renditions([no_glosses])[0], alternate_renditions([clip])[0])
    assert alternate_renditions([]) == []
    with pytest.raises(KeyError, match="not a sentence"):
        alternate_renditions([{**clip, "text": "colourless green ideas sleep furiously"}])


def test_time_alignment():
    x = torch.arange(5, dtype=torch.float32)[:, None, None].expand(5, 2, 3)
    y = _resample_time(x, 9)
    assert torch.allclose(y[:, 0, 0], torch.arange(9) / 2.0)  # linear, end points kept
    assert torch.equal(_resample_time(x, 5), x)
    assert torch.allclose(_resample_time(x, 3)[:, 1, 2], torch.tensor([0.0, 2.0, 4.0]))


def test_time_aligned_to_own_length_is_the_reference(data):
    test = data["test"]
    ref, lengths, _ = reference_poses(test, NUM_FRAMES, progress=False)
    same = time_aligned_poses(test, [len(c["global_orient"]) for c in test], NUM_FRAMES, progress=False)
    assert mpjpe(same, ref, lengths) == pytest.approx(0.0, abs=1e-4)


def test_evaluate_adds_the_row(trained, data, alternates, tmp_path):
    test = data["test"]
    with pytest.warns(UserWarning, match=r"6 of 6 test clips are longer"):
        results = evaluate(None, trained, test, alternate_clips=alternates, batch_size=4, progress=False)
    rows = results["rows"]
    assert list(rows) == ["Mean pose", ALTERNATE_ROW, "Ground truth"]
    alt = rows[ALTERNATE_ROW]
    assert set(alt) == {"BLEU-4", "ROUGE-L", "FID", "FID (vs test)", "MPJPE", "DTW-MJE"}
    assert all(np.isfinite(v) for v in alt.values())
    assert alt["MPJPE"] > 0 and rows["Ground truth"]["MPJPE"] == 0.0
    # the MPJPE compares time-aligned renditions over the reference crops
    ref, lengths, _ = reference_poses(test, NUM_FRAMES, progress=False)
    aligned = time_aligned_poses(alternates, [len(c["global_orient"]) for c in test], NUM_FRAMES, progress=False)
    assert alt["MPJPE"] == pytest.approx(mpjpe(aligned, ref, lengths))
    s = results["settings"]
    assert s["cropped_clips"] == sum(len(c["global_orient"]) > NUM_FRAMES for c in test) == 6
    assert s["cropped_alternate_clips"] == 6
    assert all(ALTERNATE_ROW in ex for ex in results["examples"])
    with pytest.warns(UserWarning, match="cropped"):
        assert evaluate(None, trained, test, alternate_clips=alternates, batch_size=4, progress=False)["rows"] == rows
        # num_samples cuts both lists
        cut = evaluate(None, trained, test, alternate_clips=alternates, num_samples=3, batch_size=4, progress=False)
    assert cut["settings"]["num_samples"] == 3 and ALTERNATE_ROW in cut["rows"]
    table = format_table(results)
    assert any(line.startswith(f"| {ALTERNATE_ROW} |") for line in table.splitlines())
    js, _ = write_results(results, tmp_path / "run")
    assert json.loads(js.read_text())["rows"][ALTERNATE_ROW] == alt


def test_row_absent_without_alternates_and_bad_alternates(trained, data, alternates):
    test = data["test"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = evaluate(None, trained, test, batch_size=4, progress=False)
        assert ALTERNATE_ROW not in results["rows"] and "cropped_alternate_clips" not in results["settings"]
        assert ALTERNATE_ROW not in format_table(results)
        with pytest.raises(ValueError, match="alternate clips"):
            evaluate(None, trained, test, alternate_clips=alternates[:-1], progress=False)
        with pytest.raises(ValueError, match=r"alternate_clips\[0\] signs"):
            evaluate(None, trained, test, alternate_clips=alternates[1:] + alternates[:1], progress=False)


def test_no_warning_when_clips_fit(trained, data):
    fitting = [{**c, **{f: c[f][:NUM_FRAMES - 2] for f in _FIELDS}} for c in data["test"]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results = evaluate(None, trained, fitting, batch_size=4, progress=False)
    assert results["settings"]["cropped_clips"] == 0
    assert "cropped" not in format_table(results)


def test_evaluate_run_builds_alternates_for_builtin(trained, data, tmp_path, monkeypatch):
    import importlib

    from sald_fast.eval import evaluate_run

    ev = importlib.import_module("sald_fast.eval.evaluate")  # the module (the package exports the function)

    monkeypatch.setattr(ev, "_load_model", lambda model, device, backend=None: None)  # only the bounds: no SignSALD needed
    for dataset, expected in (("builtin", True), ("synthetic", False)):
        trained.save(tmp_path / dataset / "evaluator", {**trained.meta, "dataset": dataset})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluate_run(tmp_path / dataset, clips=data["test"], num_samples=4, device="cpu", progress=False,
                         batch_size=4)
        result = json.loads((tmp_path / dataset / "eval.json").read_text())
        assert (ALTERNATE_ROW in result["rows"]) == expected
        assert result["settings"]["num_samples"] == 4
        if expected:
            assert result["settings"]["alternate_seed"] == 1
