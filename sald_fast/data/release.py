"""The How2Sign SMPL-X releases as downloaded -> the loader's layout (:mod:`sald_fast.data.how2sign`).

Pose layouts found under ``SRC/<split>/`` or ``SRC/<split>/poses/`` (or directly in ``SRC``, the
split then taken from the sentence tables):

- a folder per clip of per-frame ``.pkl`` / ``.npz`` files (the Neural Sign Actors release:
  ``<split>/poses/<SENTENCE_NAME>/<SENTENCE_NAME>_<i>_3D.pkl``, ``i`` from 0). Frames are
  ordered by their number (the first integer after the clip name, else the last one in the
  name); a gap or a repeated number is an error. Each frame is a dict of 1-D arrays; keys
  (aliases): ``smplx_root_pose``/``global_orient``/``root_pose`` (3), ``smplx_body_pose``/
  ``body_pose`` (63), ``smplx_lhand_pose``/``left_hand_pose``/``lhand_pose`` (45),
  ``smplx_rhand_pose``/``right_hand_pose``/``rhand_pose`` (45), ``cam_trans``/``transl``/
  ``trans``/``smplx_transl`` (3; zeros with a warning when absent), and kept when present:
  ``smplx_jaw_pose``/``jaw_pose`` (3), ``smplx_expr``/``expression``/``expr`` (E),
  ``smplx_shape``/``betas``/``shape`` (B); possibly nested under ``smplx``/``params`` or in a
  one-element list.
- a file per clip (``<SENTENCE_NAME>.pkl`` / ``.npz`` / ``.joblib``) holding a (T, 182) ``smplx``
  array (the SignAvatars layout: root [0:3], body [3:66], left hand [66:111], right hand
  [111:156], jaw [156:159], shape [159:169], expression [169:179], camera translation [179:182]),
  as a plain pickle, a joblib file (array records read, see :mod:`.safe_pickle`) or an ``.npz``;
  or a dict of per-clip (T, n) arrays with the keys above.

Sentence tables (in ``--csv-dir``, ``SRC`` or ``SRC/<split>``, named
``how2sign_realigned_<split>.csv``, ``how2sign_<split>.csv``, ``<split>.csv`` or ``<split>.tsv``):
How2Sign's tab-separated table, or a comma-separated one (quoted fields), optionally with an
``fps`` column giving the clip's frame rate (otherwise ``--fps``). Column names are matched
without regard to case; ``SENTENCE_NAME`` (or ``name``) and ``SENTENCE`` (or ``text``) are required.

Output: ``DST/<split>/<SENTENCE_NAME>.npz`` with ``global_orient`` (T, 3), ``body_pose`` (T, 21, 3),
``left_hand_pose``/``right_hand_pose`` (T, 15, 3), ``transl`` (T, 3), ``fps``, and when the
source has them ``jaw_pose`` (T, 3), ``expression`` (T, E), ``betas`` (T, B) (not used by the
loader yet: kept for a face channel); ``DST/how2sign_realigned_<split>.csv`` lists the converted
clips (tab-separated). Clips shorter than ``min_frames`` (4) or longer than ``max_seconds`` (30 s)
are dropped; table rows without poses and poses without a row are listed; all counted.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import POSE_FIELDS, DataError, check_clip
from .safe_pickle import load_pickle_data

__all__ = ["TableRow", "ConversionReport", "read_text_table", "read_frame_params", "read_clip_params",
           "find_pose_sources", "convert_release", "SMPLX182_SLICES"]

log = logging.getLogger("sald_fast.data.how2sign")

SPLITS = ("train", "val", "test")
POSE_SUFFIXES = (".pkl", ".npz", ".joblib", ".pk", ".pickle")

# SignAvatars' per-frame (182,) vector -> output field
SMPLX182_SLICES: dict[str, slice] = {
    "global_orient": slice(0, 3), "body_pose": slice(3, 66), "left_hand_pose": slice(66, 111),
    "right_hand_pose": slice(111, 156), "jaw_pose": slice(156, 159), "betas": slice(159, 169),
    "expression": slice(169, 179), "transl": slice(179, 182),
}
_ALIASES: dict[str, tuple[str, ...]] = {
    "global_orient": ("global_orient", "root_pose", "smplx_root_pose"),
    "body_pose": ("body_pose", "smplx_body_pose"),
    "left_hand_pose": ("left_hand_pose", "lhand_pose", "smplx_lhand_pose"),
    "right_hand_pose": ("right_hand_pose", "rhand_pose", "smplx_rhand_pose"),
    "transl": ("transl", "trans", "cam_trans", "smplx_transl"),
    "jaw_pose": ("jaw_pose", "smplx_jaw_pose"),
    "expression": ("expression", "expr", "smplx_expr"),
    "betas": ("betas", "shape", "smplx_shape"),
}
_SIZES = {"global_orient": 3, "body_pose": 63, "left_hand_pose": 45, "right_hand_pose": 45, "transl": 3,
          "jaw_pose": 3}
_OPTIONAL = ("jaw_pose", "expression", "betas")


# --- text tables -------------------------------------------------------------------------------

@dataclass(frozen=True)
class TableRow:
    """A sentence table row: ``fps`` is None without an fps column; ``line`` is 1-based."""

    name: str
    sentence: str
    fps: float | None
    line: int


def read_text_table(path: str | os.PathLike) -> list[TableRow]:
    """Rows of a sentence table, tab- or comma-separated (decided by the header line).

    Raises :class:`DataError` naming the file and column for a missing file, a missing
    column, a short row, a duplicated name or a bad fps value.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, "file", f"cannot read: {e}") from None
    try:
        return _parse_table(path, text)
    except csv.Error as e:  # a field longer than csv.field_size_limit(), a NUL byte...
        raise DataError(path, "file", f"not a readable table: {e}") from None


def _parse_table(path: Path, text: str) -> list[TableRow]:
    first = text.split("\n", 1)[0]
    if "\t" in first:
        reader = csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(text), delimiter=",")
    header = [h.strip().lower() for h in next(reader, [])]
    if not header:
        raise DataError(path, "header", "the file is empty")
    cols = {}
    for want, names in (("name", ("sentence_name", "name")), ("sentence", ("sentence", "text")), ("fps", ("fps",))):
        cols[want] = next((header.index(n) for n in names if n in header), None)
    for want, label in (("name", "SENTENCE_NAME"), ("sentence", "SENTENCE")):
        if cols[want] is None:
            raise DataError(path, label, f"column missing from the header {header}")
    rows: list[TableRow] = []
    seen: dict[str, int] = {}
    for line, rec in enumerate(reader, start=2):
        if not rec or all(not c.strip() for c in rec):
            continue
        need = max(c for c in cols.values() if c is not None)
        if len(rec) <= need:
            raise DataError(path, "SENTENCE", f"line {line} has {len(rec)} columns, the header {len(header)}")
        name = rec[cols["name"]].strip()
        if not name:
            raise DataError(path, "SENTENCE_NAME", f"line {line}: empty")
        if name in seen:
            raise DataError(path, "SENTENCE_NAME", f"line {line}: {name!r} already on line {seen[name]}")
        seen[name] = line
        fps = None
        if cols["fps"] is not None and rec[cols["fps"]].strip():
            try:
                fps = float(rec[cols["fps"]])
            except ValueError:
                fps = float("nan")
            if not (np.isfinite(fps) and fps > 0):
                raise DataError(path, "fps", f"line {line}: {rec[cols['fps']]!r} is not a positive number")
        rows.append(TableRow(name, rec[cols["sentence"]].strip(), fps, line))
    return rows


def _find_table(split: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        for name in (f"how2sign_realigned_{split}.csv", f"how2sign_{split}.csv", f"{split}.csv", f"{split}.tsv"):
            if (d / name).is_file():
                return d / name
    return None


# --- pose files --------------------------------------------------------------------------------

def _read_any(path: Path) -> Any:
    if path.suffix.lower() == ".npz":
        from .how2sign import check_npz_headers

        check_npz_headers(path)  # before numpy allocates what a header claims
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception as e:
            raise DataError(path, "file", f"cannot read as .npz: {type(e).__name__}: {e}") from None
    return load_pickle_data(path)


def _unwrap(obj: Any) -> Any:
    """``[x]`` -> x; ``{"smplx"|"params"|"smplx_params": dict}`` -> the inner dict."""
    for _ in range(3):
        if isinstance(obj, (list, tuple)) and len(obj) == 1:
            obj = obj[0]
        elif isinstance(obj, dict) and not any(a in obj for al in _ALIASES.values() for a in al):
            inner = [obj[k] for k in ("smplx", "params", "smplx_params") if isinstance(obj.get(k), dict)]
            if not inner:
                break
            obj = inner[0]
    return obj


def _numeric(value: Any, path: Path, fld: str, key: str) -> np.ndarray:
    """A finite float32 array (values beyond float32, NaN and inf refused)."""
    value = np.asarray(value)
    if value.dtype.kind not in "fiu":
        raise DataError(path, fld, f"key {key!r} must be numeric, got dtype {value.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        value = value.astype(np.float32)
    if not np.isfinite(value).all():
        raise DataError(path, fld, f"key {key!r} holds NaN or inf (or values beyond float32)")
    return value


def _field_keys(obj: dict, path: Path, also: str = "") -> dict[str, str]:
    """SMPL-X field -> the key of ``obj`` holding it (the first of its aliases present); optional
    fields and ``transl`` may be absent, a missing required one is a DataError naming the
    aliases looked for (``also``: what else was looked for, for the message)."""
    keys = {}
    for fld, aliases in _ALIASES.items():
        key = next((a for a in aliases if a in obj), None)
        if key is not None:
            keys[fld] = key
        elif fld not in _OPTIONAL and fld != "transl":
            raise DataError(path, fld, f"missing (looked for {also}{list(aliases)}; keys present: "
                            f"{sorted(map(str, obj))})")
    return keys


def read_frame_params(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """One frame's SMPL-X parameters as flat float32 arrays (keys of ``SMPLX182_SLICES``;
    ``transl`` absent when the frame has none; optional fields absent when missing)."""
    path = Path(path)
    obj = _unwrap(_read_any(path))
    if not isinstance(obj, dict):
        raise DataError(path, "file", f"expected a dict of SMPL-X parameters, got {type(obj).__name__}")
    out: dict[str, np.ndarray] = {}
    for fld, key in _field_keys(obj, path).items():
        value = _numeric(obj[key], path, fld, key).reshape(-1)
        if fld in _SIZES and value.size != _SIZES[fld]:
            hint = " (PCA hand poses are not supported: export full axis-angle)" if "hand" in fld else ""
            raise DataError(path, fld, f"key {key!r} must hold {_SIZES[fld]} values for one frame, "
                            f"got shape {np.shape(obj[key])}{hint}")
        out[fld] = value.astype(np.float32)
    return out


def read_clip_params(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A per-clip file's SMPL-X parameters as (T, n) float32 arrays: a (T, 182) ``smplx`` array
    (or a bare (T, 182) array), or a dict of (T, n) arrays with the frame keys."""
    path = Path(path)
    obj = _read_any(path)
    arr = obj.get("smplx") if isinstance(obj, dict) else obj
    if isinstance(arr, (list, tuple)) and arr and all(isinstance(a, np.ndarray) for a in arr):
        arr = np.stack([np.asarray(a).reshape(-1) for a in arr])
    if isinstance(arr, np.ndarray):
        arr = _numeric(arr, path, "smplx", "smplx")
        if arr.ndim != 2 or arr.shape[1] != 182:
            raise DataError(path, "smplx", f"must have shape (T, 182), got {arr.shape}")
        return {f: np.ascontiguousarray(arr[:, s], dtype=np.float32) for f, s in SMPLX182_SLICES.items()}
    obj = _unwrap(obj)
    if not isinstance(obj, dict):
        raise DataError(path, "smplx", f"expected a (T, 182) 'smplx' array or a dict of arrays, got "
                        f"{type(obj).__name__}")
    out: dict[str, np.ndarray] = {}
    for fld, key in _field_keys(obj, path, also="'smplx' and ").items():
        value = _numeric(obj[key], path, fld, key)
        out[fld] = value.reshape(value.shape[0], -1).astype(np.float32) if value.ndim else value
    return out


def _frame_number(path: Path, clip: str) -> int | None:
    stem = path.stem
    rest = stem[len(clip):] if stem.startswith(clip) else None
    nums = re.findall(r"\d+", rest) if rest is not None else re.findall(r"\d+", stem)[-1:]
    return int(nums[0]) if nums else None


def _read_frames(folder: Path) -> dict[str, np.ndarray]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in POSE_SUFFIXES]
    if not files:
        raise DataError(folder, "file", "no per-frame .pkl/.npz files in the clip folder")
    numbered = {}
    for p in files:
        n = _frame_number(p, folder.name)
        if n is None:
            raise DataError(p, "file", "no frame number in the file name")
        if n in numbered:
            raise DataError(p, "file", f"frame number {n} also in {numbered[n].name}")
        numbered[n] = p
    order = sorted(numbered)
    missing = sorted(set(range(order[0], order[-1] + 1)) - set(order))
    if missing:
        raise DataError(folder, "file", f"frames missing: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    frames = [read_frame_params(numbered[n]) for n in order]
    out = {}
    for fld in _ALIASES:
        present = [fld in fr for fr in frames]
        if not any(present):
            continue
        if not all(present):
            bad = numbered[order[present.index(False)]]
            raise DataError(bad, fld, "missing in this frame but present in others of the clip")
        sizes = {fr[fld].size for fr in frames}
        if len(sizes) != 1:
            raise DataError(folder, fld, f"different sizes across frames: {sorted(sizes)}")
        out[fld] = np.stack([fr[fld] for fr in frames])
    return out


def _finish_clip(arrays: dict[str, np.ndarray], fps: float, name: str, source: Path) -> dict[str, np.ndarray]:
    """Validated output arrays (poses reshaped, optional fields checked for T and finiteness)."""
    arrays = dict(arrays)
    T = arrays["global_orient"].shape[0]
    if "transl" not in arrays:
        arrays["transl"] = np.zeros((T, 3), np.float32)
    clip = check_clip({**{f: arrays[f] for f in POSE_FIELDS}, "fps": fps, "text": "-", "name": name}, source=source)
    out = {f: clip[f] for f in POSE_FIELDS}
    for fld in _OPTIONAL:
        if fld in arrays:
            x = arrays[fld]
            if x.ndim != 2 or x.shape[0] != T:
                raise DataError(source, fld, f"must have shape (T={T}, n), got {x.shape}")
            if not np.isfinite(x).all():
                raise DataError(source, fld, "contains NaN or inf")
            out[fld] = np.ascontiguousarray(x, dtype=np.float32)
    return out


@dataclass
class PoseSource:
    """Where one clip's poses are: a folder of frames or a per-clip file."""

    name: str
    path: Path
    per_frame: bool


def find_pose_sources(folder: Path) -> dict[str, PoseSource]:
    """Clips in ``folder`` (or ``folder/poses``): sub-folders of frames and per-clip files."""
    out: dict[str, PoseSource] = {}
    for base in (folder, folder / "poses"):
        if not base.is_dir():
            continue
        for p in sorted(base.iterdir(), key=lambda q: q.name):
            if base == folder and p.name in ("poses", *SPLITS):
                continue
            if p.is_dir():
                out.setdefault(p.name, PoseSource(p.name, p, True))
            elif p.is_file() and p.suffix.lower() in POSE_SUFFIXES:
                out.setdefault(p.stem, PoseSource(p.stem, p, False))
    return out


# --- the converter -------------------------------------------------------------------------------

@dataclass
class ConversionReport:
    """What :func:`convert_release` did: clips written per split, and names left out by reason."""

    written: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    bad: list[tuple[str, str]] = field(default_factory=list)
    too_short: list[str] = field(default_factory=list)
    too_long: list[str] = field(default_factory=list)
    no_poses: list[str] = field(default_factory=list)
    no_row: list[str] = field(default_factory=list)
    no_transl: int = 0

    def counts(self) -> dict[str, int]:
        """``{"train": n, "val": n, "test": n, "skipped": bad clips}``."""
        return {**self.written, "skipped": len(self.bad)}

    def summary(self, min_frames: int = 4, max_seconds: float = 30.0) -> str:
        """One line: written per split and every left-out count."""
        w = " ".join(f"{s}={n}" for s, n in self.written.items())
        return (f"{w} skipped={len(self.bad)} | dropped: {len(self.too_short)} shorter than {min_frames} frames, "
                f"{len(self.too_long)} longer than {max_seconds:g} s | {len(self.no_poses)} table rows without "
                f"poses, {len(self.no_row)} pose sets without a table row")


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_table(path: Path, rows: list[TableRow]) -> None:
    clean = lambda s: re.sub(r"[\t\r\n]+", " ", s)  # noqa: E731
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("SENTENCE_NAME\tSENTENCE\n" + "".join(f"{clean(r.name)}\t{clean(r.sentence)}\n" for r in rows),
                    encoding="utf-8")


class _Progress:
    """A one-line progress bar on stderr (only when stderr is a terminal)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.n = total, 0
        self.enabled = enabled and sys.stderr.isatty() and total > 0

    def step(self, label: str) -> None:
        self.n += 1
        if self.enabled:
            filled = int(30 * self.n / self.total)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.n}/{self.total} {label[:40]:<40}")
            if self.n == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def convert_release(src: str | os.PathLike, dst: str | os.PathLike, fps: float,
                    csv_dir: str | os.PathLike | None = None, skip_bad: bool = False, min_frames: int = 4,
                    max_seconds: float = 30.0, progress: bool = True) -> ConversionReport:
    """Convert a How2Sign SMPL-X release (layouts in the module docstring) into the loader's layout.

    ``fps``: frame rate of clips whose table row has no fps. Bad clips raise :class:`DataError`,
    or with ``skip_bad`` are logged and listed in ``report.bad``. Short/long clips, rows without
    poses and poses without a row are logged, listed and counted, never fatal.
    """
    src, dst = Path(src), Path(dst)
    fps = float(fps)
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if not src.is_dir():
        raise DataError(src, "root", "not a directory")
    dirs = ([Path(csv_dir)] if csv_dir is not None else []) + [src]
    report = ConversionReport()
    jobs: list[tuple[str, TableRow, PoseSource]] = []
    split_dirs = [s for s in SPLITS if (src / s).is_dir()]
    tables = {s: t for s in SPLITS if (t := _find_table(s, dirs + [src / s])) is not None}
    rows = {s: read_text_table(t) for s, t in tables.items()}
    if split_dirs:
        for s in split_dirs:
            sources = find_pose_sources(src / s)
            if s not in rows:
                if sources:
                    raise DataError(src / s, "file", f"no sentence table for split {s!r} (looked for "
                                    f"how2sign_realigned_{s}.csv in {[str(d) for d in dirs]})")
                continue
            by_name = {r.name: r for r in rows[s]}
            jobs += [(s, by_name[n], src_) for n, src_ in sources.items() if n in by_name]
            report.no_row += [f"{s}/{n}" for n in sources if n not in by_name]
            report.no_poses += [f"{s}/{r.name}" for r in rows[s] if r.name not in sources]
    else:
        if not rows:
            raise DataError(dirs[0], "file", "no split folders in SRC and no how2sign_realigned_<split>.csv to "
                            "assign clips to splits")
        sources = find_pose_sources(src)
        owner = {r.name: (s, r) for s, rs in rows.items() for r in rs}
        jobs += [(owner[n][0], owner[n][1], src_) for n, src_ in sources.items() if n in owner]
        report.no_row += [n for n in sources if n not in owner]
        report.no_poses += [f"{s}/{r.name}" for s, rs in rows.items() for r in rs if r.name not in sources]
    for n in report.no_row:
        log.warning("poses without a table row (not converted): %s", n)
    for n in report.no_poses:
        log.warning("table row without poses: %s", n)
    done: dict[str, list[TableRow]] = {s: [] for s in SPLITS}
    bar = _Progress(len(jobs), progress)
    for split, row, source in jobs:
        bar.step(row.name)
        clip_fps = row.fps or fps
        try:
            if not row.sentence:
                raise DataError(tables[split], "SENTENCE", f"line {row.line}: empty sentence for {row.name}")
            raw = _read_frames(source.path) if source.per_frame else read_clip_params(source.path)
            arrays = _finish_clip(raw, clip_fps, row.name, source.path)
        except DataError as e:
            if not skip_bad:
                raise
            log.warning("skipping bad clip %s: %s", row.name, e)
            report.bad.append((row.name, str(e)))
            continue
        T = arrays["global_orient"].shape[0]
        if T < min_frames:
            log.info("dropping %s: %d frames (< %d)", row.name, T, min_frames)
            report.too_short.append(row.name)
            continue
        if T / clip_fps > max_seconds:
            log.info("dropping %s: %.1f s (> %g s)", row.name, T / clip_fps, max_seconds)
            report.too_long.append(row.name)
            continue
        report.no_transl += "transl" not in raw
        _write_npz(dst / split / f"{row.name}.npz", {**arrays, "fps": np.array(clip_fps, dtype=np.float32)})
        report.written[split] += 1
        done[split].append(row)
    for s in tables:
        _write_table(dst / f"how2sign_realigned_{s}.csv", done[s])
    if report.no_transl:
        warnings.warn(f"{report.no_transl} clip(s) had no translation: written as zeros", stacklevel=2)
    if report.bad:
        warnings.warn(f"skipped {len(report.bad)} bad clip(s) (each one logged by {log.name})", stacklevel=2)
    return report
