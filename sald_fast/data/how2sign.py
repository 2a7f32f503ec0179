"""How2Sign SMPL-X: loader, validator and converter from per-frame files.

On-disk layout read by :func:`load_how2sign` (``ROOT`` is ``--data-root``)::

    ROOT/how2sign_realigned_train.csv     How2Sign's sentence tables: tab-separated, a header
    ROOT/how2sign_realigned_val.csv       row, columns VIDEO_ID VIDEO_NAME SENTENCE_ID
    ROOT/how2sign_realigned_test.csv      SENTENCE_NAME START_REALIGNED END_REALIGNED SENTENCE
                                          (only SENTENCE_NAME and SENTENCE are required)
    ROOT/train/<SENTENCE_NAME>.npz        one file per sentence of the split's table
    ROOT/val/<SENTENCE_NAME>.npz
    ROOT/test/<SENTENCE_NAME>.npz

Each ``.npz`` holds float arrays (axis-angle, SMPL-X conventions, T frames)::

    global_orient (T, 3)   body_pose (T, 63) or (T, 21, 3)
    left_hand_pose (T, 45) or (T, 15, 3)   right_hand_pose (T, 45) or (T, 15, 3)   (full
    axis-angle, not PCA)   transl (T, 3)   fps () optional: the clip's frame rate

A file without ``fps`` is taken to be at ``source_fps`` (default: already at the target
``fps``). Clips are resampled to ``fps`` (rotations slerped, translation linear). Files are read
with ``allow_pickle=False``. Every problem (missing file, unreadable or truncated archive, missing
field, wrong shape, NaN/inf, empty sentence, a sentence without a pose file, duplicated names) is
a :class:`DataError` naming the file and the field; with ``skip_bad=True`` each bad clip is
logged (logger ``sald_fast.data.how2sign``) and skipped, and a warning gives the count at the end
(the skipped clips are also in the result's ``.skipped``). Pose files that no table row names
are ignored.

Converter (the How2Sign SMPL-X releases as downloaded -> this layout; the layouts it reads,
the text table variants and the filtering are described in :mod:`sald_fast.data.release`)::

    python -m sald_fast.data.how2sign convert SRC DST --fps 24 [--skip-bad] [--csv-dir DIR]
                                      [--min-frames 4] [--max-seconds 30]
    python -m sald_fast.data.how2sign check ROOT [--split train] [--fps 25]

:func:`read_frame_file` reads one per-frame ``.npz`` or ``.pkl`` (a restricted unpickler that
builds numpy arrays, dicts, lists and scalars and nothing else).
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import POSE_FIELDS, DataError, check_clip, resample_clip
from .safe_pickle import _reject_objects

__all__ = [
    "DataError",
    "ClipList",
    "SPLITS",
    "csv_path",
    "read_sentence_csv",
    "read_clip_file",
    "load_how2sign",
    "read_frame_file",
    "convert_how2sign",
    "main",
]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CSV_COLUMNS = ("VIDEO_ID", "VIDEO_NAME", "SENTENCE_ID", "SENTENCE_NAME", "START_REALIGNED", "END_REALIGNED", "SENTENCE")
_REQUIRED_COLUMNS = ("SENTENCE_NAME", "SENTENCE")


class ClipList(list):
    """A list of clips; ``skipped`` lists ``(sentence name, reason)`` of clips left out."""

    skipped: list[tuple[str, str]]

    def __init__(self, clips=(), skipped=()):
        super().__init__(clips)
        self.skipped = list(skipped)


@dataclass(frozen=True)
class SentenceRow:
    """One row of a How2Sign sentence table (``line`` is 1-based, the header is line 1)."""

    name: str
    sentence: str
    line: int


MAX_ARRAY_BYTES = 1 << 30  # a pose or frame array larger than 1 GiB is refused (zip bombs, huge headers)


def check_npz_headers(path: Path) -> None:
    """Before ``np.load`` trusts an ``.npz``: every member's ``.npy`` header must declare a plain
    (non-object) dtype and a shape whose bytes fit the member's size and ``MAX_ARRAY_BYTES``
    (else numpy would allocate what a corrupted header claims). Raises :class:`DataError`."""
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                if info.file_size > MAX_ARRAY_BYTES:
                    raise DataError(path, key, f"member of {info.file_size} bytes exceeds the {MAX_ARRAY_BYTES}-byte limit")
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f)
                if dtype.hasobject:
                    raise DataError(path, key, "object arrays are not allowed")
                count = 1
                for n in shape:
                    count *= int(n)
                if count * dtype.itemsize > info.file_size:
                    raise DataError(path, key, f"its header declares shape {shape} of {dtype} ({count * dtype.itemsize} "
                                    f"bytes) but the member holds {info.file_size} bytes")
    except DataError:
        raise
    except Exception as e:  # not a zip, truncated, bad magic or header
        raise DataError(path, "file", f"cannot read as .npz: {type(e).__name__}: {str(e)[:200]}") from None


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def csv_path(root: str | os.PathLike, split: str) -> Path:
    """``ROOT/how2sign_realigned_<split>.csv``."""
    return Path(root) / f"how2sign_realigned_{_check_split(split)}.csv"


def read_sentence_csv(path: str | os.PathLike) -> list[SentenceRow]:
    """Rows of a How2Sign sentence table (tab-separated, header row). Raises :class:`DataError`
    for a missing file, missing columns, short rows or duplicated SENTENCE_NAMEs (empty
    sentences are returned; the loader rejects them per clip)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file", "missing (the How2Sign sentence table of this split)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, "file", f"cannot read: {e}") from None
    try:
        return _parse_sentence_table(path, text)
    except csv.Error as e:  # e.g. a field longer than csv.field_size_limit(), a NUL byte
        raise DataError(path, "file", f"not a readable tab-separated table: {e}") from None


def _parse_sentence_table(path: Path, text: str) -> list[SentenceRow]:
    reader = csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(reader, None)
    if header is None:
        raise DataError(path, "header", "the file is empty")
    header = [h.strip() for h in header]
    missing = [c for c in _REQUIRED_COLUMNS if c not in header]
    if missing:
        shown = header if len(header) <= 12 else header[:12] + [f"... {len(header) - 12} more"]
        raise DataError(path, missing[0], f"column missing from the header {[h[:40] for h in shown]} (tab-separated?)")
    i_name, i_sent = header.index("SENTENCE_NAME"), header.index("SENTENCE")
    rows: list[SentenceRow] = []
    seen: dict[str, int] = {}
    for line, rec in enumerate(reader, start=2):
        if not rec or all(not c.strip() for c in rec):
            continue
        if len(rec) <= max(i_name, i_sent):
            raise DataError(path, "SENTENCE", f"line {line} has {len(rec)} columns, the header {len(header)}")
        name = rec[i_name].strip()
        if not name:
            raise DataError(path, "SENTENCE_NAME", f"line {line}: empty")
        if name in seen:
            raise DataError(path, "SENTENCE_NAME", f"line {line}: {name!r} already on line {seen[name]}")
        seen[name] = line
        rows.append(SentenceRow(name=name, sentence=rec[i_sent].strip(), line=line))
    return rows


def read_clip_file(path: str | os.PathLike, text: str, name: str | None = None,
                   default_fps: float = 25.0) -> dict[str, Any]:
    """One clip from a pose ``.npz`` of the layout (validated; not resampled)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file", "missing")
    check_npz_headers(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:  # truncated zip, not a zip, pickled data...
        raise DataError(path, "file", f"cannot read as .npz: {type(e).__name__}: {e}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(path, "file", "is a single .npy array, not an .npz archive of fields")
    clip: dict[str, Any] = {"name": name or path.stem, "text": text}
    with archive:
        for field in (*POSE_FIELDS, "fps"):
            if field not in archive.files:
                if field == "fps":
                    clip["fps"] = float(default_fps)
                    continue
                raise DataError(path, field, f"missing (fields present: {sorted(archive.files)})")
            try:
                value = archive[field]
            except Exception as e:  # truncated member, object array (pickle refused), bad header
                raise DataError(path, field, f"cannot read: {type(e).__name__}: {e}") from None
            if field == "fps":
                if value.size != 1 or value.dtype.kind not in "fiu":
                    raise DataError(path, "fps", f"must be a number, got shape {value.shape} dtype {value.dtype}")
                value = float(value.reshape(()))
            clip[field] = value
    return check_clip(clip, source=path)


def load_how2sign(split: str, root: str | os.PathLike, fps: float = 25.0, skip_bad: bool = False,
                  source_fps: float | None = None) -> ClipList:
    """Clips of a How2Sign split from the layout in the module docstring, resampled to ``fps``.

    ``source_fps``: frame rate of files without an ``fps`` field (default ``fps``). Raises
    :class:`DataError` on the first bad clip, or with ``skip_bad`` logs and skips bad clips
    (their names and reasons in ``result.skipped``) and warns with the count. Problems with the
    split as a whole (no table, no valid clip) always raise.
    """
    _check_split(split)
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "root", "not a directory (expected the How2Sign SMPL-X layout, "
                        "see sald_fast.data.how2sign)")
    table = csv_path(root, split)
    rows = read_sentence_csv(table)
    if not rows:
        raise DataError(table, "SENTENCE", "the table has no sentences")
    default_fps = float(fps if source_fps is None else source_fps)
    clips = ClipList()
    for row in rows:
        try:
            if not row.sentence:
                raise DataError(table, "SENTENCE", f"line {row.line}: empty sentence for {row.name}")
            pose = root / split / f"{row.name}.npz"
            if not pose.is_file():
                raise DataError(pose, "file", f"missing: no pose file for sentence {row.name} "
                                f"({table.name} line {row.line})")
            clip = read_clip_file(pose, row.sentence, row.name, default_fps)
            clips.append(resample_clip(clip, fps))
        except DataError as e:
            if not skip_bad:
                raise
            log.warning("skipping bad clip %s: %s", row.name, e)
            clips.skipped.append((row.name, str(e)))
    if clips.skipped:
        warnings.warn(f"How2Sign {split}: skipped {len(clips.skipped)} of {len(rows)} clips with bad data "
                      f"(each one logged by {log.name})", stacklevel=2)
    if not clips:
        raise DataError(root / split, "file", f"no valid clip among the {len(rows)} sentences of {table.name}")
    return clips


# --- the released per-frame format --------------------------------------------------------------

_PICKLE_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("collections", "OrderedDict"), ("_codecs", "encode"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Builds numpy arrays/scalars, dicts, lists, tuples, strings and numbers; any other global
    (class or function) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unpickling {module}.{name} is not allowed (numpy arrays, dicts, lists and "
                                     "scalars only)")


def read_frame_file(path: str | os.PathLike) -> Any:
    """The content of a per-frame ``.npz`` (dict of arrays) or ``.pkl`` (restricted unpickler)."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            check_npz_headers(path)
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        if suffix == ".pkl":
            with open(path, "rb") as f:
                obj = _NumpyOnlyUnpickler(f, encoding="latin1").load()
            _reject_objects(obj, path)
            return obj
    except DataError:
        raise
    except Exception as e:
        raise DataError(path, "file", f"cannot read: {type(e).__name__}: {e}") from None
    raise DataError(path, "file", f"unsupported frame file type {suffix!r} (use .npz or .pkl)")


def convert_how2sign(src: str | os.PathLike, dst: str | os.PathLike, fps: float,
                     csv_dir: str | os.PathLike | None = None, skip_bad: bool = False,
                     min_frames: int = 4, max_seconds: float = 30.0, progress: bool = False) -> dict[str, int]:
    """Convert a How2Sign SMPL-X release into the loader's layout (the layouts it reads, the
    filtering and the output: :mod:`sald_fast.data.release`).

    ``fps``: the frame rate of clips whose table row gives none. Returns the number of clips
    written per split and ``"skipped"`` (bad clips); the full report (dropped and unmatched
    clips by name) is the returned dict's ``.report``.
    """
    from .release import convert_release

    report = convert_release(src, dst, fps, csv_dir=csv_dir, skip_bad=skip_bad, min_frames=min_frames,
                             max_seconds=max_seconds, progress=progress)
    counts = _Counts(report.counts())
    counts.report = report
    return counts


class _Counts(dict):
    """Counts per split plus the converter's full report as ``.report``."""

    report: Any


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sald_fast.data.how2sign convert SRC DST --fps F`` | ``check ROOT``."""
    p = argparse.ArgumentParser(prog="python -m sald_fast.data.how2sign", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="per-frame SMPL-X files -> the loader's layout")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--fps", type=float, required=True, help="frame rate of the source frames")
    c.add_argument("--csv-dir", default=None, help="folder of how2sign_realigned_<split>.csv (default SRC)")
    c.add_argument("--skip-bad", action="store_true", help="log, skip and count bad clips instead of stopping")
    c.add_argument("--min-frames", type=int, default=4, help="drop clips with fewer frames (default 4)")
    c.add_argument("--max-seconds", type=float, default=30.0, help="drop longer clips (default 30)")
    k = sub.add_parser("check", help="load every split of ROOT and report")
    k.add_argument("root")
    k.add_argument("--split", choices=SPLITS, action="append", help="split(s) to check (default all present)")
    k.add_argument("--fps", type=float, default=25.0)
    k.add_argument("--skip-bad", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.command == "convert":
            counts = convert_how2sign(args.src, args.dst, args.fps, csv_dir=args.csv_dir, skip_bad=args.skip_bad,
                                      min_frames=args.min_frames, max_seconds=args.max_seconds, progress=True)
            print(counts.report.summary(args.min_frames, args.max_seconds))
        else:
            splits = args.split or [s for s in SPLITS if csv_path(args.root, s).is_file()]
            if not splits:
                raise DataError(args.root, "file", "no how2sign_realigned_<split>.csv found")
            for s in splits:
                clips = load_how2sign(s, args.root, fps=args.fps, skip_bad=args.skip_bad)
                frames = [c["global_orient"].shape[0] for c in clips]
                print(f"{s}: {len(clips)} clips ok, {len(clips.skipped)} skipped, frames "
                      f"min {min(frames)} median {int(np.median(frames))} max {max(frames)} at {args.fps:g} fps")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
