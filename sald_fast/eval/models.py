"""Evaluation models: a word tokenizer, and the pose-to-text back-translator whose motion encoder
also gives the feature space for FID.

Input representation: joint positions in metres, root-aligned (each frame's pelvis at the
origin; the global orientation is kept), flattened per frame to J*3 values and z-normalised with
statistics of the training split. ``patch`` consecutive frames form one encoder token.

:class:`PoseEvaluator` is one module:
- motion encoder: patch linear + learned positions + a pre-LN transformer encoder (masked by
  the sequence lengths) -> memory (B, T, D); masked mean over T -> linear -> motion embedding (E).
- text decoder: word embeddings + learned positions + a pre-LN transformer decoder (causal,
  cross-attending to the memory) -> next-word logits; greedy decoding.
- a bag-of-words text embedding (E) that the motion embedding is trained against (symmetric
  InfoNCE; clips with the same sentence are all positives), so the FID space is semantic.

Training objective: label-smoothed cross-entropy (teacher forcing) + ``contrastive_weight`` *
InfoNCE. FID features (:meth:`PoseEvaluator.fid_features`): the motion embedding scaled to norm
sqrt(E) (unit RMS per coordinate). The module also stores the training split's mean pose (the
"Mean pose" lower bound) and the Gaussian fit of the training split's FID features, so an
evaluation needs only the evaluator folder and the test clips.

Checkpoint (:meth:`PoseEvaluator.save` / :meth:`PoseEvaluator.load`): ``model.safetensors`` + JSON
via :mod:`sald_fast.checkpoint`; the JSON holds the config, the vocabulary and ``meta``.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..frames import frame_mask

__all__ = ["EvaluatorConfig", "evaluator_config", "EVALUATOR_PRESETS", "WordTokenizer", "PoseEvaluator",
           "CHECKPOINT_KIND"]

CHECKPOINT_KIND = "sald_fast.eval.PoseEvaluator"


@dataclass
class EvaluatorConfig:
    """Sizes and training settings of the evaluation models (see the module docstring)."""

    num_frames: int = 64  # longest input sequence (the training crop length)
    num_joints: int = 44
    patch: int = 2  # frames per encoder token
    dim: int = 128
    num_heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    ffn_mult: int = 2
    dropout: float = 0.1
    embed_dim: int = 32  # FID / contrastive embedding size
    max_tokens: int = 32  # decoded words + <bos> + <eos>
    max_vocab: int = 20000
    min_count: int = 1
    contrastive_weight: float = 0.1
    temperature: float = 0.1
    label_smoothing: float = 0.1
    lr: float = 5e-4

    def __post_init__(self) -> None:
        if self.patch < 1 or self.num_frames < 1 or self.num_frames % self.patch != 0:
            raise ValueError(f"EvaluatorConfig.num_frames ({self.num_frames}) must be a positive multiple of "
                             f"patch ({self.patch})")
        if self.dim % self.num_heads != 0:
            raise ValueError(f"EvaluatorConfig.dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        if self.max_tokens < 3:
            raise ValueError(f"EvaluatorConfig.max_tokens must be >= 3, got {self.max_tokens}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able copy."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EvaluatorConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"evaluator config has unknown field(s) {sorted(unknown)}")
        return cls(**d)


EVALUATOR_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(patch=2, dim=128, num_heads=4, encoder_layers=2, decoder_layers=2, ffn_mult=2, embed_dim=32,
                 max_tokens=32),
    "paper": dict(patch=4, dim=256, num_heads=8, encoder_layers=4, decoder_layers=4, ffn_mult=4, embed_dim=64,
                  max_tokens=64, lr=3e-4),
}


def evaluator_config(preset: str = "tiny", num_frames: int | None = None, **overrides: Any) -> EvaluatorConfig:
    """The evaluator config of ``preset`` ("tiny" | "paper") for crops of ``num_frames`` frames
    (rounded up to a multiple of the patch), with field overrides."""
    if preset not in EVALUATOR_PRESETS:
        raise ValueError(f"unknown evaluator preset {preset!r}; choose one of {sorted(EVALUATOR_PRESETS)}")
    fields = dict(EVALUATOR_PRESETS[preset])
    fields.update(overrides)
    if num_frames is not None:
        p = int(fields.get("patch", 1))
        fields["num_frames"] = -(-int(num_frames) // p) * p
    return EvaluatorConfig(**fields)


_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


class WordTokenizer:
    """Word-level tokenizer: lowercase words (letters/digits, inner apostrophes), punctuation dropped.

    Ids: 0 ``<pad>``, 1 ``<bos>``, 2 ``<eos>``, 3 ``<unk>``, then the vocabulary (most frequent
    training words first, ties alphabetical, so the same texts always give the same ids).
    """

    SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
    PAD, BOS, EOS, UNK = 0, 1, 2, 3

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if any(not isinstance(w, str) or not w for w in words):
            raise ValueError("WordTokenizer: every vocabulary entry must be a non-empty string")
        if len(set(words)) != len(words):
            raise ValueError("WordTokenizer: the vocabulary has duplicate words")
        self.words = words
        self.itos = list(self.SPECIALS) + words
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @staticmethod
    def split(text: str) -> list[str]:
        """Lowercase words of ``text``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        return _WORD.findall(text.lower())

    @classmethod
    def normalize(cls, text: str) -> str:
        """The text as the metrics see it: lowercase words joined by single spaces."""
        return " ".join(cls.split(text))

    @classmethod
    def build(cls, texts: Iterable[str], max_vocab: int = 20000, min_count: int = 1) -> "WordTokenizer":
        """Vocabulary of the words in ``texts`` seen at least ``min_count`` times (at most ``max_vocab``)."""
        counts = Counter(w for t in texts for w in cls.split(t))
        ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(ranked[:max_vocab])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str, max_tokens: int) -> list[int]:
        """``[<bos>, words..., <eos>]`` truncated to ``max_tokens`` ids (the <eos> is kept)."""
        ids = [self.stoi.get(w, self.UNK) for w in self.split(text)][: max_tokens - 2]
        return [self.BOS] + ids + [self.EOS]

    def encode_batch(self, texts: Sequence[str], max_tokens: int) -> torch.Tensor:
        """(B, L) int64 ids, right-padded with <pad>; L = the longest encoded text."""
        rows = [self.encode(t, max_tokens) for t in texts]
        out = torch.full((len(rows), max(len(r) for r in rows)), self.PAD, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Words up to the first <eos>; <pad>, <bos> and <unk> are dropped."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.EOS:
                break
            if i >= len(self.SPECIALS):
                words.append(self.itos[i])
        return " ".join(words)


class PoseEvaluator(nn.Module):
    """Back-translator (poses -> words) and motion encoder (poses -> FID features) in one module.

    Positions are (B, N, J, 3) in metres with N <= ``config.num_frames``; ``lengths`` (B,) int in
    [1, N] marks the valid frames.
    """

    def __init__(self, config: EvaluatorConfig, vocab: Sequence[str]):
        super().__init__()
        self.config = config
        self.tokenizer = WordTokenizer(vocab)
        self.meta: dict[str, Any] = {}  # set by load(): dataset, training summary
        c, v = config, len(self.tokenizer)
        in_dim = c.num_joints * 3
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_std", torch.ones(in_dim))
        self.register_buffer("mean_pose", torch.zeros(c.num_joints, 3))  # root-aligned training mean pose
        self.register_buffer("real_mu", torch.zeros(c.embed_dim, dtype=torch.float64))
        self.register_buffer("real_sigma", torch.zeros(c.embed_dim, c.embed_dim, dtype=torch.float64))
        self.patch_proj = nn.Linear(c.patch * in_dim, c.dim)
        self.frame_pos = nn.Parameter(torch.randn(c.num_frames // c.patch, c.dim) * 0.02)
        enc_layer = nn.TransformerEncoderLayer(c.dim, c.num_heads, c.ffn_mult * c.dim, c.dropout,
                                               activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(enc_layer, c.encoder_layers, norm=nn.LayerNorm(c.dim),
                                             enable_nested_tensor=False)
        self.motion_head = nn.Linear(c.dim, c.embed_dim)
        self.token_emb = nn.Embedding(v, c.dim, padding_idx=WordTokenizer.PAD)
        self.token_pos = nn.Parameter(torch.randn(c.max_tokens, c.dim) * 0.02)
        dec_layer = nn.TransformerDecoderLayer(c.dim, c.num_heads, c.ffn_mult * c.dim, c.dropout,
                                               activation="gelu", batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(dec_layer, c.decoder_layers, norm=nn.LayerNorm(c.dim))
        self.lm_head = nn.Linear(c.dim, v)
        self.text_bag = nn.EmbeddingBag(v, c.embed_dim, mode="mean", padding_idx=WordTokenizer.PAD)

    # --- inputs ----------------------------------------------------------------------------
    def _check(self, positions: torch.Tensor, lengths) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        if not isinstance(positions, torch.Tensor) or not positions.is_floating_point():
            raise TypeError(f"positions must be a floating-point torch.Tensor, got "
                            f"{getattr(positions, 'dtype', type(positions).__name__)}")
        if positions.ndim != 4 or positions.shape[2:] != (c.num_joints, 3) or not 1 <= positions.shape[1] <= c.num_frames:
            raise ValueError(f"positions must have shape (B, N, {c.num_joints}, 3) with 1 <= N <= {c.num_frames}, "
                             f"got {tuple(positions.shape)}")
        b, n = positions.shape[:2]
        if lengths is None:
            lengths = torch.full((b,), n, dtype=torch.long)
        lengths = torch.as_tensor(lengths, device=positions.device)
        if lengths.shape != (b,) or lengths.is_floating_point():
            raise ValueError(f"lengths must be an integer tensor of shape ({b},), got {tuple(lengths.shape)} {lengths.dtype}")
        if bool((lengths < 1).any()) or bool((lengths > n).any()):
            raise ValueError(f"lengths must lie in [1, {n}], got min {int(lengths.min())} max {int(lengths.max())}")
        return positions, lengths.long()

    @staticmethod
    def flatten_poses(positions: torch.Tensor) -> torch.Tensor:
        """Root-aligned poses flattened per frame: (..., J, 3) -> (..., J*3)."""
        aligned = positions - positions[..., :1, :]
        return aligned.flatten(-2)

    @torch.no_grad()
    def fit_statistics(self, positions: torch.Tensor, lengths: torch.Tensor) -> None:
        """Set the input normalisation and the mean pose from training poses (B, N, J, 3)."""
        positions, lengths = self._check(positions, lengths)
        valid = frame_mask(lengths, positions.shape[1])
        x = self.flatten_poses(positions.double())[valid]  # (M, J*3)
        mean, std = x.mean(0), x.std(0, unbiased=False)
        self.input_mean.copy_(mean.float())
        self.input_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)).float())
        self.mean_pose.copy_(mean.view(-1, 3).float())

    def pose_inputs(self, positions: torch.Tensor, lengths=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised per-frame inputs (B, N, J*3) (zero past each length) and checked lengths (B,)."""
        positions, lengths = self._check(positions, lengths)
        x = (self.flatten_poses(positions.float()) - self.input_mean) / self.input_std
        valid = frame_mask(lengths, x.shape[1])
        return torch.where(valid[..., None], x, torch.zeros_like(x)), lengths  # padding may hold NaN

    # --- encoder ---------------------------------------------------------------------------
    def encode(self, positions: torch.Tensor, lengths=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Memory (B, T, D), valid tokens (B, T) bool, and the motion embedding (B, E)."""
        c = self.config
        x, lengths = self.pose_inputs(positions, lengths)
        b, n, f = x.shape
        t = -(-n // c.patch)
        x = F.pad(x, (0, 0, 0, t * c.patch - n)).reshape(b, t, c.patch * f)
        h = self.patch_proj(x) + self.frame_pos[:t]
        valid = frame_mask(-(-lengths // c.patch), t)
        memory = self.encoder(h, src_key_padding_mask=~valid)
        w = valid.to(memory.dtype)[..., None]
        pooled = (memory * w).sum(1) / w.sum(1)
        return memory, valid, self.motion_head(pooled)

    def fid_features(self, positions: torch.Tensor, lengths=None) -> torch.Tensor:
        """FID feature of each sequence: the motion embedding scaled to norm sqrt(E), (B, E)."""
        _, _, emb = self.encode(positions, lengths)
        return F.normalize(emb, dim=-1) * self.config.embed_dim ** 0.5

    def text_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        """Bag-of-words embedding (B, E) of token ids (B, L) (specials ignored), unit norm."""
        words = torch.where(ids >= len(WordTokenizer.SPECIALS), ids, torch.zeros_like(ids))
        return F.normalize(self.text_bag(words), dim=-1)

    # --- decoder ---------------------------------------------------------------------------
    def _decode(self, ids: torch.Tensor, memory: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, L, V) for input ids (B, L) (causal)."""
        length = ids.shape[1]
        h = self.token_emb(ids) + self.token_pos[:length]
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=ids.device, dtype=h.dtype)
        h = self.decoder(h, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=~valid)
        return self.lm_head(h)

    def loss(self, positions: torch.Tensor, lengths, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Training losses for a batch: dict(loss, ce, nce, acc) (scalars)."""
        c = self.config
        if len(texts) != positions.shape[0]:
            raise ValueError(f"texts has {len(texts)} entries for a batch of {positions.shape[0]} sequences")
        memory, valid, emb = self.encode(positions, lengths)
        ids = self.tokenizer.encode_batch(texts, c.max_tokens).to(positions.device)
        logits = self._decode(ids[:, :-1], memory, valid)
        target = ids[:, 1:]
        ce = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=WordTokenizer.PAD,
                             label_smoothing=c.label_smoothing)
        keep = target != WordTokenizer.PAD
        acc = ((logits.argmax(-1) == target) & keep).sum() / keep.sum()
        m = F.normalize(emb, dim=-1)
        t = self.text_embedding(ids)
        logits_mt = m @ t.T / c.temperature
        keys = [WordTokenizer.normalize(s) for s in texts]
        same = torch.tensor([[a == b for b in keys] for a in keys], device=m.device)
        nce_m = (torch.logsumexp(logits_mt, 1) - torch.logsumexp(logits_mt.masked_fill(~same, float("-inf")), 1)).mean()
        nce_t = (torch.logsumexp(logits_mt.T, 1) - torch.logsumexp(logits_mt.T.masked_fill(~same, float("-inf")), 1)).mean()
        nce = (nce_m + nce_t) / 2
        return {"loss": ce + c.contrastive_weight * nce, "ce": ce.detach(), "nce": nce.detach(), "acc": acc.detach()}

    @torch.no_grad()
    def translate(self, positions: torch.Tensor, lengths=None, max_tokens: int | None = None) -> list[str]:
        """Greedy back-translation of each sequence: B strings of lowercase words."""
        max_tokens = min(max_tokens or self.config.max_tokens, self.config.max_tokens)
        memory, valid, _ = self.encode(positions, lengths)
        b = memory.shape[0]
        ids = torch.full((b, 1), WordTokenizer.BOS, dtype=torch.long, device=memory.device)
        done = torch.zeros(b, dtype=torch.bool, device=memory.device)
        banned = [WordTokenizer.PAD, WordTokenizer.BOS, WordTokenizer.UNK]
        for _ in range(max_tokens - 1):
            logits = self._decode(ids, memory, valid)[:, -1].float()
            logits[:, banned] = float("-inf")
            nxt = torch.where(done, torch.full_like(done, WordTokenizer.PAD, dtype=torch.long), logits.argmax(-1))
            ids = torch.cat([ids, nxt[:, None]], 1)
            done |= nxt == WordTokenizer.EOS
            if bool(done.all()):
                break
        return [self.tokenizer.decode(row[1:].tolist()) for row in ids.cpu()]

    # --- real-data statistics & checkpoints -------------------------------------------------
    @torch.no_grad()
    def set_real_statistics(self, features: torch.Tensor) -> None:
        """Store the Gaussian fit (mean, covariance) of the training split's FID features (n, E)."""
        from .metrics import gaussian_stats

        mu, sigma = gaussian_stats(features)
        self.real_mu.copy_(torch.from_numpy(mu))
        self.real_sigma.copy_(torch.from_numpy(sigma))

    def save(self, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
        """Write the evaluator to folder ``path`` (safetensors + JSON with config, vocabulary, meta)."""
        from sald_fast.checkpoint import save_checkpoint

        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        full_meta = {"kind": CHECKPOINT_KIND, "vocab": self.tokenizer.words, **(meta or {})}
        save_checkpoint(Path(path), tensors, self.config.to_dict(), full_meta)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "PoseEvaluator":
        """An evaluator written by :meth:`save`, in eval mode (its ``meta`` dict as ``.meta``)."""
        from sald_fast.checkpoint import CheckpointError, check_state_dict, load_checkpoint

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"evaluator folder {str(path)!r} does not exist (train it with "
                                    "`python -m train.evaluator --out DIR`)")
        tensors, config, meta = load_checkpoint(path)
        if meta.get("kind") != CHECKPOINT_KIND:
            raise CheckpointError(f"{str(path)!r} is not an evaluator checkpoint (kind {meta.get('kind')!r})")
        vocab = meta.get("vocab")
        if not isinstance(vocab, list) or not all(isinstance(w, str) for w in vocab):
            raise CheckpointError(f"evaluator checkpoint {str(path / 'config.json')!r}: meta 'vocab' must be a list "
                                  "of words")
        try:
            model = cls(EvaluatorConfig.from_dict(config), vocab)
        except (TypeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"evaluator checkpoint {str(path / 'config.json')!r} holds an invalid config: "
                                  f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
        check_state_dict(tensors, model, path / "model.safetensors", "the evaluator built from its config")
        model.load_state_dict(tensors, strict=True)
        model.meta = {k: v for k, v in meta.items() if k not in ("kind", "vocab")}
        return model.to(device).eval()
