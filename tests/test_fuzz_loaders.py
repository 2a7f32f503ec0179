"""Seeded fuzzing of every reader of outside files: checkpoint folders (``load_checkpoint``,
``SignSALD.load``), evaluator folders (``PoseEvaluator.load``), pose ``.npz`` (``read_clip_file``),
per-frame ``.pkl`` / ``.npz`` (``read_frame_file`` + the SMPL-X field check of the converter) and
How2Sign text tables (``read_sentence_csv``).

Inputs: truncations and bit flips of a valid file, and written-on-purpose files with a wrong
dtype, a wrong shape, an enormous header, NaN values (and, for pickles, a payload that would run
code). Each must end in one of:

* ``error``: the reader's own error (``DataError`` / ``CheckpointError``, both ``ValueError``)
  whose message names the file, raised within 20 s (a hang fails);
* ``same``: the result equals the original's (the bytes changed were not data, e.g. zip timestamps);
* ``valid``: only for formats without a checksum (``.pkl``, text tables): a changed value that
  passes every check of the reader (a flipped bit in a float); checksummed formats (checkpoints,
  ``.npz``) may never end here.

Anything else (another exception, a crash, a hang, code run by a pickle) fails the test.
``python -m pytest tests/test_fuzz_loaders.py -q -s`` prints the counts per reader and input kind.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import random
import signal
import struct
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import torch

from sald_fast.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from sald_fast.data.dataset import DataError
from sald_fast.data.how2sign import read_clip_file, read_frame_file, read_sentence_csv
from sald_fast.data.release import read_frame_params

SEED = 15
PER_KIND = 24  # truncations and bit flips per file
_MARKER = "sald_fast_fuzz_pwned"


# ----------------------------------------------------------------------------- byte mutations

def _truncations(data: bytes, rng: random.Random) -> Iterator[tuple[str, bytes]]:
    cuts = {0, 1, len(data) // 2, len(data) - 1} | {rng.randrange(len(data)) for _ in range(PER_KIND - 4)}
    for cut in sorted(cuts):
        yield "truncated", data[:cut]


def _bit_flips(data: bytes, rng: random.Random) -> Iterator[tuple[str, bytes]]:
    for i in range(PER_KIND):
        buf = bytearray(data)
        for _ in range(1 + i % 4):  # 1 to 4 flipped bits
            pos = rng.randrange(len(buf))
            buf[pos] ^= 1 << rng.randrange(8)
        yield "bit-flipped", bytes(buf)


def _byte_mutations(data: bytes, rng: random.Random) -> Iterator[tuple[str, bytes]]:
    yield from _truncations(data, rng)
    yield from _bit_flips(data, rng)


# ----------------------------------------------------------------------------- outcomes

class _Hang(Exception):
    pass


@contextlib.contextmanager
def _deadline(seconds: int = 20):
    def fire(*_):
        raise _Hang(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _outcome(call: Callable[[], Any], names: tuple[str, ...], same: Callable[[Any], bool], checksummed: bool) -> str:
    """'error' / 'same' / 'valid', or raises AssertionError describing what went wrong."""
    try:
        with _deadline():
            result = call()
    except (DataError, CheckpointError) as exc:
        msg = str(exc)
        assert any(n in msg for n in names), f"the error does not name the file {names}: {msg}"
        assert len(msg) < 2000, f"the error is not short: {msg[:300]}..."
        return "error"
    except _Hang as exc:
        raise AssertionError(f"hang: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - anything else is a finding
        raise AssertionError(f"not a clear error: {type(exc).__name__}: {str(exc)[:300]}") from exc
    if same(result):
        return "same"
    assert not checksummed, "a checksummed file was changed and still loaded, with different content"
    return "valid"


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    return a == b


# ----------------------------------------------------------------------------- valid seeds

def _clip_arrays(frames: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    g = np.random.default_rng(seed)
    return {"global_orient": g.normal(size=(frames, 3)).astype(np.float32),
            "body_pose": g.normal(size=(frames, 21, 3)).astype(np.float32) * 0.2,
            "left_hand_pose": g.normal(size=(frames, 15, 3)).astype(np.float32) * 0.2,
            "right_hand_pose": g.normal(size=(frames, 15, 3)).astype(np.float32) * 0.2,
            "transl": g.normal(size=(frames, 3)).astype(np.float32), "fps": np.array(25.0)}


def _frame_dict(seed: int = 0) -> dict[str, np.ndarray]:
    g = np.random.default_rng(seed)
    return {"root_pose": g.normal(size=3).astype(np.float32), "body_pose": g.normal(size=63).astype(np.float32),
            "lhand_pose": g.normal(size=45).astype(np.float32), "rhand_pose": g.normal(size=45).astype(np.float32),
            "cam_trans": g.normal(size=3).astype(np.float32)}


def _npz_bytes(arrays: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _npz_with_header(arrays: dict[str, np.ndarray], field: str, shape: tuple) -> bytes:
    """An ``.npz`` (valid zip, valid CRCs) whose ``field`` member's ``.npy`` header claims ``shape``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arr))
            raw = member.getvalue()
            if name == field:
                header = {"descr": np.lib.format.dtype_to_descr(arr.dtype), "fortran_order": False, "shape": shape}
                out = io.BytesIO()
                np.lib.format.write_array_header_1_0(out, header)
                raw = out.getvalue() + np.ascontiguousarray(arr).tobytes()
            zf.writestr(name + ".npy", raw)
    return buf.getvalue()


class _RunsCode:
    """Unpickling this would run ``touch MARKER`` (the restricted unpickler must refuse it)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.folder / _MARKER}",))


def _pickle_huge_bytes() -> bytes:
    """A pickle whose BINBYTES8 opcode declares 2**62 bytes (an enormous header)."""
    return b"\x80\x04\x8e" + struct.pack("<Q", 1 << 62) + b"abc" + b"."


# ----------------------------------------------------------------------------- the readers

def _frame_reader(path: Path):
    return lambda: read_frame_params(path)  # the converter's frame reader (sald_fast.data.release)


def _pose_cases(rng: random.Random) -> Iterator[tuple[str, bytes]]:
    """(input kind, file bytes) for read_clip_file."""
    yield from _byte_mutations(_npz_bytes(_clip_arrays()), rng)
    arrays = _clip_arrays()
    for field in ("global_orient", "body_pose", "left_hand_pose", "transl", "fps"):
        for dt in ("U5", "complex64", "bool", "datetime64[s]"):
            bad = dict(arrays)
            bad[field] = arrays[field].astype(dt) if dt != "U5" else np.full(arrays[field].shape, "x", dtype=dt)
            yield "wrong-dtype", _npz_bytes(bad)
        for shape in ((), (6, 2), (7, 21, 3), (6, 1, 1, 3), (0, 3)):
            bad = dict(arrays)
            bad[field] = np.zeros(shape, np.float32)
            yield "wrong-shape", _npz_bytes(bad)
        for shape in ((1 << 40, 3), (1 << 62,), (6, 1 << 30, 3)):
            yield "enormous-header", _npz_with_header(arrays, field, shape)
        bad = dict(arrays)
        bad[field] = np.full_like(arrays[field], np.nan, dtype=np.float32) if field != "fps" else np.array(np.nan)
        yield "NaN-filled", _npz_bytes(bad)
        bad = dict(arrays)
        bad[field] = arrays[field].astype(np.float32)
        bad[field].reshape(-1)[rng.randrange(bad[field].size)] = np.inf
        yield "NaN-filled", _npz_bytes(bad)


def _frame_cases(rng: random.Random, suffix: str, folder: Path) -> Iterator[tuple[str, bytes]]:
    frame = _frame_dict()
    dump = (lambda obj: pickle.dumps(obj, protocol=4)) if suffix == ".pkl" else _npz_bytes
    yield from _byte_mutations(dump(frame), rng)
    for key in frame:
        for value in (frame[key].astype("U3"), frame[key].astype(complex), np.array([{"a": 1}], dtype=object),
                      "text", None):
            if suffix == ".npz" and (value is None or (isinstance(value, np.ndarray) and value.dtype == object)):
                continue  # np.savez would pickle these; the object-array case is below
            yield "wrong-dtype", dump({**frame, key: value})
        for shape in ((2,), (frame[key].size + 3,), (0,)):
            yield "wrong-shape", dump({**frame, key: np.zeros(shape, np.float32)})
        yield "NaN-filled", dump({**frame, key: np.full_like(frame[key], np.nan)})
        yield "NaN-filled", dump({**frame, key: np.full_like(frame[key], np.inf)})
        yield "NaN-filled", dump({**frame, key: np.full(frame[key].shape, 1e300)})  # inf as float32
        if suffix == ".npz":
            yield "enormous-header", _npz_with_header(frame, key, (1 << 50,))
    if suffix == ".pkl":
        yield "enormous-header", _pickle_huge_bytes()
        yield "enormous-header", pickle.dumps({"x": 1}, protocol=4)[:2] + b"\x95" + struct.pack("<Q", 1 << 60) + b"."
        yield "code", pickle.dumps(_RunsCode(folder))
        yield "code", pickle.dumps({**frame, "root_pose": _RunsCode(folder)})
    else:
        buf = io.BytesIO()
        np.savez(buf, **{**frame, "root_pose": np.array([_RunsCode(folder)], dtype=object)})
        yield "code", buf.getvalue()


_HEADER = "VIDEO_ID\tVIDEO_NAME\tSENTENCE_ID\tSENTENCE_NAME\tSTART_REALIGNED\tEND_REALIGNED\tSENTENCE\n"
_ROWS = "".join(f"v{i}\tv{i}-1\ts{i}\tclip_{i}\t0.0\t1.5\tsentence number {i}\n" for i in range(8))
_TABLE = (_HEADER + _ROWS).encode()


def _table_cases(rng: random.Random) -> Iterator[tuple[str, bytes]]:
    header, rows = _HEADER, _ROWS
    yield from _byte_mutations(_TABLE, rng)
    yield "wrong-dtype", bytes(rng.randrange(256) for _ in range(400))  # binary garbage
    yield "wrong-dtype", ("\ufeff" + header + rows).encode("utf-16")
    yield "wrong-dtype", (header + rows).replace("\t", "\x00", 3).encode()
    yield "wrong-shape", (header.replace("\t", ",") + rows.replace("\t", ",")).encode()  # comma-separated
    yield "wrong-shape", (header + "v0\tv0-1\n" + rows).encode()  # a short row
    yield "wrong-shape", ("SENTENCE\n" + "a\n").encode()
    yield "wrong-shape", (header + rows + rows).encode()  # duplicated names
    yield "wrong-shape", b""
    yield "enormous-header", (header.rstrip("\n") + "\t" + "X" * 300_000 + "\n" + rows).encode()
    yield "enormous-header", ("\t".join(f"C{i}" for i in range(200_000)) + "\n" + rows).encode()
    yield "NaN-filled", (header + rows.replace("sentence number", "nan")).encode()


def _table_reader(path: Path):
    def read():
        rows = read_sentence_csv(path)
        return [(r.name, r.sentence) for r in rows]
    return read


# ----------------------------------------------------------------------------- checkpoints

def _small_sald():
    from sald_fast.config import TextConfig, preset
    from sald_fast.pipeline import SignSALD

    cfg = preset("tiny")
    cfg.text = TextConfig(kind="tiny", max_tokens=12, tiny_dim=32, seed=0)
    cfg.denoiser.text_dim = 32
    cfg.denoiser.num_layers = 1
    cfg.vae.channels = (8, 8, 8)
    return SignSALD.from_config(cfg, seed=0)


def _small_evaluator():
    from sald_fast.eval.models import PoseEvaluator, evaluator_config

    cfg = evaluator_config("tiny", 16, dim=16, num_heads=2, encoder_layers=1, decoder_layers=1, embed_dim=8,
                           max_tokens=8, dropout=0.0)
    return PoseEvaluator(cfg, ["hello", "world", "sign"])


def _checkpoint_loaders() -> dict[str, tuple[Callable[[Path], None], Callable[[Path], Any], Callable[[Any], Any]]]:
    """name -> (write a valid folder, load it, result -> comparable)."""
    from sald_fast.eval.models import PoseEvaluator
    from sald_fast.pipeline import SignSALD

    sald, ev = _small_sald(), _small_evaluator()
    return {
        "checkpoint folder (load_checkpoint)": (
            lambda p: save_checkpoint(p, {"net": torch.nn.Linear(4, 3).state_dict(), "step": torch.tensor([3])},
                                      {"dim": 4}, {"step": 3}),
            load_checkpoint, lambda r: r),
        "model folder (SignSALD.load)": (sald.save, lambda p: SignSALD.load(p, text_encoder=sald.text_encoder),
                                         lambda m: (m.state_dict(), m.meta)),
        "evaluator folder (PoseEvaluator.load)": (lambda p: ev.save(p, {"dataset": "x"}), PoseEvaluator.load,
                                                  lambda m: (m.state_dict(), m.meta)),
    }


def _rewrite(folder: Path, edit_tensors: Callable[[dict], dict] | None = None,
             edit_doc: Callable[[dict], Any] | None = None) -> None:
    """Rewrite a checkpoint folder consistently (fresh save id and hashes) after editing it: what
    a buggy or malicious writer could produce, which the checksums do not catch."""
    tensors, config, meta = load_checkpoint(folder)
    if edit_tensors is not None:
        tensors = edit_tensors(tensors)
    save_checkpoint(folder, tensors, config, meta)
    if edit_doc is not None:
        from sald_fast.checkpoint import doc_sha256

        doc = json.loads((folder / "config.json").read_text())
        doc = edit_doc(doc) or doc
        if isinstance(doc, dict):
            doc["doc_sha256"] = doc_sha256(doc)
        (folder / "config.json").write_text(json.dumps(doc))


def _first_float(tensors: dict) -> str:
    return next(k for k, v in sorted(tensors.items()) if v.is_floating_point() and v.dim() >= 1 and v.numel() > 1)


def _checkpoint_edits(rng: random.Random) -> Iterator[tuple[str, str, Callable[[Path], None]]]:
    """(kind, file edited, edit(folder)) of the crafted, checksum-consistent inputs."""
    def tensors_edit(fn):
        return lambda folder: _rewrite(folder, edit_tensors=fn)

    for dt in (torch.float64, torch.float16, torch.int32, torch.bool):
        yield "wrong-dtype", "model.safetensors", tensors_edit(
            lambda t, dt=dt: {**t, _first_float(t): t[_first_float(t)].to(dt)})
    yield "wrong-shape", "model.safetensors", tensors_edit(lambda t: {**t, _first_float(t): t[_first_float(t)][:1]})
    yield "wrong-shape", "model.safetensors", tensors_edit(
        lambda t: {**t, _first_float(t): t[_first_float(t)].reshape(1, -1)})
    yield "wrong-shape", "model.safetensors", tensors_edit(lambda t: {k: v for k, v in t.items() if k != _first_float(t)})
    yield "NaN-filled", "model.safetensors", tensors_edit(
        lambda t: {**t, _first_float(t): torch.full_like(t[_first_float(t)], float("nan"))})
    yield "NaN-filled", "model.safetensors", tensors_edit(
        lambda t: {**t, _first_float(t): t[_first_float(t)].index_fill(0, torch.tensor([0]), float("inf"))})

    def huge_safetensors_header(folder: Path, n: int) -> None:
        f = folder / "model.safetensors"
        data = bytearray(f.read_bytes())
        data[:8] = struct.pack("<Q", n)
        _rewrite_weights_hash(folder, bytes(data))

    for n in (1 << 62, (1 << 64) - 1, 100_000_000):
        yield "enormous-header", "model.safetensors", lambda folder, n=n: huge_safetensors_header(folder, n)

    def deep_config(folder: Path) -> None:
        doc = json.loads((folder / "config.json").read_text())
        text = json.dumps(doc)[:-1] + ', "deep": ' + "[" * 200_000 + "]" * 200_000 + "}"
        (folder / "config.json").write_text(text)

    yield "enormous-header", "config.json", deep_config
    yield "enormous-header", "config.json", lambda folder: (folder / "config.json").write_text(
        '{"format": "sald_fast.checkpoint", "pad": "' + "x" * 20_000_000 + '"}')
    for edit in (lambda d: d["config"].clear(), lambda d: d.update(config=[1, 2]), lambda d: d.update(meta="x"),
                 lambda d: d.update(version=99), lambda d: d["meta"].update(kind=7),
                 lambda d: d["meta"].update(vocab=[1, 2]) if "vocab" in d["meta"] else d.update(save_id=3)):
        yield "wrong-dtype", "config.json", lambda folder, edit=edit: _rewrite(folder, edit_doc=edit)


def _rewrite_weights_hash(folder: Path, weights: bytes) -> None:
    """Write ``weights`` and record its hash in config.json (so the hash check passes)."""
    import hashlib

    from sald_fast.checkpoint import doc_sha256

    (folder / "model.safetensors").write_bytes(weights)
    doc = json.loads((folder / "config.json").read_text())
    doc["weights_sha256"] = hashlib.sha256(weights).hexdigest()
    doc["doc_sha256"] = doc_sha256(doc)
    (folder / "config.json").write_text(json.dumps(doc))


# ----------------------------------------------------------------------------- the campaign

def run_campaign(tmp: Path) -> dict[tuple[str, str], Counter]:
    """Feed every reader its inputs; returns {(reader, kind): Counter(outcome)}. Raises
    AssertionError at the first input without an acceptable outcome."""
    rng = random.Random(SEED)
    counts: dict[tuple[str, str], Counter] = {}

    def record(reader: str, kind: str, outcome: str) -> None:
        counts.setdefault((reader, kind), Counter())[outcome] += 1

    def check(reader: str, kind: str, path: Path, call, original, compare, checksummed: bool, n: int) -> None:
        try:
            outcome = _outcome(call, (str(path), path.name), lambda r: _equal(compare(r), original), checksummed)
        except AssertionError as exc:
            raise AssertionError(f"{reader}, {kind} input #{n} ({path}): {exc}") from None
        record(reader, kind, outcome)

    # pose .npz
    reader = "pose .npz (read_clip_file)"
    folder = tmp / "pose"
    folder.mkdir()
    good = folder / "good.npz"
    good.write_bytes(_npz_bytes(_clip_arrays()))
    original = read_clip_file(good, "a sentence")
    for n, (kind, data) in enumerate(_pose_cases(rng)):
        path = folder / f"c{n}.npz"
        path.write_bytes(data)
        check(reader, kind, path, lambda path=path: read_clip_file(path, "a sentence"),
              original, lambda r, path=path: {**r, "name": "good"}, True, n)

    # per-frame .pkl and .npz
    for suffix, checksummed in ((".pkl", False), (".npz", True)):
        reader = f"frame {suffix} (read_frame_file)"
        folder = tmp / f"frames{suffix}"
        folder.mkdir()
        good = folder / f"good{suffix}"
        good.write_bytes(pickle.dumps(_frame_dict(), protocol=4) if suffix == ".pkl" else _npz_bytes(_frame_dict()))
        original = _frame_reader(good)()
        for n, (kind, data) in enumerate(_frame_cases(rng, suffix, folder)):
            path = folder / f"c{n}{suffix}"
            path.write_bytes(data)
            check(reader, kind, path, _frame_reader(path), original, lambda r: r, checksummed, n)
            assert not (folder / _MARKER).exists(), f"{reader}: input #{n} ran code"

    # text tables
    reader = "text table (read_sentence_csv)"
    folder = tmp / "tables"
    folder.mkdir()
    good = folder / "good.csv"
    good.write_bytes(_TABLE)
    original = _table_reader(good)()
    for n, (kind, data) in enumerate(_table_cases(rng)):
        path = folder / f"c{n}.csv"
        path.write_bytes(data)
        check(reader, kind, path, _table_reader(path), original, lambda r: r, False, n)

    # checkpoint, model and evaluator folders
    for reader, (write, load, compare) in _checkpoint_loaders().items():
        base = tmp / reader.split()[0]
        base.mkdir()
        write(base / "good")
        original = compare(load(base / "good"))
        n = 0
        for name in ("model.safetensors", "config.json"):
            data = (base / "good" / name).read_bytes()
            for kind, bad in _byte_mutations(data, rng):
                folder = base / f"c{n}"
                write(folder)
                (folder / name).write_bytes(bad)
                check(reader, kind, folder, lambda folder=folder: load(folder), original, compare, True, n)
                n += 1
        for kind, name, edit in _checkpoint_edits(rng):
            folder = base / f"c{n}"
            write(folder)
            edit(folder)
            check(reader, kind, folder, lambda folder=folder: load(folder), original, compare,
                  reader.startswith(("model", "evaluator")), n)
            n += 1
    return counts


def format_counts(counts: dict[tuple[str, str], Counter]) -> str:
    """A markdown table: reader, input kind, inputs, clear errors, same result, valid change."""
    lines = ["| reader | input | inputs | clear error | same result | other valid value |", "|---|---|---|---|---|---|"]
    for (reader, kind), c in counts.items():
        lines.append(f"| {reader} | {kind} | {sum(c.values())} | {c['error']} | {c['same']} | {c['valid']} |")
    total = Counter()
    for c in counts.values():
        total.update(c)
    lines.append(f"| **all** | | **{sum(total.values())}** | {total['error']} | {total['same']} | {total['valid']} |")
    return "\n".join(lines)


@pytest.mark.slow
def test_fuzz_every_loader(tmp_path):
    counts = run_campaign(tmp_path)
    kinds = {k for _, k in counts}
    assert kinds >= {"truncated", "bit-flipped", "wrong-dtype", "wrong-shape", "enormous-header", "NaN-filled", "code"}
    readers = {r for r, _ in counts}
    assert len(readers) == 7, readers
    # the written-on-purpose inputs (wrong dtype, shape, NaN, enormous header, code) all fail for the
    # model and data readers, which know what they expect
    for (reader, kind), c in counts.items():
        knows_content = not reader.startswith(("text", "checkpoint"))  # load_checkpoint has no model to check against
        if kind in ("enormous-header", "code") or (kind in ("wrong-dtype", "wrong-shape", "NaN-filled") and knows_content):
            assert c["error"] == sum(c.values()), (reader, kind, c)
    print("\n" + format_counts(counts))
