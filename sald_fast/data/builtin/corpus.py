"""The corpus: held-out sentence splits (every sign in train), generation of all splits in
chunks, and the versioned on-disk ``.npz`` cache; :func:`builtin_corpus` is the entry point."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from sald_fast.skeleton import SIGNING_SKELETON

from .grammar import sentence_pool
from .lexicon import VERSION, VOCABULARY
from .synthesis import _clip, _draw_variation, _synthesize_batch, _Variation


def _choose_splits(rng: np.random.Generator, sizes: dict[str, int]) -> dict[str, list[int]]:
    """Pool indices per split: disjoint, a weighted random order, every sign covered by train."""
    pool = sentence_pool()
    weights = np.array([row[3] for row in pool])
    keys = np.log(rng.uniform(size=len(pool))) / weights  # Efraimidis-Spirakis weighted order
    order = np.argsort(-keys, kind="stable")
    total = sum(sizes.values())
    if total > len(pool):
        raise ValueError(f"the grammar makes {len(pool)} sentences; {total} were asked for ({sizes})")
    cover: list[int] = []
    covered: set[str] = set()
    if sizes["train"] > 0:
        for i in order:
            new = set(pool[i][1]) - covered
            if new:
                cover.append(int(i))
                covered |= new
            if len(covered) == len(VOCABULARY):
                break
    if len(cover) > sizes["train"]:
        cover = []  # too small a train split to cover the vocabulary: plain random order
    in_cover = set(cover)
    rest = [int(i) for i in order if int(i) not in in_cover]
    out: dict[str, list[int]] = {}
    train_rest = sizes["train"] - len(cover)
    out["train"] = cover + rest[:train_rest]
    pos = train_rest
    for split in ("val", "test"):
        out[split] = rest[pos:pos + sizes[split]]
        pos += sizes[split]
    return out


def default_cache_dir() -> Path:
    """``$SALD_FAST_CACHE`` or ``~/.cache/sald_fast``."""
    env = os.environ.get("SALD_FAST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "sald_fast"


def _generate(seed: int, sizes: dict[str, int], variation: float) -> dict[str, dict[str, np.ndarray]]:
    """Arrays per split: poses (F, 52, 3), transl (F, 3), offsets (n + 1,), texts, names, glosses."""
    rng = np.random.default_rng([seed, VERSION])
    chosen = _choose_splits(rng, sizes)
    pool = sentence_pool()
    out: dict[str, dict[str, np.ndarray]] = {}
    for split in ("train", "val", "test"):
        idx = chosen[split]
        rows = [pool[i] for i in idx]
        split_rng = np.random.default_rng([seed, VERSION, ("train", "val", "test").index(split) + 1])
        var = _draw_variation(split_rng, len(rows), max((len(r[1]) for r in rows), default=1), variation)
        poses, transl, offsets = [], [], [np.zeros(1, dtype=np.int64)]
        chunk = 256
        for c0 in range(0, len(rows), chunk):
            sel = slice(c0, c0 + chunk)
            sub = _Variation(**{f: getattr(var, f)[sel] for f in var.__dataclass_fields__})
            p, tr, st = _synthesize_batch([(r[1], r[2]) for r in rows[sel]], sub)
            poses.append(p), transl.append(tr), offsets.append(st[1:] + offsets[-1][-1])
        out[split] = {
            "poses": np.concatenate(poses) if poses else np.zeros((0, 52, 3), np.float32),
            "transl": np.concatenate(transl) if transl else np.zeros((0, 3), np.float32),
            "offsets": np.concatenate(offsets).astype(np.int64),
            "texts": np.array([r[0] for r in rows], dtype=str),
            "glosses": np.array([" ".join(r[1]) for r in rows], dtype=str),
            "names": np.array([f"builtin_{split}_{i:05d}" for i in range(len(rows))], dtype=str),
        }
    return out


def _split_clips(arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    off = arrays["offsets"]
    return [_clip(arrays["poses"][off[i]:off[i + 1]], arrays["transl"][off[i]:off[i + 1]], str(arrays["texts"][i]),
                  str(arrays["names"][i]), str(arrays["glosses"][i]).split()) for i in range(len(off) - 1)]


@lru_cache(maxsize=None)
def _source_digest() -> str:
    """Hash of this package's sources and the skeleton: any change to the generator or the
    lexicon invalidates cached corpora even without a :data:`VERSION` bump."""
    h = hashlib.sha1()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        h.update(source.name.encode())
        h.update(source.read_bytes())
    h.update(np.ascontiguousarray(SIGNING_SKELETON.offsets).tobytes())
    return h.hexdigest()[:16]


def _load_cache(path: Path, meta_json: str, splits: Sequence[str]) -> dict[str, dict[str, np.ndarray]] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["meta"]) != meta_json:
                return None
            return {s: {k: z[f"{s}/{k}"] for k in ("poses", "transl", "offsets", "texts", "glosses", "names")}
                    for s in splits}
    except Exception as e:  # unreadable or partial file: regenerate
        warnings.warn(f"ignoring unreadable built-in corpus cache {path}: {e}", stacklevel=3)
        return None


_CACHE_KEEP = 4  # built-in corpus files kept per cache folder (newest first)


def _save_cache(path: Path, meta_json: str, data: dict[str, dict[str, np.ndarray]]) -> None:
    arrays = {f"{s}/{k}": v for s, d in data.items() for k, v in d.items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, meta=np.array(meta_json), **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        # keep the newest few corpora: each default-sized one is ~150 MB
        old = sorted(path.parent.glob("builtin_v*_*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
        for stale in old[_CACHE_KEEP:]:
            stale.unlink(missing_ok=True)
    except OSError as e:
        warnings.warn(f"could not write the built-in corpus cache {path}: {e}", stacklevel=3)


def builtin_corpus(seed: int = 0, num_train: int = 3000, num_val: int = 200, num_test: int = 200,
                   variation: float = 1.0, cache: bool = True, cache_dir: str | os.PathLike | None = None,
                   splits: Sequence[str] = ("train", "val", "test")) -> dict[str, list[dict[str, Any]]]:
    """The built-in corpus: ``{"train": [clip], "val": [...], "test": [...]}``.

    Deterministic for (``seed``, sizes, ``variation``, :data:`VERSION`). Clips are in the format
    of :mod:`sald_fast.data` (plus ``glosses``, the signs as a space-separated string); each split
    holds distinct sentences, no sentence is in two splits, and every sign of the vocabulary
    occurs in train (when train is large enough to cover it). With ``cache``, the result is
    stored in (and reloaded from) a file ``builtin_v<VERSION>_<hash of the parameters>.npz`` in
    ``cache_dir`` (default :func:`default_cache_dir`), written atomically (arrays only, loaded
    with ``allow_pickle=False``); a file whose recorded parameters differ is regenerated; only
    the 4 newest corpus files of a folder are kept.
    ``splits`` selects the splits returned (all are generated and cached).
    """
    sizes = {"train": int(num_train), "val": int(num_val), "test": int(num_test)}
    splits = tuple(splits)
    for s in splits:
        if s not in sizes:
            raise ValueError(f"splits must be among ('train', 'val', 'test'), got {s!r}")
    for k, v in sizes.items():
        if v < 0:
            raise ValueError(f"num_{k} must be >= 0, got {v}")
    meta = {"version": VERSION, "seed": int(seed), "sizes": sizes, "variation": float(variation),
            "source": _source_digest()}
    meta_json = json.dumps(meta, sort_keys=True)
    path = None
    data = None
    if cache:
        digest = hashlib.sha1(meta_json.encode()).hexdigest()[:12]
        path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"builtin_v{VERSION}_{digest}.npz"
        if path.exists():
            data = _load_cache(path, meta_json, splits)
    if data is None:
        data = _generate(int(seed), sizes, float(variation))
        if path is not None:
            _save_cache(path, meta_json, data)
    return {split: _split_clips(data[split]) for split in splits}
