"""How2Sign SMPL-X loader and converter, resampling, and MotionTextDataset."""

from __future__ import annotations

import logging
import os
import pickle
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from sald_fast.data import DataError, MotionTextDataset, collate, load_clips, resample_clip
from sald_fast.data import how2sign
from sald_fast.features import smplx_to_features
from sald_fast.geometry import axis_angle_to_matrix, matrix_to_axis_angle

FIELDS = ("global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "transl")
HEADER = "VIDEO_ID\tVIDEO_NAME\tSENTENCE_ID\tSENTENCE_NAME\tSTART_REALIGNED\tEND_REALIGNED\tSENTENCE\n"


def random_arrays(T: int, seed: int, flat: bool = False) -> dict[str, np.ndarray]:
    """Smooth random SMPL-X parameters for T frames."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, T)[:, None, None]
    def smooth(n):
        a, b = rng.normal(0, 0.4, (2, 1, n, 3))
        return (a + b * np.sin(3 * t + rng.uniform(0, 6))).astype(np.float32)
    out = {"global_orient": smooth(1)[:, 0], "body_pose": smooth(21), "left_hand_pose": smooth(15),
           "right_hand_pose": smooth(15), "transl": (0.1 * smooth(1)[:, 0])}
    if flat:
        out = {k: v.reshape(T, -1) for k, v in out.items()}
    return out


def write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    lines = [HEADER] + [f"vid{i}\tvid{i}-rgb_front\t{name}_s\t{name}\t{i}.0\t{i + 2}.5\t{text}\n"
                        for i, (name, text) in enumerate(rows)]
    path.write_text("".join(lines), encoding="utf-8")


def make_root(root: Path) -> dict[str, dict]:
    """A tiny How2Sign-layout dataset; returns the arrays written per clip name."""
    clips = {
        "train": [("clip_a-1", "Hello, how are you?", 30, {"fps": np.float32(25.0)}, False),
                  ("clip_b-2", "I like my new teacher.", 41, {}, True),           # flat (T,63)/(T,45), no fps
                  ("clip_c-3", "Where is the \"library\"?", 40, {"fps": np.float64(50.0)}, False)],
        "val": [("clip_d-4", "The dog is happy.", 25, {"fps": np.float32(25.0)}, False)],
        "test": [("clip_e-5", "Thank you.", 12, {"fps": np.int64(25)}, True)],
    }
    written: dict[str, dict] = {}
    for split, items in clips.items():
        (root / split).mkdir(parents=True)
        for i, (name, text, T, extra, flat) in enumerate(items):
            arrays = random_arrays(T, seed=zlib.crc32(name.encode()), flat=flat)
            np.savez(root / split / f"{name}.npz", **arrays, **extra)
            written[name] = dict(arrays=arrays, text=text, split=split)
        write_csv(root / f"how2sign_realigned_{split}.csv", [(n, t) for n, t, *_ in items])
    return written


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "h2s"
    written = make_root(r)
    return r, written


def test_load_fixture(root):
    r, written = root
    train = load_clips("how2sign", "train", root=r)
    assert [c["name"] for c in train] == ["clip_a-1", "clip_b-2", "clip_c-3"]
    assert train[2]["text"] == 'Where is the "library"?'
    assert train.skipped == []
    for c in train + load_clips("how2sign", "val", root=r) + load_clips("how2sign", "test", root=r):
        src = written[c["name"]]
        assert c["text"] == src["text"] and c["fps"] == 25.0
        T = c["global_orient"].shape[0]
        assert c["body_pose"].shape == (T, 21, 3) and c["left_hand_pose"].shape == (T, 15, 3)
        assert c["right_hand_pose"].shape == (T, 15, 3) and c["transl"].shape == (T, 3)
        if c["name"] != "clip_c-3":  # stored at 25 fps: unchanged
            for f in FIELDS:
                np.testing.assert_array_equal(c[f].reshape(T, -1), src["arrays"][f].reshape(T, -1))
                assert c[f].dtype == np.float32
    assert train[2]["global_orient"].shape[0] == 20  # 40 frames at 50 fps -> 20 at 25


def test_resample_50_to_25_halves_frames_and_keeps_poses(root):
    r, written = root
    clip = how2sign.read_clip_file(r / "train" / "clip_c-3.npz", "x")
    assert clip["fps"] == 50.0
    half = resample_clip(clip, 25.0)
    assert half["fps"] == 25.0 and half["global_orient"].shape[0] == 20
    for f in FIELDS[:4]:  # rotations: the even source frames (compare as matrices: aa is not unique at pi)
        a = axis_angle_to_matrix(torch.from_numpy(half[f]).double())
        b = axis_angle_to_matrix(torch.from_numpy(clip[f][::2]).double())
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    np.testing.assert_allclose(half["transl"], clip["transl"][::2], atol=1e-6)
    # upsampling: the midpoint between two frames is the slerp midpoint (an independent oracle:
    # the half rotation of R0^T R1 through geometry's matrix <-> axis-angle)
    double = resample_clip(clip, 100.0)
    assert double["global_orient"].shape[0] == 2 * 40 - 1
    R0 = axis_angle_to_matrix(torch.from_numpy(clip["body_pose"][3]).double())
    R1 = axis_angle_to_matrix(torch.from_numpy(clip["body_pose"][4]).double())
    rel = matrix_to_axis_angle(R0.transpose(-1, -2) @ R1)
    mid = R0 @ axis_angle_to_matrix(rel / 2)
    torch.testing.assert_close(axis_angle_to_matrix(torch.from_numpy(double["body_pose"][7]).double()), mid,
                               atol=1e-5, rtol=0)


# --- corrupted data: every problem is an error naming the file and the field ---------------------

def _rewrite(path: Path, **changes):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    for k, v in changes.items():
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v
    np.savez(path, **arrays)


def _corrupt_missing_field(r):
    _rewrite(r / "train" / "clip_b-2.npz", body_pose=None)
    return "clip_b-2.npz", "body_pose"


def _corrupt_wrong_shape(r):
    _rewrite(r / "train" / "clip_b-2.npz", left_hand_pose=np.zeros((41, 12), np.float32))  # PCA-like
    return "clip_b-2.npz", "left_hand_pose"


def _corrupt_frame_mismatch(r):
    _rewrite(r / "train" / "clip_b-2.npz", transl=np.zeros((40, 3), np.float32))
    return "clip_b-2.npz", "transl"


def _corrupt_nan(r):
    bad = np.zeros((41, 21, 3), np.float32)
    bad[7, 3, 1] = np.nan
    _rewrite(r / "train" / "clip_b-2.npz", body_pose=bad)
    return "clip_b-2.npz", "body_pose"


def _corrupt_inf(r):
    bad = np.zeros((41, 3), np.float32)
    bad[0, 0] = np.inf
    _rewrite(r / "train" / "clip_b-2.npz", transl=bad)
    return "clip_b-2.npz", "transl"


def _corrupt_object_array(r):
    path = r / "train" / "clip_b-2.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["global_orient"] = np.array([{"evil": 1}] * 41, dtype=object)
    np.savez(path, **arrays)
    return "clip_b-2.npz", "global_orient"


def _corrupt_truncated(r):
    path = r / "train" / "clip_b-2.npz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "clip_b-2.npz", "file"


def _corrupt_empty_sentence(r):
    write_csv(r / "how2sign_realigned_train.csv", [("clip_a-1", "Hello."), ("clip_b-2", "   "), ("clip_c-3", "x")])
    return "how2sign_realigned_train.csv", "SENTENCE"


def _corrupt_missing_pose_file(r):
    (r / "train" / "clip_b-2.npz").unlink()
    return "clip_b-2.npz", "file"


def _corrupt_bad_fps(r):
    _rewrite(r / "train" / "clip_b-2.npz", fps=np.array([25.0, 30.0]))
    return "clip_b-2.npz", "fps"


def _corrupt_string_field(r):
    _rewrite(r / "train" / "clip_b-2.npz", transl=np.array([["a", "b", "c"]] * 41))
    return "clip_b-2.npz", "transl"


CORRUPTIONS = [_corrupt_missing_field, _corrupt_wrong_shape, _corrupt_frame_mismatch, _corrupt_nan, _corrupt_inf,
               _corrupt_object_array, _corrupt_truncated, _corrupt_empty_sentence, _corrupt_missing_pose_file,
               _corrupt_bad_fps, _corrupt_string_field]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__[9:])
def test_corrupted_files_raise_naming_file_and_field(root, corrupt):
    r, _ = root
    filename, field = corrupt(r)
    with pytest.raises(DataError) as info:
        load_clips("how2sign", "train", root=r)
    err = info.value
    assert isinstance(err, ValueError)
    assert Path(err.path).name == filename and err.field == field
    assert filename in str(err) and repr(field) in str(err)


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__[9:])
def test_skip_bad_skips_logs_and_counts(root, corrupt, caplog):
    r, _ = root
    corrupt(r)
    with caplog.at_level(logging.WARNING, logger="sald_fast.data.how2sign"):
        with pytest.warns(UserWarning, match="skipped 1 of 3"):
            clips = load_clips("how2sign", "train", root=r, skip_bad=True)
    assert [c["name"] for c in clips] == ["clip_a-1", "clip_c-3"]
    assert [name for name, _ in clips.skipped] == ["clip_b-2"]
    assert any("clip_b-2" in rec.getMessage() for rec in caplog.records)


def test_split_level_problems_always_raise(root, tmp_path):
    r, _ = root
    (r / "how2sign_realigned_val.csv").unlink()
    with pytest.raises(DataError, match="how2sign_realigned_val.csv") as info:
        load_clips("how2sign", "val", root=r, skip_bad=True)
    assert info.value.field == "file"
    (r / "how2sign_realigned_val.csv").write_text("VIDEO_ID\tSENTENCE\nx\ty\n")
    with pytest.raises(DataError) as info:
        load_clips("how2sign", "val", root=r)
    assert info.value.field == "SENTENCE_NAME"
    write_csv(r / "how2sign_realigned_val.csv", [("clip_d-4", "a"), ("clip_d-4", "b")])
    with pytest.raises(DataError, match="already on line 2"):
        load_clips("how2sign", "val", root=r)
    (r / "val" / "clip_d-4.npz").unlink()
    write_csv(r / "how2sign_realigned_val.csv", [("clip_d-4", "a")])
    with pytest.raises(DataError, match="no valid clip"), pytest.warns(UserWarning):
        load_clips("how2sign", "val", root=r, skip_bad=True)
    with pytest.raises(DataError, match="not a directory"):
        load_clips("how2sign", "train", root=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="root"):
        load_clips("how2sign", "train")


# --- converter -----------------------------------------------------------------------------------

def _released(src: Path, with_split_dirs: bool) -> dict[str, dict]:
    """A fake released dataset: a folder per clip of per-frame .npz / .pkl files."""
    clips = {"train": [("sent_one-1", "Hello there.", 13, "npz"), ("sent_two-2", "Good morning.", 11, "pkl")],
             "val": [("sent_three-3", "See you.", 9, "pkl")], "test": [("sent_four-4", "Bye.", 10, "npz")]}
    truth = {}
    for split, items in clips.items():
        for name, text, T, kind in items:
            arrays = random_arrays(T, seed=len(name) + T)
            folder = (src / split / name) if with_split_dirs else (src / name)
            folder.mkdir(parents=True)
            for t in range(T):  # un-padded numbers: frame_2 must come before frame_10
                frame = {"smplx_root_pose": arrays["global_orient"][t][None],  # (1, 3): SMPLer-X style keys
                         "smplx_body_pose": arrays["body_pose"][t].reshape(-1),
                         "smplx_lhand_pose": arrays["left_hand_pose"][t],
                         "smplx_rhand_pose": arrays["right_hand_pose"][t].reshape(1, 45),
                         "cam_trans": arrays["transl"][t], "smplx_shape": np.zeros(10, np.float32)}
                if kind == "npz":
                    np.savez(folder / f"frame_{t}.npz", **frame)
                else:
                    with open(folder / f"frame_{t}.pkl", "wb") as f:
                        pickle.dump({"smplx": frame, "gender": "neutral", "score": 0.9}, f, protocol=2 + t % 4)
            truth[name] = dict(arrays=arrays, text=text, split=split)
        write_csv(src / f"how2sign_realigned_{split}.csv", [(n, t) for n, t, *_ in items])
    return truth


@pytest.mark.parametrize("with_split_dirs", [True, False])
def test_converter_round_trip(tmp_path, with_split_dirs):
    src, dst = tmp_path / "released", tmp_path / "converted"
    truth = _released(src, with_split_dirs)
    counts = how2sign.convert_how2sign(src, dst, fps=25.0)
    assert counts == {"train": 2, "val": 1, "test": 1, "skipped": 0}
    for split in ("train", "val", "test"):
        assert (dst / f"how2sign_realigned_{split}.csv").is_file()
        for c in load_clips("how2sign", split, root=dst):
            src_arrays = truth[c["name"]]["arrays"]
            assert c["text"] == truth[c["name"]]["text"] and truth[c["name"]]["split"] == split
            for f in FIELDS:
                np.testing.assert_array_equal(c[f], src_arrays[f])
    with np.load(dst / "train" / "sent_one-1.npz", allow_pickle=False) as z:
        assert float(z["fps"]) == 25.0 and set(z.files) == set(FIELDS) | {"fps", "betas"}  # betas kept


def test_converter_errors_and_skip_bad(tmp_path):
    src, dst = tmp_path / "released", tmp_path / "converted"
    _released(src, True)
    frame = src / "train" / "sent_one-1" / "frame_3.npz"
    with np.load(frame) as z:
        arrays = {k: z[k] for k in z.files if k != "smplx_lhand_pose"}
    np.savez(frame, **arrays)
    with pytest.raises(DataError) as info:
        how2sign.convert_how2sign(src, dst, fps=30.0)
    assert Path(info.value.path).name == "frame_3.npz" and info.value.field == "left_hand_pose"
    with pytest.warns(UserWarning, match="skipped 1"):
        counts = how2sign.convert_how2sign(src, dst, fps=30.0, skip_bad=True)
    assert counts == {"train": 1, "val": 1, "test": 1, "skipped": 1}
    assert load_clips("how2sign", "test", root=dst, fps=30.0)[0]["fps"] == 30.0
    with pytest.raises(ValueError, match="fps"):
        how2sign.convert_how2sign(src, dst, fps=0.0)


class _Evil:
    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_pickles_are_never_unpickled_without_restriction(tmp_path):
    target = tmp_path / "pwned"
    evil = _Evil()
    evil.target = str(target)
    path = tmp_path / "frame_0.pkl"
    with open(path, "wb") as f:
        pickle.dump({"smplx": {"global_orient": evil}}, f)
    with pytest.raises(DataError, match="not allowed") as info:
        how2sign.read_frame_file(path)
    assert info.value.field == "file" and not target.exists()
    with open(path, "wb") as f:  # a torch tensor is refused too (numpy only)
        pickle.dump({"global_orient": torch.zeros(3)}, f)
    with pytest.raises(DataError, match="not allowed"):
        how2sign.read_frame_file(path)
    with open(path, "wb") as f:
        pickle.dump([{"global_orient": np.zeros((1, 3), np.float32), "n": 3, "name": "x"}], f)
    assert how2sign.read_frame_file(path)[0]["global_orient"].shape == (1, 3)


def test_cli(tmp_path, capsys):
    src, dst = tmp_path / "released", tmp_path / "converted"
    _released(src, True)
    assert how2sign.main(["convert", str(src), str(dst), "--fps", "25"]) == 0
    assert "train=2" in capsys.readouterr().out
    assert how2sign.main(["check", str(dst)]) == 0
    out = capsys.readouterr().out
    assert "train: 2 clips ok" in out and "test: 1 clips ok" in out
    (dst / "val" / "sent_three-3.npz").write_bytes(b"not a zip")
    assert how2sign.main(["check", str(dst), "--split", "val"]) == 2
    assert "sent_three-3.npz" in capsys.readouterr().err


# --- MotionTextDataset ---------------------------------------------------------------------------

def _clips(lengths):
    out = []
    for i, T in enumerate(lengths):
        a = random_arrays(T, seed=100 + i)
        out.append({"name": f"c{i}", "text": f"sentence {i}", "fps": 25.0, **a})
    return out


def test_dataset_crops_and_pads():
    clips = _clips([10, 64, 100, 37])
    full = [smplx_to_features(*(c[f] for f in FIELDS)).float() for c in clips]
    ev = MotionTextDataset(clips, 64, train=False)
    tr = MotionTextDataset(clips, 64, train=True, seed=3)
    assert len(ev) == 4
    for i, c in enumerate(clips):
        T = c["global_orient"].shape[0]
        item = ev[i]
        assert item["features"].shape == (64, 44, 9) and item["features"].dtype == torch.float32
        assert item["length"] == min(T, 64) and item["text"] == c["text"] and item["name"] == c["name"]
        n = min(T, 64)
        torch.testing.assert_close(item["features"][:n], full[i][:n])  # eval: the first frames
        if T < 64:  # padded by repeating the last frame
            torch.testing.assert_close(item["features"][n:], full[i][-1:].expand(64 - n, 44, 9))
        t_item = tr[i]
        assert t_item["length"] == n
        s = tr.crop_start(i)
        assert 0 <= s <= max(T - 64, 0)
        torch.testing.assert_close(t_item["features"][:n], full[i][s:s + n])
    batch = collate([ev[i] for i in range(4)])
    assert batch["features"].shape == (4, 64, 44, 9)
    assert batch["length"].tolist() == [10, 64, 64, 37] and batch["length"].dtype == torch.int64
    assert batch["text"] == [c["text"] for c in clips] and batch["name"] == ["c0", "c1", "c2", "c3"]


def test_random_crops_reproducible_per_seed_and_epoch():
    clips = _clips([200] * 6)
    def starts(seed, epoch):
        d = MotionTextDataset(clips, 32, train=True, seed=seed)
        d.set_epoch(epoch)
        return [d.crop_start(i) for i in range(len(d))]
    assert starts(0, 0) == starts(0, 0)  # a resumed run sees the same crops
    assert starts(0, 0) != starts(0, 1)
    assert starts(0, 0) != starts(1, 0)
    d = MotionTextDataset(clips, 32, train=True, seed=0)
    d.set_epoch(4)
    a = d[2]["features"]
    d2 = MotionTextDataset(clips, 32, train=True, seed=0)
    d2.set_epoch(4)
    torch.testing.assert_close(d2[2]["features"], a)


def test_dataset_rejects_bad_input():
    with pytest.raises(ValueError, match="num_frames"):
        MotionTextDataset(_clips([5]), 0)
    bad = _clips([5])
    bad[0]["body_pose"] = bad[0]["body_pose"][:, :20]
    with pytest.raises(DataError, match="body_pose"):
        MotionTextDataset(bad, 8)
    bad = _clips([5])
    bad[0]["text"] = ""
    with pytest.raises(DataError, match="text"):
        MotionTextDataset(bad, 8)
    with pytest.raises(ValueError, match="empty batch"):
        collate([])
