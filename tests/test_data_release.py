"""The How2Sign SMPL-X release converter: Neural Sign Actors per-frame pickles, SignAvatars
(T, 182) per-clip arrays (plain pickle, joblib, .npz), text table variants, filtering, and the
restricted unpickler."""

from __future__ import annotations

import csv
import os
import pickle
from pathlib import Path

import joblib
import numpy as np
import pytest

from sald_fast.data import DataError, load_clips
from sald_fast.data import how2sign
from sald_fast.data.release import SMPLX182_SLICES, convert_release, read_text_table
from sald_fast.data.safe_pickle import load_pickle_data

POSES = ("global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "transl")


def smplx182(T: int, seed: int) -> np.ndarray:
    """(T, 182) parameters; frame t's root pose x-component is t / 1000 (so order is visible)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 0.3, (T, 182)).astype(np.float32)
    a[:, 0] = np.arange(T) / 1000.0
    return a


def nsa_frame(row: np.ndarray, with_cam: bool = True) -> dict:
    """One Neural Sign Actors frame dict from a (182,) vector."""
    s = SMPLX182_SLICES
    d = {"smplx_root_pose": row[s["global_orient"]], "smplx_body_pose": row[s["body_pose"]],
         "smplx_lhand_pose": row[s["left_hand_pose"]], "smplx_rhand_pose": row[s["right_hand_pose"]],
         "smplx_jaw_pose": row[s["jaw_pose"]], "smplx_shape": row[s["betas"]], "smplx_expr": row[s["expression"]]}
    if with_cam:
        d["cam_trans"] = row[s["transl"]]
    return d


def write_nsa_clip(split_dir: Path, name: str, params: np.ndarray, with_cam: bool = True) -> Path:
    folder = split_dir / "poses" / name
    folder.mkdir(parents=True)
    for i, row in enumerate(params):
        with open(folder / f"{name}_{i}_3D.pkl", "wb") as f:
            pickle.dump(nsa_frame(row, with_cam), f, protocol=2 + i % 4)
    return folder


def tsv(path: Path, rows: list[tuple[str, str]]) -> None:
    head = "VIDEO_ID\tVIDEO_NAME\tSENTENCE_ID\tSENTENCE_NAME\tSTART_REALIGNED\tEND_REALIGNED\tSENTENCE\n"
    path.write_text(head + "".join(f"v{i}\tv{i}-rgb_front\t{n}_s\t{n}\t0.0\t1.0\t{t}\n"
                                   for i, (n, t) in enumerate(rows)), encoding="utf-8")


def csv_with_fps(path: Path, rows: list[tuple[str, str, float]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["VIDEO_NAME", "SENTENCE_NAME", "SENTENCE", "fps"])
        w.writerows([f"v{i}", n, t, fps] for i, (n, t, fps) in enumerate(rows))


NSA_LONG = "-fZc293MpJk_0-1-rgb_front"   # dashes, underscores, digits; 105 frames (past 9 and 99)
NSA_SHORT = "g0yUhp3_xa8_12-5-rgb_front"
NSA_TINY = "tiny_clip-3"                 # 3 frames: dropped (< 4)
NSA_SLOW = "slow_clip-7"                 # 40 frames at 1 fps (table): 40 s, dropped (> 30 s)
SA_JOBLIB = "sa_clip-10_2"
SA_PICKLE = "sa_clip-11_3"
SA_NPZ = "sa_clip-12_4"


@pytest.fixture
def release(tmp_path):
    src = tmp_path / "release"
    truth = {NSA_LONG: smplx182(105, 1), NSA_SHORT: smplx182(12, 2), NSA_TINY: smplx182(3, 3),
             NSA_SLOW: smplx182(40, 4), SA_JOBLIB: smplx182(30, 5), SA_PICKLE: smplx182(21, 6),
             SA_NPZ: smplx182(17, 7)}
    for n in (NSA_LONG, NSA_SHORT, NSA_TINY):
        write_nsa_clip(src / "train", n, truth[n])
    write_nsa_clip(src / "train", "orphan_poses-9", smplx182(8, 8))        # poses without a row
    tsv(src / "how2sign_realigned_train.csv", [(NSA_LONG, "Hello, how are you?"), (NSA_SHORT, "Thanks."),
                                               (NSA_TINY, "Hi."), ("row_without_poses-1", "Nobody.")])
    write_nsa_clip(src / "val", NSA_SLOW, truth[NSA_SLOW], with_cam=False)
    csv_with_fps(src / "val" / "how2sign_realigned_val.csv", [(NSA_SLOW, "A slow one, with a comma.", 1.0)])
    (src / "test").mkdir(parents=True)
    joblib.dump({"smplx": truth[SA_JOBLIB], "total_valid_index": np.arange(30)}, src / "test" / f"{SA_JOBLIB}.pkl")
    with open(src / "test" / f"{SA_PICKLE}.pkl", "wb") as f:
        pickle.dump({"smplx": truth[SA_PICKLE], "width": 1280}, f)
    np.savez(src / "test" / f"{SA_NPZ}.npz", smplx=truth[SA_NPZ])
    csv_with_fps(src / "how2sign_realigned_test.csv", [(SA_JOBLIB, "Joblib, compressed or not.", 24.0),
                                                       (SA_PICKLE, "A plain pickle.", 30.0),
                                                       (SA_NPZ, 'Say "npz".', 24.0)])
    return src, truth


def _check_clip(dst: Path, split: str, name: str, params: np.ndarray, fps: float) -> None:
    with np.load(dst / split / f"{name}.npz", allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    assert float(out["fps"]) == fps
    for f, s in SMPLX182_SLICES.items():
        np.testing.assert_array_equal(out[f].reshape(len(params), -1), params[:, s], err_msg=f"{name} {f}")


def test_release_layouts_convert_with_filtering_and_counts(release, tmp_path, caplog):
    src, truth = release
    dst = tmp_path / "out"
    with caplog.at_level("WARNING", logger="sald_fast.data.how2sign"):
        report = convert_release(src, dst, fps=24.0)
    assert report.written == {"train": 2, "val": 0, "test": 3}
    assert report.too_short == [NSA_TINY] and report.too_long == [NSA_SLOW]
    assert report.no_row == ["train/orphan_poses-9"] and report.no_poses == ["train/row_without_poses-1"]
    assert "orphan_poses-9" in caplog.text and "row_without_poses-1" in caplog.text
    line = report.summary()
    assert "train=2 val=0 test=3" in line and "1 shorter than 4 frames" in line and "1 longer than 30 s" in line
    # frames in numeric order (frame 10 after 9, 100 after 99), all fields incl. jaw/expression/shape kept
    _check_clip(dst, "train", NSA_LONG, truth[NSA_LONG], 24.0)
    _check_clip(dst, "train", NSA_SHORT, truth[NSA_SHORT], 24.0)
    _check_clip(dst, "test", SA_JOBLIB, truth[SA_JOBLIB], 24.0)
    _check_clip(dst, "test", SA_PICKLE, truth[SA_PICKLE], 30.0)   # fps from the table
    _check_clip(dst, "test", SA_NPZ, truth[SA_NPZ], 24.0)
    # the output loads with the ordinary loader (only converted rows in the written tables)
    clips = {c["name"]: c for c in load_clips("how2sign", "train", root=dst, fps=24.0)}
    assert set(clips) == {NSA_LONG, NSA_SHORT}
    assert clips[NSA_LONG]["text"] == "Hello, how are you?"
    test = {c["name"]: c for c in load_clips("how2sign", "test", root=dst, fps=24.0)}
    assert test[SA_NPZ]["text"] == 'Say "npz".' and test[SA_PICKLE]["global_orient"].shape[0] == 17  # 21 @30 -> 24


def test_cli_prints_summary(release, tmp_path, capsys):
    src, _ = release
    assert how2sign.main(["convert", str(src), str(tmp_path / "out"), "--fps", "24"]) == 0
    out = capsys.readouterr().out
    assert "train=2 val=0 test=3 skipped=0" in out and "1 table rows without poses" in out


def test_text_table_variants(tmp_path):
    p = tmp_path / "t.csv"
    csv_with_fps(p, [("a-1_2", "x, y", 24.0), ("b", "z", 30)])
    assert [(r.name, r.sentence, r.fps) for r in read_text_table(p)] == [("a-1_2", "x, y", 24.0), ("b", "z", 30.0)]
    tsv(p, [("a", 'He said "hi", twice')])
    assert read_text_table(p)[0].sentence == 'He said "hi", twice' and read_text_table(p)[0].fps is None
    p.write_text("SENTENCE_NAME,SENTENCE,fps\na,x,zero\n")
    with pytest.raises(DataError, match="positive") as info:
        read_text_table(p)
    assert info.value.field == "fps"
    p.write_text("NAME_X,SENTENCE\na,x\n")
    with pytest.raises(DataError) as info:
        read_text_table(p)
    assert info.value.field == "SENTENCE_NAME"


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def _frame_file(src: Path) -> Path:
    return src / "train" / "poses" / NSA_LONG / f"{NSA_LONG}_57_3D.pkl"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "malicious", "torch_like", "joblib_truncated",
                                    "missing_frame", "object_array"])
def test_bad_files_raise_naming_the_file_and_skip_bad_counts(release, tmp_path, damage):
    src, _ = release
    target = tmp_path / "pwned"
    bad = _frame_file(src)
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:40])
    elif damage == "garbage":
        bad.write_bytes(b"\x80\x04\x95garbage" * 5)
    elif damage == "malicious":
        with open(bad, "wb") as f:
            pickle.dump({"smplx_root_pose": _Evil(str(target))}, f)
    elif damage == "torch_like":
        bad.write_bytes(b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nq\x00.")
    elif damage == "joblib_truncated":
        bad = src / "test" / f"{SA_JOBLIB}.pkl"
        bad.write_bytes(bad.read_bytes()[:-100])
    elif damage == "missing_frame":
        bad.unlink()
        bad = bad.parent
    elif damage == "object_array":
        with open(bad, "wb") as f:
            pickle.dump({"smplx_root_pose": np.array([1, "a", None], dtype=object)}, f)
    with pytest.raises(DataError) as info:
        convert_release(src, tmp_path / "out", fps=24.0)
    assert Path(info.value.path) == bad, str(info.value)
    if damage == "malicious":
        assert "posix.mkdir" in str(info.value) or "os.mkdir" in str(info.value)
        assert "not allowed" in str(info.value)
    assert not target.exists()
    with pytest.warns(UserWarning, match="skipped 1"):
        report = convert_release(src, tmp_path / "out2", fps=24.0, skip_bad=True)
    assert len(report.bad) == 1 and sum(report.written.values()) == 4


def test_safe_pickle_reads_joblib_records_in_every_form(tmp_path):
    a = {"smplx": smplx182(5, 0), "f": np.asfortranarray(np.arange(6.0).reshape(2, 3)), "n": 3,
         "l": [np.zeros(2, np.int16), "s"], "b": np.arange(4, dtype=">f8")}
    for compress in (0, 3, ("gzip", 3), ("bz2", 1), ("xz", 1), ("lzma", 1)):
        joblib.dump(a, tmp_path / "j.pkl", compress=compress)
        b = load_pickle_data(tmp_path / "j.pkl")
        for k in ("smplx", "f", "b"):
            np.testing.assert_array_equal(b[k], a[k])
        assert b["n"] == 3 and b["l"][1] == "s"
    joblib.dump(np.array([object()], dtype=object)[:0], tmp_path / "o.pkl")  # object dtype record
    with pytest.raises(DataError, match="not allowed|numeric arrays only"):
        load_pickle_data(tmp_path / "o.pkl")
