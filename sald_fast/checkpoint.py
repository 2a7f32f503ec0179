"""Checkpoints: one folder holding ``model.safetensors`` (tensors) and ``config.json``.

``config.json`` = ``{"format": "sald_fast.checkpoint", "version": 2, "save_id": ...,
"weights_sha256": ..., "config": {...}, "meta": {...}, "doc_sha256": ...}``; the same ``save_id``
is in the safetensors header, so a folder whose two files come from different saves (an
interrupted overwrite) is detected; the SHA-256 of ``model.safetensors`` catches any corrupted
byte of the weights, and ``doc_sha256`` (of the rest of the document, canonical JSON) any of
``config.json`` (version 1 files, without it, are still read). Floating-point tensors holding
NaN or inf are refused at load.

A save is crash-safe as a pair. Each file is written atomically (a temporary file in the same
folder, flushed and fsync'ed, then ``os.replace``), and before the first file of a folder that
already holds a complete checkpoint is replaced, that pair is hard-linked (copied where links
fail) into the hidden subfolder ``PREV_NAME`` (built under a temporary name, then renamed). A
process killed at any moment of a save therefore leaves a complete pair: the new one in the
folder, or the previous one in the folder or in ``PREV_NAME``; :func:`load_newest_checkpoint`
picks the newest that loads. ``PREV_NAME`` is removed once the new pair is complete.
Loading uses safetensors and JSON only (never ``torch.load`` or pickle). Any problem is a
:class:`CheckpointError` (a ``ValueError``) whose first line names the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping

import torch

__all__ = [
    "CheckpointError",
    "VariantCheckedLoad",
    "check_state_dict",
    "doc_sha256",
    "save_checkpoint",
    "load_checkpoint",
    "load_newest_checkpoint",
    "prefix_state_dict",
    "strip_prefix",
    "split_state_dicts",
    "atomic_write_bytes",
    "WEIGHTS_NAME",
    "CONFIG_NAME",
    "PREV_NAME",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
PREV_NAME = ".previous"
FORMAT = "sald_fast.checkpoint"
VERSION = 2
READABLE_VERSIONS = (1, 2)


class CheckpointError(ValueError):
    """A checkpoint folder or file is missing, corrupted, or does not fit the model."""


class VariantCheckedLoad:
    """Mixin for a module with Table 3 variants (:data:`sald_fast.config.VARIANTS`): subclasses
    implement ``_state_dict_variant(state_dict)`` and ``_own_variant()`` (dicts of switch -> value;
    None where a state_dict cannot tell) and get :meth:`check_variant` and a ``load_state_dict``
    that names the switch that differs instead of listing missing and unexpected keys."""

    def check_variant(self, state_dict) -> None:
        """Raise ``ValueError`` naming the switches in which ``state_dict`` is of another variant
        than this model; nothing when it is not."""
        have, want = self._state_dict_variant(state_dict), self._own_variant()
        diff = [f"{k}: {have[k]!r} (state_dict) vs {v!r} (this model)" for k, v in want.items()
                if have.get(k) is not None and have[k] != v]
        if diff:
            raise ValueError(f"the state_dict is of another {type(self).__name__} variant than this model: "
                             + "; ".join(diff))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``; with ``strict``, :meth:`check_variant` first."""
        if strict:
            self.check_variant(state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def prefix_state_dict(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``{prefix + "." + key: tensor}`` (``prefix`` without the trailing dot, e.g. ``"vae"``)."""
    p = prefix.rstrip(".") + "."
    return {p + k: v for k, v in state_dict.items()}


def strip_prefix(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``tensors`` under ``prefix`` (e.g. ``"vae"``), with the prefix removed."""
    p = prefix.rstrip(".") + "."
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def split_state_dicts(tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Group flat ``"name.key"`` tensors into ``{name: {key: tensor}}`` (first dot splits)."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        head, dot, rest = k.partition(".")
        if not dot:
            raise ValueError(f"tensor name {k!r} has no 'prefix.' part")
        out.setdefault(head, {})[rest] = v
    return out


def _flatten(tensors: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Flat ``{name: CPU contiguous tensor}``; nested mappings (state_dicts) become ``outer.inner``;
    tensors sharing storage are copied (safetensors refuses shared memory)."""
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a dict of tensors (or of state_dicts), got {type(tensors).__name__}")
    flat: dict[str, torch.Tensor] = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"tensor names must be non-empty str, got {name!r}")
        if isinstance(value, Mapping):
            for k, v in _flatten(value).items():
                flat[f"{name}.{k}"] = v
        elif isinstance(value, torch.Tensor):
            flat[name] = value
        else:
            raise TypeError(f"tensors[{name!r}] must be a torch.Tensor or a dict of them, got {type(value).__name__}")
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, t in flat.items():
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[name] = t
    return out


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _write_file(path: Path, data: bytes) -> None:
    """Create ``path`` holding ``data``, flushed and fsync'ed (no rename: see atomic_write_bytes)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        _write_file(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _pair_is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds both files of one save (config.json parses and names the save id
    in the weights' header). Cheap: reads config.json and the weights' header only, since files
    are only ever renamed into place whole; full checks are the loader's."""
    try:
        doc = json.loads((folder / CONFIG_NAME).read_bytes().decode("utf-8"))
        with open(folder / WEIGHTS_NAME, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            size = os.fstat(f.fileno()).st_size
            if not 0 < n <= size - 8:
                return False
            header = _safetensors_metadata(n.to_bytes(8, "little") + f.read(n))
        return isinstance(doc, dict) and doc.get("save_id") is not None and header.get("save_id") == doc["save_id"]
    except (OSError, ValueError, RecursionError):  # missing, unreadable, not JSON
        return False


def _keep_previous(folder: Path) -> None:
    """Hard-link (or copy) the complete pair in ``folder`` into ``folder/PREV_NAME``, atomically:
    built in a temporary subfolder, fsync'ed, then renamed over the old ``PREV_NAME``."""
    tmp = _tmp_name(folder / PREV_NAME)
    tmp.mkdir()
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        try:
            os.link(folder / name, tmp / name)
        except OSError:  # a file system without hard links
            shutil.copyfile(folder / name, tmp / name)
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(tmp)
    prev = folder / PREV_NAME
    if prev.exists():
        shutil.rmtree(prev)
    os.rename(tmp, prev)
    _fsync_dir(folder)


def _remove_leftovers(folder: Path) -> None:
    """Remove what killed saves leave behind: ``PREV_NAME`` and temporary files/folders."""
    for entry in folder.iterdir():
        if entry.name == PREV_NAME or (entry.name.startswith(".") and ".tmp-" in entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    _fsync_dir(folder)


def save_checkpoint(path: str | os.PathLike, tensors: Mapping[str, Any], config: Mapping[str, Any],
                    meta: Mapping[str, Any] | None = None) -> Path:
    """Write folder ``path``: ``model.safetensors`` (``tensors``: names -> tensors, or names ->
    state_dicts, stored as ``name.key``) and ``config.json`` (``config`` and ``meta``, both
    JSON-serialisable dicts); returns the folder. Crash-safe as a pair (see the module doc): a
    complete previous pair is kept in ``PREV_NAME`` until both new files are in place. Other
    files in the folder are left alone."""
    from safetensors.torch import save as safetensors_bytes

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"checkpoint path {str(path)!r} is a file; a checkpoint is a folder")
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    if meta is not None and not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a dict or None, got {type(meta).__name__}")
    flat = _flatten(tensors)
    save_id = uuid.uuid4().hex
    weights = safetensors_bytes(flat, metadata={"format": FORMAT, "save_id": save_id})
    doc = {"format": FORMAT, "version": VERSION, "save_id": save_id,
           "weights_sha256": hashlib.sha256(weights).hexdigest(), "config": dict(config), "meta": dict(meta or {})}
    try:
        doc["doc_sha256"] = doc_sha256(doc)
        text = json.dumps(doc, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"config and meta must be JSON-serialisable: {exc}") from exc
    path.mkdir(parents=True, exist_ok=True)
    if _pair_is_complete(path):
        _keep_previous(path)  # else: a killed save left a mixed pair; PREV_NAME (if any) is the last good one
    atomic_write_bytes(path / WEIGHTS_NAME, weights)
    atomic_write_bytes(path / CONFIG_NAME, (text + "\n").encode("utf-8"))
    _remove_leftovers(path)
    return path


def _first_line(exc: BaseException) -> str:
    msg = str(exc).strip()
    return f"{type(exc).__name__}: {msg.splitlines()[0]}" if msg else type(exc).__name__


def _read_pair(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors on the CPU, config.json document)`` of folder ``path``, fully checked."""
    from safetensors.torch import load as safetensors_load

    if not path.exists():
        raise CheckpointError(f"checkpoint folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint path {str(path)!r} is a file; a checkpoint is a folder "
                              f"holding {WEIGHTS_NAME} and {CONFIG_NAME}")
    cfg_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    for f in (cfg_file, weights_file):
        if not f.is_file():
            raise CheckpointError(f"checkpoint file {str(f)!r} is missing")
    try:
        doc = json.loads(cfg_file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"checkpoint file {str(cfg_file)!r} is not valid JSON "
                              f"(corrupted or truncated): {_first_line(exc)}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("config"), dict):
        raise CheckpointError(f"checkpoint file {str(cfg_file)!r} is not a sald_fast checkpoint config "
                              f"(expected format {FORMAT!r} with a 'config' object)")
    if doc.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(f"checkpoint file {str(cfg_file)!r} has format version {doc.get('version')!r}; "
                              f"this sald_fast reads versions {READABLE_VERSIONS}")
    if doc["version"] >= 2 and doc.get("doc_sha256") != doc_sha256(doc):
        raise CheckpointError(f"checkpoint file {str(cfg_file)!r} is corrupted: its content does not match "
                              "its recorded doc_sha256")
    if not isinstance(doc.get("meta", {}), dict):
        raise CheckpointError(f"checkpoint file {str(cfg_file)!r}: 'meta' must be an object, "
                              f"got {type(doc['meta']).__name__}")
    data = weights_file.read_bytes()
    # the hash first: a file with any changed byte is rejected before safetensors parses its header
    if hashlib.sha256(data).hexdigest() != doc.get("weights_sha256"):
        raise CheckpointError(f"checkpoint file {str(weights_file)!r} is corrupted or truncated, or the two files "
                              f"come from different saves: its SHA-256 does not match the one in {str(cfg_file)!r}")
    try:
        header = _safetensors_metadata(data)
        tensors = safetensors_load(data)
    except Exception as exc:  # safetensors raises SafetensorError / OSError / RuntimeError
        raise CheckpointError(f"checkpoint file {str(weights_file)!r} is corrupted or truncated: "
                              f"{_first_line(exc)}") from exc
    if header.get("save_id") != doc.get("save_id"):
        raise CheckpointError(f"checkpoint files {str(weights_file)!r} and {str(cfg_file)!r} come from "
                              "different saves (an interrupted write?)")
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"checkpoint file {str(weights_file)!r}: tensor {name!r} holds NaN or inf")
    return tensors, doc


def doc_sha256(doc: Mapping[str, Any]) -> str:
    """SHA-256 of a ``config.json`` document without its ``doc_sha256`` entry, as canonical JSON
    (after editing a document on purpose, store this as its ``doc_sha256``)."""
    rest = {k: v for k, v in doc.items() if k != "doc_sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, allow_nan=False, separators=(",", ":")).encode()).hexdigest()


def check_state_dict(tensors: Mapping[str, torch.Tensor], module: torch.nn.Module, file: str | os.PathLike,
                     what: str = "the model") -> None:
    """Raise :class:`CheckpointError` naming ``file`` unless ``tensors`` has exactly the names,
    shapes and dtypes of ``module.state_dict()`` (load_state_dict would cast a wrong dtype silently)."""
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint file {str(file)!r} does not fit {what}: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    for name, want in expected.items():
        got = tensors[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise CheckpointError(f"checkpoint file {str(file)!r} does not fit {what}: tensor {name!r} is "
                                  f"{got.dtype} {tuple(got.shape)}, expected {want.dtype} {tuple(want.shape)}")


def _safetensors_metadata(data: bytes) -> dict[str, Any]:
    """The ``__metadata__`` of a safetensors file's JSON header (checked by safetensors' own load)."""
    if len(data) < 8:
        raise ValueError("file shorter than the 8-byte header length")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError(f"header length {n} exceeds the file size {len(data)}")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu"
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Read a folder written by :func:`save_checkpoint` -> ``(tensors, config, meta)``.

    Tensors are loaded onto ``device``. Raises :class:`CheckpointError` naming the file for a
    missing folder or file, invalid JSON, a corrupted/truncated safetensors file, or files
    from different saves (then the error says whether an earlier complete pair was kept in
    ``PREV_NAME``; :func:`load_newest_checkpoint` falls back to it).
    """
    path = Path(path)
    try:
        tensors, doc = _read_pair(path)
    except CheckpointError as exc:
        prev = path / PREV_NAME
        if path.is_dir() and prev.is_dir():
            raise CheckpointError(f"{exc} (a killed save? the previous complete checkpoint is in {str(prev)!r}; "
                                  "load_newest_checkpoint uses it)") from exc
        raise
    if torch.device(device).type != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors, doc["config"], dict(doc.get("meta") or {})


def load_newest_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu"
                           ) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any], Path, list[str]]:
    """The newest complete checkpoint of folder ``path``: the folder itself, else the previous pair
    a killed save kept in ``path/PREV_NAME``. Returns ``(tensors, config, meta, folder_loaded,
    problems)`` where ``problems`` lists (one line each) why newer candidates were skipped.
    Raises :class:`CheckpointError` listing every candidate's problem when none loads."""
    path = Path(path)
    problems: list[str] = []
    for candidate in (path, path / PREV_NAME):
        try:
            tensors, doc = _read_pair(candidate)
        except CheckpointError as exc:
            problems.append(str(exc).splitlines()[0])
            continue
        if torch.device(device).type != "cpu":
            tensors = {k: v.to(device) for k, v in tensors.items()}
        return tensors, doc["config"], dict(doc.get("meta") or {}), candidate, problems
    raise CheckpointError(f"no loadable checkpoint in {str(path)!r}: " + "; ".join(problems))
